//! Graceful leadership hand-over: a leader that is asked to stop first makes its most
//! up-to-date voter the leader (openraft's `transfer_leader`), so a planned restart costs the
//! cluster one short election instead of a lease and an election timeout.

use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use tokio::time::Instant;

use crate::store::Store;
use crate::types::NodeId;

impl Store {
    /// If this manager leads, hands leadership to the voter whose log matches the furthest and
    /// waits up to `within` for another manager to take over. Returns the new leader, or None
    /// when this manager did not lead, had no other voter, or nobody took over in time.
    pub async fn hand_over(&self, within: Duration) -> Option<NodeId> {
        let raft = self.raft();
        let me = self.id();
        let target = {
            let m = raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                return None;
            }
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            let matched = m.replication.unwrap_or_default();
            voters
                .into_iter()
                .filter(|id| *id != me)
                .max_by_key(|id| (matched.get(id).cloned().flatten(), std::cmp::Reverse(*id)))?
        };
        let started = Instant::now();
        if let Err(e) = raft.trigger().transfer_leader(target).await {
            tracing::warn!(error = %e, "cannot hand leadership over");
            return None;
        }
        let mut metrics = raft.metrics();
        let deadline = started + within;
        loop {
            let leader = metrics.borrow_watched().current_leader;
            if leader.is_some_and(|l| l != me) {
                tracing::info!(
                    to = leader,
                    ms = started.elapsed().as_millis() as u64,
                    "handed leadership over"
                );
                return leader;
            }
            match tokio::time::timeout_at(deadline, metrics.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    tracing::warn!(to = target, "leadership was not taken over in time");
                    return None;
                }
            }
        }
    }
}
