//! Errors of the CLI boundary: what a `shoal kv|cluster|manager` command reports on stderr.

use crate::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),

    #[error("key not found: {0}")]
    KeyNotFound(String),

    #[error("cas failed: {key} is at revision {revision}")]
    CasFailed { key: String, revision: u64 },

    #[error("reading the value from stdin: {0}")]
    Stdin(std::io::Error),

    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),

    #[error("unexpected answer from manager {addr}: {what}")]
    Protocol { addr: String, what: String },
}
