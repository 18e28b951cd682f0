//! The store handle every other part of a manager uses: open (bootstrap, join or restart),
//! write through the leader, read linearizably or locally, watch, keep leases alive, change
//! membership. A follower sends leader-only work to the leader itself; callers never see Raft.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::type_config::async_runtime::Instant as _;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use openraft::ServerState;
use rocksdb::DB;
use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::raft::raft_service_server::RaftServiceServer;
use shoal_proto::raft::Blob;
use shoal_proto::raft::JoinRequest;
use shoal_tls::Credentials;
use tokio::time::Instant;
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
use crate::identity;
use crate::identity::Identity;
use crate::identity::JoinToken;
use crate::lease::LeaseClock;
use crate::log_store::LogStore;
use crate::network;
use crate::network::Network;
use crate::runtime::RaftRuntime;
use crate::service::PeerService;
use crate::state_machine::scan;
use crate::state_machine::Counters;
use crate::state_machine::Shared;
use crate::state_machine::SnapshotStore;
use crate::state_machine::StateMachine;
use crate::state_machine::View;
use crate::state_machine::KEY_COUNTERS;
use crate::status::MemberStatus;
use crate::status::Status;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::Raft;
use crate::watch;
use crate::watch::WatchStream;

/// How long a request waits for a leader to exist before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How long a forwarded request may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long phase two of a join (catch-up as learner, promotion) may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// Opens the replica in `config.data_dir`, bootstrapping, joining or restarting as the
    /// data dir and flags say.
    pub async fn open(config: StoreConfig) -> Result<(Store, Opened), StoreError> {
        let dir = &config.data_dir;
        let given = config.token.as_deref().map(JoinToken::parse).transpose()?;
        let db = db::open(dir)?;
        let existing = identity::read(&db)?;
        let dir_str = dir.display().to_string();

        let (ident, token, opened) = match existing {
            Some(ident) => {
                let stored = identity::read_token(dir)?.ok_or_else(|| StoreError::DataDir {
                    path: dir_str.clone(),
                    reason: "the data dir has an identity but no token file".into(),
                })?;
                if let Some(t) = &given {
                    if t.cluster_id != ident.cluster_id {
                        return Err(StoreError::WrongCluster {
                            path: dir_str,
                            found: ident.cluster_id,
                            expected: t.cluster_id.clone(),
                        });
                    }
                }
                let opened = if config.force_new_cluster {
                    Opened::ForcedNewCluster
                } else {
                    Opened::Restarted
                };
                (ident, stored, opened)
            }
            None if config.force_new_cluster => {
                return Err(StoreError::DataDir {
                    path: dir_str,
                    reason: "--force-new-cluster needs the data dir of a surviving manager, and this one is empty".into(),
                })
            }
            None if config.join.is_empty() => {
                let token = given.clone().unwrap_or_else(JoinToken::generate);
                let ident = Identity {
                    cluster_id: token.cluster_id.clone(),
                    id: 1,
                };
                identity::write_token(dir, &token)?;
                identity::write(&db, &ident)?;
                (ident, token, Opened::Bootstrapped)
            }
            None => {
                let token = given.clone().ok_or_else(|| {
                    StoreError::Unauthenticated("--join needs --token (print it with `shoal cluster token`)".into())
                })?;
                let (id, cluster_id) = request_join(&config.join, &token, config.tls.as_ref(), 0, &config.node, LEADER_WAIT * 2).await?;
                if cluster_id != token.cluster_id {
                    return Err(StoreError::Unauthenticated(format!(
                        "the managers at --join belong to cluster {cluster_id}, the token to {}",
                        token.cluster_id
                    )));
                }
                let ident = Identity { cluster_id, id };
                identity::write_token(dir, &token)?;
                identity::write(&db, &ident)?;
                (ident, token, Opened::Joining)
            }
        };

        let log_bytes = crate::compaction::LogBytes::default();
        let log = LogStore::new(db.clone(), log_bytes.clone());
        if opened == Opened::ForcedNewCluster {
            crate::recovery::force_new_cluster(&log, ident.id, &config.node)?;
        }
        let (sm, shared) =
            StateMachine::open(db.clone(), dir.join("snapshots"), config.observer.clone())?;
        let snapshots = sm.snapshot_store();

        let t = &config.tuning;
        let raft_config = openraft::Config {
            cluster_name: ident.cluster_id.clone(),
            heartbeat_interval: t.heartbeat_ms,
            election_timeout_min: t.election_min_ms,
            election_timeout_max: t.election_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(t.snapshot_every),
            max_in_snapshot_log_to_keep: t.keep_behind_snapshot,
            // Control-plane batches are entries of up to 256 KiB: an append carries a few MiB
            // at most, not openraft's default 300 entries.
            max_payload_entries: 16,
            enable_pre_vote: Some(true),
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Protocol(e.to_string()))?;

        let network = Network {
            token: token.as_str().to_string(),
            tls: config.tls.clone(),
        };
        // openraft's tasks are spawned by `Raft::new` and by its core: all on the Raft runtime.
        let runtime = RaftRuntime::start()?;
        let id = ident.id;
        let raft = runtime
            .run(async move { Raft::new(id, Arc::new(raft_config), network, log, sm).await })
            .await?
            .map_err(raft_err)?;

        if opened == Opened::Bootstrapped {
            let members = BTreeMap::from([(ident.id, config.node.clone())]);
            raft.initialize(members).await.map_err(raft_err)?;
        }

        let store = Store {
            inner: Arc::new(Inner {
                id: ident.id,
                cluster_id: ident.cluster_id,
                token,
                tls: config.tls.clone(),
                node: config.node.clone(),
                raft,
                db,
                shared,
                snapshots,
                leases: LeaseClock::default(),
                quota_bytes: config.quota_bytes,
                peers: Mutex::new(BTreeMap::new()),
                background: Mutex::new(Vec::new()),
                leading: tokio::sync::watch::channel(None).0,
                _runtime: runtime,
            }),
        };
        store.spawn_lease_loop();
        store.spawn_leadership_watch();
        store.spawn_quota_loop();
        crate::compaction::spawn(&store, log_bytes, t.snapshot_log_bytes);
        Ok((store, opened))
    }

    /// Phase two of a join, once this manager's peer service is reachable: the leader adds it
    /// as a learner, waits for it to catch up, and promotes it to voter.
    pub async fn finish_join(&self, join: &[String]) -> Result<(), StoreError> {
        if self.is_member() {
            return Ok(());
        }
        request_join(
            join,
            &self.inner.token,
            self.inner.tls.as_ref(),
            self.inner.id,
            &self.inner.node,
            JOIN_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Whether the membership this replica knows includes it.
    pub fn is_member(&self) -> bool {
        let m = self
            .inner
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone();
        m.membership().get_node(&self.inner.id).is_some()
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

    pub(crate) fn snapshot_temp_path(&self) -> PathBuf {
        self.inner.snapshots.temp_path()
    }

    /// The peer gRPC service to mount on this manager's server.
    pub fn peer_service(&self) -> RaftServiceServer<PeerService> {
        RaftServiceServer::new(PeerService::new(self.clone()))
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
        match self.leader_call(LeaderRequest::Write(req)).await? {
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
        if !stale {
            self.wait_linearizable().await?;
        }
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
        self.wait_linearizable().await?;
        Ok(self.revision())
    }

    /// Waits until this replica has applied everything committed when the call began.
    async fn wait_linearizable(&self) -> Result<(), StoreError> {
        let raft = &self.inner.raft;
        if raft.is_leader() {
            match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(e)) => {
                    tracing::debug!(error = %e, "lost leadership during a read")
                }
                Err(e) => return Err(raft_err(e)),
            }
        }
        let index = match self.leader_call(LeaderRequest::ReadIndex).await? {
            LeaderResponse::ReadIndex(i) => i,
            other => return Err(unexpected(other)),
        };
        raft.wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|_| StoreError::Timeout(LEADER_WAIT.as_millis() as u64))?;
        Ok(())
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
        match self.leader_call(LeaderRequest::KeepAlive(id)).await? {
            LeaderResponse::KeptAlive { ttl_ms } => Ok(ttl_ms),
            other => Err(unexpected(other)),
        }
    }

    /// The cluster as the leader sees it (members, term, commit index), or as this manager sees
    /// it when there is no leader; the replica fields (applied, snapshot, purged, revision) are
    /// always this manager's own.
    pub async fn status(&self) -> Status {
        let local = self.local_status();
        match self
            .leader_call_within(LeaderRequest::Status, Duration::from_millis(1500))
            .await
        {
            Ok(LeaderResponse::Status(leader)) => Status {
                id: local.id,
                applied_index: local.applied_index,
                revision: local.revision,
                snapshot_index: local.snapshot_index,
                purged_index: local.purged_index,
                quota_bytes: local.quota_bytes,
                used_bytes: local.used_bytes,
                alarms: local.alarms,
                ..*leader
            },
            _ => local,
        }
    }

    /// This process's replica counters and this replica's sizes now, for metrics.
    pub fn stats(&self) -> crate::StoreStats {
        let mut s = crate::stats::read();
        let db = &self.inner.db;
        let prop = |cf: &str, name: &str| {
            db.cf_handle(cf)
                .and_then(|h| db.property_int_value_cf(h, name).ok().flatten())
                .unwrap_or(0)
        };
        s.keys = prop(crate::db::CF_KV, "rocksdb.estimate-num-keys");
        s.leases = prop(crate::db::CF_LEASE, "rocksdb.estimate-num-keys");
        s.db_bytes = crate::db::SM_CFS
            .iter()
            .chain(crate::db::RAFT_CFS.iter())
            .map(|cf| {
                prop(cf, "rocksdb.total-sst-files-size")
                    + prop(cf, "rocksdb.cur-size-all-mem-tables")
            })
            .sum();
        s
    }

    /// Removes a manager from the cluster. Its id is never handed out again.
    pub async fn remove_member(&self, id: NodeId) -> Result<Vec<NodeId>, StoreError> {
        match self.leader_call(LeaderRequest::Remove(id)).await? {
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
        match self
            .leader_call_within(LeaderRequest::Join { id, node }, timeout)
            .await?
        {
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

    fn local_status(&self) -> Status {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let leader_addr = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.grpc.clone())
            })
            .unwrap_or_default();
        let is_leader = m.state == ServerState::Leader;
        let voters: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
        let replication = m.replication.clone().unwrap_or_default();
        let heartbeat = m.heartbeat.clone().unwrap_or_default();
        let now = openraft::TokioInstant::now();
        let members = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let voter = voters.contains(id);
                let role = if Some(*id) == m.current_leader {
                    "leader"
                } else if !voter {
                    "learner"
                } else if m.current_leader.is_some() {
                    "follower"
                } else {
                    "unknown"
                };
                let (healthy, applied) = if *id == m.id {
                    (
                        m.running_state.is_ok(),
                        m.last_applied.map_or(0, |l| l.index),
                    )
                } else if is_leader {
                    let matched = replication
                        .get(id)
                        .cloned()
                        .flatten()
                        .map_or(0, |l| l.index);
                    let recent = heartbeat.get(id).cloned().flatten().is_some_and(|t| {
                        now.saturating_duration_since(*t) < Duration::from_secs(2)
                    });
                    (recent, matched)
                } else {
                    (false, 0)
                };
                MemberStatus {
                    id: *id,
                    node: node.clone(),
                    role: role.to_string(),
                    voter,
                    healthy,
                    applied_index: applied,
                }
            })
            .collect();
        let space = self.inner.shared.space();
        Status {
            quota_bytes: space.quota().unwrap_or(0),
            used_bytes: space.used,
            alarms: space.alarm.iter().map(|a| a.to_string()).collect(),
            cluster_id: self.inner.cluster_id.clone(),
            id: m.id,
            leader: m.current_leader,
            leader_addr,
            term: m.current_term,
            commit_index: m.cluster_committed.map_or(0, |l| l.index),
            applied_index: m.last_applied.map_or(0, |l| l.index),
            revision: self.revision(),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            purged_index: m.purged.map_or(0, |l| l.index),
            members,
        }
    }

    /// Runs a leader-only request here if this manager leads, else at the leader. Waits up to
    /// [`LEADER_WAIT`] for a leader; re-routes only when the request provably did not run.
    async fn leader_call(&self, req: LeaderRequest) -> Result<LeaderResponse, StoreError> {
        self.leader_call_within(req, FORWARD_TIMEOUT).await
    }

    async fn leader_call_within(
        &self,
        req: LeaderRequest,
        timeout: Duration,
    ) -> Result<LeaderResponse, StoreError> {
        let started = Instant::now();
        let deadline = started + LEADER_WAIT;
        loop {
            let leader = self.leader();
            let outcome = match leader {
                Some(l) if l == self.inner.id => self.handle_as_leader(req.clone()).await,
                Some(l) => self.forward(l, &req, timeout).await,
                None => Err(StoreError::NoLeader { waited_ms: 0 }),
            };
            match outcome {
                Err(StoreError::NotLeader { .. }) | Err(StoreError::NoLeader { .. })
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(StoreError::LeaderUnreachable { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(StoreError::NotLeader { .. })
                | Err(StoreError::NoLeader { .. })
                | Err(StoreError::LeaderUnreachable { .. }) => {
                    return Err(StoreError::NoLeader {
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                other => return other,
            }
        }
    }

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

    async fn forward(
        &self,
        leader: NodeId,
        req: &LeaderRequest,
        timeout: Duration,
    ) -> Result<LeaderResponse, StoreError> {
        let addr = {
            let m = self
                .inner
                .raft
                .metrics()
                .borrow_watched()
                .membership_config
                .clone();
            match m.membership().get_node(&leader) {
                Some(n) => n.grpc.clone(),
                None => return Err(StoreError::NoLeader { waited_ms: 0 }),
            }
        };
        let mut client = self.peer_client(&addr)?;
        let data = codec::encode(req)?;
        let call = client.forward(network::request(Blob { data }, self.token(), timeout));
        match call.await {
            Ok(resp) => {
                codec::decode::<Result<LeaderResponse, StoreError>>(&resp.into_inner().data)?
            }
            Err(status) if never_sent(&status) || !matches!(req, LeaderRequest::Write(_)) => {
                Err(StoreError::LeaderUnreachable {
                    leader: addr,
                    reason: status.message().to_string(),
                })
            }
            Err(status) => Err(StoreError::OutcomeUnknown {
                leader: addr,
                reason: status.message().to_string(),
            }),
        }
    }

    /// Serves a leader-only request on this manager, which must be the leader.
    pub(crate) async fn handle_as_leader(
        &self,
        req: LeaderRequest,
    ) -> Result<LeaderResponse, StoreError> {
        let raft = &self.inner.raft;
        let not_leader = || StoreError::NotLeader {
            id: self.inner.id,
            leader: None,
        };
        if !raft.is_leader() {
            return Err(not_leader());
        }
        match req {
            LeaderRequest::Write(r) => self.propose(r).await.map(LeaderResponse::Written),
            LeaderRequest::ReadIndex => match raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                Ok((read, _)) => Ok(LeaderResponse::ReadIndex(read.index())),
                Err(RaftError::APIError(_)) => Err(not_leader()),
                Err(e) => Err(raft_err(e)),
            },
            LeaderRequest::KeepAlive(id) => {
                let rec = self
                    .inner
                    .shared
                    .leases
                    .lock()
                    .expect("lease table")
                    .get(&id)
                    .cloned();
                match rec {
                    Some(rec) if self.inner.leases.keep_alive(&rec, Instant::now()) => {
                        Ok(LeaderResponse::KeptAlive { ttl_ms: rec.ttl_ms })
                    }
                    _ => Err(StoreError::LeaseNotFound(id)),
                }
            }
            LeaderRequest::Join { id: 0, .. } => {
                match self
                    .propose(Request::now(Command::AllocateMemberId))
                    .await?
                {
                    Response::MemberId { id } => Ok(LeaderResponse::Joined(id)),
                    other => Err(StoreError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            LeaderRequest::Join { id, node } => {
                raft.add_learner(id, node, true)
                    .await
                    .map_err(membership_err)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(membership_err)?;
                tracing::info!(id, "manager joined as voter");
                Ok(LeaderResponse::Joined(id))
            }
            LeaderRequest::Remove(id) => {
                let m = raft.metrics().borrow_watched().membership_config.clone();
                if m.membership().get_node(&id).is_none() {
                    return Err(StoreError::Membership(format!(
                        "manager {id} is not a member"
                    )));
                }
                let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(StoreError::Membership(
                            "cannot remove the last voter".into(),
                        ));
                    }
                    raft.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                    )
                    .await
                    .map_err(membership_err)?;
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(membership_err)?;
                }
                tracing::info!(id, "manager removed");
                let m = raft.metrics().borrow_watched().membership_config.clone();
                Ok(LeaderResponse::Removed(
                    m.membership().voter_ids().collect(),
                ))
            }
            LeaderRequest::Status => Ok(LeaderResponse::Status(Box::new(self.local_status()))),
        }
    }

    /// Appends `req` to the log on this manager, which must lead; the one place writes enter
    /// Raft. "Not leader" means the entry was never appended, so the caller may route it again.
    async fn propose(&self, req: Request) -> Result<Response, StoreError> {
        let stats = &crate::stats::COUNTERS;
        stats.proposals.fetch_add(1, AtomicOrdering::Relaxed);
        let res = self.inner.raft.client_write(req).await;
        if res.is_err() {
            stats.proposals_failed.fetch_add(1, AtomicOrdering::Relaxed);
        }
        match res {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(StoreError::NotLeader {
                    id: self.inner.id,
                    leader: None,
                })
            }
            Err(e) => Err(StoreError::OutcomeUnknown {
                leader: self.inner.node.grpc.clone(),
                reason: e.to_string(),
            }),
        }
    }

    /// Publishes this manager's leadership (`Some(term)` while leading) for `leadership()`.
    fn spawn_leadership_watch(&self) {
        let store = self.clone();
        let h = tokio::spawn(async move {
            let mut rx = store.inner.raft.metrics();
            let mut known_leader = None;
            loop {
                let (leading, leader) = {
                    let m = rx.borrow_watched();
                    (
                        (m.state == ServerState::Leader).then_some(m.current_term),
                        m.current_leader,
                    )
                };
                if leader != known_leader {
                    if known_leader.is_some() || leader.is_some() {
                        crate::stats::COUNTERS
                            .leader_changes
                            .fetch_add(1, AtomicOrdering::Relaxed);
                    }
                    known_leader = leader;
                }
                store.inner.leading.send_if_modified(|cur| {
                    let changed = *cur != leading;
                    *cur = leading;
                    changed
                });
                if rx.changed().await.is_err() {
                    store.inner.leading.send_replace(None);
                    return;
                }
            }
        });
        self.keep_background(h);
    }

    /// Proposes this manager's quota whenever the replicated record of it differs (at the first
    /// start, after a restart with another `--quota-bytes`, once a joining manager is a member).
    fn spawn_quota_loop(&self) {
        let store = self.clone();
        let h = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let want = store.inner.quota_bytes;
                let recorded = store
                    .inner
                    .shared
                    .space()
                    .quotas
                    .get(&store.inner.id)
                    .copied();
                if recorded == Some(want) || !store.is_member() || store.leader().is_none() {
                    continue;
                }
                let cmd = Command::SetQuota {
                    member: store.inner.id,
                    bytes: want,
                };
                match store.write(cmd).await {
                    Ok(_) => tracing::info!(quota = want, "storage quota recorded"),
                    Err(e) => tracing::debug!(error = %e, "recording the storage quota failed"),
                }
            }
        });
        self.keep_background(h);
    }

    /// The leader's lease loop: every 100 ms, revoke what expired (one log entry per round).
    fn spawn_lease_loop(&self) {
        let store = self.clone();
        let h = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (leader, term) = {
                    let m = store.inner.raft.metrics().borrow_watched().clone();
                    (m.state == ServerState::Leader, m.current_term)
                };
                if !leader {
                    store.inner.leases.step_down();
                    continue;
                }
                let table = store
                    .inner
                    .shared
                    .leases
                    .lock()
                    .expect("lease table")
                    .clone();
                let expired = store.inner.leases.tick(term, &table, Instant::now());
                if expired.is_empty() {
                    continue;
                }
                tracing::debug!(?expired, "revoking expired leases");
                if let Err(e) = store
                    .propose(Request::now(Command::LeaseRevoke { ids: expired }))
                    .await
                {
                    tracing::warn!(error = %e, "revoking expired leases failed");
                }
            }
        });
        self.keep_background(h);
    }
}

fn unexpected(r: LeaderResponse) -> StoreError {
    StoreError::Protocol(format!("unexpected answer from the leader: {r:?}"))
}

fn membership_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Membership(e.to_string())
}

/// True when the request provably never reached the peer (the connection was refused), so
/// sending it elsewhere cannot apply it twice.
fn never_sent(status: &tonic::Status) -> bool {
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

/// Asks the managers at `join` to admit this one: `id == 0` for a new id, else to be added.
async fn request_join(
    join: &[String],
    token: &JoinToken,
    tls: Option<&Credentials>,
    id: NodeId,
    node: &ManagerNode,
    timeout: Duration,
) -> Result<(NodeId, String), StoreError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no address given");
    loop {
        for addr in join {
            let ch = match network::connect(addr, tls) {
                Ok(c) => c,
                Err(e) => return Err(StoreError::Protocol(e)),
            };
            let req = JoinRequest {
                addr: node.grpc.clone(),
                http: node.http.clone(),
                docker_api: node.docker_api.clone(),
                id,
            };
            let call_timeout = if id == 0 {
                FORWARD_TIMEOUT
            } else {
                JOIN_TIMEOUT
            };
            match RaftServiceClient::new(ch)
                .join(network::request(req, token.as_str(), call_timeout))
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok((r.id, r.cluster_id));
                }
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    return Err(StoreError::Unauthenticated(format!(
                        "{addr} refused the join: {}",
                        s.message()
                    )))
                }
                Err(s) => last = format!("{addr}: {}", s.message()),
            }
        }
        if Instant::now() >= deadline {
            return Err(StoreError::LeaderUnreachable {
                leader: join.join(","),
                reason: format!(
                    "could not join within {} s; last error: {last}",
                    timeout.as_secs()
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
