//! The store's error type: every way a request to the store, or opening it, can fail.

use crate::command::InvalidRequest;
use crate::types::NodeId;

#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    #[error("no leader elected within {waited_ms} ms; is a majority of managers running?")]
    NoLeader { waited_ms: u64 },
    #[error("manager {id} is not the leader")]
    NotLeader {
        id: NodeId,
        leader: Option<(NodeId, String)>,
    },
    #[error("write sent to leader {leader} but its outcome is unknown: {reason}")]
    OutcomeUnknown { leader: String, reason: String },
    #[error("cannot reach leader {leader}: {reason}")]
    LeaderUnreachable { leader: String, reason: String },
    #[error("revision {requested} is compacted; the oldest revision still held is {oldest}")]
    Compacted { requested: u64, oldest: u64 },
    #[error("lease {0} not found")]
    LeaseNotFound(u64),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("data dir {path}: {reason}")]
    DataDir { path: String, reason: String },
    #[error("data dir {path} belongs to cluster {found}, not {expected}")]
    WrongCluster {
        path: String,
        found: String,
        expected: String,
    },
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("timed out after {0} ms")]
    Timeout(u64),
    #[error("the store has stopped: {0}")]
    Stopped(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A write that adds data, refused because the store is at its quota (the NOSPACE alarm).
    #[error("{}", crate::command::no_space_message(.quota, .used))]
    NoSpace { quota: u64, used: u64 },
}

impl From<StoreError> for tonic::Status {
    fn from(e: StoreError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            StoreError::Invalid(_) => Status::invalid_argument(msg),
            StoreError::NoLeader { .. }
            | StoreError::NotLeader { .. }
            | StoreError::OutcomeUnknown { .. }
            | StoreError::LeaderUnreachable { .. }
            | StoreError::Stopped(_) => Status::unavailable(msg),
            StoreError::Compacted { .. } => Status::out_of_range(msg),
            StoreError::LeaseNotFound(_) => Status::not_found(msg),
            StoreError::Membership(_) => Status::failed_precondition(msg),
            StoreError::Unauthenticated(_) => Status::unauthenticated(msg),
            StoreError::WrongCluster { .. } => Status::permission_denied(msg),
            StoreError::Timeout(_) => Status::deadline_exceeded(msg),
            StoreError::NoSpace { .. } => Status::resource_exhausted(msg),
            StoreError::DataDir { .. } | StoreError::Storage(_) | StoreError::Protocol(_) => {
                Status::internal(msg)
            }
        }
    }
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<crate::codec::CodecError> for StoreError {
    fn from(e: crate::codec::CodecError) -> Self {
        StoreError::Protocol(e.to_string())
    }
}
