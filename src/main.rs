//! The `shoal` binary: parses the command line and hands over to the library (`manager::run`,
//! `agent::run`, `proxy::run`, `dev::run`, `cli::*`). Errors are printed as one `error: ...` line with exit
//! code 1; clap reports usage errors itself with exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand};
use shoal::cli::{
    ClusterCommand, GlobalArgs, KvCommand, NodeCommand, ProxyCommand, ServiceCommand,
};
use shoal::dev::DevArgs;
use shoal::manager::ManagerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A Raft-replicated, highly available control plane for Docker hosts"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a manager (one replica of the store), or `manager remove ID`.
    Manager(ManagerArgs),
    /// Run an agent: register this Docker host as a node and run the tasks assigned to it.
    Agent(AgentArgs),
    /// Run a proxy next to nginx or haproxy (apply the leader's config), or `proxy config|status`.
    Proxy(ProxyArgs),
    /// Start a local cluster of child processes; Ctrl-C stops it.
    Dev(DevArgs),
    /// Read, write and watch the replicated key-value store.
    Kv {
        #[command(subcommand)]
        command: KvCommand,
    },
    /// Inspect the cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List, inspect and drain the Docker hosts (nodes) of the cluster.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Create, list, scale and remove services.
    Service {
        #[command(subcommand)]
        command: ServiceCommand,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct ManagerArgs {
    #[command(subcommand)]
    action: Option<ManagerAction>,
    /// Where this manager keeps its replica (created if missing).
    #[arg(long, required = true)]
    data_dir: Option<PathBuf>,
    /// gRPC address to listen on (raft, client API, admin).
    #[arg(long, default_value = shoal::client::DEFAULT_GRPC)]
    listen: SocketAddr,
    /// Address the other managers and clients use to reach this one (default: --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// HTTP address (Consul-style KV, status, metrics, health).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// Docker Engine API address [default: 127.0.0.1:2375, if free].
    #[arg(long)]
    docker_api: Option<SocketAddr>,
    /// Managers of the cluster to join, comma-separated (without it: bootstrap, or restart).
    #[arg(long, value_delimiter = ',', requires = "token")]
    join: Vec<String>,
    /// The manager join token (printed at bootstrap; `shoal cluster token manager`).
    #[arg(long, requires = "join")]
    token: Option<String>,
    /// Restart this surviving manager as a one-member cluster with all its data.
    #[arg(long, conflicts_with = "join")]
    force_new_cluster: bool,
    /// Lifetime of node certificates, set for the cluster at bootstrap (renewed at 50-80%).
    #[arg(long, default_value = "90d", value_parser = shoal::cli::duration::parse)]
    cert_lifetime: std::time::Duration,
    /// Serve the Docker API over mutual TLS on a loopback address too (always beyond loopback).
    #[arg(long)]
    docker_tls: bool,
    /// Allow a plaintext Docker API on an address beyond loopback: anyone reaching it is root on
    /// every node. Warned at every start.
    #[arg(long)]
    insecure_docker_api: bool,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// Where this agent keeps its node id (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Managers to join, comma-separated; the agent finds the leader through any of them.
    #[arg(long, value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// The worker join token (printed at bootstrap; `shoal cluster token worker`); used once:
    /// the node's certificate is kept in DATA_DIR/tls.
    #[arg(long)]
    token: String,
    /// The node's name (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// A node label for placement constraints, `K=V`; repeatable.
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// The IP the node's published ports are bound to and reached on.
    #[arg(long, default_value = "127.0.0.1")]
    advertise_addr: std::net::IpAddr,
    /// Docker engine URL (default: the local socket).
    #[arg(long, value_name = "URL")]
    docker: Option<String>,
    /// Where to serve this host's Docker engine to the managers (mutual TLS), IP:PORT
    /// (default: the advertised IP, a free port).
    #[arg(long, value_name = "ADDR")]
    engine_listen: Option<std::net::SocketAddr>,
    /// Heartbeat period; the node is DOWN after 3 missed periods.
    #[arg(long, default_value = "500ms", value_parser = shoal::cli::duration::parse)]
    heartbeat: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(ArgGroup::new("reload").required(true).args(["pid_file", "container", "reload_cmd"])))]
struct ProxyArgs {
    #[command(subcommand)]
    action: Option<ProxyCommand>,
    /// Managers to follow, comma-separated; the watch fails over between them.
    #[arg(long, value_delimiter = ',', required = true)]
    join: Vec<String>,
    /// A join token (worker or manager) for this proxy's certificate.
    #[arg(long, required = true)]
    token: Option<String>,
    /// Which proxy runs next to this one.
    #[arg(long, required = true, value_parser = ["nginx", "haproxy"])]
    kind: Option<String>,
    /// The config file the proxy runs from; rewritten atomically (a temp file beside it).
    #[arg(long, required = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Reload by a signal to the pid in this file (nginx: SIGHUP; haproxy: SIGUSR2).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Reload by the same signal to this container through the local Docker engine.
    #[arg(long, value_name = "NAME")]
    container: Option<String>,
    /// Reload by running this command with `sh -c`.
    #[arg(long, value_name = "CMD")]
    reload_cmd: Option<String>,
    /// The name this proxy reports its status under (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Render with this template (minijinja) instead of the built-in one; read at every apply.
    #[arg(long, value_name = "PATH")]
    template: Option<PathBuf>,
    /// The port the proxy listens on for HTTP.
    #[arg(long, default_value_t = 80)]
    listen_port: u16,
    /// The port the proxy listens on for HTTPS (hosts with `interlock.ssl`).
    #[arg(long, default_value_t = 443)]
    https_port: u16,
    /// Where an unprivileged nginx keeps its pid, logs and temp files (absolute in the config).
    #[arg(long, value_name = "DIR")]
    run_dir: Option<PathBuf>,
}

/// `K=V`, as `--label` takes it.
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("invalid label {s:?}: expected K=V")),
    }
}

#[derive(Debug, Subcommand)]
enum ManagerAction {
    /// Remove a manager from the cluster (its id is never reused).
    Remove { id: u64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let global = cli.global;
    match cli.command {
        Command::Manager(ManagerArgs {
            action: Some(ManagerAction::Remove { id }),
            ..
        }) => shoal::cli::remove_manager(&global, id).await?,
        Command::Manager(args) => {
            shoal::manager::run(manager_config(args)?, shutdown_signal()).await?
        }
        Command::Agent(args) => shoal::agent::run(agent_config(args), shutdown_signal()).await?,
        Command::Proxy(args) => match args {
            ProxyArgs {
                action: Some(command),
                ..
            } => shoal::cli::run_proxy(&global, command).await?,
            args => shoal::proxy::run(proxy_config(args)?, shutdown_signal()).await?,
        },
        Command::Dev(args) => shoal::dev::run(args, shutdown_signal()).await?,
        Command::Kv { command } => shoal::cli::run_kv(&global, command).await?,
        Command::Cluster { command } => shoal::cli::run_cluster(&global, command).await?,
        Command::Node { command } => shoal::cli::run_node(&global, command).await?,
        Command::Service { command } => shoal::cli::run_service(&global, command).await?,
    }
    Ok(())
}

fn manager_config(args: ManagerArgs) -> anyhow::Result<ManagerConfig> {
    let data_dir = args
        .data_dir
        .ok_or_else(|| anyhow::anyhow!("--data-dir is required"))?;
    Ok(ManagerConfig {
        data_dir,
        listen: args.listen,
        advertise: args.advertise,
        http: args.http,
        docker_api: args.docker_api,
        join: shoal::client::parse_hosts(&args.join),
        token: args.token,
        force_new_cluster: args.force_new_cluster,
        cert_lifetime: args.cert_lifetime,
        docker_tls: args.docker_tls,
        insecure_docker_api: args.insecure_docker_api,
    })
}

fn agent_config(args: AgentArgs) -> shoal::agent::AgentConfig {
    let mut config = shoal::agent::AgentConfig::new(
        args.data_dir,
        shoal::client::parse_hosts(&args.join),
        args.token,
    );
    config.name = args.name;
    config.labels = args.labels.into_iter().collect();
    config.advertise_addr = args.advertise_addr;
    config.docker = args.docker;
    config.engine_listen = args
        .engine_listen
        .unwrap_or(std::net::SocketAddr::new(args.advertise_addr, 0));
    config.heartbeat = args.heartbeat;
    config
}

fn proxy_config(args: ProxyArgs) -> anyhow::Result<shoal::proxy::ProxyProcessConfig> {
    use shoal::proxy::ReloadMethod;
    let missing = |flag: &str| anyhow::anyhow!("{flag} is required");
    let reload = match (args.pid_file, args.container, args.reload_cmd) {
        (Some(path), _, _) => ReloadMethod::PidFile(path),
        (_, Some(name), _) => ReloadMethod::Container(name),
        (_, _, Some(command)) => ReloadMethod::Command(command),
        _ => return Err(missing("one of --pid-file, --container, --reload-cmd")),
    };
    let kind = args.kind.ok_or_else(|| missing("--kind"))?;
    let mut config = shoal::proxy::ProxyProcessConfig::new(
        shoal::client::parse_hosts(&args.join),
        args.token.ok_or_else(|| missing("--token"))?,
        kind.parse()?,
        args.config.ok_or_else(|| missing("--config"))?,
        reload,
    );
    config.name = args.name;
    config.template = args.template;
    config.listen_port = args.listen_port;
    config.https_port = args.https_port;
    config.run_dir = args.run_dir;
    Ok(config)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Logs go to stderr; RUST_LOG overrides the default level.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
