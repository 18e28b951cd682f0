//! Errors of the client boundary: what can go wrong between the `shoal` CLI (or a test) and a
//! manager's gRPC API.

use std::time::Duration;

use tonic::Code;

/// A failed call to the managers. `Display` is the one line the CLI prints after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid manager address {addr:?}: {reason}")]
    BadAddress { addr: String, reason: String },

    #[error("no manager reachable at {hosts} (last error: {last})")]
    Unreachable { hosts: String, last: String },

    #[error("cannot connect to manager {addr}: {reason}")]
    Connect { addr: String, reason: String },

    /// The manager answered with an error status (or the connection to it failed mid-call).
    #[error("{}", describe(.code, .message, .addr, .transport, .write))]
    Status {
        code: Code,
        message: String,
        addr: String,
        /// The status was made on this side from a broken connection, not sent by the manager.
        transport: bool,
        write: bool,
    },

    #[error("{} to {addr} timed out after {after:?}{}", if *.write { "write" } else { "request" },
        if *.write { "; it may or may not have been applied" } else { "" })]
    Timeout {
        addr: String,
        after: Duration,
        write: bool,
    },

    #[error("watch from revision {revision} lost: no manager answered for {after:?} (last error: {last})")]
    WatchLost {
        revision: u64,
        after: Duration,
        last: String,
    },
}

fn describe(code: &Code, message: &str, addr: &str, transport: &bool, write: &bool) -> String {
    let mut line = if message.is_empty() {
        format!("{code} (from manager {addr})")
    } else if *transport {
        format!("connection to manager {addr} failed: {message}")
    } else {
        message.to_string()
    };
    if *transport && *write {
        line.push_str("; the write may or may not have been applied");
    }
    line
}

impl ClientError {
    pub(crate) fn from_status(addr: &str, status: tonic::Status, write: bool) -> Self {
        let transport = std::error::Error::source(&status).is_some();
        ClientError::Status {
            code: status.code(),
            message: status.message().to_string(),
            addr: addr.to_string(),
            transport,
            write,
        }
    }

    /// The gRPC code, if the manager (or the transport) produced one.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Status { code, .. } => Some(*code),
            ClientError::Timeout { .. } => Some(Code::DeadlineExceeded),
            ClientError::Unreachable { .. }
            | ClientError::Connect { .. }
            | ClientError::WatchLost { .. } => Some(Code::Unavailable),
            ClientError::BadAddress { .. } => None,
        }
    }

    /// Worth asking another manager: the failure says something about this manager or its
    /// connection, not about the request. Only reads are ever retried.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            ClientError::Status {
                code, transport, ..
            } => {
                *transport
                    || matches!(
                        code,
                        Code::Unavailable
                            | Code::Unknown
                            | Code::Internal
                            | Code::Cancelled
                            | Code::DeadlineExceeded
                    )
            }
            ClientError::Timeout { .. }
            | ClientError::Unreachable { .. }
            | ClientError::Connect { .. } => true,
            ClientError::BadAddress { .. } | ClientError::WatchLost { .. } => false,
        }
    }
}
