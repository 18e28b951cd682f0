//! What the reverse proxies serve, as the leader computes it from RUNNING tasks with Interlock
//! labels: one `ProxyHost` per `hostname.domain` with its upstream servers and options. The
//! leader stores it at `/shoal/proxy/config` with the nginx and haproxy configs rendered from it;
//! each `shoal proxy` reports what it applied at `/shoal/proxy/status/<name>`.

use serde::{Deserialize, Serialize};

/// How requests are spread over a host's upstream servers (`interlock.balance_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConn,
    /// By client address (`interlock.ip_hash=true`, or the `ip_hash`/`source` algorithm).
    IpHash,
}

/// One upstream server: a RUNNING task's published port on its node's address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Upstream {
    /// `ip:port`.
    pub addr: String,
    pub task_id: String,
    pub node: String,
}

/// One virtual host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProxyHost {
    /// `hostname.domain` (or `hostname` alone without a domain): the upstream's name too.
    pub name: String,
    /// More server names (`interlock.alias_domain`: `hostname.ALIAS`).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub upstreams: Vec<Upstream>,
    #[serde(default)]
    pub balance: Balance,
    #[serde(default)]
    pub ssl: bool,
    /// Plain HTTP redirects to HTTPS.
    #[serde(default)]
    pub ssl_only: bool,
    #[serde(default)]
    pub ssl_cert: String,
    #[serde(default)]
    pub ssl_cert_key: String,
    /// Paths proxied with the WebSocket upgrade headers.
    #[serde(default)]
    pub websocket_endpoints: Vec<String>,
    /// Serve the host under this path only (`/app`).
    #[serde(default)]
    pub context_root: Option<String>,
    /// Strip the context root before proxying.
    #[serde(default)]
    pub context_root_rewrite: bool,
    /// haproxy `option` lines (`interlock.backend_option`).
    #[serde(default)]
    pub backend_options: Vec<String>,
    /// An HTTP path checked on each server (haproxy `option httpchk`; nginx marks failing
    /// servers down passively).
    #[serde(default)]
    pub health_check: Option<String>,
    /// Milliseconds between checks.
    #[serde(default)]
    pub health_check_interval_ms: Option<u64>,
}

/// Everything the proxies serve, sorted by host name (so equal inputs give equal configs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProxyModel {
    pub hosts: Vec<ProxyHost>,
    /// Labels that could not be honoured, one clear line each (the service is left out).
    #[serde(default)]
    pub errors: Vec<String>,
}

/// The record at `/shoal/proxy/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyConfig {
    /// Increases by one with every change of the model.
    pub generation: u64,
    pub model: ProxyModel,
    /// Rendered with the default options (port 80, standard paths).
    pub nginx: String,
    pub haproxy: String,
}

/// The record a proxy keeps at `/shoal/proxy/status/<name>` (on a lease: it goes with the proxy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub name: String,
    pub kind: String,
    /// Generation of the config now live.
    pub applied_generation: u64,
    /// The store revision of that config record.
    pub applied_revision: u64,
    /// The last config that failed to validate or reload, and why (None when the latest applied).
    #[serde(default)]
    pub error: Option<String>,
    pub updated_ms: u64,
    /// Reloads made, and configs that failed to validate or reload, since the proxy started.
    #[serde(default)]
    pub reloads: u64,
    #[serde(default)]
    pub failures: u64,
    /// When the live config was made live (ms since the epoch; the proxy's start until then).
    #[serde(default)]
    pub applied_ms: u64,
}
