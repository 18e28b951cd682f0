//! The store handle every other part of a manager uses: write through the leader, read
//! linearizably or locally, watch, keep leases alive, change membership. A follower sends
//! leader-only work to the leader itself; callers never see Raft. Opening is in `open`, routing
//! in `route`, the leader's side in `leader`, status in `status`, the loops in `background`.

mod background;
mod leader;
mod open;
mod route;
#[cfg(test)]
mod route_tests;
mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use openraft::type_config::async_runtime::WatchReceiver;
use rocksdb::DB;
use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::raft::raft_service_server::RaftServiceServer;
use shoal_tls::Credentials;
use tonic::transport::Channel;

use crate::codec;
use crate::command::Command;
use crate::command::Range;
use crate::command::RangeResult;
use crate::command::Rejection;
use crate::command::Request;
use crate::command::Response;
use crate::db;
use crate::error::StoreError;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::identity::JoinToken;
use crate::lease::LeaseClock;
use crate::runtime::RaftRuntime;
use crate::service::PeerHost;
use crate::service::PeerService;
use crate::state_machine::scan;
use crate::state_machine::Counters;
use crate::state_machine::Shared;
use crate::state_machine::SnapshotStore;
use crate::state_machine::View;
use crate::state_machine::KEY_COUNTERS;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::Raft;
use crate::watch;
use crate::watch::WatchStream;
use open::JOIN_TIMEOUT;
use route::leader_call;
use route::read_barrier;
use route::unexpected;

/// How long a request waits for a leader to exist before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a forwarded request may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Raft timing and log compaction knobs.
#[derive(Debug, Clone)]
pub struct RaftTuning {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot at the latest after this many entries (bounds the log's length).
    pub snapshot_every: u64,
    /// Build a snapshot once the log written since the last one holds as many bytes as that
    /// snapshot, and at least this many (see `compaction.rs`).
    pub snapshot_log_bytes: u64,
    /// Entries kept in the log behind a snapshot (for slightly lagging followers).
    pub keep_behind_snapshot: u64,
}

/// A follower that stops hearing from its leader waits out the leader's lease (openraft sets it
/// to `election_max_ms`) and then its own election timeout (`election_min_ms..election_max_ms`)
/// before it stands: 600–800 ms with these figures, so a leader lost costs well under a second.
/// Heartbeats come 4 times within the shortest timeout; the Raft log's writes happen on a thread
/// of their own (`log_store`), so a slow disk cannot hold them back.
impl Default for RaftTuning {
    fn default() -> Self {
        RaftTuning {
            heartbeat_ms: 50,
            election_min_ms: 200,
            election_max_ms: 400,
            snapshot_every: 100_000,
            snapshot_log_bytes: 1 << 20,
            keep_behind_snapshot: 2_000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// How others reach this manager.
    pub node: ManagerNode,
    /// Managers to join; empty bootstraps a new cluster (or restarts from the data dir).
    pub join: Vec<String>,
    /// The managers' shared secret (`SHOAL1-...`): required to join; at bootstrap, the one to
    /// use instead of a new one (its cluster id becomes the cluster's).
    pub token: Option<String>,
    /// Mutual TLS for every peer connection, both ways: only manager certificates of this
    /// cluster are served and trusted. None (plaintext) is for this crate's own tests.
    pub tls: Option<Credentials>,
    pub force_new_cluster: bool,
    pub tuning: RaftTuning,
    /// Follows every applied change (an in-memory index of the cluster's objects).
    pub observer: Option<Arc<dyn crate::ApplyObserver>>,
    /// This manager's storage quota (`--quota-bytes`, at least [`crate::MIN_QUOTA_BYTES`]): it
    /// proposes it through Raft, and the smallest quota of all managers governs.
    pub quota_bytes: u64,
}

/// What `open` did, for the caller to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    Bootstrapped,
    /// Received an id; [`Store::finish_join`] must run once the peer service is serving.
    Joining,
    Restarted,
    ForcedNewCluster,
}

/// A cheap, cloneable handle on this manager's replica.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    cluster_id: String,
    token: JoinToken,
    tls: Option<Credentials>,
    node: ManagerNode,
    raft: Raft,
    db: Arc<DB>,
    shared: Arc<Shared>,
    snapshots: Arc<SnapshotStore>,
    leases: LeaseClock,
    quota_bytes: u64,
    peers: Mutex<BTreeMap<String, RaftServiceClient<Channel>>>,
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// `Some(term)` while this manager is the leader of `term`.
    leading: tokio::sync::watch::Sender<Option<u64>>,
    /// Where openraft runs; dropped last, after `raft`.
    _runtime: RaftRuntime,
}

fn raft_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Stopped(e.to_string())
}

impl Store {
    /// Whether the membership this replica knows includes it.
    pub fn is_member(&self) -> bool {
        self.member(self.inner.id).is_some()
    }

    /// Member `id` as the membership this replica knows has it.
    pub(crate) fn member(&self, id: NodeId) -> Option<ManagerNode> {
        let m = self
            .inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        m.membership().get_node(&id).cloned()
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    pub fn token(&self) -> &str {
        self.inner.token.as_str()
    }

    /// This manager's credentials, when its peers speak mutual TLS.
    pub fn tls(&self) -> Option<&Credentials> {
        self.inner.tls.as_ref()
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The peer gRPC service to mount on this manager's server.
    pub fn peer_service(&self) -> RaftServiceServer<PeerService> {
        RaftServiceServer::new(PeerService::new(Arc::new(self.clone())))
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024)
    }

    /// This replica's latest applied revision.
    pub fn revision(&self) -> u64 {
        self.inner.shared.revision()
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow_watched().current_leader
    }

    /// The gRPC address of the leader this replica knows of.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader?;
        let node = m.membership_config.membership().get_node(&leader)?.clone();
        Some(node.grpc)
    }

    /// This manager's leadership: `Some(term)` while it leads `term`, `None` otherwise. The
    /// control loops start when it becomes `Some` and stop when it changes.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Option<u64>> {
        self.inner.leading.subscribe()
    }

    /// Whether `given` is this cluster's join token (compared in constant time).
    pub fn token_matches(&self, given: &str) -> bool {
        crate::identity::token_matches(given, self.token())
    }

    /// Proposes a command through the leader and returns what applying it produced.
    pub async fn write(&self, cmd: Command) -> Result<Response, StoreError> {
        cmd.validate()?;
        self.check_space(&cmd)?;
        let req = Request::now(cmd);
        match leader_call(self, LeaderRequest::Write(req), FORWARD_TIMEOUT).await? {
            // A missing lease is an error of the request; a lock conflict is an answer.
            LeaderResponse::Written(Response::Rejected {
                reason: Rejection::LeaseNotFound(id),
                ..
            }) => Err(StoreError::LeaseNotFound(id)),
            LeaderResponse::Written(Response::Rejected {
                reason: Rejection::NoSpace { quota, used },
                ..
            }) => Err(StoreError::NoSpace { quota, used }),
            LeaderResponse::Written(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Refuses, before it reaches the log, a write apply would likely refuse for want of space:
    /// one that may add data while the NOSPACE alarm is up (nothing was freed since). Only a
    /// shortcut (refused entries would fill the log): apply decides, on every replica alike.
    fn check_space(&self, cmd: &Command) -> Result<(), StoreError> {
        if !crate::state_machine::may_grow(cmd) {
            return Ok(());
        }
        let space = self.inner.shared.space();
        match space.alarm {
            Some(alarm) if space.quota() == Some(alarm.quota) => Err(StoreError::NoSpace {
                quota: alarm.quota,
                used: space.used,
            }),
            _ => Ok(()),
        }
    }

    /// Reads a key or prefix: linearizable unless `stale`, which reads this replica as it is.
    /// Returns the result and the revision it reflects.
    pub async fn range(
        &self,
        range: &Range,
        stale: bool,
    ) -> Result<(RangeResult, u64), StoreError> {
        range.validate()?;
        read_barrier(self, stale).await?;
        let db = self.inner.db.clone();
        let range = range.clone();
        tokio::task::spawn_blocking(move || {
            let view = db.snapshot();
            let sm = db.cf_handle(db::CF_SM).expect("cf sm");
            let counters: Counters = match view
                .get_cf(sm, KEY_COUNTERS)
                .map_err(|e| StoreError::Storage(e.into_string()))?
            {
                Some(b) => codec::decode(&b)?,
                None => Counters::default(),
            };
            let res = scan(
                View {
                    db: &db,
                    snap: Some(&view),
                },
                &range,
                false,
            )?;
            Ok((res, counters.revision))
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    /// Waits until this replica has applied everything committed before the call; returns
    /// the revision applied then (a read of the local replica from now on is linearizable).
    pub async fn barrier(&self) -> Result<u64, StoreError> {
        route::linearize(self).await?;
        Ok(self.revision())
    }

    /// Watches a key or prefix from `start` (0: from the next change).
    pub fn watch(&self, key: Vec<u8>, prefix: bool, start: u64) -> Result<WatchStream, StoreError> {
        if key.len() > crate::command::MAX_KEY_BYTES {
            return Err(crate::command::InvalidRequest::KeyTooLarge(key.len()).into());
        }
        if key.is_empty() && !prefix {
            return Err(crate::command::InvalidRequest::EmptyKey.into());
        }
        watch::watch(
            self.inner.db.clone(),
            self.inner.shared.clone(),
            key,
            prefix,
            start,
        )
    }

    /// Renews a lease at the leader; returns its TTL.
    pub async fn lease_keep_alive(&self, id: u64) -> Result<u64, StoreError> {
        match leader_call(self, LeaderRequest::KeepAlive(id), FORWARD_TIMEOUT).await? {
            LeaderResponse::KeptAlive { ttl_ms } => Ok(ttl_ms),
            other => Err(unexpected(other)),
        }
    }

    /// Removes a manager from the cluster. Its id is never handed out again.
    pub async fn remove_member(&self, id: NodeId) -> Result<Vec<NodeId>, StoreError> {
        match leader_call(self, LeaderRequest::Remove(id), FORWARD_TIMEOUT).await? {
            LeaderResponse::Removed(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Adds (or, with `id == 0`, allocates an id for) a manager; routed to the leader.
    pub(crate) async fn join_member(
        &self,
        id: NodeId,
        node: ManagerNode,
    ) -> Result<NodeId, StoreError> {
        let timeout = if id == 0 {
            FORWARD_TIMEOUT
        } else {
            JOIN_TIMEOUT
        };
        match leader_call(self, LeaderRequest::Join { id, node }, timeout).await? {
            LeaderResponse::Joined(id) => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Resolves when Raft stops on a fatal error (a storage failure such as a full disk): the
    /// manager must then exit rather than serve from a replica that can no longer advance.
    pub async fn fatal(&self) -> StoreError {
        let mut rx = self.inner.raft.metrics();
        loop {
            if let Err(e) = &rx.borrow_watched().running_state {
                return StoreError::Stopped(e.to_string());
            }
            if rx.changed().await.is_err() {
                return StoreError::Stopped("raft stopped".into());
            }
        }
    }

    /// Stops Raft and the background tasks.
    pub async fn shutdown(&self) {
        for h in self.inner.background.lock().expect("background").drain(..) {
            h.abort();
        }
        let _ = self.inner.raft.shutdown().await;
    }

    /// The index of this replica's current snapshot (0: none).
    pub(crate) fn snapshot_index(&self) -> u64 {
        let m = self.inner.raft.metrics();
        let index = m.borrow_watched().snapshot.map_or(0, |l| l.index);
        index
    }

    /// The size of this replica's current snapshot file (0: none).
    pub(crate) fn snapshot_bytes(&self) -> u64 {
        self.inner.snapshots.current_bytes()
    }

    /// Asks openraft to build a snapshot now.
    pub(crate) async fn trigger_snapshot(&self) -> Result<(), StoreError> {
        self.inner.raft.trigger().snapshot().await.map_err(raft_err)
    }

    /// Keeps a background task of this store, aborted at shutdown.
    pub(crate) fn keep_background(&self, h: tokio::task::JoinHandle<()>) {
        self.inner.background.lock().expect("background").push(h);
    }
}

/// The peer service reaches the store only through this: it never names [`Store`].
impl PeerHost for Store {
    fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    fn tls(&self) -> Option<&Credentials> {
        self.inner.tls.as_ref()
    }

    fn token_matches(&self, given: &str) -> bool {
        Store::token_matches(self, given)
    }

    fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    fn snapshot_temp_path(&self) -> PathBuf {
        self.inner.snapshots.temp_path()
    }

    fn handle_as_leader(
        &self,
        req: LeaderRequest,
    ) -> BoxFuture<'_, Result<LeaderResponse, StoreError>> {
        Store::handle_as_leader(self, req).boxed()
    }

    fn join_member(
        &self,
        id: NodeId,
        node: ManagerNode,
    ) -> BoxFuture<'_, Result<NodeId, StoreError>> {
        Store::join_member(self, id, node).boxed()
    }
}
