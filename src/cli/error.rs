//! Errors of the CLI boundary: what a `shoal kv|cluster|manager|node|service` command reports on
//! stderr, one line each.

use crate::client::ClientError;
use crate::model::ModelError;
use crate::scheduler::ExprError;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),

    /// Credentials that cannot be read or made.
    #[error("{0}")]
    Tls(String),

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

    /// A command-line value that does not parse; `what` names the flag or argument.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },

    /// An Interlock label the proxies could not honour (`interlock.port=http`).
    #[error("invalid {0}")]
    ProxyLabel(String),

    /// A malformed port, restart policy or placement label.
    #[error(transparent)]
    Model(#[from] ModelError),

    /// A constraint or affinity that does not parse.
    #[error(transparent)]
    Expr(#[from] ExprError),

    #[error("{0}")]
    Usage(&'static str),

    #[error("no such {kind}: {name}")]
    NoSuch { kind: &'static str, name: String },

    #[error("ambiguous {kind} id prefix {prefix:?}: it matches {matches}")]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        matches: String,
    },

    #[error("service {0} already exists")]
    ServiceExists(String),

    /// A read-modify-write whose compare kept failing: nothing was written.
    #[error("{kind} {name} changed {attempts} times while being updated; nothing was written, try again")]
    Contended {
        kind: &'static str,
        name: String,
        attempts: u32,
    },

    #[error("unreadable object at {key}: {reason}")]
    BadObject { key: String, reason: String },
}

impl From<crate::objects::Unresolved> for CliError {
    fn from(e: crate::objects::Unresolved) -> Self {
        use crate::objects::Unresolved;
        match e {
            Unresolved::NoSuch { kind, query } => CliError::NoSuch { kind, name: query },
            Unresolved::Ambiguous {
                kind,
                prefix,
                matches,
            } => CliError::Ambiguous {
                kind,
                prefix,
                matches: matches.join(", "),
            },
        }
    }
}
