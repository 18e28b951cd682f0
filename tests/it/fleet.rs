//! Test harness for the cluster with nodes: managers (`cluster::Cluster`) plus real `shoal agent`
//! processes against the machine's Docker engine, each on its own 127.0.0.x address, each in its
//! own process group. Dropping an agent kills it and force-removes every container labelled with
//! its node id, passed or failed. Helpers read services and tasks through the CLI's `--json`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use crate::cluster::{tail, Cluster, Proc, WAIT};

pub const WHOAMI: &str = "shoal/whoami:latest";

/// Builds the test image (only it: `deploy/images/build whoami`) into the local engine once per
/// test binary.
pub fn whoami_image() -> &'static str {
    static BUILT: OnceLock<String> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/images/build");
        let out = Command::new(script)
            .arg("whoami")
            .output()
            .expect("running deploy/images/build");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "deploy/images/build failed: {stderr}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// An image built from the test image with its own `HEALTHCHECK` running `/whoami CHECK...`
/// every 300 ms (unhealthy after 2 failures), with Docker's classic builder (no registry, no
/// buildx); `docker build` caches it, so each test may build it again.
pub fn whoami_with_check(tag: &str, check: &[&str]) {
    whoami_image();
    let dir = tempfile::tempdir().unwrap();
    let words: Vec<String> = std::iter::once("/whoami")
        .chain(check.iter().copied())
        .map(|w| format!("{w:?}"))
        .collect();
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {WHOAMI}\nHEALTHCHECK --interval=300ms --timeout=2s --retries=2 CMD [{}]\n",
            words.join(", ")
        ),
    )
    .unwrap();
    let out = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `docker tag FROM TO`: a second name for a test image (a "new version" without a registry).
pub fn docker_tag(from: &str, to: &str) {
    let out = Command::new("docker")
        .args(["tag", from, to])
        .output()
        .expect("docker tag");
    assert!(
        out.status.success(),
        "docker tag {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `shoal agent` process (or its data dir while it is down).
pub struct Agent {
    pub name: String,
    /// The loopback address it advertises and publishes ports on.
    pub addr: String,
    pub labels: Vec<String>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    proc: Proc,
}

impl Agent {
    pub fn spawn(&mut self, join: &str, token: &str, extra: &[&str]) {
        let data_dir = self.data_dir.display().to_string();
        let mut args = vec![
            "agent",
            "--data-dir",
            &data_dir,
            "--join",
            join,
            "--token",
            token,
            "--name",
            &self.name,
            "--advertise-addr",
            &self.addr,
        ];
        for label in &self.labels {
            args.extend(["--label", label]);
        }
        args.extend_from_slice(extra);
        self.proc.start(&self.name, &args, &self.log);
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// kill -9 of the agent alone: its containers keep running.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Waits for the process to exit by itself; None if it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_exit(within).await
    }

    /// Container ids labelled with this node (`running_only`: those running).
    pub fn containers(&self, running_only: bool) -> Vec<String> {
        let Ok(id) = std::fs::read_to_string(self.data_dir.join("node_id")) else {
            return Vec::new();
        };
        docker_ps(&format!("label=shoal.node={}", id.trim()), running_only)
    }

    /// Force-removes this node's containers (a node that died with its containers).
    pub fn remove_containers(&self) {
        drop(NodeContainers {
            data_dir: self.data_dir.clone(),
        });
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.remove_containers();
    }
}

/// Force-removes, when dropped, the containers of the node whose agent keeps its id in a data dir
/// (for agents a test does not start itself, such as `shoal dev`'s).
pub struct NodeContainers {
    data_dir: PathBuf,
}

impl NodeContainers {
    pub fn of_data_dir(dir: &str) -> NodeContainers {
        NodeContainers {
            data_dir: PathBuf::from(dir),
        }
    }
}

impl Drop for NodeContainers {
    fn drop(&mut self) {
        if let Ok(id) = std::fs::read_to_string(self.data_dir.join("node_id")) {
            remove_node_containers(id.trim());
        }
    }
}

/// Force-removes every container labelled with node `id`, running or not. Synchronous on
/// purpose: it must also work while a failed test unwinds out of its runtime.
pub fn remove_node_containers(id: &str) {
    let ids = docker_ps(&format!("label=shoal.node={id}"), false);
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}

/// `docker ps -q` with one filter.
pub fn docker_ps(filter: &str, running_only: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-q", "--no-trunc", "--filter", filter]);
    if !running_only {
        cmd.arg("-a");
    }
    let out = cmd.output().expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// `docker inspect -f FORMAT ID`, trimmed.
pub fn docker_inspect(id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The loopback address the `i`th agent (from 0) advertises.
pub fn agent_addr(i: usize) -> String {
    format!("127.0.0.{}", i + 2)
}

/// Managers plus agents. Fields drop in declaration order: the agents (and their containers,
/// found through the node id in their data dirs) must go before the cluster removes its temp dir.
pub struct Fleet {
    pub agents: Vec<Agent>,
    pub cluster: Cluster,
}

impl Fleet {
    /// `managers` managers, then agents `node-1..`, node-1 labelled `storage=ssd` as in the
    /// seed; waits until every node is READY.
    pub async fn start(managers: usize, agents: usize) -> Fleet {
        Fleet::start_with(managers, agents, &[]).await
    }

    /// As `start`, the first manager bootstrapping with `extra` flags.
    pub async fn start_with(managers: usize, agents: usize, extra: &[&str]) -> Fleet {
        whoami_image();
        let cluster = Cluster::start_with(managers, extra).await;
        let mut fleet = Fleet {
            cluster,
            agents: Vec::new(),
        };
        for i in 1..=agents {
            let labels = if i == 1 {
                vec!["storage=ssd".to_string()]
            } else {
                vec![]
            };
            fleet.add_agent(&format!("node-{i}"), labels);
        }
        fleet.wait_nodes_ready(agents).await;
        fleet
    }

    pub fn add_agent(&mut self, name: &str, labels: Vec<String>) -> usize {
        self.add_agent_with(name, labels, &[])
    }

    /// As `add_agent`, with `extra` flags; the agent advertises `agent_addr(i)`.
    pub fn add_agent_with(&mut self, name: &str, labels: Vec<String>, extra: &[&str]) -> usize {
        let i = self.agents.len();
        let root = self.cluster.root().to_path_buf();
        let mut agent = Agent {
            name: name.to_string(),
            addr: agent_addr(i),
            labels,
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            proc: Proc::default(),
        };
        agent.spawn(
            &self.cluster.hosts(),
            &self.cluster.worker_token.clone(),
            extra,
        );
        self.agents.push(agent);
        i
    }

    pub fn restart_agent(&mut self, i: usize) {
        let hosts = self.cluster.hosts();
        let token = self.cluster.worker_token.clone();
        self.agents[i].spawn(&hosts, &token, &[]);
    }

    /// Runs the CLI against every manager and parses its `--json` output; panics with the
    /// error and the logs if the command fails.
    pub async fn json(&self, args: &[&str]) -> Value {
        let out = self.cluster.cli(args).await;
        assert!(
            out.ok(),
            "shoal {args:?} failed: {}\n{}",
            out.stderr,
            self.logs()
        );
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("shoal {args:?}: not JSON ({e}): {}", out.stdout))
    }

    /// Runs the CLI and asserts it succeeded; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = self.cluster.cli(args).await;
        assert!(
            out.ok(),
            "shoal {args:?} failed: {}\n{}",
            out.stderr,
            self.logs()
        );
        out.stdout
    }

    /// `shoal service create --name NAME --replicas N -p 80 [EXTRA...] shoal/whoami:latest`.
    pub async fn create_whoami(&self, name: &str, replicas: usize, extra: &[&str]) {
        let replicas = replicas.to_string();
        let mut args = vec![
            "service",
            "create",
            "--name",
            name,
            "--replicas",
            &replicas,
            "-p",
            "80",
        ];
        args.extend_from_slice(extra);
        args.push(WHOAMI);
        self.ok(&args).await;
    }

    pub async fn nodes(&self) -> Vec<Value> {
        self.json(&["node", "ls", "--json"])
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The service's tasks as `service ps --json` prints them.
    pub async fn tasks(&self, service: &str) -> Vec<Value> {
        self.json(&["service", "ps", service, "--json"])
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `n` nodes are READY.
    pub async fn wait_nodes_ready(&self, n: usize) {
        self.wait_for(&format!("{n} nodes ready"), || async {
            let nodes = self.nodes().await;
            let ready = nodes.iter().filter(|n| n["status"] == "ready").count();
            (ready == n).then_some(())
        })
        .await;
    }

    /// Waits until the service has exactly `n` tasks RUNNING and meant to run, and no task
    /// still starting; returns those tasks.
    pub async fn wait_running(&self, service: &str, n: usize) -> Vec<Value> {
        self.wait_for(&format!("{n} tasks of {service} running"), || async {
            let tasks = self.tasks(service).await;
            let live: Vec<Value> = tasks.into_iter().filter(is_live).collect();
            let settled = live
                .iter()
                .all(|t| t["state"] == "running" && t["desired_state"] == "running");
            (settled && live.len() == n).then_some(live)
        })
        .await
    }

    /// Polls `check` every 200 ms until it returns Some; panics after `WAIT` with the logs.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn logs(&self) -> String {
        let agents: Vec<String> = self
            .agents
            .iter()
            .map(|a| format!("---- {} ----\n{}", a.name, tail(&a.log_text())))
            .collect();
        format!("{}\n{}", self.cluster.logs(), agents.join("\n"))
    }
}

/// A task that has not reached a terminal state.
pub fn is_live(task: &Value) -> bool {
    matches!(
        task["state"].as_str(),
        Some("new" | "pending" | "assigned" | "accepted" | "starting" | "running")
    )
}

/// The node names of tasks, sorted.
pub fn node_names(tasks: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = tasks
        .iter()
        .map(|t| t["node_name"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    names
}

/// One HTTP/1.0 GET to `addr` (host:port); the whole response, status line first.
pub async fn http_get(addr: &str) -> Option<String> {
    http_request(addr, "/", addr).await
}

/// `http_get` again every 100 ms until `addr` answers or `within` has passed: a RUNNING task's
/// container has started, but its process may not be listening yet.
pub async fn http_get_within(addr: &str, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let answer = http_get(addr).await;
        if answer.is_some() || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP/1.0 GET of `path` with `Host: host`; the whole response, status line first.
pub async fn http_request(addr: &str, path: &str, host: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(3), stream.read_to_string(&mut text))
        .await
        .ok()?
        .ok()?;
    Some(text)
}
