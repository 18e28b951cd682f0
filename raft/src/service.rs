//! Inbound peer service: Raft RPCs handed to openraft, forwarded leader requests, joins.
//! Every call must carry the managers' shared secret and, when the store speaks TLS, come from a
//! manager certificate of this cluster.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::StreamExt;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::VoteRequest;
use shoal_proto::raft::raft_service_server::RaftService;
use shoal_proto::raft::Blob;
use shoal_proto::raft::JoinRequest;
use shoal_proto::raft::JoinResponse;
use shoal_proto::raft::SnapshotChunk;
use shoal_tls::Credentials;
use tonic::Request;
use tonic::Response;
use tonic::Status;
use tonic::Streaming;

use crate::codec;
use crate::error::StoreError;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::network::TOKEN_HEADER;
use crate::state_machine::SnapshotFile;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::Raft;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;

/// What the peer service needs of this manager's store. The store implements it, so this module
/// never names the store (the store mounts the service, not the other way round).
pub(crate) trait PeerHost: Send + Sync + 'static {
    fn raft(&self) -> &Raft;
    /// This manager's credentials, when its peers speak mutual TLS.
    fn tls(&self) -> Option<&Credentials>;
    /// Whether `given` is this cluster's join token.
    fn token_matches(&self, given: &str) -> bool;
    fn cluster_id(&self) -> &str;
    /// Where an incoming snapshot is written before it is installed.
    fn snapshot_temp_path(&self) -> PathBuf;
    /// Serves a request a follower forwarded; this manager must lead.
    fn handle_as_leader(
        &self,
        req: LeaderRequest,
    ) -> BoxFuture<'_, Result<LeaderResponse, StoreError>>;
    /// Adds (or, with `id == 0`, allocates an id for) a manager, at the leader.
    fn join_member(
        &self,
        id: NodeId,
        node: ManagerNode,
    ) -> BoxFuture<'_, Result<NodeId, StoreError>>;
}

pub struct PeerService {
    store: Arc<dyn PeerHost>,
}

impl PeerService {
    pub(crate) fn new(store: Arc<dyn PeerHost>) -> Self {
        PeerService { store }
    }

    fn authorize<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if let Some(creds) = self.store.tls() {
            shoal_tls::net::authorize(creds, req.extensions(), &[shoal_tls::Role::Manager])?;
        }
        let given = req
            .metadata()
            .get(TOKEN_HEADER)
            .and_then(|v| v.to_str().ok());
        match given {
            Some(t) if self.store.token_matches(t) => Ok(()),
            Some(_) => Err(Status::unauthenticated(
                "join token refused: it is not this cluster's token",
            )),
            None => Err(Status::unauthenticated("join token missing")),
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(blob: &Blob) -> Result<T, Status> {
    codec::decode(&blob.data).map_err(|e| Status::invalid_argument(e.to_string()))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<Blob>, Status> {
    let data = codec::encode(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(Blob { data }))
}

#[tonic::async_trait]
impl RaftService for PeerService {
    async fn append_entries(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self
            .store
            .raft()
            .append_entries(rpc)
            .await
            .map_err(|e| e.to_string());
        encode(&res)
    }

    async fn vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self.store.raft().vote(rpc).await.map_err(|e| e.to_string());
        encode(&res)
    }

    async fn pre_vote(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self
            .store
            .raft()
            .pre_vote(rpc)
            .await
            .map_err(|e| e.to_string());
        encode(&res)
    }

    async fn transfer_leader(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref())?;
        let res = self
            .store
            .raft()
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| e.to_string());
        encode(&res)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let mut chunks = req.into_inner();
        let first = chunks
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let (vote, meta): (Vote, SnapshotMeta) =
            codec::decode(&first.meta).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let path = self.store.snapshot_temp_path();
        let mut file = std::fs::File::create(&path).map_err(|e| Status::internal(e.to_string()))?;
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            file.write_all(&c.data)
                .map_err(|e| Status::internal(e.to_string()))?;
            if let Some(next) = chunks.next().await {
                chunk = Some(next?);
            }
        }
        file.sync_all()
            .map_err(|e| Status::internal(e.to_string()))?;
        drop(file);
        let data = SnapshotFile::open(path.clone()).map_err(|e| Status::internal(e.to_string()))?;
        let snapshot = openraft::alias::SnapshotOf::<TypeConfig, SnapshotFile> {
            meta,
            snapshot: data,
        };
        let res = self
            .store
            .raft()
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| e.to_string());
        let _ = std::fs::remove_file(&path);
        encode(&res)
    }

    async fn forward(&self, req: Request<Blob>) -> Result<Response<Blob>, Status> {
        self.authorize(&req)?;
        let lreq: LeaderRequest = decode(req.get_ref())?;
        let res: Result<LeaderResponse, StoreError> = self.store.handle_as_leader(lreq).await;
        encode(&res)
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        self.authorize(&req)?;
        let j = req.into_inner();
        if j.addr.is_empty() {
            return Err(Status::invalid_argument("join request without an address"));
        }
        let node = ManagerNode {
            grpc: j.addr,
            http: j.http,
            docker_api: j.docker_api,
        };
        let id = self.store.join_member(j.id, node).await?;
        Ok(Response::new(JoinResponse {
            id,
            cluster_id: self.store.cluster_id().to_string(),
        }))
    }
}
