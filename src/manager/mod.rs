//! The `shoal manager` process: one replica of the store plus the gRPC surfaces every manager
//! serves (peer Raft transport, client KV API, cluster admin).

mod assignments;
mod cluster_service;
pub mod control;
mod convert;
pub mod dispatcher;
mod kv_service;
pub mod scheduler;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use shoal_proto::v1::cluster_server::ClusterServer;
use shoal_proto::v1::dispatcher_server::DispatcherServer;
use shoal_proto::v1::kv_server::KvServer;
use shoal_raft::ManagerNode;
use shoal_raft::Opened;
use shoal_raft::RaftTuning;
use shoal_raft::Store;
use shoal_raft::StoreConfig;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use self::cluster_service::ClusterService;
use self::control::ControlConfig;
use self::dispatcher::DispatcherService;
use self::kv_service::KvService;

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
    pub token: Option<String>,
    /// Restart a surviving manager as a one-member cluster keeping all its data.
    pub force_new_cluster: bool,
}

/// Where the Docker API listens without `--docker-api`.
pub const DEFAULT_DOCKER_API: &str = "127.0.0.1:2375";

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
    let (store, opened) = Store::open(StoreConfig {
        data_dir: config.data_dir.clone(),
        node,
        join: config.join.clone(),
        token: config.token.clone(),
        force_new_cluster: config.force_new_cluster,
        tuning: RaftTuning::default(),
    })
    .await?;

    // The leader's control loops, and the dispatcher that answers agents while they run.
    let (leading_tx, leading) = tokio::sync::watch::channel(None);
    let control = tokio::spawn(control::run(
        store.clone(),
        ControlConfig::default(),
        leading_tx,
    ));

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // Small request/response RPCs: without TCP_NODELAY, Nagle and delayed ACKs add ~40 ms.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tonic::transport::Server::builder()
        .add_service(store.peer_service())
        .add_service(KvServer::new(KvService::new(store.clone())))
        .add_service(ClusterServer::new(ClusterService::new(store.clone())))
        .add_service(DispatcherServer::new(DispatcherService::new(
            store.clone(),
            leading,
        )))
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
    let mut server = tokio::spawn(server);
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = http.map(|l| {
        let serve = crate::api::http::serve(l, store.clone(), async move {
            let _ = http_stopped.await;
        });
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "HTTP API server failed");
            }
        })
    });

    let (docker_stop, docker_stopped) = tokio::sync::oneshot::channel::<()>();
    let docker_api = docker_api.map(|l| {
        let serve = crate::api::docker::serve(l, store.clone(), async move {
            let _ = docker_stopped.await;
        });
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
        Opened::Bootstrapped => println!("join token: {}", store.token()),
        Opened::ForcedNewCluster => {
            tracing::warn!("running as a new one-member cluster; add managers with --join")
        }
        _ => {}
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
    let _ = stop_tx.send(());
    let _ = http_stop.send(());
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
