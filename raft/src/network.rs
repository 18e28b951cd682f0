//! Outbound Raft transport: openraft's network traits over the peer gRPC service. Every request
//! carries the managers' shared secret; all channels come from [`connect`], which speaks mutual
//! TLS (the server must hold a manager certificate of this cluster) when given credentials.

use std::future::Future;
use std::io::Read;
use std::time::Duration;

use openraft::alias::SnapshotOf;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::v2::RaftNetworkV2;
use openraft::network::RPCOption;
use openraft::network::RaftNetworkFactory;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use openraft::AnyError;
use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::raft::Blob;
use shoal_proto::raft::SnapshotChunk;
use shoal_tls::net::Connector;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::codec;
use crate::state_machine::SnapshotFile;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Metadata key carrying the cluster's join token on peer requests.
pub const TOKEN_HEADER: &str = "x-shoal-token";
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// HTTP/2 flow-control window of one stream between managers (and into a manager's server):
/// a whole append of batched entries can be in flight without waiting for window updates.
pub const WINDOW_BYTES: u32 = 4 << 20;

/// Builds a lazily connecting channel to a manager's gRPC address: mutual TLS with `tls` (the
/// server must prove it is a manager of the cluster), plaintext without (tests of this crate).
pub fn connect(addr: &str, tls: Option<&Credentials>) -> Result<Channel, String> {
    let uri = match tls {
        Some(_) => shoal_tls::net::endpoint_uri(addr),
        None if addr.starts_with("http://") || addr.starts_with("https://") => addr.to_string(),
        None => format!("http://{addr}"),
    };
    let ep = Endpoint::from_shared(uri)
        .map_err(|e| format!("bad address {addr}: {e}"))?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES * 2);
    Ok(match tls {
        Some(creds) => ep.connect_with_connector_lazy(Connector::new(
            creds.client_config(&[Role::Manager], &[b"h2"]),
        )),
        None => ep.connect_lazy(),
    })
}

/// The least time an append is given (openraft's own deadline is one heartbeat interval);
/// below the election timeout, so a follower that cannot answer in time is still noticed.
const APPEND_FLOOR: Duration = Duration::from_millis(400);

/// Wraps `msg` in a request carrying the token and a deadline.
pub(crate) fn request<T>(msg: T, token: &str, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(timeout);
    if let Ok(v) = token.parse() {
        req.metadata_mut().insert(TOKEN_HEADER, v);
    }
    req
}

pub(crate) struct Network {
    pub token: String,
    pub tls: Option<Credentials>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> Peer {
        Peer {
            target,
            addr: node.grpc.clone(),
            token: self.token.clone(),
            client: connect(&node.grpc, self.tls.as_ref())
                .ok()
                .map(RaftServiceClient::new),
        }
    }
}

pub(crate) struct Peer {
    target: NodeId,
    addr: String,
    token: String,
    client: Option<RaftServiceClient<Channel>>,
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
}

fn network(e: impl std::fmt::Display) -> NetworkError<TypeConfig> {
    NetworkError::new(&AnyError::error(e.to_string()))
}

/// Connection-level failures mean "back off"; anything else is worth an immediate retry.
fn status_err(s: tonic::Status) -> RPCError<TypeConfig> {
    match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unauthenticated => {
            unreachable(s.message())
        }
        _ => RPCError::Network(network(s.message())),
    }
}

impl Peer {
    fn client(&self) -> Result<RaftServiceClient<Channel>, RPCError<TypeConfig>> {
        self.client.clone().ok_or_else(|| {
            unreachable(format!(
                "manager {} has a bad address {}",
                self.target, self.addr
            ))
        })
    }

    fn decode<T: serde::de::DeserializeOwned>(blob: Blob) -> Result<T, RPCError<TypeConfig>> {
        let res: Result<T, String> =
            codec::decode(&blob.data).map_err(|e| RPCError::Network(network(e)))?;
        res.map_err(|e| RPCError::Network(network(e)))
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(network(e)))?;
        // openraft's deadline is one heartbeat interval, made for heartbeats. On a loaded
        // machine a follower's fsync alone can take longer, and an append that times out is
        // sent again whole, adding load: appends get at least APPEND_FLOOR, plus time for
        // their payload to cross (1 ms per 16 KiB).
        let deadline = option.hard_ttl().max(APPEND_FLOOR)
            + Duration::from_millis((data.len() / (16 << 10)) as u64);
        let req = request(Blob { data }, &self.token, deadline);
        let resp = self
            .client()?
            .append_entries(req)
            .await
            .map_err(status_err)?;
        Self::decode(resp.into_inner())
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(network(e)))?;
        let req = request(Blob { data }, &self.token, option.hard_ttl());
        let resp = self.client()?.vote(req).await.map_err(status_err)?;
        Self::decode(resp.into_inner())
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(network(e)))?;
        let req = request(Blob { data }, &self.token, option.hard_ttl());
        let resp = self.client()?.pre_vote(req).await.map_err(status_err)?;
        Self::decode(resp.into_inner())
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let data = codec::encode(&rpc).map_err(|e| RPCError::Network(network(e)))?;
        let req = request(Blob { data }, &self.token, option.hard_ttl());
        let resp = self
            .client()?
            .transfer_leader(req)
            .await
            .map_err(status_err)?;
        Self::decode(resp.into_inner())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let meta = codec::encode(&(vote, snapshot.meta.clone())).map_err(network)?;
        let mut file = snapshot.snapshot.file;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Read the file on a blocking thread, one chunk at a time, as the stream drains.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut meta = Some(meta);
            loop {
                let mut buf = vec![0u8; SNAPSHOT_CHUNK];
                let mut filled = 0;
                while filled < buf.len() {
                    let n = file.read(&mut buf[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                buf.truncate(filled);
                let last = filled < SNAPSHOT_CHUNK;
                let chunk = SnapshotChunk {
                    meta: meta.take().unwrap_or_default(),
                    data: buf,
                };
                if tx.blocking_send(chunk).is_err() || last {
                    return Ok(());
                }
            }
        });
        let mut client = self.client().map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&AnyError::error(e.to_string())))
        })?;
        // Large snapshots take a while: no per-request deadline, but the token.
        let req = request(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            &self.token,
            Duration::from_secs(3600),
        );
        let send = client.install_snapshot(req);
        let resp = tokio::select! {
            r = send => r.map_err(|s| match status_err(s) {
                RPCError::Unreachable(u) => StreamingError::Unreachable(u),
                other => StreamingError::Network(network(other)),
            })?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        reader.await.map_err(network)?.map_err(network)?;
        let blob = resp.into_inner();
        let res: Result<SnapshotResponse<TypeConfig>, String> =
            codec::decode(&blob.data).map_err(network)?;
        res.map_err(|e| StreamingError::Network(network(e)))
    }
}
