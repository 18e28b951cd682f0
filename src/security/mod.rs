//! The cluster's security, on top of `shoal-tls`: the CA's state in the store ([`state`]), the
//! CA service every manager serves ([`service`]), operators' certificates by name
//! ([`clients`]), joining with a token ([`join`]), keeping credentials fresh ([`keeper`]) and a
//! manager's material on disk ([`local`]).
//!
//! Every gRPC connection is mutual TLS. A node's certificate is its identity: the subject names
//! the cluster, the role (manager, worker, proxy, client) and the holder; each service checks
//! the role and scope of each method ([`policy`], [`admit`]).

pub mod clients;
pub mod join;
pub mod keeper;
pub mod local;
pub mod policy;
pub mod service;
pub mod state;

use std::sync::Arc;

use shoal_tls::Credentials;
use shoal_tls::PeerIdentity;

/// Everything that can go wrong in this module, for callers to report.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{0}")]
    Tls(#[from] shoal_tls::TlsError),
    #[error("store: {0}")]
    Store(#[from] shoal_raft::StoreError),
    #[error("{0}")]
    BadInput(String),
    #[error("join refused: {0}")]
    Refused(String),
    #[error("cannot reach a manager: {0}")]
    Unreachable(String),
    #[error("the cluster's CA state is damaged: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Conflict(String),
}

impl From<SecurityError> for tonic::Status {
    fn from(e: SecurityError) -> tonic::Status {
        match e {
            SecurityError::Store(s) => s.into(),
            SecurityError::BadInput(_) => tonic::Status::invalid_argument(e.to_string()),
            SecurityError::Refused(_) => tonic::Status::permission_denied(e.to_string()),
            SecurityError::Conflict(_) => tonic::Status::failed_precondition(e.to_string()),
            SecurityError::Unreachable(_) => tonic::Status::unavailable(e.to_string()),
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// Who sent `req`, if their certificate's role may call `method` (see [`policy::Method::roles`])
/// and is not revoked. The method's scope (keys, node) is the handler's to check.
pub fn admit<T>(
    creds: &Credentials,
    req: &tonic::Request<T>,
    method: policy::Method,
) -> Result<Arc<PeerIdentity>, tonic::Status> {
    shoal_tls::net::authorize(creds, req.extensions(), method.roles())
}

/// The ALPN a gRPC connection negotiates.
pub const H2: &[&[u8]] = &[b"h2"];
