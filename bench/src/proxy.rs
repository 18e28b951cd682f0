//! `shoal-bench proxy`: issue 5's figures for `shoal proxy` driving a real nginx, with real agents
//! on the machine's Docker engine.
//! - propagation: for every task a scale-up adds, the time from the task being RUNNING in the
//!   store to the first request through nginx that it answers;
//! - dropped requests: failed requests of a closed-loop load through nginx during a scale
//!   1 → 8 → 1, during a kill -9 of the leader (restarted afterwards), and during the
//!   zero-downtime changes: a rolling update, a rollback and a drain (with their durations).
//!
//! Everything it starts (managers, agents, nginx, `shoal proxy`) runs in its own process group
//! and is SIGKILLed when the bench ends, fails or gets Ctrl-C; the agents' containers are removed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::RangeRequest;
use shoal_tls::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tonic::transport::Channel;

use crate::cluster::{self, Cluster};
use crate::failover::{self, start_agents};
use crate::report::{self, Machine};

/// How often the poller reads `/shoal/tasks/`.
const POLL: Duration = Duration::from_millis(10);
/// A request through nginx that takes longer counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one step (a scale converging, a leader elected) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);
/// The host the service's Interlock labels name.
const HOST: &str = "test.local";

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    /// New tasks to measure (RUNNING → first answer through nginx), at least.
    #[arg(long, default_value_t = 50)]
    tasks: usize,
    /// Replicas each scale-up adds.
    #[arg(long, default_value_t = 5)]
    step: u64,
    /// Concurrent clients of the load loop, each sending its next request when the last answers.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Replicas during the rolling update, the rollback and the drain.
    #[arg(long, default_value_t = 8)]
    update_replicas: u64,
    /// `--update-parallelism` of the rolling update and the rollback.
    #[arg(long, default_value_t = 2)]
    update_parallelism: u64,
    /// Image the service runs; it must be in the local engine (`deploy/images/build`).
    #[arg(long, default_value = "shoal/whoami:latest")]
    image: String,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Where the temporary dir (data dirs, logs, nginx's files) goes.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Write the JSON there instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the temporary dir (it is always kept when a run fails).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    benchmark: &'static str,
    command: String,
    date: String,
    machine: Machine,
    /// `/proc/loadavg` when the cluster started and when the measurements ended: other work on
    /// the machine shows here.
    loadavg_start: String,
    loadavg_end: String,
    clients: usize,
    step: u64,
    poll_ms: u64,
    propagation: Propagation,
    windows: Vec<Window>,
}

#[derive(Debug, Serialize)]
struct Propagation {
    /// New tasks measured.
    tasks: usize,
    /// Replicas at the end of the scale-ups.
    replicas: u64,
    /// First answer through nginx − first poll that saw the task RUNNING.
    polled: Latency,
    /// First answer through nginx (wall clock) − the RUNNING record's `updated_ms` (the clock of
    /// the manager that wrote it: the same machine).
    from_record: Latency,
    /// `from_record` in three parts, on the wall clock. The RUNNING record's `updated_ms` → the
    /// first poll that saw the task in the leader's rendered config (`/shoal/proxy/config`).
    record_to_config: Latency,
    /// That poll → `shoal proxy` logging the first generation that has the task as live (it
    /// has written the file, run `nginx -t` and sent SIGHUP).
    config_to_signal: Latency,
    /// `record_to_config` + `config_to_signal`: shoal's own part, before nginx.
    record_to_signal: Latency,
    /// That log line → the first answer through nginx: nginx re-reading its config and
    /// starting new workers, and the load's turn coming round to the new server.
    signal_to_answer: Latency,
    /// Tasks whose first answer came before the poller saw them RUNNING (counted as 0 ms).
    answered_before_poll: usize,
    /// Tasks RUNNING that no request reached within the step's timeout.
    unanswered: Vec<String>,
    /// Requests per second the load loop got through nginx during the scale-ups.
    requests_per_sec: f64,
    per_task: Vec<TaskFigures>,
}

#[derive(Debug, Serialize)]
struct TaskFigures {
    task: String,
    /// Replicas after the scale-up that added it.
    replicas: u64,
    running_to_answer_ms: f64,
    record_to_answer_ms: f64,
    record_to_config_ms: Option<f64>,
    config_to_signal_ms: Option<f64>,
    record_to_signal_ms: Option<f64>,
    signal_to_answer_ms: Option<f64>,
    answered_before_poll: bool,
}

#[derive(Debug, Serialize)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    all_ms: Vec<f64>,
}

impl Latency {
    fn of(all: Vec<f64>) -> Latency {
        let f = failover::figures(all);
        Latency {
            p50_ms: f.p50_ms,
            p99_ms: f.p99_ms,
            max_ms: f.max_ms,
            all_ms: f.all_ms,
        }
    }
}

#[derive(Debug, Serialize)]
struct Window {
    window: String,
    requests: u64,
    failed: u64,
    seconds: f64,
    /// Failed requests by kind.
    errors: BTreeMap<String, u64>,
}

/// Requests sent and failed so far, and why they failed.
#[derive(Debug, Clone, Default)]
struct Counters {
    sent: u64,
    failed: u64,
    errors: BTreeMap<String, u64>,
}

/// When a task first and last answered a request through nginx.
struct Answer {
    first: Instant,
    first_wall_ms: u64,
    last: Instant,
}

struct LoadShared {
    stop: AtomicBool,
    counters: Mutex<Counters>,
    answers: Mutex<HashMap<String, Answer>>,
}

/// `clients` tasks sending `GET /` with `Host: test.local` through nginx in a closed loop.
struct Load {
    shared: Arc<LoadShared>,
    handles: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let shared = Arc::new(LoadShared {
            stop: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
            answers: Mutex::new(HashMap::new()),
        });
        let handles = (0..clients)
            .map(|_| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    while !shared.stop.load(Ordering::Relaxed) {
                        let result = request(addr).await;
                        let now = Instant::now();
                        let failed = result.is_err();
                        {
                            let mut c = shared.counters.lock().expect("not poisoned");
                            c.sent += 1;
                            if let Err(kind) = &result {
                                c.failed += 1;
                                *c.errors.entry(kind.clone()).or_insert(0) += 1;
                            }
                        }
                        if let Ok(task) = result {
                            let mut answers = shared.answers.lock().expect("not poisoned");
                            answers
                                .entry(task)
                                .and_modify(|a| a.last = now)
                                .or_insert(Answer {
                                    first: now,
                                    first_wall_ms: wall_ms(),
                                    last: now,
                                });
                        }
                        if failed {
                            // A refused connection fails at once: do not spin on it.
                            sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Load { shared, handles }
    }

    fn counters(&self) -> Counters {
        self.shared.counters.lock().expect("not poisoned").clone()
    }

    fn answered(&self, task: &str) -> bool {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .contains_key(task)
    }

    /// The tasks that answered at or after `since` (ever, for None).
    fn answering_since(&self, since: Option<Instant>) -> HashSet<String> {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, a)| since.is_none_or(|s| a.last >= s))
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn first_answer(&self, task: &str) -> Option<(Instant, u64)> {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .get(task)
            .map(|a| (a.first, a.first_wall_ms))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

/// One `GET /` through nginx, a new connection each (HTTP/1.0): the task that answered, or why
/// the request failed (a non-200 status, a connection error, a timeout).
async fn request(addr: SocketAddr) -> Result<String, String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {:?}", e.kind()))?;
        let _ = s.set_nodelay(true);
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {:?}", e.kind()))?;
        let mut buf = Vec::with_capacity(512);
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {:?}", e.kind()))?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1).unwrap_or("(none)");
        if status != "200" {
            return Err(format!("status {status}"));
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.lines()
            .find_map(|l| l.strip_prefix("task:"))
            .map(|t| t.trim().to_string())
            .ok_or_else(|| "200 without a task line".to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}

/// A task as the poller last read it.
struct TaskView {
    id: String,
    /// RUNNING and meant to run.
    running: bool,
    /// RUNNING, meant to run or not (a container still up).
    up: bool,
}

/// When the poller first saw a task RUNNING, and the record's `updated_ms` then.
struct SeenRunning {
    at: Instant,
    updated_ms: u64,
}

struct PollShared {
    stop: AtomicBool,
    latest: Mutex<Vec<TaskView>>,
    running: Mutex<HashMap<String, SeenRunning>>,
    /// When the poller first saw a task (seen RUNNING before) in the leader's rendered nginx
    /// config at `/shoal/proxy/config`.
    rendered: Mutex<HashMap<String, Rendered>>,
}

/// The first read of the rendered config that had a task: when (wall clock), which generation.
#[derive(Debug, Clone, Copy)]
struct Rendered {
    wall_ms: u64,
    generation: u64,
}

impl PollShared {
    /// Takes in one read of `/shoal/tasks/` made at `now`; returns the tasks seen RUNNING that
    /// were not seen in the rendered config yet.
    fn record(&self, kvs: Vec<shoal_proto::v1::KeyValue>, now: Instant) -> Vec<String> {
        let mut latest = Vec::new();
        let mut running = self.running.lock().expect("not poisoned");
        for kv in kvs {
            let Ok(t) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let id = t["id"].as_str().unwrap_or("").to_string();
            let is_running = t["state"] == "running";
            if is_running && !running.contains_key(&id) {
                running.insert(
                    id.clone(),
                    SeenRunning {
                        at: now,
                        updated_ms: t["updated_ms"].as_u64().unwrap_or(0),
                    },
                );
            }
            latest.push(TaskView {
                running: is_running && t["desired_state"] == "running",
                up: is_running,
                id,
            });
        }
        let pending: Vec<String> = {
            let rendered = self.rendered.lock().expect("not poisoned");
            running
                .keys()
                .filter(|id| !rendered.contains_key(*id))
                .cloned()
                .collect()
        };
        *self.latest.lock().expect("not poisoned") = latest;
        pending
    }
}

/// Reads `/shoal/tasks/` every `POLL` (linearizable reads over one kept connection, moving to
/// the next manager when one fails).
struct Poller {
    shared: Arc<PollShared>,
    handle: JoinHandle<()>,
}

impl Poller {
    fn start(addrs: Vec<SocketAddr>, tls: Credentials) -> Poller {
        let shared = Arc::new(PollShared {
            stop: AtomicBool::new(false),
            latest: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            rendered: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let handle = tokio::spawn(async move {
            let mut next = 0;
            let mut client: Option<KvClient<Channel>> = None;
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if client.is_none() {
                    let addr = addrs[next % addrs.len()];
                    next += 1;
                    client = connect(addr, &tls).await.ok();
                }
                let Some(kv) = client.as_mut() else { continue };
                let resp = kv
                    .range(RangeRequest {
                        key: b"/shoal/tasks/".to_vec(),
                        prefix: true,
                        ..Default::default()
                    })
                    .await;
                let now = Instant::now();
                let Ok(resp) = resp else {
                    client = None;
                    continue;
                };
                let pending = s.record(resp.into_inner().kvs, now);
                if pending.is_empty() {
                    continue;
                }
                let config = kv
                    .range(RangeRequest {
                        key: b"/shoal/proxy/config".to_vec(),
                        ..Default::default()
                    })
                    .await;
                let now = wall_ms();
                let Ok(config) = config else {
                    client = None;
                    continue;
                };
                let Some(record) = config.into_inner().kvs.into_iter().next() else {
                    continue;
                };
                let Ok(config) = serde_json::from_slice::<Value>(&record.value) else {
                    continue;
                };
                let nginx = config["nginx"].as_str().unwrap_or("");
                let seen = Rendered {
                    wall_ms: now,
                    generation: config["generation"].as_u64().unwrap_or(0),
                };
                let mut rendered = s.rendered.lock().expect("not poisoned");
                for id in pending {
                    if nginx.contains(&format!("# task {id} ")) {
                        rendered.insert(id, seen);
                    }
                }
            }
        });
        Poller { shared, handle }
    }

    /// Ids of the tasks RUNNING and meant to run, as last read.
    fn running(&self) -> Vec<String> {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|t| t.running)
            .map(|t| t.id.clone())
            .collect()
    }

    /// How many tasks are RUNNING, meant to run or being stopped, as last read.
    fn up(&self) -> usize {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|t| t.up)
            .count()
    }

    /// Every task id in the last read, whatever its state.
    fn all(&self) -> HashSet<String> {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }

    fn seen_running(&self, task: &str) -> Option<(Instant, u64)> {
        self.shared
            .running
            .lock()
            .expect("not poisoned")
            .get(task)
            .map(|s| (s.at, s.updated_ms))
    }

    fn seen_rendered(&self, task: &str) -> Option<Rendered> {
        self.shared
            .rendered
            .lock()
            .expect("not poisoned")
            .get(task)
            .copied()
    }

    fn seen_running_ids(&self) -> Vec<String> {
        self.shared
            .running
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.handle.abort();
    }
}

async fn connect(addr: SocketAddr, tls: &Credentials) -> Result<KvClient<Channel>> {
    let endpoint = cluster::endpoint(addr)?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let channel = cluster::connect(endpoint, tls).await?;
    Ok(KvClient::new(channel))
}

/// nginx and `shoal proxy` next to it, each in its own process group, SIGKILLed on drop.
struct Nginx {
    port: u16,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Nginx {
    async fn start(exe: &Path, dir: &Path, join: &str, token: &str) -> Result<Nginx> {
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(dir.join("conf.d"))?;
        let port = std::net::TcpListener::bind("0.0.0.0:0")?
            .local_addr()?
            .port();
        let config = dir.join("nginx.conf");
        std::fs::write(&config, initial_config(port, &run))?;
        let log = |file: &str| std::fs::File::create(dir.join(file));
        let mut me = Nginx {
            port,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        me.children.push(
            std::process::Command::new("nginx")
                .arg("-c")
                .arg(&config)
                .arg("-p")
                .arg(dir)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(log("nginx.out")?)
                .stderr(log("nginx.err")?)
                .process_group(0)
                .spawn()
                .context("starting nginx (apt-get install nginx-light)")?,
        );
        // nginx answers (503) before shoal proxy is started: its pid file is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while request(me.addr()).await != Err("status 503".into()) {
            if let Some(status) = me.children[0].try_wait()? {
                bail!("nginx exited ({status}):\n{}", me.logs());
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer on port {port}:\n{}", me.logs());
            }
            sleep(Duration::from_millis(50)).await;
        }
        let out = log("proxy.log")?;
        me.children.push(
            std::process::Command::new(exe)
                .arg("proxy")
                .args(["--join", join, "--token", token, "--kind", "nginx"])
                .args(["--name", "bench"])
                .arg("--config")
                .arg(&config)
                .arg("--pid-file")
                .arg(run.join("nginx.pid"))
                .args(["--listen-port", &port.to_string()])
                .arg("--run-dir")
                .arg(&run)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .process_group(0)
                .spawn()
                .context("starting shoal proxy")?,
        );
        Ok(me)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "---- nginx.err ----\n{}\n---- run/error.log ----\n{}\n---- proxy.log ----\n{}",
            read("nginx.err"),
            read("run/error.log"),
            read("proxy.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// A minimal config that serves 503 on `port`, with every path nginx writes under `run`;
/// `shoal proxy` replaces it at its first apply.
fn initial_config(port: u16, run: &Path) -> String {
    let run = run.display();
    format!(
        "# Written by shoal-bench; shoal proxy replaces it at its first apply.
worker_processes auto;
pid {run}/nginx.pid;
error_log {run}/error.log;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    server {{
        listen {port} default_server;
        server_name _;
        return 503;
    }}
}}
"
    )
}

/// `shoal --host HOSTS --tls-dir TLS_DIR ARGS...`, its stdout; an error with its stderr if it
/// fails.
async fn cli(exe: &Path, hosts: &str, tls_dir: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(exe)
        .args(["--host", hosts])
        .arg("--tls-dir")
        .arg(tls_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "shoal {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn scale(exe: &Path, hosts: &str, tls_dir: &Path, replicas: u64) -> Result<()> {
    cli(
        exe,
        hosts,
        tls_dir,
        &["service", "scale", &format!("web={replicas}")],
    )
    .await?;
    Ok(())
}

/// Until web's update (`service inspect`) is in `state`, for at most `within`.
async fn update_done(
    exe: &Path,
    hosts: &str,
    tls_dir: &Path,
    state: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let out = cli(exe, hosts, tls_dir, &["service", "inspect", "web"]).await?;
        let inspected: Value = serde_json::from_str(&out)?;
        if inspected[0]["update"]["state"] == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "web's update never reached {state}: {}",
                inspected[0]["update"]
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Until `n` tasks run and every one of them answered at or after `since` (ever, for None).
async fn all_answering(poll: &Poller, load: &Load, n: usize, since: Option<Instant>) -> Result<()> {
    // A task needs a few seconds at most; many at once queue behind the engine.
    let within = STEP_TIMEOUT.max(Duration::from_secs(2) * n as u32);
    until(&format!("{n} tasks running and answering"), within, || {
        let running = poll.running();
        let answering = load.answering_since(since);
        running.len() == n && running.iter().all(|t| answering.contains(t))
    })
    .await
}

/// Until exactly one task runs and, for a whole second, only it answered.
async fn only_one_answering(poll: &Poller, load: &Load) -> Result<()> {
    until("one task left answering", STEP_TIMEOUT, || {
        let running = poll.running();
        let answering = load.answering_since(Instant::now().checked_sub(Duration::from_secs(1)));
        running.len() == 1 && answering.len() == 1 && answering.contains(&running[0])
    })
    .await
}

/// `(generation, wall ms)` of every "generation G (revision R) is live" line of `shoal proxy`'s
/// log, in order.
fn live_generations(log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(") is live"))
        .filter_map(|l| {
            let at = parse_utc_ms(l.split_whitespace().next()?)?;
            let generation = l
                .split("generation ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((generation, at))
        })
        .collect()
}

/// `2026-11-21T11:10:02.737167Z` (tracing's timestamps) → ms since the epoch.
fn parse_utc_ms(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from 1970-01-01 to y-m-d (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + frac_ms).ok()
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn window(name: impl Into<String>, before: &Counters, after: &Counters, start: Instant) -> Window {
    let mut errors = after.errors.clone();
    for (kind, n) in &before.errors {
        if let Some(m) = errors.get_mut(kind) {
            *m -= n;
        }
    }
    errors.retain(|_, n| *n > 0);
    Window {
        window: name.into(),
        requests: after.sent - before.sent,
        failed: after.failed - before.failed,
        seconds: (start.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        errors,
    }
}

pub(crate) async fn run(args: ProxyArgs) -> Result<()> {
    if args.clients == 0 || args.step == 0 {
        bail!("--clients and --step must be at least 1");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-proxy-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a temporary dir in {}", args.dir.display()))?;
    let result = measure(&args, &exe, tmp.path()).await;
    if result.is_err() || args.keep {
        let kept = tmp.keep();
        eprintln!("logs and data dirs kept in {}", kept.display());
    }
    result
}

async fn measure(args: &ProxyArgs, exe: &Path, dir: &Path) -> Result<()> {
    let loadavg_start = loadavg();
    let mut cluster = Cluster::start(exe, dir, 3).await?;
    let addrs = cluster.addrs();
    let (tls, tls_dir) = (cluster.tls().clone(), cluster.tls_dir());
    let join = hosts(&addrs);
    let agents = start_agents(exe, dir, &join, cluster.token(), 2)?;
    cli(
        exe,
        &join,
        &tls_dir,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "1",
            "-p",
            "80",
            "--label",
            "interlock.hostname=test",
            "--label",
            "interlock.domain=local",
            &args.image,
        ],
    )
    .await?;
    let poll = Poller::start(addrs.clone(), tls.clone());
    until("the first task to run", STEP_TIMEOUT, || {
        poll.running().len() == 1
    })
    .await?;
    let nginx = Nginx::start(exe, &dir.join("nginx"), &join, cluster.token()).await?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while request(nginx.addr()).await.is_err() {
        if Instant::now() > deadline {
            bail!("nginx never served {HOST}:\n{}", nginx.logs());
        }
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!("nginx on port {} serves {HOST}", nginx.port);
    let load = Load::start(nginx.addr(), args.clients);

    // 1. Scale up by `step` until `tasks` new tasks were measured.
    let baseline = poll.all();
    let new_tasks = || -> Vec<String> {
        poll.seen_running_ids()
            .into_iter()
            .filter(|id| !baseline.contains(id) && load.answered(id))
            .collect()
    };
    let (ups_start, ups_before) = (Instant::now(), load.counters());
    let mut replicas = 1u64;
    let mut unanswered = Vec::new();
    // The replicas after the scale-up that added each task.
    let mut step_of: HashMap<String, u64> = HashMap::new();
    while new_tasks().len() < args.tasks {
        replicas += args.step;
        let step_start = Instant::now();
        scale(exe, &join, &tls_dir, replicas).await?;
        let converged = all_answering(&poll, &load, replicas as usize, None).await;
        for id in poll.seen_running_ids() {
            if !baseline.contains(&id) {
                step_of.entry(id).or_insert(replicas);
            }
        }
        if let Err(e) = converged {
            unanswered = poll
                .running()
                .into_iter()
                .filter(|t| !load.answered(t))
                .collect();
            eprintln!(
                "{e:#}; stopping the scale-ups ({} unanswered)",
                unanswered.len()
            );
            break;
        }
        eprintln!(
            "{replicas} replicas, all answering after {:.0} ms: {} new tasks measured",
            ms(step_start.elapsed()),
            new_tasks().len()
        );
    }
    let ups = window("scale-ups", &ups_before, &load.counters(), ups_start);
    let live = live_generations(&nginx.dir.join("proxy.log"));
    let mut per_task = Vec::new();
    for id in new_tasks() {
        let (Some((seen, updated_ms)), Some((first, first_wall_ms))) =
            (poll.seen_running(&id), load.first_answer(&id))
        else {
            continue;
        };
        let rendered = poll.seen_rendered(&id);
        // The first generation live in nginx that has the task.
        let signalled = rendered.and_then(|r| {
            live.iter()
                .find(|(generation, _)| *generation >= r.generation)
                .map(|(_, at)| *at)
        });
        let span = |from: Option<u64>, to: Option<u64>| Some(to?.saturating_sub(from?) as f64);
        per_task.push(TaskFigures {
            replicas: step_of.get(&id).copied().unwrap_or(replicas),
            running_to_answer_ms: ms(first.saturating_duration_since(seen)),
            record_to_answer_ms: first_wall_ms.saturating_sub(updated_ms) as f64,
            record_to_config_ms: span(Some(updated_ms), rendered.map(|r| r.wall_ms)),
            config_to_signal_ms: span(rendered.map(|r| r.wall_ms), signalled),
            record_to_signal_ms: span(Some(updated_ms), signalled),
            signal_to_answer_ms: span(signalled, Some(first_wall_ms)),
            answered_before_poll: first < seen,
            task: id,
        });
    }
    per_task.sort_by_key(|t| t.replicas);
    let pick =
        |f: fn(&TaskFigures) -> Option<f64>| Latency::of(per_task.iter().filter_map(f).collect());
    let propagation = Propagation {
        tasks: per_task.len(),
        replicas,
        polled: pick(|t| Some(t.running_to_answer_ms)),
        from_record: pick(|t| Some(t.record_to_answer_ms)),
        record_to_config: pick(|t| t.record_to_config_ms),
        config_to_signal: pick(|t| t.config_to_signal_ms),
        record_to_signal: pick(|t| t.record_to_signal_ms),
        signal_to_answer: pick(|t| t.signal_to_answer_ms),
        answered_before_poll: per_task.iter().filter(|t| t.answered_before_poll).count(),
        unanswered,
        requests_per_sec: (ups.requests as f64 / ups.seconds.max(0.001)).round(),
        per_task,
    };

    // 2a. Back to 1, then a scale 1 → 8 → 1 under the load.
    let t = Instant::now();
    scale(exe, &join, &tls_dir, 1).await?;
    only_one_answering(&poll, &load).await?;
    eprintln!(
        "back to 1 replica answering after {:.0} ms",
        ms(t.elapsed())
    );
    // The window starts once the agents have stopped the other tasks' containers.
    until("the stopped tasks to leave RUNNING", STEP_TIMEOUT, || {
        poll.up() == 1
    })
    .await?;
    eprintln!(
        "the other tasks stopped after {:.0} ms; scale 1 → 8 → 1 ...",
        ms(t.elapsed())
    );
    let (start, before) = (Instant::now(), load.counters());
    scale(exe, &join, &tls_dir, 8).await?;
    all_answering(&poll, &load, 8, Some(start)).await?;
    eprintln!("8 answering after {:.0} ms", ms(start.elapsed()));
    let t = Instant::now();
    scale(exe, &join, &tls_dir, 1).await?;
    only_one_answering(&poll, &load).await?;
    eprintln!(
        "1 left (and alone answering for 1 s) after {:.0} ms",
        ms(t.elapsed())
    );
    let scaling = window("scale 1 → 8 → 1", &before, &load.counters(), start);

    // 2b. kill -9 the leader; through the new leader scale to 2 (the config must follow it);
    // restart the killed manager.
    eprintln!("kill -9 of the leader ...");
    let (start, before) = (Instant::now(), load.counters());
    let leader = failover::leader_index(&addrs, &tls).await?;
    let survivors: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| *a)
        .collect();
    cluster.kill(leader);
    failover::leader_index(&survivors, &tls).await?;
    eprintln!(
        "new leader after {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    scale(exe, &hosts(&survivors), &tls_dir, 2).await?;
    all_answering(&poll, &load, 2, Some(start)).await?;
    cluster.restart(exe, leader).await?;
    sleep(Duration::from_secs(1)).await;
    let failover_window = window(
        "kill -9 leader, scale 1 → 2, restart it",
        &before,
        &load.counters(),
        start,
    );

    // 3. Zero-downtime changes: a rolling update of every task (`--force`), a rollback, and a
    // drain of node-2 (start-first), each timed until done.
    let join = hosts(&addrs);
    let n = args.update_replicas;
    scale(exe, &join, &tls_dir, n).await?;
    all_answering(&poll, &load, n as usize, None).await?;
    let parallelism = args.update_parallelism.to_string();
    // Each batch of an update waits for its tasks' drain delay, stop, start and first answer.
    let batches = match args.update_parallelism {
        0 => 1,
        p => n.div_ceil(p),
    };
    let change_timeout = STEP_TIMEOUT.max(Duration::from_secs(30) * batches as u32);
    let mut changes = Vec::new();
    for (name, command, done) in [
        (
            format!("rolling update of {n} (parallelism {parallelism})"),
            vec![
                "service",
                "update",
                "web",
                "--force",
                "--update-parallelism",
                &parallelism,
                "--update-monitor",
                "0s",
            ],
            Some("completed"),
        ),
        (
            format!("rollback of {n}"),
            vec!["service", "rollback", "web"],
            Some("rollback_completed"),
        ),
        (
            format!("drain node-2 of {n} (--wait)"),
            vec![
                "node",
                "update",
                "--availability",
                "drain",
                "--wait",
                "node-2",
            ],
            None,
        ),
    ] {
        let (start, before) = (Instant::now(), load.counters());
        cli(exe, &join, &tls_dir, &command).await?;
        if let Some(state) = done {
            update_done(exe, &join, &tls_dir, state, change_timeout).await?;
        }
        all_answering(&poll, &load, n as usize, Some(start)).await?;
        eprintln!("{name}: done after {:.0} ms", ms(start.elapsed()));
        changes.push(window(name, &before, &load.counters(), start));
    }
    cli(
        exe,
        &join,
        &tls_dir,
        &["node", "update", "--availability", "active", "node-2"],
    )
    .await?;

    let loadavg_end = loadavg();
    drop(load);
    drop(poll);
    drop(nginx);
    drop(agents);
    drop(cluster);

    let report = Report {
        benchmark: "proxy",
        command: report::command_line(),
        date: report::now_utc(),
        machine: Machine::probe(dir),
        loadavg_start,
        loadavg_end,
        clients: args.clients,
        step: args.step,
        poll_ms: POLL.as_millis() as u64,
        propagation,
        windows: [scaling, failover_window]
            .into_iter()
            .chain(changes)
            .collect(),
    };
    print(&report);
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn hosts(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

fn print(r: &Report) {
    let m = &r.machine;
    println!("command:  {}", r.command);
    println!("date:     {}", r.date);
    println!(
        "machine:  {} cpus ({}), memory {}, kernel {}",
        m.nproc, m.cpu, m.mem_total, m.kernel
    );
    println!(
        "loadavg:  {} at the start, {} at the end (1, 5, 15 min)",
        r.loadavg_start, r.loadavg_end
    );
    let p = &r.propagation;
    println!(
        "load:     {} clients in a closed loop through nginx, {:.0} requests/s during the scale-ups \
         to {} replicas (+{} each)",
        r.clients, p.requests_per_sec, p.replicas, r.step
    );
    println!();
    println!("| task RUNNING → first request it answers through nginx | tasks | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let rows = [
        (
            format!(
                "from the first poll that saw it RUNNING (every {} ms)",
                r.poll_ms
            ),
            &p.polled,
        ),
        (
            "from the RUNNING record's updated_ms".to_string(),
            &p.from_record,
        ),
        (
            "├ updated_ms → seen in the leader's rendered config".to_string(),
            &p.record_to_config,
        ),
        (
            "├ rendered → shoal proxy has run nginx -t and sent SIGHUP".to_string(),
            &p.config_to_signal,
        ),
        (
            "├ (both: updated_ms → SIGHUP sent, shoal's own part)".to_string(),
            &p.record_to_signal,
        ),
        (
            "└ SIGHUP → first answer (new workers, the load's turn)".to_string(),
            &p.signal_to_answer,
        ),
    ];
    for (name, l) in rows {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |",
            l.all_ms.len(),
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    // The load reaches a new server only when its turn comes round: the later, the more servers.
    let mut by_replicas: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for t in &p.per_task {
        by_replicas
            .entry(t.replicas)
            .or_default()
            .push(t.running_to_answer_ms);
    }
    let steps: Vec<String> = by_replicas
        .iter()
        .map(|(n, v)| format!("{n}: {:.0}", v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    println!("mean ms by replicas after the step: {}", steps.join(", "));
    if p.answered_before_poll > 0 {
        println!(
            "{} tasks answered before the poller saw them RUNNING (counted as 0 ms)",
            p.answered_before_poll
        );
    }
    if !p.unanswered.is_empty() {
        println!(
            "tasks RUNNING that never answered: {}",
            p.unanswered.join(" ")
        );
    }
    println!();
    println!("| window | requests | failed | seconds |");
    println!("|---|---:|---:|---:|");
    for w in &r.windows {
        println!(
            "| {} | {} | {} | {:.1} |",
            w.window, w.requests, w.failed, w.seconds
        );
    }
    for w in &r.windows {
        for (kind, n) in &w.errors {
            println!("{}: {n} × {kind}", w.window);
        }
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_parse() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        // date -u -d 2026-11-21T11:10:02.737Z +%s%3N
        assert_eq!(
            parse_utc_ms("2026-11-21T11:10:02.737167Z"),
            Some(1_795_259_402_737)
        );
        assert_eq!(parse_utc_ms("not a time"), None);
    }
}
