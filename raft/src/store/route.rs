//! Where leader-only work runs: on this manager when it leads, forwarded to the leader when it
//! follows, nowhere while there is no leader (the call waits up to [`LEADER_WAIT`] for one). A
//! request is routed again only when it provably did not run. Linearizable reads learn here what
//! they must wait for (the read index); stale reads never leave this replica. The rules are
//! functions of a [`Router`], so `route_tests.rs` drives them with a scripted cluster.

use std::future::Future;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::ReadPolicy;
use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::raft::Blob;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::raft_err;
use super::Store;
use super::FORWARD_TIMEOUT;
use super::LEADER_WAIT;
use crate::codec;
use crate::error::StoreError;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::network;
use crate::types::NodeId;

/// One manager's view of the cluster, as routing needs it.
pub(super) trait Router: Sync {
    fn me(&self) -> NodeId;
    /// The leader this manager knows of.
    fn leader(&self) -> Option<NodeId>;
    /// Runs a leader-only request here; `NotLeader` if this manager does not lead (any more).
    fn execute(
        &self,
        req: LeaderRequest,
    ) -> impl Future<Output = Result<LeaderResponse, StoreError>> + Send;
    /// Sends a leader-only request to `leader` and returns its answer.
    fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
        timeout: Duration,
    ) -> impl Future<Output = Result<LeaderResponse, StoreError>> + Send;
    /// If this manager leads, confirms it with a quorum and waits until everything committed
    /// before the call is applied here (openraft's read index): `Ok(true)`. `Ok(false)` when it
    /// does not lead (or lost leadership meanwhile): the read index must come from the leader.
    fn read_here(&self) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Waits until this replica has applied `index`.
    fn wait_applied(&self, index: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// What to do after an attempt to run a leader-only request failed with `err`.
#[derive(Debug, PartialEq)]
pub(super) enum Retry {
    /// The request provably did not run: route it again after this pause.
    After(Duration),
    /// It may run nowhere before the deadline: there is no leader to be had.
    NoLeader,
    /// Any other answer is the caller's (an outcome-unknown write is never sent twice).
    Return,
}

/// The retry rule of [`leader_call`]: not leader and no leader retry quickly, an unreachable
/// leader a little later, until the deadline.
pub(super) fn retry(err: &StoreError, before_deadline: bool) -> Retry {
    match err {
        StoreError::NotLeader { .. } | StoreError::NoLeader { .. } if before_deadline => {
            Retry::After(Duration::from_millis(25))
        }
        StoreError::LeaderUnreachable { .. } if before_deadline => {
            Retry::After(Duration::from_millis(50))
        }
        StoreError::NotLeader { .. }
        | StoreError::NoLeader { .. }
        | StoreError::LeaderUnreachable { .. } => Retry::NoLeader,
        _ => Retry::Return,
    }
}

/// Runs a leader-only request here if this manager leads, else at the leader (`timeout` bounds
/// a forward). Waits up to [`LEADER_WAIT`] for a leader; re-routes only when the request
/// provably did not run.
pub(super) async fn leader_call<R: Router>(
    r: &R,
    req: LeaderRequest,
    timeout: Duration,
) -> Result<LeaderResponse, StoreError> {
    let started = Instant::now();
    let deadline = started + LEADER_WAIT;
    loop {
        let outcome = match r.leader() {
            Some(l) if l == r.me() => r.execute(req.clone()).await,
            Some(l) => r.forward(l, &req, timeout).await,
            None => Err(StoreError::NoLeader { waited_ms: 0 }),
        };
        let err = match outcome {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        match retry(&err, Instant::now() < deadline) {
            Retry::After(pause) => tokio::time::sleep(pause).await,
            Retry::NoLeader => {
                return Err(StoreError::NoLeader {
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
            Retry::Return => return Err(err),
        }
    }
}

/// Waits until this replica has applied everything committed when the call began: the read
/// index of this leader, or the one the leader hands out.
pub(super) async fn linearize<R: Router>(r: &R) -> Result<(), StoreError> {
    if r.read_here().await? {
        return Ok(());
    }
    let index = match leader_call(r, LeaderRequest::ReadIndex, FORWARD_TIMEOUT).await? {
        LeaderResponse::ReadIndex(i) => i,
        other => return Err(unexpected(other)),
    };
    r.wait_applied(index).await
}

/// What a read waits for before it reads this replica: nothing when `stale`.
pub(super) async fn read_barrier<R: Router>(r: &R, stale: bool) -> Result<(), StoreError> {
    if stale {
        return Ok(());
    }
    linearize(r).await
}

pub(super) fn unexpected(r: LeaderResponse) -> StoreError {
    StoreError::Protocol(format!("unexpected answer from the leader: {r:?}"))
}

/// True when the request provably never reached the peer (the connection was refused), so
/// sending it elsewhere cannot apply it twice.
pub(super) fn never_sent(status: &tonic::Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        src = e.source();
    }
    let msg = status.message();
    msg.contains("tcp connect error") || msg.contains("Connection refused")
}

/// The error a failed forward of `req` to `leader` (at `addr`) means: a request that provably
/// never arrived, or one that cannot have changed anything, may be routed again; a write that
/// may have arrived has an unknown outcome.
pub(super) fn forward_failed(
    req: &LeaderRequest,
    addr: String,
    status: &tonic::Status,
) -> StoreError {
    let reason = status.message().to_string();
    if never_sent(status) || !matches!(req, LeaderRequest::Write(_)) {
        StoreError::LeaderUnreachable {
            leader: addr,
            reason,
        }
    } else {
        StoreError::OutcomeUnknown {
            leader: addr,
            reason,
        }
    }
}

impl Router for Store {
    fn me(&self) -> NodeId {
        self.inner.id
    }

    fn leader(&self) -> Option<NodeId> {
        Store::leader(self)
    }

    async fn execute(&self, req: LeaderRequest) -> Result<LeaderResponse, StoreError> {
        self.handle_as_leader(req).await
    }

    async fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
        timeout: Duration,
    ) -> Result<LeaderResponse, StoreError> {
        let addr = match self.member(leader) {
            Some(n) => n.grpc,
            None => return Err(StoreError::NoLeader { waited_ms: 0 }),
        };
        let mut client = self.peer_client(&addr)?;
        let data = codec::encode(req)?;
        let call = client.forward(network::request(Blob { data }, self.token(), timeout));
        match call.await {
            Ok(resp) => {
                codec::decode::<Result<LeaderResponse, StoreError>>(&resp.into_inner().data)?
            }
            Err(status) => Err(forward_failed(req, addr, &status)),
        }
    }

    async fn read_here(&self) -> Result<bool, StoreError> {
        let raft = &self.inner.raft;
        if !raft.is_leader() {
            return Ok(false);
        }
        match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(true),
            Err(RaftError::APIError(e)) => {
                tracing::debug!(error = %e, "lost leadership during a read");
                Ok(false)
            }
            Err(e) => Err(raft_err(e)),
        }
    }

    async fn wait_applied(&self, index: u64) -> Result<(), StoreError> {
        self.inner
            .raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| StoreError::Timeout(LEADER_WAIT.as_millis() as u64))?;
        Ok(())
    }
}

impl Store {
    /// A client of the peer service at `addr`, one kept per address.
    fn peer_client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, StoreError> {
        let mut peers = self.inner.peers.lock().expect("peers");
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let ch = network::connect(addr, self.inner.tls.as_ref()).map_err(StoreError::Protocol)?;
        let c = RaftServiceClient::new(ch)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        peers.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}
