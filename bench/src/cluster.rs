//! A throwaway cluster of `shoal manager` processes on loopback. Each child runs in its own
//! process group; dropping the `Cluster` (normal exit, error, panic or Ctrl-C) SIGKILLs every
//! group, so no manager outlives the bench.
//!
//! Managers speak mutual TLS only: the bench presents m1's own certificate (`DATA_DIR/tls`,
//! which managers accept on every client API) on each of its gRPC connections, and gives the
//! CLI the same directory (`--tls-dir`). The bench never removes a manager, so that certificate
//! stays valid for the whole run.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::{StatusRequest, StatusResponse};
use shoal_tls::net::Connector;
use shoal_tls::{Credentials, Role};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

/// How long one step of the start (token written, a manager becoming a voter) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

struct Manager {
    name: String,
    grpc: SocketAddr,
    docker: SocketAddr,
    data_dir: PathBuf,
    log: PathBuf,
    /// What it was started with: a restart reuses the data dir and these arguments.
    args: Vec<String>,
    child: Child,
}

pub(crate) struct Cluster {
    managers: Vec<Manager>,
    /// The manager join token (it joins any role: managers, agents, proxies).
    token: String,
    /// m1's credentials, loaded once it has bootstrapped.
    tls: Option<Credentials>,
}

impl Cluster {
    /// Starts `n` managers under `dir`: m1 bootstraps, the others join it one at a time, and
    /// returns once the cluster has `n` voters and a leader.
    pub(crate) async fn start(exe: &Path, dir: &Path, n: usize) -> Result<Cluster> {
        if n == 0 {
            bail!("--managers must be at least 1");
        }
        // Every listener stays open until all ports are picked, so none is handed out twice.
        let listeners = (0..n * 3)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        drop(listeners);

        let mut cluster = Cluster {
            managers: Vec::with_capacity(n),
            token: String::new(),
            tls: None,
        };
        let mut token = String::new();
        for i in 0..n {
            let name = format!("m{}", i + 1);
            let data_dir = dir.join(&name);
            let (grpc, http, docker) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let mut args = vec![
                "manager".to_string(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                grpc.to_string(),
                "--http".into(),
                http.to_string(),
                "--docker-api".into(),
                docker.to_string(),
            ];
            if i > 0 {
                args.extend([
                    "--join".into(),
                    cluster.managers[0].grpc.to_string(),
                    "--token".into(),
                    token.clone(),
                ]);
            }
            let log = dir.join(format!("{name}.log"));
            cluster.spawn(exe, name, (grpc, docker), data_dir, log, &args)?;
            if i == 0 {
                token = cluster.wait_for_token().await?;
                cluster.token.clone_from(&token);
                let dir = cluster.tls_dir();
                let creds = Credentials::load_dir(&dir)
                    .with_context(|| format!("m1's credentials in {}", dir.display()))?;
                cluster.tls = Some(creds);
            }
            cluster.wait_for_voters(i + 1).await?;
        }
        Ok(cluster)
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.managers.iter().map(|m| m.grpc).collect()
    }

    /// Each manager's Docker API address (plaintext on loopback), in the order of `addrs`.
    pub(crate) fn docker_addrs(&self) -> Vec<SocketAddr> {
        self.managers.iter().map(|m| m.docker).collect()
    }

    /// The process id of manager `i` (the leader of its process group).
    pub(crate) fn pid(&self, i: usize) -> u32 {
        self.managers[i].child.id()
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The credentials the bench presents to managers (m1's own).
    pub(crate) fn tls(&self) -> &Credentials {
        self.tls
            .as_ref()
            .expect("loaded by Cluster::start as soon as m1 is up")
    }

    /// Where those credentials are on disk (`ca.pem`, `cert.pem`, `key.pem`), for the CLI's
    /// `--tls-dir`.
    pub(crate) fn tls_dir(&self) -> PathBuf {
        self.managers[0].data_dir.join("tls")
    }

    /// kill -9 of manager `i`'s process group.
    pub(crate) fn kill(&mut self, i: usize) {
        let m = &mut self.managers[i];
        if let Ok(pid) = i32::try_from(m.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = m.child.wait();
    }

    /// SIGTERM to manager `i`: a graceful stop, which it finishes on its own (`restart` waits
    /// for the exit).
    pub(crate) fn stop(&mut self, i: usize) {
        if let Ok(pid) = i32::try_from(self.managers[i].child.id()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }

    /// Manager `i`'s log file.
    pub(crate) fn log(&self, i: usize) -> &Path {
        &self.managers[i].log
    }

    /// Starts manager `i` again on its data dir (after `kill` or `stop`), and waits until it
    /// answers with a leader.
    pub(crate) async fn restart(&mut self, exe: &Path, i: usize) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let m = &mut self.managers[i];
        let _ = m.child.wait();
        let out = File::options().append(true).open(&m.log)?;
        let err = out.try_clone()?;
        m.child = Command::new(exe)
            .args(&m.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("restarting {}", m.name))?;
        let addr = m.grpc;
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if status(addr, self.tls())
                .await
                .is_ok_and(|s| s.leader_id != 0)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not come back within {STEP_TIMEOUT:?}",
                    self.managers[i].name
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn spawn(
        &mut self,
        exe: &Path,
        name: String,
        (grpc, docker): (SocketAddr, SocketAddr),
        data_dir: PathBuf,
        log: PathBuf,
        args: &[String],
    ) -> Result<()> {
        use std::os::unix::process::CommandExt;
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} ({})", name, exe.display()))?;
        self.managers.push(Manager {
            name,
            grpc,
            docker,
            data_dir,
            log,
            args: args.to_vec(),
            child,
        });
        Ok(())
    }

    /// The bootstrapping manager keeps the manager join token in `DATA_DIR/tokens/manager`
    /// once the cluster's CA is in the store.
    async fn wait_for_token(&mut self) -> Result<String> {
        let path = self.managers[0].data_dir.join("tokens").join("manager");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(token) = std::fs::read_to_string(&path) {
                if !token.trim().is_empty() {
                    return Ok(token.trim().to_string());
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                bail!(
                    "m1 wrote no join token to {} within {STEP_TIMEOUT:?}; see {}",
                    path.display(),
                    self.managers[0].log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `Cluster/Status` on every started manager until one reports a leader and `voters` voters.
    async fn wait_for_voters(&mut self, voters: usize) -> Result<StatusResponse> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            self.check_alive()?;
            for addr in self.addrs() {
                match status(addr, self.tls()).await {
                    Ok(s)
                        if s.leader_id != 0
                            && s.members.iter().filter(|m| m.voter).count() >= voters =>
                    {
                        return Ok(s)
                    }
                    Ok(s) => {
                        let v = s.members.iter().filter(|m| m.voter).count();
                        last = format!(
                            "{addr}: leader {}, {v} voters of {} members",
                            s.leader_id,
                            s.members.len()
                        );
                    }
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            if Instant::now() >= deadline {
                let m = self.managers.last().expect("one manager started");
                bail!(
                    "no leader with {voters} voters within {STEP_TIMEOUT:?} (last: {last}); see {}",
                    m.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_alive(&mut self) -> Result<()> {
        for m in &mut self.managers {
            if let Some(status) = m.child.try_wait()? {
                let tail = last_lines(&m.log, 5);
                bail!(
                    "{} exited during start-up ({status}); {}:\n{tail}",
                    m.name,
                    m.log.display()
                );
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.managers {
            if let Ok(pid) = i32::try_from(m.child.id()) {
                // ESRCH means it has already gone, which is what we want.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = m.child.wait();
        }
    }
}

/// The `shoal` binary a bench starts: `--shoal-bin`, else `shoal` next to `shoal-bench`.
pub(crate) fn shoal_exe(given: Option<&Path>) -> Result<PathBuf> {
    let exe = match given {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("shoal"),
    };
    if !exe.is_file() {
        bail!(
            "no shoal binary at {} (build it with `cargo build --workspace`, or pass --shoal-bin)",
            exe.display()
        );
    }
    Ok(exe)
}

/// An endpoint for the manager at `addr`, to configure and then open with [`connect`] or
/// [`connect_lazy`] (which do the TLS).
pub(crate) fn endpoint(addr: SocketAddr) -> Result<Endpoint> {
    Ok(Endpoint::from_shared(shoal_tls::net::endpoint_uri(
        &addr.to_string(),
    ))?)
}

/// Dials managers over mutual TLS presenting `tls`; the server must hold a manager certificate
/// of the cluster.
fn connector(tls: &Credentials) -> Connector {
    Connector::new(tls.client_config(&[Role::Manager], &[b"h2"]))
}

/// Connects `endpoint` (from [`endpoint`]) over mutual TLS with `tls`.
pub(crate) async fn connect(endpoint: Endpoint, tls: &Credentials) -> Result<Channel> {
    Ok(endpoint.connect_with_connector(connector(tls)).await?)
}

/// The same, connecting on first use.
pub(crate) fn connect_lazy(endpoint: Endpoint, tls: &Credentials) -> Channel {
    endpoint.connect_with_connector_lazy(connector(tls))
}

/// One `Cluster/Status` call, bounded in time.
pub(crate) async fn status(addr: SocketAddr, tls: &Credentials) -> Result<StatusResponse> {
    let endpoint = endpoint(addr)?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3));
    let channel = connect(endpoint, tls).await?;
    Ok(ClusterClient::new(channel)
        .status(StatusRequest {})
        .await?
        .into_inner())
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "(log empty)".into();
    }
    lines[lines.len().saturating_sub(n)..].join("\n")
}
