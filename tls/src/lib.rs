//! shoal's security layer, shared by managers, agents, proxies and the CLI: the cluster's own
//! certificate authority ([`pki`]), the live credentials every process presents and checks
//! ([`creds`]), mutual TLS for tonic and hyper ([`net`]), join tokens with roles ([`token`]) and
//! the key that seals secrets before they enter the Raft log ([`seal`]).
//!
//! Who a peer is comes only from its certificate: the subject carries the cluster id (O), the
//! role (OU) and the name (CN). Every server checks the chain against the cluster's roots, the
//! cluster id and the revocation set at the handshake; each service then checks the role.

pub mod creds;
pub mod net;
pub mod pki;
pub mod seal;
pub mod token;

use std::fmt;
use std::str::FromStr;

pub use creds::Credentials;
pub use net::PeerInfo;
pub use pki::PeerIdentity;

/// What a certificate lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A manager: Raft peer, CA, every API.
    Manager,
    /// An agent (a Docker host): the dispatcher only.
    Worker,
    /// A `shoal proxy`: reads the proxy config, reports its status.
    Proxy,
    /// An operator's CLI or a Docker API client: the client APIs, never Raft.
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
            Role::Proxy => "proxy",
            Role::Client => "client",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            "proxy" => Ok(Role::Proxy),
            "client" => Ok(Role::Client),
            other => Err(TlsError::BadInput(format!(
                "unknown role {other:?} (manager, worker, proxy or client)"
            ))),
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}")]
    BadInput(String),
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("sealed secret cannot be opened: {0}")]
    Seal(String),
}

impl TlsError {
    pub(crate) fn file(path: &std::path::Path, e: impl fmt::Display) -> Self {
        TlsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// rustls' process-wide crypto provider: ring, installed once.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}
