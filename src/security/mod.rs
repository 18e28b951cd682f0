//! The cluster's security, on top of `shoal-tls`: the CA's state in the store ([`state`]), the
//! CA service every manager serves ([`service`]), joining with a token ([`join`]), keeping
//! credentials fresh ([`keeper`]) and a manager's material on disk ([`local`]).
//!
//! Every gRPC connection is mutual TLS. A node's certificate is its identity: the subject names
//! the cluster, the role (manager, worker, proxy, client) and the holder; each service checks
//! the role ([`authorize`]).

pub mod join;
pub mod keeper;
pub mod local;
pub mod service;
pub mod state;

use shoal_tls::Credentials;
use shoal_tls::Role;

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

/// Roles that may use the client APIs (KV, cluster admin, the proxy's reads and reports).
pub const CLIENT_ROLES: &[Role] = &[Role::Manager, Role::Client, Role::Proxy];
/// Roles that may open an agent session.
pub const WORKER_ROLES: &[Role] = &[Role::Worker];
/// Roles that may ask the CA for tokens, client certificates and rotations.
pub const OPERATOR_ROLES: &[Role] = &[Role::Manager, Role::Client];

/// A tonic interceptor letting through only requests from one of `roles`.
pub fn interceptor(
    creds: Credentials,
    roles: &'static [Role],
) -> impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |req: tonic::Request<()>| {
        shoal_tls::net::authorize(&creds, req.extensions(), roles)?;
        Ok(req)
    }
}

/// The ALPN a gRPC connection negotiates.
pub const H2: &[&[u8]] = &[b"h2"];
