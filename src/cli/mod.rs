//! The client side of the `shoal` command line: `kv`, `cluster`, `node`, `service`, `acl`,
//! `proxy config|status` and `manager remove`. Each command is one short conversation with a
//! manager through [`crate::client`]; output goes to stdout (`--json`: one JSON document, or JSON
//! lines for `kv watch`), errors are returned, never printed.

mod acl;
pub mod bytes;
mod cluster;
mod error;
mod kv;
mod node;
mod objects;
mod proxy;
mod service;
mod spec;
mod table;

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::client::{parse_hosts, Client, ClientConfig, DEFAULT_GRPC};
pub use acl::AclCommand;
pub use error::CliError;
pub use node::NodeCommand;
pub use proxy::ProxyCommand;
pub use service::ServiceCommand;
pub use spec::CreateArgs;

/// Options every client command accepts.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Manager gRPC addresses, comma-separated: the first reachable one is used.
    #[arg(long, global = true, env = "SHOAL_HOST", value_delimiter = ',', default_value = DEFAULT_GRPC)]
    pub host: Vec<String>,

    /// Bound on each request to a manager (e.g. 15s, 500ms).
    #[arg(long, global = true, env = "SHOAL_TIMEOUT", value_parser = crate::duration::parse, default_value = "15s")]
    pub timeout: Duration,

    /// The certificate to present: a directory with ca.pem, cert.pem and key.pem (from
    /// `shoal cluster client-cert DIR`, or a manager's DATA_DIR/tls on its host).
    #[arg(long, global = true, env = "SHOAL_TLS_DIR", value_name = "DIR")]
    pub tls_dir: Option<std::path::PathBuf>,
}

impl GlobalArgs {
    fn client_config(&self) -> Result<ClientConfig, CliError> {
        let mut config = ClientConfig::new(parse_hosts(&self.host));
        config.request_timeout = self.timeout;
        if let Some(dir) = &self.tls_dir {
            let creds = shoal_tls::Credentials::load_dir(dir)
                .map_err(|e| CliError::Tls(format!("--tls-dir: {e}")))?;
            config = config.with_tls(creds);
        }
        Ok(config)
    }

    async fn connect(&self) -> Result<Client, CliError> {
        Ok(Client::connect(self.client_config()?).await?)
    }
}

/// `shoal kv ...`
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Print a key's value (linearizable unless --stale).
    Get {
        key: String,
        /// Read this manager's replica without asking the leader (may be behind).
        #[arg(long)]
        stale: bool,
        /// Print every key under KEY, one `key<TAB>value` line each.
        #[arg(long)]
        prefix: bool,
        /// One JSON document with the values and their revisions.
        #[arg(long)]
        json: bool,
    },
    /// Set a key. Without VALUE the value is read from stdin.
    Put {
        key: String,
        value: Option<String>,
        /// Attach the key to a new lease with this TTL (e.g. 2s, 500ms, 1m): it dies with it.
        #[arg(long, value_parser = crate::duration::parse)]
        ttl: Option<Duration>,
        /// Only if the key's mod revision is REV (0: only if the key does not exist).
        #[arg(long, value_name = "REV")]
        cas: Option<u64>,
    },
    /// Delete a key (or every key under it with --prefix).
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// List the keys under PREFIX (all keys without it).
    Ls {
        prefix: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print changes to KEY (or under it with --prefix) as they happen, one line each.
    Watch {
        key: String,
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (inclusive) instead of now.
        #[arg(long, value_name = "R")]
        rev: Option<u64>,
        /// JSON lines: {"revision","type","key","value"}.
        #[arg(long)]
        json: bool,
    },
}

/// `shoal cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit index and every manager's role, health and applied index.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Print the join token of a role: `manager` (joins any node role: managers, agents, proxies) or
    /// `worker` (agents and proxies only).
    Token {
        #[arg(default_value = "manager", value_parser = ["worker", "manager"])]
        role: String,
        /// Replace the token first: the old one joins nothing from now on (nodes that joined
        /// with it keep working).
        #[arg(long)]
        rotate: bool,
    },
    /// Issue a client certificate (role client) into DIR: ca.pem, cert.pem, key.pem, for
    /// `shoal --tls-dir DIR` and `docker --tlsverify` (DOCKER_CERT_PATH=DIR).
    ClientCert {
        dir: std::path::PathBuf,
        /// The name the certificate carries (one per operator, so that it can be revoked alone:
        /// `shoal cluster revoke-client NAME`).
        #[arg(long, default_value = "admin")]
        name: String,
    },
    /// List the operators' client certificate names: who had the newest issued, when it
    /// expires, how many were issued, whether the name is revoked.
    ClientCerts {
        #[arg(long)]
        json: bool,
    },
    /// Revoke every client certificate named NAME: every manager refuses it from the next
    /// second on (open connections and streams included); the name is never issued again.
    RevokeClient { name: String },
    /// Show the root CA (generation, rotation phase, roots' digests); --rotate starts a root
    /// rotation that every node follows without a restart.
    Ca {
        #[arg(long)]
        rotate: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run_kv(global: &GlobalArgs, command: KvCommand) -> Result<(), CliError> {
    let client = global.connect().await?;
    quiet_broken_pipe(kv::run(client, command).await)
}

pub async fn run_cluster(global: &GlobalArgs, command: ClusterCommand) -> Result<(), CliError> {
    let client = global.connect().await?;
    quiet_broken_pipe(cluster::run(client, command).await)
}

/// `shoal node ...`: arguments are validated before any manager is contacted.
pub async fn run_node(global: &GlobalArgs, command: NodeCommand) -> Result<(), CliError> {
    quiet_broken_pipe(node::run(global, command).await)
}

/// `shoal service ...`: arguments are validated before any manager is contacted.
pub async fn run_service(global: &GlobalArgs, command: ServiceCommand) -> Result<(), CliError> {
    quiet_broken_pipe(service::run(global, command).await)
}

/// `shoal acl token ...`
pub async fn run_acl(global: &GlobalArgs, command: AclCommand) -> Result<(), CliError> {
    quiet_broken_pipe(acl::run(global, command).await)
}

/// `shoal proxy config|status`
pub async fn run_proxy(global: &GlobalArgs, command: ProxyCommand) -> Result<(), CliError> {
    quiet_broken_pipe(proxy::run(global, command).await)
}

/// `shoal manager remove ID`
pub async fn remove_manager(global: &GlobalArgs, id: u64) -> Result<(), CliError> {
    let client = global.connect().await?;
    quiet_broken_pipe(cluster::remove(client, id).await)
}

/// `shoal kv ls | head` is not an error.
fn quiet_broken_pipe(result: Result<(), CliError>) -> Result<(), CliError> {
    match result {
        Err(CliError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes one line to stdout and flushes it (watchers read line by line).
fn out(line: impl std::fmt::Display) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
