//! The client KV API (`shoal.v1.Kv`) over the store. Any manager serves it; the store routes
//! writes and linearizable reads through the leader.

use std::pin::Pin;

use futures::Stream;
use futures::StreamExt;
use shoal_proto::v1 as pb;
use shoal_proto::v1::kv_server::Kv;
use shoal_raft::Command;
use shoal_raft::Response as Applied;
use shoal_raft::Store;
use shoal_raft::StoreError;
use shoal_raft::Txn;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::convert;

pub(crate) struct KvService {
    store: Store,
}

impl KvService {
    pub(crate) fn new(store: Store) -> Self {
        KvService { store }
    }

    fn header(&self, revision: u64) -> pb::Header {
        pb::Header {
            revision,
            member_id: self.store.id(),
            leader_id: self.store.leader().unwrap_or(0),
        }
    }

    async fn write(&self, cmd: Command) -> Result<Applied, Status> {
        Ok(self.store.write(cmd).await?)
    }
}

fn unexpected(r: Applied) -> Status {
    Status::internal(format!("unexpected store response {r:?}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        req: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.into_inner();
        let stale = r.stale;
        let (res, rev) = self.store.range(&convert::range(r), stale).await?;
        Ok(Response::new(convert::range_response(
            self.header(rev),
            res,
        )))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        match self
            .write(Command::Put(convert::put(req.into_inner())))
            .await?
        {
            Applied::Put { revision, prev_kv } => Ok(Response::new(pb::PutResponse {
                header: Some(self.header(revision)),
                prev_kv: prev_kv.map(convert::kv),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        match self
            .write(Command::Delete(convert::delete(req.into_inner())))
            .await?
        {
            Applied::Delete {
                revision,
                deleted,
                prev_kvs,
            } => Ok(Response::new(pb::DeleteResponse {
                header: Some(self.header(revision)),
                deleted,
                prev_kvs: prev_kvs.into_iter().map(convert::kv).collect(),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = req.into_inner();
        let txn = Txn {
            compare: t
                .compare
                .into_iter()
                .map(convert::compare)
                .collect::<Result<_, _>>()?,
            success: t
                .success
                .into_iter()
                .map(convert::op)
                .collect::<Result<_, _>>()?,
            failure: t
                .failure
                .into_iter()
                .map(convert::op)
                .collect::<Result<_, _>>()?,
        };
        match self.write(Command::Txn(txn)).await? {
            Applied::Txn {
                revision,
                succeeded,
                responses,
            } => {
                let header = self.header(revision);
                Ok(Response::new(pb::TxnResponse {
                    header: Some(header),
                    succeeded,
                    responses: responses
                        .into_iter()
                        .map(|r| convert::op_response(&header, r))
                        .collect(),
                }))
            }
            other => Err(unexpected(other)),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let w = req.into_inner();
        let stream = self.store.watch(w.key, w.prefix, w.start_revision)?;
        let (member_id, store) = (self.store.id(), self.store.clone());
        let prev_kv = w.prev_kv;
        let out = stream.map(move |item| match item {
            Ok(batch) => Ok(pb::WatchResponse {
                header: Some(pb::Header {
                    revision: batch.revision,
                    member_id,
                    leader_id: store.leader().unwrap_or(0),
                }),
                events: batch
                    .events
                    .into_iter()
                    .map(|mut e| {
                        if !prev_kv {
                            e.prev_kv = None;
                        }
                        convert::event(e)
                    })
                    .collect(),
            }),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let ttl_ms = req.into_inner().ttl_ms;
        match self.write(Command::LeaseGrant { ttl_ms }).await? {
            Applied::LeaseGranted {
                revision,
                id,
                ttl_ms,
            } => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(self.header(revision)),
                id,
                ttl_ms,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        match self.write(Command::LeaseRevoke { ids: vec![id] }).await? {
            Applied::LeaseRevoked { found, .. } if found.is_empty() => {
                Err(StoreError::LeaseNotFound(id).into())
            }
            Applied::LeaseRevoked { revision, .. } => Ok(Response::new(pb::LeaseRevokeResponse {
                header: Some(self.header(revision)),
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_keep_alive(
        &self,
        req: Request<pb::LeaseKeepAliveRequest>,
    ) -> Result<Response<pb::LeaseKeepAliveResponse>, Status> {
        let ttl_ms = self.store.lease_keep_alive(req.into_inner().id).await?;
        Ok(Response::new(pb::LeaseKeepAliveResponse {
            header: Some(self.header(self.store.revision())),
            ttl_ms,
        }))
    }
}
