//! The store's background loops, each kept through `keep_background` and aborted at shutdown:
//! the published leadership, the recorded storage quota and the leader's lease expiry.

use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use super::Store;
use crate::command::Command;
use crate::command::Request;

impl Store {
    /// Starts every loop of a freshly opened store.
    pub(super) fn spawn_background(&self) {
        self.spawn_lease_loop();
        self.spawn_leadership_watch();
        self.spawn_quota_loop();
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
