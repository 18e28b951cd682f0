//! Opening a replica: bootstrap a cluster, join one (asking its managers for an id, then to be
//! added as learner and voter) or restart from the data dir; the join client lives here too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::raft::JoinRequest;
use shoal_tls::Credentials;
use tokio::time::Instant;

use super::raft_err;
use super::Inner;
use super::Opened;
use super::Store;
use super::StoreConfig;
use super::FORWARD_TIMEOUT;
use super::LEADER_WAIT;
use crate::db;
use crate::error::StoreError;
use crate::identity;
use crate::identity::Identity;
use crate::identity::JoinToken;
use crate::lease::LeaseClock;
use crate::log_store::LogStore;
use crate::network;
use crate::network::Network;
use crate::runtime::RaftRuntime;
use crate::state_machine::StateMachine;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::Raft;

/// How long phase two of a join (catch-up as learner, promotion) may take.
pub(super) const JOIN_TIMEOUT: Duration = Duration::from_secs(120);

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
        store.spawn_background();
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
