//! The `shoal` binary: parses the command line and hands over to the library (`manager::run`,
//! `agent::run`, `proxy::run`, `dev::run`, `cli::*`). Errors are printed as one `error: ...` line with exit
//! code 1; clap reports usage errors itself with exit code 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, CommandFactory, Parser, Subcommand};
use shoal::cli::{
    AclCommand, ClusterCommand, GlobalArgs, KvCommand, NodeCommand, ProxyCommand, ServiceCommand,
};
use shoal::dev::DevArgs;
use shoal::manager::ManagerConfig;

/// mimalloc, not glibc's malloc: with glibc, allocation and free were about a quarter of a
/// busy leader's CPU (bench/README.md, the scale section). The `system-allocator` feature keeps
/// glibc's, for heap profilers that hook malloc (`heaptrack`, bench/README.md "Memory").
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "shoal",
    version,
    about = "A Raft-replicated, highly available control plane for Docker hosts"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    /// A TOML file of flags for `manager`, `agent` and `proxy`, one section each (see
    /// deploy/shoal.toml); the command line and SHOAL_* variables win over it.
    #[arg(long = "config", env = shoal::config::CONFIG_ENV, value_name = "FILE")]
    #[allow(dead_code)] // applied to argv before clap parses (shoal::config::apply_file)
    config_file: Option<PathBuf>,
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
    /// ACL tokens of the Consul-compatible HTTP API.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(ArgGroup::new("token_source").args(["token", "token_file"])))]
struct ManagerArgs {
    #[command(subcommand)]
    action: Option<ManagerAction>,
    /// Where this manager keeps its replica (created if missing).
    #[arg(long, required = true, env = "SHOAL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// gRPC address to listen on (raft, client API, admin).
    #[arg(long, default_value = shoal::client::DEFAULT_GRPC, env = "SHOAL_LISTEN")]
    listen: SocketAddr,
    /// Address the other managers and clients use to reach this one (default: --listen).
    #[arg(long, env = "SHOAL_ADVERTISE")]
    advertise: Option<String>,
    /// HTTP address (Consul-style KV, status, metrics, health).
    #[arg(long, env = "SHOAL_HTTP")]
    http: Option<SocketAddr>,
    /// Docker Engine API address [default: 127.0.0.1:2375, if free].
    #[arg(long, env = "SHOAL_DOCKER_API")]
    docker_api: Option<SocketAddr>,
    /// Managers of the cluster to join, comma-separated (without it: bootstrap, or restart).
    #[arg(
        long,
        value_delimiter = ',',
        requires = "token_source",
        env = "SHOAL_JOIN"
    )]
    join: Vec<String>,
    /// The manager join token (printed at bootstrap; `shoal cluster token manager`).
    #[arg(long, requires = "join", env = "SHOAL_TOKEN")]
    token: Option<String>,
    /// Read the join token from this file, waiting up to 60s for it (a first manager's
    /// DATA_DIR/tokens/manager).
    #[arg(long, value_name = "PATH", requires = "join", env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Restart this surviving manager as a one-member cluster with all its data.
    #[arg(long, conflicts_with_all = ["join", "token", "token_file"])]
    force_new_cluster: bool,
    /// Storage quota: past it, writes that add data are refused (NOSPACE) while deletes go on.
    /// A size with an optional unit: 2GiB, 512MiB, 8GB; at least 1MiB. The smallest quota of all
    /// managers governs.
    #[arg(long, value_name = "SIZE", default_value = "2GiB", value_parser = shoal::cli::bytes::parse_quota, env = "SHOAL_QUOTA_BYTES")]
    quota_bytes: u64,
    /// Lifetime of node certificates, set for the cluster at bootstrap (renewed at 50-80%).
    #[arg(long, default_value = "90d", value_parser = shoal::duration::parse, env = "SHOAL_CERT_LIFETIME")]
    cert_lifetime: std::time::Duration,
    /// Serve the Docker API over mutual TLS on a loopback address too (always beyond loopback).
    #[arg(long, env = "SHOAL_DOCKER_TLS")]
    docker_tls: bool,
    /// Allow a plaintext Docker API on an address beyond loopback: anyone reaching it is root on
    /// every node. Warned at every start.
    #[arg(long, env = "SHOAL_INSECURE_DOCKER_API")]
    insecure_docker_api: bool,
    /// Loosen the Docker API's policy on container creates, comma-separated rules (each refused
    /// by default): privileged, host-namespaces, devices, cap-add, security-opt.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "RULE",
        env = "SHOAL_DOCKER_ALLOW"
    )]
    docker_allow: Vec<shoal::api::docker::DockerAllow>,
    /// Host paths under which containers created through the Docker API may bind-mount,
    /// comma-separated (default: none).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "PATH",
        env = "SHOAL_DOCKER_ALLOW_BIND"
    )]
    docker_allow_bind: Vec<String>,
    /// Serve the HTTP API over mutual TLS on a loopback address too (always beyond loopback).
    #[arg(long, env = "SHOAL_HTTP_TLS")]
    http_tls: bool,
    /// Allow a plaintext HTTP API on an address beyond loopback: anyone reaching it can read
    /// and write every key. Warned at every start.
    #[arg(long, env = "SHOAL_INSECURE_HTTP")]
    insecure_http: bool,
    /// What an HTTP API request without an ACL token may do with keys, sessions and
    /// transactions (Consul's acl.default_policy): allow (everything) or deny (nothing; tokens
    /// from `shoal acl token create`).
    #[arg(long, value_name = "POLICY", default_value = "allow", value_parser = ["allow", "deny"], env = "SHOAL_HTTP_ACL_DEFAULT_POLICY")]
    http_acl_default_policy: String,
    /// Connections each HTTP surface (Docker API, HTTP API) keeps open at once; one more is
    /// answered 503 and closed. TLS handshakes and attach/exec streams count.
    #[arg(long, value_name = "N", default_value_t = shoal::api::DEFAULT_MAX_CONNECTIONS, value_parser = parse_max_connections, env = "SHOAL_API_MAX_CONNECTIONS")]
    api_max_connections: usize,
    /// How long a connection to an HTTP surface may go without sending a request (or finishing
    /// its TLS handshake) before it is closed; a request in progress (a blocking query, an event
    /// or log stream) is never cut.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_idle_timeout, env = "SHOAL_API_IDLE_TIMEOUT")]
    api_idle_timeout: std::time::Duration,
    /// Serve Prometheus metrics at https://ADDR/metrics, mutual TLS: an operator's (`cluster
    /// client-cert`) or a manager's certificate required (default: not served).
    #[arg(long, value_name = "ADDR", env = "SHOAL_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Also keep the current worker join token in this file (0600, rewritten when rotated), for
    /// agents and proxies to read with --token-file without seeing this data dir.
    #[arg(long, value_name = "PATH", env = "SHOAL_WRITE_WORKER_TOKEN")]
    write_worker_token: Option<PathBuf>,
    /// Also keep the current manager join token in this file (0600), for joining managers.
    #[arg(long, value_name = "PATH", env = "SHOAL_WRITE_MANAGER_TOKEN")]
    write_manager_token: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("token_source").required(true).args(["token", "token_file"])))]
struct AgentArgs {
    /// Where this agent keeps its node id (created if missing).
    #[arg(long, env = "SHOAL_DATA_DIR")]
    data_dir: PathBuf,
    /// Managers to join, comma-separated; the agent finds the leader through any of them.
    #[arg(long, value_delimiter = ',', required = true, env = "SHOAL_JOIN")]
    join: Vec<String>,
    /// A join token (worker or manager; `shoal cluster token worker`); used once: the node's
    /// certificate is kept in DATA_DIR/tls.
    #[arg(long, env = "SHOAL_TOKEN")]
    token: Option<String>,
    /// Read the join token from this file, waiting up to 60s for it (a manager's
    /// DATA_DIR/tokens/worker).
    #[arg(long, value_name = "PATH", env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// The node's name (default: the host name).
    #[arg(long, env = "SHOAL_NAME")]
    name: Option<String>,
    /// A node label for placement constraints, `K=V`; repeatable (SHOAL_LABEL holds one).
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label, env = "SHOAL_LABEL")]
    labels: Vec<(String, String)>,
    /// The IP the node's published ports are bound to and reached on.
    #[arg(long, default_value = "127.0.0.1", env = "SHOAL_ADVERTISE_ADDR")]
    advertise_addr: std::net::IpAddr,
    /// Docker engine URL (default: the local socket).
    #[arg(long, value_name = "URL", env = "SHOAL_DOCKER")]
    docker: Option<String>,
    /// Where to serve this host's Docker engine to the managers (mutual TLS), IP:PORT
    /// (default: the advertised IP, a free port).
    #[arg(long, value_name = "ADDR", env = "SHOAL_ENGINE_LISTEN")]
    engine_listen: Option<std::net::SocketAddr>,
    /// Heartbeat period; the node is DOWN after 3 missed periods.
    #[arg(long, default_value = "500ms", value_parser = shoal::duration::parse, env = "SHOAL_HEARTBEAT")]
    heartbeat: std::time::Duration,
    /// Serve Prometheus metrics at https://ADDR/metrics, mutual TLS: an operator's (`cluster
    /// client-cert`) or a manager's certificate required (default: not served).
    #[arg(long, value_name = "ADDR", env = "SHOAL_METRICS_ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(group(ArgGroup::new("reload").required(true).args(["pid_file", "container", "reload_cmd"])))]
#[command(group(ArgGroup::new("token_source").required(true).args(["token", "token_file"])))]
struct ProxyArgs {
    #[command(subcommand)]
    action: Option<ProxyCommand>,
    /// Managers to follow, comma-separated; the watch fails over between them.
    #[arg(long, value_delimiter = ',', required = true, env = "SHOAL_JOIN")]
    join: Vec<String>,
    /// A join token (worker or manager) for this proxy's certificate.
    #[arg(long, env = "SHOAL_TOKEN")]
    token: Option<String>,
    /// Read the join token from this file, waiting up to 60s for it (a manager's
    /// DATA_DIR/tokens/worker).
    #[arg(long, value_name = "PATH", env = "SHOAL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Which proxy runs next to this one.
    #[arg(long, required = true, value_parser = ["nginx", "haproxy"], env = "SHOAL_KIND")]
    kind: Option<String>,
    /// The config file the proxy runs from; rewritten atomically (a temp file beside it).
    #[arg(long, required = true, value_name = "PATH", env = "SHOAL_PROXY_CONFIG")]
    config: Option<PathBuf>,
    /// Reload by a signal to the pid in this file (nginx: SIGHUP; haproxy: SIGUSR2).
    #[arg(long, value_name = "PATH", env = "SHOAL_PID_FILE")]
    pid_file: Option<PathBuf>,
    /// Reload by the same signal to this container through the local Docker engine.
    #[arg(long, value_name = "NAME", env = "SHOAL_CONTAINER")]
    container: Option<String>,
    /// Reload by running this command with `sh -c`.
    #[arg(long, value_name = "CMD", env = "SHOAL_RELOAD_CMD")]
    reload_cmd: Option<String>,
    /// The name this proxy reports its status under (default: the host name).
    #[arg(long, env = "SHOAL_NAME")]
    name: Option<String>,
    /// Render with this template (minijinja) instead of the built-in one; read at every apply.
    #[arg(long, value_name = "PATH", env = "SHOAL_TEMPLATE")]
    template: Option<PathBuf>,
    /// The port the proxy listens on for HTTP.
    #[arg(long, default_value_t = 80, env = "SHOAL_LISTEN_PORT")]
    listen_port: u16,
    /// The port the proxy listens on for HTTPS (hosts with `interlock.ssl`).
    #[arg(long, default_value_t = 443, env = "SHOAL_HTTPS_PORT")]
    https_port: u16,
    /// Where an unprivileged nginx keeps its pid, logs and temp files (absolute in the config).
    #[arg(long, value_name = "DIR", env = "SHOAL_RUN_DIR")]
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
    let args = std::env::args_os().collect();
    let args = match shoal::config::apply_file(&Cli::command(), args, &shoal::config::process_env) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let cli = Cli::parse_from(args);
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
        Command::Manager(mut args) => {
            shoal::host::private_files();
            let token = join_token(&mut args.token, &args.token_file).await?;
            shoal::manager::run(manager_config(args, token)?, shutdown_signal()).await?
        }
        Command::Agent(mut args) => {
            shoal::host::private_files();
            let token = join_token(&mut args.token, &args.token_file).await?;
            let token = token.ok_or_else(|| anyhow::anyhow!("--token is required"))?;
            shoal::agent::run(agent_config(args, token), shutdown_signal()).await?
        }
        Command::Proxy(args) => match args {
            ProxyArgs {
                action: Some(command),
                ..
            } => shoal::cli::run_proxy(&global, command).await?,
            mut args => {
                let token = join_token(&mut args.token, &args.token_file).await?;
                shoal::proxy::run(proxy_config(args, token)?, shutdown_signal()).await?
            }
        },
        Command::Dev(args) => shoal::dev::run(args, shutdown_signal()).await?,
        Command::Kv { command } => shoal::cli::run_kv(&global, command).await?,
        Command::Cluster { command } => shoal::cli::run_cluster(&global, command).await?,
        Command::Node { command } => shoal::cli::run_node(&global, command).await?,
        Command::Acl { command } => shoal::cli::run_acl(&global, command).await?,
        Command::Service { command } => shoal::cli::run_service(&global, command).await?,
    }
    Ok(())
}

/// `--token` or the content of `--token-file`.
async fn join_token(
    token: &mut Option<String>,
    token_file: &Option<PathBuf>,
) -> anyhow::Result<Option<String>> {
    Ok(shoal::config::join_token(token.take(), token_file.as_deref()).await?)
}

fn manager_config(args: ManagerArgs, token: Option<String>) -> anyhow::Result<ManagerConfig> {
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
        token,
        force_new_cluster: args.force_new_cluster,
        cert_lifetime: args.cert_lifetime,
        docker_tls: args.docker_tls,
        insecure_docker_api: args.insecure_docker_api,
        docker_policy: shoal::api::docker::DockerPolicy::new(
            args.docker_allow,
            &args.docker_allow_bind,
        )
        .map_err(anyhow::Error::msg)?,
        http_tls: args.http_tls,
        insecure_http: args.insecure_http,
        http_acl_default: if args.http_acl_default_policy == "deny" {
            shoal::model::Access::Deny
        } else {
            shoal::model::Access::Write
        },
        quota_bytes: args.quota_bytes,
        api_limits: shoal::api::ConnLimits {
            max_connections: args.api_max_connections,
            idle_timeout: args.api_idle_timeout,
        },
        metrics_addr: args.metrics_addr,
        token_outputs: [
            (shoal_tls::Role::Worker, args.write_worker_token),
            (shoal_tls::Role::Manager, args.write_manager_token),
        ]
        .into_iter()
        .filter_map(|(role, path)| Some((role, path?)))
        .collect(),
    })
}

/// `--api-max-connections`: 1 to 1,000,000 (a semaphore's permits, and sockets the process can
/// hold).
fn parse_max_connections(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|_| {
        format!("invalid connection count {text:?}: expected a number from 1 to 1000000")
    })?;
    if !(1..=1_000_000).contains(&n) {
        return Err(format!(
            "connection count {n} out of range: expected 1 to 1000000"
        ));
    }
    Ok(n)
}

/// `--api-idle-timeout`: a duration from 100ms to 1h.
fn parse_idle_timeout(text: &str) -> Result<std::time::Duration, String> {
    let d = shoal::duration::parse(text)?;
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(3600) {
        return Err(format!(
            "idle timeout {text:?} out of range: expected 100ms to 1h"
        ));
    }
    Ok(d)
}

fn agent_config(args: AgentArgs, token: String) -> shoal::agent::AgentConfig {
    let mut config = shoal::agent::AgentConfig::new(
        args.data_dir,
        shoal::client::parse_hosts(&args.join),
        token,
    );
    config.name = args.name;
    config.labels = args.labels.into_iter().collect();
    config.advertise_addr = args.advertise_addr;
    config.docker = args.docker;
    config.engine_listen = args
        .engine_listen
        .unwrap_or(std::net::SocketAddr::new(args.advertise_addr, 0));
    config.heartbeat = args.heartbeat;
    config.metrics_addr = args.metrics_addr;
    config
}

fn proxy_config(
    args: ProxyArgs,
    token: Option<String>,
) -> anyhow::Result<shoal::proxy::ProxyProcessConfig> {
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
        token.ok_or_else(|| missing("--token"))?,
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
