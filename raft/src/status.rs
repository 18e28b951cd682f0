//! A manager's view of the cluster, as `shoal cluster status` shows it.

use serde::Deserialize;
use serde::Serialize;

use crate::types::ManagerNode;
use crate::types::NodeId;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub cluster_id: String,
    /// The manager that answered; the replica fields below are its own.
    pub id: NodeId,
    pub leader: Option<NodeId>,
    pub leader_addr: String,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub revision: u64,
    pub snapshot_index: u64,
    pub purged_index: u64,
    pub members: Vec<MemberStatus>,
    /// The storage quota in force (the smallest any manager set with `--quota-bytes`); 0: none
    /// yet.
    pub quota_bytes: u64,
    /// Bytes the store holds, as the quota counts them (the same on every replica).
    pub used_bytes: u64,
    /// Raised alarms, each `NAME ...`; today only `NOSPACE`, raised when a write was refused for
    /// want of space and cleared once deletes have freed as much as that write lacked.
    pub alarms: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub node: ManagerNode,
    /// "leader", "follower", "learner" or, seen from a manager without a leader, "unknown".
    pub role: String,
    pub voter: bool,
    /// The leader heard from it recently.
    pub healthy: bool,
    /// Highest log index known to be replicated to it.
    pub applied_index: u64,
}
