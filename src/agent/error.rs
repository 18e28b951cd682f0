//! Errors of the agent boundary: what stops `shoal agent` for good (a refused token, an unusable data
//! dir or configuration), each naming the manager, file or value it concerns. Everything transient (a
//! leader change, a stopped engine) is retried inside the agent and never surfaces here.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no manager to join: --join needs at least one address")]
    NoManagers,

    #[error("invalid manager address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },

    #[error("data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("node id file {path}: {source}")]
    NodeIdFile {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("node id file {path} holds {found:?}, not a node id (20 lowercase hex characters)")]
    BadNodeId { path: PathBuf, found: String },

    #[error("invalid --docker URL {url:?}: {reason}")]
    BadDockerUrl { url: String, reason: String },

    #[error("cannot listen on {addr} for metrics (--metrics-addr): {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    #[error("cannot listen on {addr} for the engine endpoint (--engine-listen): {source}")]
    EngineListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    /// PERMISSION_DENIED / UNAUTHENTICATED: the node's certificate is refused (removed node);
    /// ALREADY_EXISTS: its name is another node's.
    #[error("manager {addr} refused this agent: {message}")]
    Refused { addr: String, message: String },

    /// Joining the cluster (getting this node's certificate) failed for good.
    #[error("{0}")]
    Join(crate::security::SecurityError),
}
