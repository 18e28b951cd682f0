//! The openraft type configuration: what a log entry carries, what apply returns, what a member is.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::command::Request;
use crate::command::Response;

/// A manager's id: assigned once by the cluster and never reused.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Type configuration of shoal's Raft group.
    pub TypeConfig:
        D = Request,
        R = Response,
        Node = ManagerNode,
);

/// How to reach a manager: its gRPC address, plus the HTTP and Docker API addresses it serves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagerNode {
    pub grpc: String,
    #[serde(default)]
    pub http: String,
    #[serde(default)]
    pub docker_api: String,
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.grpc)
    }
}

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub(crate) type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::alias::VoteOf<TypeConfig>;
pub(crate) type Entry = openraft::alias::EntryOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
