//! Status and metrics of this manager's replica: the cluster as the leader sees it, with this
//! replica's own fields, and the sizes `/metrics` reports.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::type_config::async_runtime::Instant as _;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;

use super::route::leader_call;
use super::Store;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::status::MemberStatus;
use crate::status::Status;
use crate::types::NodeId;

/// How long the leader may take to answer a forwarded status request.
const LEADER_STATUS_WAIT: Duration = Duration::from_millis(1500);

impl Store {
    /// The cluster as the leader sees it (members, term, commit index), or as this manager sees
    /// it when there is no leader; the replica fields (applied, snapshot, purged, revision) are
    /// always this manager's own.
    pub async fn status(&self) -> Status {
        let local = self.local_status();
        match leader_call(self, LeaderRequest::Status, LEADER_STATUS_WAIT).await {
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

    pub(super) fn local_status(&self) -> Status {
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
}
