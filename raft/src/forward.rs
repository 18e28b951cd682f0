//! Leader-only requests and their answers, as a follower forwards them over the peer service.

use serde::Deserialize;
use serde::Serialize;

use crate::command::Request;
use crate::command::Response;
use crate::status::Status;
use crate::types::ManagerNode;
use crate::types::NodeId;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderRequest {
    Write(Request),
    /// The log index a linearizable read must wait for.
    ReadIndex,
    KeepAlive(u64),
    /// `id == 0` asks for a fresh id; otherwise add that manager (learner, then voter).
    Join {
        id: NodeId,
        node: ManagerNode,
    },
    Remove(NodeId),
    Status,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum LeaderResponse {
    Written(Response),
    ReadIndex(u64),
    KeptAlive { ttl_ms: u64 },
    Joined(NodeId),
    Removed(Vec<NodeId>),
    Status(Box<Status>),
}
