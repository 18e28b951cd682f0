//! The `shoal manager` process: one replica of the store plus the gRPC surfaces every manager
//! serves (peer Raft transport, client KV API, cluster admin).

mod assignments;
mod cluster_service;
pub mod control;
mod convert;
pub mod dispatcher;
mod kv_service;
mod statuses;
mod typed;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use shoal_proto::v1::ca_server::CaServer;
use shoal_proto::v1::cluster_server::ClusterServer;
use shoal_proto::v1::dispatcher_server::DispatcherServer;
use shoal_proto::v1::kv_server::KvServer;
use shoal_raft::ManagerNode;
use shoal_raft::Opened;
use shoal_raft::RaftTuning;
use shoal_raft::Store;
use shoal_raft::StoreConfig;
use shoal_tls::Role;
use tokio::net::TcpListener;

use self::cluster_service::ClusterService;
use self::control::ControlConfig;
use self::dispatcher::DispatcherService;
use self::kv_service::KvService;
use crate::security;

/// How long a stopping leader waits for another manager to take over.
const HAND_OVER: Duration = Duration::from_secs(1);

/// Everything `shoal manager` is started with (the CLI contract's flags).
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    /// gRPC listen address (raft, client API, admin).
    pub listen: SocketAddr,
    /// Address other managers and clients use to reach this one; defaults to `listen`.
    pub advertise: Option<String>,
    /// HTTP address (health, status); None disables it.
    pub http: Option<SocketAddr>,
    /// Docker Engine API address; None disables it.
    pub docker_api: Option<SocketAddr>,
    /// Managers to join; empty bootstraps a new cluster (or restarts from the data dir).
    pub join: Vec<String>,
    /// The manager join token (`shoal cluster token manager`), to join.
    pub token: Option<String>,
    /// Restart a surviving manager as a one-member cluster keeping all its data.
    pub force_new_cluster: bool,
    /// Node certificate lifetime, set for the whole cluster at bootstrap.
    pub cert_lifetime: Duration,
    /// Serve the Docker API over mutual TLS even on a loopback address.
    pub docker_tls: bool,
    /// Allow a plaintext Docker API on an address beyond loopback (warned at every start).
    pub insecure_docker_api: bool,
    /// What containers created through the Docker API may do to their node.
    pub docker_policy: crate::api::docker::DockerPolicy,
    /// Serve the HTTP API over mutual TLS even on a loopback address.
    pub http_tls: bool,
    /// Allow a plaintext HTTP API on an address beyond loopback (warned at every start).
    pub insecure_http: bool,
    /// What an HTTP API request without an ACL token may do (`--http-acl-default-policy`).
    pub http_acl_default: crate::model::Access,
    /// This manager's storage quota in bytes (`--quota-bytes`); the smallest of all managers'
    /// governs.
    pub quota_bytes: u64,
    /// Connection limit and idle timeout of each HTTP surface (Docker API, HTTP API).
    pub api_limits: crate::api::ConnLimits,
    /// Where to serve `/metrics` over mutual TLS (`--metrics-addr`); None: not served there.
    pub metrics_addr: Option<SocketAddr>,
    /// Where to keep the current worker and manager join tokens besides `DATA_DIR/tokens/`
    /// (`--write-worker-token`, `--write-manager-token`): files a deployment hands to the
    /// processes that need one, and nothing else of the data dir.
    pub token_outputs: Vec<(shoal_tls::Role, PathBuf)>,
}

/// Where the Docker API listens without `--docker-api`.
pub const DEFAULT_DOCKER_API: &str = "127.0.0.1:2375";

/// Prints the join tokens of a new cluster once its CA is in the store (the keeper writes them
/// to `DATA_DIR/tokens/` within a second or two of the first election).
async fn print_tokens(data_dir: &std::path::Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let read = |role| std::fs::read_to_string(security::local::token_file(data_dir, role));
        if let (Ok(worker), Ok(manager)) = (read(Role::Worker), read(Role::Manager)) {
            println!("join token (worker): {}", worker.trim());
            println!("join token (manager): {}", manager.trim());
            return;
        }
        if tokio::time::Instant::now() > deadline {
            tracing::warn!(
                "no join token yet: print them with `shoal cluster token worker|manager`"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Binds `--docker-api`. Without the flag the default address is tried, and a default already
/// taken (another manager on this host) is a warning, not an error.
async fn bind_docker_api(flag: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    if let Some(addr) = flag {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (--docker-api)"))?;
        return Ok(Some(l));
    }
    match TcpListener::bind(DEFAULT_DOCKER_API).await {
        Ok(l) => Ok(Some(l)),
        Err(e) => {
            tracing::warn!("Docker API not served: cannot listen on {DEFAULT_DOCKER_API} ({e}); give --docker-api ADDR");
            Ok(None)
        }
    }
}

/// Whether the Docker API at `addr` speaks TLS: always beyond loopback (refused plaintext unless
/// `--insecure-docker-api`), on loopback only with `--docker-tls`.
fn docker_api_tls(addr: SocketAddr, config: &ManagerConfig) -> bool {
    if config.docker_tls || (!addr.ip().is_loopback() && !config.insecure_docker_api) {
        return true;
    }
    if !addr.ip().is_loopback() {
        tracing::warn!("WARNING: the Docker API on {addr} accepts anyone who can reach it, without TLS (--insecure-docker-api): that is root on every node");
    }
    false
}

/// Whether the HTTP API at `addr` speaks TLS: as the Docker API, always beyond loopback
/// (plaintext only with `--insecure-http`), on loopback only with `--http-tls`.
fn http_api_tls(addr: SocketAddr, config: &ManagerConfig) -> bool {
    if config.http_tls || (!addr.ip().is_loopback() && !config.insecure_http) {
        return true;
    }
    if !addr.ip().is_loopback() {
        tracing::warn!("WARNING: the HTTP API on {addr} accepts anyone who can reach it, without TLS (--insecure-http): they can read and write every key, the cluster's records included");
    }
    false
}

/// Names and addresses a manager's certificate carries: Docker, HTTP and Prometheus clients
/// check them.
fn certificate_names(
    advertise: &str,
    local: SocketAddr,
    docker_api: Option<SocketAddr>,
    http: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
) -> Vec<String> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let host = match advertise.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_string(),
        None => advertise.to_string(),
    };
    sans.push(host);
    for addr in [Some(local), docker_api, http, metrics]
        .into_iter()
        .flatten()
    {
        if !addr.ip().is_unspecified() {
            sans.push(addr.ip().to_string());
        }
    }
    sans.sort();
    sans.dedup();
    sans
}

/// Runs a manager until `shutdown` resolves or a fatal error occurs.
pub async fn run(config: ManagerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Bind first: a taken port is reported before anything touches the data dir.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    let http = match config.http {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--http)"))?,
        ),
        None => None,
    };
    let docker_api = bind_docker_api(config.docker_api).await?;
    let metrics = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?,
        ),
        None => None,
    };
    let advertise = match &config.advertise {
        Some(a) => a.clone(),
        None if local.ip().is_unspecified() => {
            anyhow::bail!("--listen {local} is a wildcard address: give --advertise with an address other managers can reach")
        }
        None => local.to_string(),
    };
    let node = ManagerNode {
        grpc: advertise.clone(),
        http: match &http {
            Some(l) => l.local_addr()?.to_string(),
            None => String::new(),
        },
        docker_api: match &docker_api {
            Some(l) => l.local_addr()?.to_string(),
            None => String::new(),
        },
    };
    let http_tls = match &http {
        Some(l) => http_api_tls(l.local_addr()?, &config),
        None => false,
    };
    let docker_addr = docker_api.as_ref().map(|l| l.local_addr()).transpose()?;
    let docker_tls = match docker_addr {
        Some(addr) => docker_api_tls(addr, &config),
        None => false,
    };
    let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose()?;
    let sans = certificate_names(&advertise, local, docker_addr, http_addr, metrics_addr);
    crate::host::private_dir(&config.data_dir)
        .with_context(|| format!("cannot create {}", config.data_dir.display()))?;
    let material = security::local::open_manager(security::local::Start {
        data_dir: &config.data_dir,
        join: &config.join,
        token: config.token.as_deref(),
        sans: sans.clone(),
        lifetime: config.cert_lifetime,
    })
    .await
    .context("setting up this manager's certificate")?;
    let creds = material.creds.clone();
    // Kept by the state machine's apply; every reader of cluster objects reads it.
    let index = crate::objects::Index::new();
    let (store, opened) = Store::open(StoreConfig {
        data_dir: config.data_dir.clone(),
        node,
        join: config.join.clone(),
        token: material.raft_token.clone(),
        tls: Some(creds.clone()),
        force_new_cluster: config.force_new_cluster,
        tuning: RaftTuning::default(),
        observer: Some(index.clone()),
        quota_bytes: config.quota_bytes,
    })
    .await?;
    let objects = crate::objects::Objects::new(store.clone(), index);
    let keeper = tokio::spawn(
        security::keeper::ManagerKeeper {
            store: store.clone(),
            creds: creds.clone(),
            kek: material.kek.clone(),
            data_dir: config.data_dir.clone(),
            sans: sans.clone(),
            token_outputs: config.token_outputs.clone(),
        }
        .run(),
    );

    // The leader's control loops, and the dispatcher that answers agents while they run.
    let (leading_tx, leading) = tokio::sync::watch::channel(None);
    let control = tokio::spawn(control::run(
        objects.clone(),
        ControlConfig::default(),
        leading_tx,
    ));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Every connection is mutual TLS; who may call what is each service's check. (The accept
    // loop sets TCP_NODELAY: small RPCs would wait ~40 ms on Nagle and delayed ACKs.)
    let incoming =
        shoal_tls::net::incoming(listener, creds.server_config(None, security::H2), "gRPC");
    let server = tonic::transport::Server::builder()
        // Room for a whole Raft append in flight (h2's default is 64 KiB per connection, which
        // made every large append wait for window updates from a busy receiver).
        .initial_stream_window_size(shoal_raft::WINDOW_BYTES)
        .initial_connection_window_size(shoal_raft::WINDOW_BYTES * 2)
        .add_service(store.peer_service())
        // Each method checks its caller's role and scope (`security::policy`).
        .add_service(KvServer::new(KvService::new(store.clone(), creds.clone())))
        .add_service(ClusterServer::new(ClusterService::new(
            store.clone(),
            creds.clone(),
        )))
        .add_service(DispatcherServer::new(DispatcherService::new(
            objects.clone(),
            leading,
        )))
        .add_service(CaServer::new(security::service::CaService::new(
            store.clone(),
            creds.clone(),
            material.kek.clone(),
        )))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let conns = crate::api::ApiConns::default();
    let page = crate::metrics::manager::ManagerMetrics {
        store: store.clone(),
        objects: objects.clone(),
        conns: conns.clone(),
        creds: creds.clone(),
    };
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics = metrics.map(|l| {
        if let Ok(addr) = l.local_addr() {
            println!("metrics on https://{addr}/metrics");
        }
        let page = page.clone();
        let render: crate::metrics::serve::Render = std::sync::Arc::new(move || {
            let page = page.clone();
            Box::pin(async move { page.render().await })
        });
        let server = crate::metrics::MetricsServer {
            creds: creds.clone(),
            render,
        };
        let stopped = async move {
            let _ = metrics_stopped.await;
        };
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(l, server, stopped).await {
                tracing::error!(error = %e, "metrics server failed");
            }
        })
    });
    let http = http.map(|l| {
        let tls = http_tls.then(|| creds.clone());
        let stopped = async move {
            let _ = http_stopped.await;
        };
        let serve = crate::api::http::serve(
            l,
            store.clone(),
            tls,
            config.api_limits,
            page.clone(),
            config.http_acl_default,
            stopped,
        );
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP API server failed");
            }
        })
    });

    let (docker_stop, docker_stopped) = tokio::sync::oneshot::channel::<()>();
    let docker_api = docker_api.map(|l| {
        let tls = docker_tls.then(|| creds.clone());
        let policy = config.docker_policy.clone();
        tracing::info!("Docker API policy: {}", policy.describe());
        let stopped = async move {
            let _ = docker_stopped.await;
        };
        let serve = crate::api::docker::serve(
            l,
            objects.clone(),
            tls,
            policy,
            config.api_limits,
            conns.docker.clone(),
            stopped,
        );
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Docker API server failed");
            }
        })
    });

    if opened == Opened::Joining || (!config.join.is_empty() && !store.is_member()) {
        let joined = tokio::select! {
            r = store.finish_join(&config.join) => r,
            r = &mut server => {
                anyhow::bail!("gRPC server stopped while joining: {:?}", r);
            }
        };
        joined.context("joining the cluster")?;
    }

    match opened {
        Opened::Bootstrapped => print_tokens(&config.data_dir).await,
        Opened::ForcedNewCluster => {
            tracing::warn!("running as a new one-member cluster; add managers with --join")
        }
        _ => {}
    }
    if let Err(e) = security::state::record_manager(&store, &material.name, &sans).await {
        tracing::warn!("recording this manager's certificate name: {e}");
    }
    println!(
        "shoal manager {} of cluster {} serving on {advertise} ({:?})",
        store.id(),
        store.cluster_id(),
        opened
    );

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        e = store.fatal() => Err(anyhow::anyhow!("store failed, stopping: {e}")),
        r = &mut server => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(anyhow::anyhow!("gRPC server failed: {e}")),
            Err(e) => Err(anyhow::anyhow!("gRPC server task failed: {e}")),
        },
    };
    control.abort();
    keeper.abort();
    // A leader that is asked to stop hands over first, while its servers still answer.
    if result.is_ok() {
        store.hand_over(HAND_OVER).await;
    }
    let _ = stop_tx.send(());
    let _ = http_stop.send(());
    let _ = metrics_stop.send(());
    if let Some(m) = metrics {
        let _ = m.await;
    }
    if let Some(h) = http {
        let _ = h.await;
    }
    let _ = docker_stop.send(());
    if let Some(d) = docker_api {
        // Streams (`logs -f`, `events`) would hold a graceful shutdown forever.
        d.abort();
    }
    store.shutdown().await;
    result
}
