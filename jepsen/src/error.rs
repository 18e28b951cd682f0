//! Errors of the harness boundary: what can stop a run before its histories are checked.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot run: {0}")]
    Preflight(String),

    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },

    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("interrupted: network namespaces, rules and managers removed")]
    Interrupted,

    #[error("cluster: {0}")]
    Cluster(String),

    #[error("invalid option: {0}")]
    Usage(String),
}

impl HarnessError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what,
            path: path.into(),
            source,
        }
    }
}
