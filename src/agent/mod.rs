//! `shoal agent`: registers its Docker host as a node with the leader, keeps a session with it, runs
//! the tasks assigned to the node on the local engine and reports their states, and serves that engine
//! to the managers (`engine_proxy`) for the requests they forward to the node. It never decides what
//! should run (the leader's control loops do) and never stops its containers when it stops itself: a
//! restarted agent adopts them.

mod backoff;
mod container;
mod engine_proxy;
mod engine_watch;
mod error;
mod follow;
mod node_id;
mod plan;
mod session;
mod tasks;
mod throttle;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

pub use error::AgentError;

/// Everything `shoal agent` is started with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the agent keeps its node id (created if missing).
    pub data_dir: PathBuf,
    /// Managers' gRPC addresses; any of them leads the agent to the leader.
    pub join: Vec<String>,
    /// The cluster's join token.
    pub token: String,
    /// The node's name; None: the host name.
    pub name: Option<String>,
    /// The node's labels, matched by placement constraints.
    pub labels: BTreeMap<String, String>,
    /// The address the node's published ports are bound to and reached on.
    pub advertise_addr: IpAddr,
    /// Docker engine URL (`unix:///var/run/docker.sock`, `tcp://host:port`); None: the local socket.
    pub docker: Option<String>,
    /// Where the engine endpoint listens: the node's Docker engine served to the managers (join
    /// token required), registered with the node. The CLI's default: the advertised IP, port 0.
    pub engine_listen: SocketAddr,
    /// Heartbeat period; the leader declares the node DOWN after 3 missed periods.
    pub heartbeat: Duration,
    /// Where to serve `/metrics` over mutual TLS (`--metrics-addr`); None: not served.
    pub metrics_addr: Option<SocketAddr>,
}

impl AgentConfig {
    /// A config with the CLI's defaults: host name, no labels, 127.0.0.1, the local engine, its
    /// endpoint on 127.0.0.1 port 0, 500 ms.
    pub fn new(data_dir: impl Into<PathBuf>, join: Vec<String>, token: impl Into<String>) -> Self {
        AgentConfig {
            data_dir: data_dir.into(),
            join,
            token: token.into(),
            name: None,
            labels: BTreeMap::new(),
            advertise_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            docker: None,
            engine_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            heartbeat: Duration::from_millis(crate::model::DEFAULT_HEARTBEAT_MS),
            metrics_addr: None,
        }
    }
}

/// Runs the agent until `shutdown` resolves (then returns Ok, leaving every container running) or
/// until a manager refuses the token (then returns that error). A missing engine or leader is waited
/// for, never an error.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    if config.join.is_empty() {
        return Err(AgentError::NoManagers.into());
    }
    crate::host::private_dir(&config.data_dir).map_err(|source| AgentError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    let node_id = node_id::load_or_create(&config.data_dir)?;
    let name = config.name.clone().unwrap_or_else(crate::host::host_name);
    tracing::info!(node = %node_id, %name, addr = %config.advertise_addr, "starting agent");
    let sans = vec![config.advertise_addr.to_string()];
    let tls_dir = config.data_dir.join("tls");
    // Kept in DATA_DIR/tls from an earlier start, or a join as a worker named by the node id.
    let joined = crate::security::keeper::node_credentials(
        &config.join,
        &config.token,
        shoal_tls::Role::Worker,
        &node_id,
        &sans,
        Some(&tls_dir),
    );
    let creds = tokio::select! {
        creds = joined => creds.map_err(AgentError::Join)?,
        () = &mut shutdown => return Ok(()),
    };
    let endpoint = engine_proxy::bind(
        config.engine_listen,
        config.docker.as_deref(),
        Some(creds.clone()),
    )
    .await?;
    let bound = endpoint
        .local_addr()
        .map_err(|source| AgentError::EngineListen {
            addr: config.engine_listen,
            source,
        })?;
    let engine_addr = advertised(bound, config.advertise_addr);
    let metrics = match config.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AgentError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    tracing::info!(addr = %engine_addr, "engine endpoint listening");

    let (docker, engine) = tokio::select! {
        ready = engine_watch::wait_for_engine(config.docker.as_deref()) => ready,
        () = &mut shutdown => return Ok(()),
    };
    match docker.adopt(&node_id).await {
        Ok(found) if !found.is_empty() => tracing::info!(
            containers = found.len(),
            "found containers of this node; those still assigned keep running"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "listing this node's containers"),
    }

    let (engine_tx, engine_rx) = watch::channel(engine);
    let (assignments_tx, assignments_rx) = watch::channel(None);
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();
    let wake = Arc::new(Notify::new());

    let mut background = JoinSet::new();
    background.spawn(endpoint.run());
    for op in ["list", "start", "stop", "remove"] {
        crate::metrics::families::AGENT_ENGINE_ERRORS.add(&[op], 0);
    }
    if let Some(listener) = metrics {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "metrics on https://{addr}/metrics");
        }
        let page = creds.clone();
        let render: crate::metrics::serve::Render = Arc::new(move || {
            let text = crate::metrics::agent::render(&page);
            Box::pin(async move { text })
        });
        let server = crate::metrics::MetricsServer {
            creds: creds.clone(),
            render,
        };
        background.spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, server, std::future::pending()).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }
    background.spawn(crate::security::keeper::run_node(
        config.join.clone(),
        creds.clone(),
        Some(tls_dir),
        sans,
    ));
    background.spawn(engine_watch::poll_images(docker.clone(), engine_tx));
    background.spawn(engine_watch::watch_events(
        docker.clone(),
        node_id.clone(),
        wake.clone(),
    ));
    let runner = tasks::TaskRunner::new(
        docker,
        node_id.clone(),
        config.advertise_addr,
        assignments_rx,
        reports_tx,
        wake,
    );
    background.spawn(runner.run());

    let session = session::Session::new(
        session::Identity {
            node_id,
            name,
            addr: config.advertise_addr.to_string(),
            engine_addr: engine_addr.to_string(),
            labels: config.labels,
            heartbeat: config.heartbeat,
        },
        &config.join,
        Some(creds),
        engine_rx,
        assignments_tx,
        reports_rx,
    )?;
    let result = tokio::select! {
        fatal = session.run() => Err(fatal.into()),
        () = &mut shutdown => {
            tracing::info!("agent stopping; its containers keep running");
            Ok(())
        }
    };
    background.shutdown().await;
    result
}

/// The engine endpoint's address as managers reach it: a wildcard bind is reached on the advertised IP.
fn advertised(bound: SocketAddr, advertise: IpAddr) -> SocketAddr {
    match bound.ip().is_unspecified() {
        true => SocketAddr::new(advertise, bound.port()),
        false => bound,
    }
}
