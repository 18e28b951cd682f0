//! Test harness: real `shoal manager` processes on loopback, each in its own process group and
//! temp data dir, killed (SIGKILL to the group) when dropped. Helpers to kill -9, restart with the
//! same data dir, find the leader, wait for a replica to catch up, and run the CLI binary.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use shoal_proto::v1 as pb;
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::kv_client::KvClient;
use tokio::time::{sleep, Instant};
use tonic::transport::{Channel, Endpoint};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// Bound on one gRPC call from a test.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on waiting for a cluster-level condition (a leader, a catch-up).
pub const WAIT: Duration = Duration::from_secs(90);

/// Multi-process tests fight for two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A port nothing listens on now and that this test binary has not handed out before: the
/// kernel may offer a just-released port again, and two of one manager's listeners then
/// collided ("Address already in use").
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One `shoal manager` process (or its data dir while it is down).
pub struct Manager {
    pub name: String,
    pub grpc: String,
    /// Its Docker Engine API (`--docker-api`).
    pub docker_api: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Raft id, learned from cluster status once it is a member.
    pub id: u64,
    proc: Proc,
}

impl Manager {
    pub fn new(root: &Path, name: &str) -> Manager {
        Manager {
            name: name.to_string(),
            grpc: format!("127.0.0.1:{}", free_port()),
            docker_api: format!("127.0.0.1:{}", free_port()),
            data_dir: root.join(name),
            log: root.join(format!("{name}.log")),
            id: 0,
            proc: Proc::default(),
        }
    }

    /// Starts `shoal manager --data-dir D --listen A` plus `extra`, output appended to its log.
    pub fn spawn(&mut self, extra: &[&str]) {
        let mut args = vec![
            "manager",
            "--data-dir",
            self.data_dir.to_str().unwrap(),
            "--listen",
            &self.grpc,
            "--docker-api",
            &self.docker_api,
        ];
        args.extend_from_slice(extra);
        self.proc.start(&self.name, &args, &self.log);
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// kill -9 of the whole process group, then reaps it.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// A graceful stop (SIGTERM), then SIGKILL if it takes more than 10 s.
    pub async fn stop(&mut self) {
        self.proc.stop().await;
    }

    /// Waits for the process to exit by itself; None if it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_exit(within).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The manager join token the manager keeps in `DATA_DIR/tokens/manager` (it joins any
    /// role: managers, agents, proxies).
    pub async fn wait_token(&self) -> String {
        self.wait_token_of("manager").await
    }

    /// The join token of `role` (worker or manager).
    pub async fn wait_token_of(&self, role: &str) -> String {
        let path = self.data_dir.join("tokens").join(role);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(token) = std::fs::read_to_string(&path) {
                if !token.trim().is_empty() {
                    return token.trim().to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} wrote no token file; log:\n{}",
                self.name,
                tail(&self.log_text())
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// This manager's own credentials (`DATA_DIR/tls`: ca.pem, cert.pem, key.pem).
    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(channel(&self.grpc, &self.tls_dir())).max_decoding_message_size(256 << 20)
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(channel(&self.grpc, &self.tls_dir()))
    }

    pub async fn status(&self) -> Result<pb::StatusResponse, tonic::Status> {
        bounded(self.cluster().status(pb::StatusRequest::default())).await
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `shoal` child process in its own process group, or nothing while it is down.
#[derive(Default)]
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Starts `shoal ARGS` (see `spawn_logged`); `name` is for the message if it already runs.
    pub fn start(&mut self, name: &str, args: &[&str], log: &Path) {
        assert!(self.child.is_none(), "{name} is already running");
        self.child = Some(spawn_logged(args, log));
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// kill -9 of the whole process group, then reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM to the group, then SIGKILL if it takes more than 10 s.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Waits for the process to exit by itself; None if it still runs after `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut().expect("not running");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Starts `shoal ARGS` in its own process group, stdout and stderr appended to `log`, with
/// `RUST_LOG` from `SHOAL_TEST_LOG` (default info).
pub fn spawn_logged(args: &[&str], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(SHOAL)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning shoal {args:?}: {e}"))
}

/// A lazily connected mutual-TLS channel presenting the credentials in `tls_dir`: creating it
/// never fails; calls to a dead manager (or without credentials yet: plaintext) do.
pub fn channel(addr: &str, tls_dir: &Path) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    match shoal_tls::Credentials::load_dir(tls_dir) {
        Ok(creds) => endpoint.connect_with_connector_lazy(shoal_tls::net::Connector::new(
            creds.client_config(&[shoal_tls::Role::Manager], &[b"h2"]),
        )),
        Err(_) => endpoint.connect_lazy(),
    }
}

/// A test-side call that can never hang.
pub async fn bounded<T>(
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, tonic::Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(tonic::Status::deadline_exceeded(format!(
            "test call timed out after {CALL_TIMEOUT:?}"
        ))),
    }
}

/// Puts `key = value` and returns the revision of the write.
pub async fn put(kv: &mut KvClient<Channel>, key: &str, value: &str) -> Result<u64, tonic::Status> {
    let req = pb::PutRequest {
        key: key.into(),
        value: value.into(),
        ..Default::default()
    };
    let resp = bounded(kv.put(req)).await?;
    Ok(resp.header.expect("put answers with a header").revision)
}

pub async fn delete(kv: &mut KvClient<Channel>, key: &str) -> Result<u64, tonic::Status> {
    let req = pb::DeleteRequest {
        key: key.into(),
        ..Default::default()
    };
    let resp = bounded(kv.delete(req)).await?;
    Ok(resp.header.expect("delete answers with a header").revision)
}

/// Every key under `prefix` as a map of UTF-8 strings.
pub async fn read_prefix(
    kv: &mut KvClient<Channel>,
    prefix: &str,
    stale: bool,
) -> Result<BTreeMap<String, String>, tonic::Status> {
    let req = pb::RangeRequest {
        key: prefix.into(),
        prefix: true,
        stale,
        ..Default::default()
    };
    let resp = bounded(kv.range(req)).await?;
    Ok(resp
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
            )
        })
        .collect())
}

/// Asserts that every `expected` key is present with its value in `actual`.
pub fn assert_contains(
    actual: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
    context: &str,
) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !actual.contains_key(*k))
        .collect();
    let wrong: Vec<&String> = expected
        .iter()
        .filter(|(k, v)| actual.get(*k).is_some_and(|a| a != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "{context}: {} of {} acknowledged writes missing (first: {:?}), {} with a wrong value (first: {:?})",
        missing.len(),
        expected.len(),
        missing.first(),
        wrong.len(),
        wrong.first()
    );
}

/// The output of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl CliOutput {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs the `shoal` binary with `args` (and stdin), bounded by 90 s.
pub async fn run_cli(args: &[&str], stdin: Option<Vec<u8>>, envs: &[(&str, &str)]) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let started = Instant::now();
    let mut cmd = tokio::process::Command::new(SHOAL);
    cmd.args(args)
        .env_remove("SHOAL_HOST")
        .env_remove("SHOAL_TLS_DIR")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawning shoal");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shoal {args:?} did not finish within 90 s"))
        .unwrap();
    CliOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        took: started.elapsed(),
    }
}

pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A cluster of managers in one temp dir.
pub struct Cluster {
    root: Option<tempfile::TempDir>,
    pub managers: Vec<Manager>,
    /// The manager join token (it joins any role).
    pub token: String,
    /// The worker join token (agents and proxies).
    pub worker_token: String,
    /// An operator's client certificate (`shoal cluster client-cert`), for the CLI: unlike a
    /// manager's own, it outlives the removal of any manager.
    pub admin_tls: PathBuf,
}

impl Cluster {
    /// Bootstraps m1, then joins the others one at a time until all `n` are voters.
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    /// As `start`, m1 bootstrapping with `extra` flags (e.g. `--cert-lifetime`).
    pub async fn start_with(n: usize, extra: &[&str]) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("shoal-it-")
            .tempdir()
            .unwrap();
        let mut first = Manager::new(root.path(), "m1");
        first.spawn(extra);
        let token = first.wait_token().await;
        let worker_token = first.wait_token_of("worker").await;
        let admin_tls = root.path().join("admin-tls");
        let mut cluster = Cluster {
            root: Some(root),
            managers: vec![first],
            token,
            worker_token,
            admin_tls,
        };
        cluster.wait_voters(1).await;
        let (first, admin) = (&cluster.managers[0], &cluster.admin_tls);
        let out = run_cli(
            &[
                "--host",
                &first.grpc,
                "--tls-dir",
                first.tls_dir().to_str().unwrap(),
                "cluster",
                "client-cert",
                admin.to_str().unwrap(),
            ],
            None,
            &[],
        )
        .await;
        assert!(
            out.ok(),
            "issuing the harness's client certificate: {out:?}"
        );
        for _ in 1..n {
            cluster.add_manager().await;
        }
        cluster.learn_ids().await;
        cluster
    }

    pub fn root(&self) -> &Path {
        self.root.as_ref().unwrap().path()
    }

    /// Starts a new manager joining through every running one; waits until it is a voter.
    pub async fn add_manager(&mut self) -> usize {
        let name = format!("m{}", self.managers.len() + 1);
        let mut m = Manager::new(self.root(), &name);
        let join: Vec<String> = self.managers.iter().map(|m| m.grpc.clone()).collect();
        let join = join.join(",");
        let token = self.token.clone();
        m.spawn(&["--join", &join, "--token", &token]);
        self.managers.push(m);
        let voters = self.voters().await + 1;
        self.wait_voters(voters).await;
        self.learn_ids().await;
        self.managers.len() - 1
    }

    /// The index of the running manager that says it leads (waits for one).
    pub async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, m) in self.managers.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                if let Ok(s) = m.status().await {
                    if s.leader_id != 0 && s.leader_id == s.member_id {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every manager's address, comma-separated (for `--host`).
    pub fn hosts(&self) -> String {
        self.managers
            .iter()
            .map(|m| m.grpc.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn hosts_of(&self, indices: &[usize]) -> String {
        indices
            .iter()
            .map(|&i| self.managers[i].grpc.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Status from the first running manager that answers.
    pub async fn any_status(&mut self) -> Option<pb::StatusResponse> {
        for i in 0..self.managers.len() {
            if self.managers[i].is_running() {
                if let Ok(status) = self.managers[i].status().await {
                    return Some(status);
                }
            }
        }
        None
    }

    async fn voters(&mut self) -> usize {
        self.any_status()
            .await
            .map_or(0, |s| s.members.iter().filter(|m| m.voter).count())
    }

    /// Waits until a running manager reports a leader and exactly `n` voters.
    pub async fn wait_voters(&mut self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.any_status().await {
                let voters = status.members.iter().filter(|m| m.voter).count();
                if status.leader_id != 0 && voters == n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "cluster never reached {n} voters\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Fills each manager's `id` from the members' addresses.
    pub async fn learn_ids(&mut self) {
        let status = self.any_status().await.expect("a manager answers");
        for m in &mut self.managers {
            if let Some(member) = status.members.iter().find(|x| x.addr == m.grpc) {
                m.id = member.id;
            }
        }
    }

    /// Waits for a running manager that says it is the leader; returns its index.
    pub async fn wait_leader(&mut self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for i in 0..self.managers.len() {
                if !self.managers[i].is_running() {
                    continue;
                }
                if let Ok(status) = self.managers[i].status().await {
                    if status.leader_id != 0 && status.leader_id == status.member_id {
                        if self.managers[i].id == 0 {
                            self.managers[i].id = status.member_id;
                        }
                        return i;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until manager `i` has applied at least `index`.
    pub async fn wait_applied(&mut self, i: usize, index: u64) -> pb::StatusResponse {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(status) = self.managers[i].status().await {
                if status.applied_index >= index {
                    return status;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never applied index {index}\n{}",
                self.managers[i].name,
                self.logs()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's commit index, once there is a leader.
    pub async fn commit_index(&mut self) -> u64 {
        let leader = self.wait_leader().await;
        self.managers[leader]
            .status()
            .await
            .expect("leader answers status")
            .commit_index
    }

    /// Runs the CLI with `--host` listing every manager and the harness's client certificate.
    pub async fn cli(&self, args: &[&str]) -> CliOutput {
        let hosts = self.hosts();
        let mut all = vec!["--host", hosts.as_str()];
        all.extend_from_slice(args);
        run_cli(
            &all,
            None,
            &[("SHOAL_TLS_DIR", self.admin_tls.to_str().unwrap())],
        )
        .await
    }

    /// The tail of every manager's log, for failure messages.
    pub fn logs(&self) -> String {
        self.managers
            .iter()
            .map(|m| format!("---- {} ({}) ----\n{}", m.name, m.grpc, tail(&m.log_text())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.managers {
            m.kill();
        }
        if std::thread::panicking() {
            eprintln!("manager logs:\n{}", self.logs());
        }
        if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("keeping {}", root.keep().display());
            }
        }
    }
}
