//! The client KV API (`shoal.v1.Kv`) over the store. Any manager serves it; the store routes
//! writes and linearizable reads through the leader. Every call is checked against the caller's
//! certificate (`security::policy`): no user write reaches `/shoal/`, and a proxy reads its
//! config and keeps its own status only.

use std::pin::Pin;
use std::sync::Arc;

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
use crate::security;
use crate::security::policy::{self, Method};
use shoal_tls::{Credentials, PeerIdentity, Role};

pub(crate) struct KvService {
    store: Store,
    creds: Credentials,
}

impl KvService {
    pub(crate) fn new(store: Store, creds: Credentials) -> Self {
        KvService { store, creds }
    }

    fn admit<T>(&self, req: &Request<T>, method: Method) -> Result<Arc<PeerIdentity>, Status> {
        security::admit(&self.creds, req, method)
    }

    /// A proxy keeps alive or revokes only the lease its own status key is on.
    async fn own_lease(&self, caller: &PeerIdentity, lease: u64) -> Result<(), Status> {
        if caller.role != Role::Proxy {
            return Ok(());
        }
        let range = shoal_raft::Range {
            key: policy::proxy_status_key(&caller.name).into_bytes(),
            ..Default::default()
        };
        let (found, _) = self.store.range(&range, false).await?;
        if found.kvs.first().is_some_and(|kv| kv.lease == lease) {
            return Ok(());
        }
        // NotFound, as for a lease that ended: the proxy grants itself a new one.
        Err(Status::not_found(format!(
            "lease {lease} holds no status of proxy {}: a proxy keeps only its own status's lease",
            caller.name
        )))
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

/// Applies `txn` and answers as `Kv.Txn` does (also `Cluster.CommitObjects`, once checked).
pub(super) async fn run_txn(store: &Store, txn: Txn) -> Result<pb::TxnResponse, Status> {
    match store.write(Command::Txn(txn)).await? {
        Applied::Txn {
            revision,
            succeeded,
            responses,
        } => {
            let header = pb::Header {
                revision,
                member_id: store.id(),
                leader_id: store.leader().unwrap_or(0),
            };
            Ok(pb::TxnResponse {
                header: Some(header),
                succeeded,
                responses: responses
                    .into_iter()
                    .map(|r| convert::op_response(&header, r))
                    .collect(),
            })
        }
        other => Err(unexpected(other)),
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
        let caller = self.admit(&req, Method::KvRange)?;
        let r = req.into_inner();
        policy::read(caller.role, &caller.name, &r.key, r.prefix)?;
        let stale = r.stale;
        let (res, rev) = self.store.range(&convert::range(r), stale).await?;
        Ok(Response::new(convert::range_response(
            self.header(rev),
            res,
        )))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let caller = self.admit(&req, Method::KvPut)?;
        let p = req.into_inner();
        policy::write(caller.role, &caller.name, "put", &p.key, false)?;
        match self.write(Command::Put(convert::put(p))).await? {
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
        let caller = self.admit(&req, Method::KvDelete)?;
        let d = req.into_inner();
        policy::write(caller.role, &caller.name, "delete", &d.key, d.prefix)?;
        match self.write(Command::Delete(convert::delete(d))).await? {
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
        let caller = self.admit(&req, Method::KvTxn)?;
        let txn = convert::txn(req.into_inner())?;
        for op in txn.success.iter().chain(&txn.failure) {
            let (who, name) = (caller.role, caller.name.as_str());
            match op {
                shoal_raft::Op::Put(p) => policy::write(who, name, "put", &p.key, false)?,
                shoal_raft::Op::Merge(m) => policy::write(who, name, "merge", &m.key, false)?,
                shoal_raft::Op::Delete(d) => policy::write(who, name, "delete", &d.key, d.prefix)?,
                shoal_raft::Op::Range(r) => policy::read(who, name, &r.key, r.prefix)?,
            }
        }
        Ok(Response::new(run_txn(&self.store, txn).await?))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let caller = self.admit(&req, Method::KvWatch)?;
        let w = req.into_inner();
        policy::read(caller.role, &caller.name, &w.key, w.prefix)?;
        let stream = self.store.watch(w.key, w.prefix, w.start_revision)?;
        let (member_id, store) = (self.store.id(), self.store.clone());
        let prev_kv = w.prev_kv;
        let creds = self.creds.clone();
        let denied = |caller: &PeerIdentity| {
            Status::permission_denied(format!(
                "certificate of {} {} is revoked (removed from the cluster)",
                caller.role, caller.name
            ))
        };
        // A revocation ends the stream as soon as this manager learns it (within a second),
        // changes or not; the check before every batch closes the gap until then.
        let guard = {
            let (creds, caller) = (creds.clone(), caller.clone());
            async move { creds.until_revoked(&caller).await }
        };
        let after = {
            let (creds, caller) = (creds.clone(), caller.clone());
            futures::stream::once(
                async move { creds.is_revoked(&caller).then(|| Err(denied(&caller))) },
            )
            .filter_map(futures::future::ready)
        };
        let out = stream.map(move |item| match item {
            // Checked again before every batch: a revoked watcher learns nothing more.
            Ok(_) if creds.is_revoked(&caller) => Err(denied(&caller)),
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
        Ok(Response::new(Box::pin(out.take_until(guard).chain(after))))
    }

    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        self.admit(&req, Method::KvLeaseGrant)?;
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
        let caller = self.admit(&req, Method::KvLeaseRevoke)?;
        let id = req.into_inner().id;
        self.own_lease(&caller, id).await?;
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
        let caller = self.admit(&req, Method::KvLeaseKeepAlive)?;
        let id = req.into_inner().id;
        self.own_lease(&caller, id).await?;
        let ttl_ms = self.store.lease_keep_alive(id).await?;
        Ok(Response::new(pb::LeaseKeepAliveResponse {
            header: Some(self.header(self.store.revision())),
            ttl_ms,
        }))
    }
}
