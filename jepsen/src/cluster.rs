//! The managers under test, one per network namespace, started from the `shoal` binary. Each is
//! its own process group and carries PR_SET_PDEATHSIG (through `setpriv`), so none outlives the
//! harness; dropping the `Cluster` SIGKILLs them all. Logs go to `<results>/nodes/`.
//!
//! Every connection to a manager is mutual TLS. Once n1 is up, the harness has it issue a client
//! certificate of its own (`<results>/data/client-tls`; asked for with n1's own credentials),
//! presented by every client, status poll and CLI call: unlike a manager's certificate, it
//! outlives the removal of any manager by the membership nemesis (which revokes the removed
//! manager's certificate).

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use shoal::client::{Client, ClientConfig};
use shoal_proto::v1 as pb;
use shoal_tls::Credentials;
use tokio::time::Instant;

use crate::error::HarnessError;
use crate::netns::Net;

/// gRPC port every manager listens on, inside its own namespace.
const GRPC_PORT: u16 = 7946;
/// Bound on one start-up step (token written, a manager becoming a voter).
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// The name in the harness's client certificate.
const CLIENT_NAME: &str = "shoal-jepsen";

pub struct Node {
    pub name: String,
    pub grpc: SocketAddr,
    ns: String,
    data_dir: PathBuf,
    log: PathBuf,
    /// Raft member id, once known (a node added by membership churn gets a new one).
    pub id: u64,
    /// Data-dir generation: bumped when the node is removed and a new manager takes its place.
    generation: u32,
    child: Option<Child>,
    pub paused: bool,
}

/// What a client of the cluster needs besides the managers' addresses.
#[derive(Clone)]
pub struct Auth {
    /// The manager join token (it joins any role).
    pub token: String,
    /// The harness's client certificate, presented on every connection to a manager.
    pub tls: Credentials,
    /// The same on disk (`ca.pem`, `cert.pem`, `key.pem`), for the `shoal` CLI's `--tls-dir`.
    pub tls_dir: PathBuf,
}

impl Auth {
    /// A client configuration for `hosts` presenting the harness's certificate.
    pub fn config(&self, hosts: Vec<String>) -> ClientConfig {
        ClientConfig::new(hosts).with_tls(self.tls.clone())
    }
}

pub struct Cluster {
    exe: PathBuf,
    dir: PathBuf,
    pub nodes: Vec<Node>,
    token: String,
    /// Set once n1 is up (`start`), before anything calls a manager.
    auth: Option<Auth>,
    pub net: Net,
}

/// One `Cluster/Status` call to one manager, bounded.
pub async fn status(addr: SocketAddr, tls: &Credentials) -> Result<pb::StatusResponse, String> {
    let mut config = ClientConfig::new(vec![addr.to_string()]).with_tls(tls.clone());
    config.connect_timeout = Duration::from_millis(500);
    config.request_timeout = Duration::from_secs(2);
    let mut c = Client::connect(config).await.map_err(|e| e.to_string())?;
    c.status().await.map_err(|e| e.to_string())
}

impl Cluster {
    /// Starts `net.slots.len()` managers: the first bootstraps, the others join one at a time.
    pub async fn start(exe: &Path, dir: &Path, net: Net) -> Result<Cluster, HarnessError> {
        let logs = dir.join("nodes");
        std::fs::create_dir_all(&logs).map_err(|e| HarnessError::io("creating", &logs, e))?;
        let mut cluster = Cluster {
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            nodes: Vec::new(),
            token: String::new(),
            auth: None,
            net,
        };
        for (i, slot) in cluster.net.slots.clone().iter().enumerate() {
            let name = format!("n{}", i + 1);
            cluster.nodes.push(Node {
                data_dir: dir.join("data").join(format!("{name}.0")),
                log: logs.join(format!("{name}.log")),
                name,
                grpc: SocketAddr::new(slot.ip.into(), GRPC_PORT),
                ns: slot.ns.clone(),
                id: 0,
                generation: 0,
                child: None,
                paused: false,
            });
            let join = if i == 0 { vec![] } else { vec![0] };
            cluster.spawn(i, &join)?;
            if i == 0 {
                cluster.token = cluster.wait_for_token().await?;
                let auth = cluster.client_auth().await?;
                cluster.auth = Some(auth);
            }
            cluster.wait_for_voters(i + 1).await?;
        }
        for i in 0..cluster.nodes.len() {
            cluster.nodes[i].id = status(cluster.nodes[i].grpc, cluster.tls())
                .await
                .map(|s| s.member_id)
                .unwrap_or(0);
        }
        Ok(cluster)
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.grpc.to_string()).collect()
    }

    fn spawn(&mut self, i: usize, join: &[usize]) -> Result<(), HarnessError> {
        let join: Vec<String> = join
            .iter()
            .map(|&j| self.nodes[j].grpc.to_string())
            .collect();
        let node = &self.nodes[i];
        let ip = node.grpc.ip();
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            node.ns.clone(),
            "setpriv".into(),
            "--pdeathsig".into(),
            "KILL".into(),
            self.exe.display().to_string(),
            "manager".into(),
            "--data-dir".into(),
            node.data_dir.display().to_string(),
            "--listen".into(),
            node.grpc.to_string(),
            "--http".into(),
            format!("{ip}:8500"),
            "--docker-api".into(),
            format!("{ip}:2375"),
        ];
        // A restart on an existing data dir needs no --join; a fresh one (first start, or a
        // replacement after removal) joins through the managers given.
        let fresh = !node.data_dir.exists();
        if fresh && !join.is_empty() {
            args.extend([
                "--join".into(),
                join.join(","),
                "--token".into(),
                self.token.clone(),
            ]);
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(|e| HarnessError::io("opening", &node.log, e))?;
        let err = log
            .try_clone()
            .map_err(|e| HarnessError::io("opening", &node.log, e))?;
        let child = Command::new("ip")
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("SHOAL_JEPSEN_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| HarnessError::Cluster(format!("starting {}: {e}", node.name)))?;
        self.nodes[i].child = Some(child);
        self.nodes[i].paused = false;
        Ok(())
    }

    fn signal(&mut self, i: usize, sig: Signal) {
        if let Some(child) = &self.nodes[i].child {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), sig);
            }
        }
    }

    /// kill -9 of node `i`'s process group.
    pub fn kill(&mut self, i: usize) {
        self.signal(i, Signal::SIGKILL);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// Starts node `i` again on its data dir (after `kill`), without waiting.
    pub fn restart(&mut self, i: usize) -> Result<(), HarnessError> {
        if self.nodes[i].child.is_some() {
            return Ok(());
        }
        self.spawn(i, &[])
    }

    pub fn pause(&mut self, i: usize) {
        self.signal(i, Signal::SIGSTOP);
        self.nodes[i].paused = true;
    }

    pub fn resume(&mut self, i: usize) {
        self.signal(i, Signal::SIGCONT);
        self.nodes[i].paused = false;
    }

    /// The index of the node the reachable managers name as leader.
    pub async fn leader(&self) -> Option<usize> {
        for n in &self.nodes {
            if n.child.is_none() || n.paused {
                continue;
            }
            if let Ok(s) = status(n.grpc, self.tls()).await {
                if s.leader_id != 0 {
                    return self.nodes.iter().position(|m| m.id == s.leader_id);
                }
            }
        }
        None
    }

    /// Removes node `i` from the membership (through any manager), then stops it.
    pub async fn remove(&mut self, i: usize) -> Result<(), HarnessError> {
        let id = self.nodes[i].id;
        let others: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && n.child.is_some() && !n.paused)
            .map(|(_, n)| n.grpc.to_string())
            .collect();
        let mut config = self.auth().config(others);
        config.request_timeout = Duration::from_secs(10);
        let result = match Client::connect(config).await {
            Ok(mut c) => c.remove_manager(id).await.map(|_| ()),
            Err(e) => Err(e),
        };
        self.kill(i);
        result.map_err(|e| HarnessError::Cluster(format!("removing {}: {e}", self.nodes[i].name)))
    }

    /// Starts a new manager (fresh data dir, new id) in node `i`'s namespace, joining the others.
    pub async fn add(&mut self, i: usize) -> Result<(), HarnessError> {
        self.kill(i);
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.data_dir = self
            .dir
            .join("data")
            .join(format!("{}.{}", node.name, node.generation));
        let join: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != i && self.nodes[j].child.is_some())
            .collect();
        self.spawn(i, &join)?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(s) = status(self.nodes[i].grpc, self.tls()).await {
                if s.member_id != 0 {
                    self.nodes[i].id = s.member_id;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(HarnessError::Cluster(format!(
            "{} did not join within {STEP_TIMEOUT:?}",
            self.nodes[i].name
        )))
    }

    /// Waits until every running manager agrees on a leader (bounded).
    pub async fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let mut leaders = Vec::new();
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                leaders.push(
                    status(n.grpc, self.tls())
                        .await
                        .map(|s| s.leader_id)
                        .unwrap_or(0),
                );
            }
            if !leaders.is_empty() && leaders.iter().all(|&l| l != 0 && l == leaders[0]) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        false
    }

    /// The harness's credentials and the manager token.
    pub fn auth(&self) -> &Auth {
        self.auth
            .as_ref()
            .expect("set by Cluster::start as soon as n1 is up")
    }

    fn tls(&self) -> &Credentials {
        &self.auth().tls
    }

    /// The manager join token n1 keeps in `DATA_DIR/tokens/manager` once the cluster's CA is in
    /// the store.
    async fn wait_for_token(&mut self) -> Result<String, HarnessError> {
        let path = self.nodes[0].data_dir.join("tokens").join("manager");
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Ok(token) = std::fs::read_to_string(&path) {
                if !token.trim().is_empty() {
                    return Ok(token.trim().to_string());
                }
            }
            self.check_alive()?;
            if Instant::now() >= deadline {
                return Err(HarnessError::Cluster(format!(
                    "n1 wrote no join token within {STEP_TIMEOUT:?}; see {}",
                    self.nodes[0].log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Has n1 issue the harness's client certificate (`Ca/IssueClient`, which a manager's
    /// certificate may call: join tokens do not join clients), presenting n1's own credentials
    /// (`DATA_DIR/tls`), and writes it to `<results>/data/client-tls` for the CLI.
    async fn client_auth(&mut self) -> Result<Auth, HarnessError> {
        let n1_tls = self.nodes[0].data_dir.join("tls");
        let manager = Credentials::load_dir(&n1_tls).map_err(|e| {
            HarnessError::Cluster(format!("n1's credentials in {}: {e}", n1_tls.display()))
        })?;
        let mut config = ClientConfig::new(vec![self.nodes[0].grpc.to_string()]).with_tls(manager);
        config.connect_timeout = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(5);
        let (key_pem, csr_pem) = shoal_tls::pki::signing_request()
            .map_err(|e| HarnessError::Cluster(format!("a key for the harness: {e}")))?;
        let deadline = Instant::now() + STEP_TIMEOUT;
        let issued = loop {
            let result = match Client::connect(config.clone()).await {
                Ok(mut c) => c.issue_client(CLIENT_NAME, &csr_pem).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(issued) => break issued,
                Err(e) => {
                    self.check_alive()?;
                    if Instant::now() >= deadline {
                        return Err(HarnessError::Cluster(format!(
                            "n1 issued no client certificate within {STEP_TIMEOUT:?}: {e}; see {}",
                            self.nodes[0].log.display()
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let creds = Credentials::with_cert(&issued.roots_pem, &issued.cert_pem, &key_pem)
            .map_err(|e| HarnessError::Cluster(format!("the client certificate n1 issued: {e}")))?;
        // With the managers' data dirs: removed after the run unless --keep-data.
        let tls_dir = self.dir.join("data").join("client-tls");
        creds
            .save_dir(&tls_dir)
            .map_err(|e| HarnessError::Cluster(format!("writing the client certificate: {e}")))?;
        Ok(Auth {
            token: self.token.clone(),
            tls: creds,
            tls_dir,
        })
    }

    async fn wait_for_voters(&mut self, voters: usize) -> Result<(), HarnessError> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            self.check_alive()?;
            for n in self.nodes.iter().filter(|n| n.child.is_some()) {
                match status(n.grpc, self.tls()).await {
                    Ok(s)
                        if s.leader_id != 0
                            && s.members.iter().filter(|m| m.voter).count() >= voters =>
                    {
                        return Ok(())
                    }
                    Ok(s) => last = format!("{}: leader {}", n.name, s.leader_id),
                    Err(e) => last = format!("{}: {e}", n.name),
                }
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Cluster(format!(
                    "no leader with {voters} voters within {STEP_TIMEOUT:?} (last: {last})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn check_alive(&mut self) -> Result<(), HarnessError> {
        for n in &mut self.nodes {
            if let Some(child) = &mut n.child {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(HarnessError::Cluster(format!(
                        "{} exited during start-up ({status}); see {}",
                        n.name,
                        n.log.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            // A stopped process group must be continued to die promptly.
            self.signal(i, Signal::SIGCONT);
            self.kill(i);
        }
    }
}
