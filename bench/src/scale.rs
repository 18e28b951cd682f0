//! `shoal-bench scale`: scheduling at scale with simulated nodes (`simagent`, a test double).
//! For each node count: a fresh 3-manager cluster, the managers' idle RSS, N simulated nodes
//! registered with the leader, then S services of R replicas created with the CLI
//! (`shoal service create`); a watch of `/shoal/tasks/` on a follower times every task's first
//! ASSIGNED and RUNNING. Figures: placements per second, time until all RUNNING, the leader's CPU
//! seconds and peak RSS (VmHWM), and its RSS once everything runs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::WatchRequest;
use shoal_tls::Credentials;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::{self, Cluster};
use crate::failover::leader_index;
use crate::report::{self, Header};
use crate::simagent::{self, SimAgents, SimConfig};

#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    /// Simulated node counts, one fresh cluster each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    nodes: Vec<usize>,
    /// Services to create.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Replicas per service.
    #[arg(long, default_value_t = 1000)]
    replicas: u64,
    /// Heartbeat period the simulated nodes ask for.
    #[arg(long, default_value_t = 500)]
    heartbeat_ms: u64,
    /// `shoal service create` processes run at once (an operator's script in parallel).
    #[arg(long, default_value_t = 8)]
    create_concurrency: usize,
    /// Give up on a node count after this many seconds from the first service create.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// The image the services run (the simulated nodes all claim to have it).
    #[arg(long, default_value = "shoal/whoami:latest")]
    image: String,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Keep the data dirs and manager logs (they are also kept when the run fails).
    #[arg(long)]
    keep: bool,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Run {
    nodes: usize,
    tasks: u64,
    /// Whether every task was RUNNING before the timeout.
    complete: bool,
    assigned: u64,
    running: u64,
    /// Tasks ASSIGNED ÷ seconds from the first service create to the last first-ASSIGNED.
    placements_per_sec: f64,
    seconds_to_all_assigned: Option<f64>,
    seconds_to_all_running: Option<f64>,
    seconds_to_create_services: f64,
    leader_cpu_seconds: f64,
    leader_peak_rss_mb: f64,
    leader_rss_loaded_mb: f64,
    /// Every manager's RSS with an empty store, before any node registered.
    managers_idle_rss_mb: Vec<f64>,
    /// RSS of the leader with the nodes registered, before any task.
    leader_rss_nodes_only_mb: f64,
    sim_heartbeats: u64,
    sim_heartbeat_errors: u64,
    sim_assignment_sets: u64,
    sim_report_errors: u64,
    sim_stream_errors: u64,
    /// Raft terms begun between the first service create and the end (target 0: the leader
    /// kept its term under the load).
    term_changes: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    shoal_bin: PathBuf,
    heartbeat_ms: u64,
    runs: Vec<Run>,
}

pub(crate) async fn run(args: ScaleArgs) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.contains(&0) || args.services == 0 {
        bail!("--nodes and --services must be at least 1");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    std::fs::create_dir_all(&args.dir)?;
    let mut report = Report {
        header: Header::new("scale", &args.dir),
        shoal_bin: exe.clone(),
        heartbeat_ms: args.heartbeat_ms,
        runs: Vec::new(),
    };
    report.header.print_command_and_date();
    for &nodes in &args.nodes {
        let tmp = tempfile::Builder::new()
            .prefix("shoal-bench-scale-")
            .tempdir_in(&args.dir)?;
        let result = one(&args, &exe, tmp.path(), nodes).await;
        if result.is_err() || args.keep {
            eprintln!(
                "data dirs and manager logs kept in {}",
                tmp.keep().display()
            );
        }
        let run = result?;
        print_run(&run);
        report.runs.push(run);
    }
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

async fn one(args: &ScaleArgs, exe: &Path, dir: &Path, nodes: usize) -> Result<Run> {
    let cluster = Cluster::start(exe, dir, 3).await?;
    let addrs = cluster.addrs();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let managers_idle_rss_mb = (0..addrs.len())
        .map(|i| proc_status(cluster.pid(i)).rss_mb)
        .collect();
    let leader = leader_index(&addrs, cluster.tls()).await?;
    let pid = cluster.pid(leader);
    let follower = addrs[(leader + 1) % addrs.len()];
    eprintln!(
        "{nodes} nodes: joining for worker certificates through the leader {} ...",
        addrs[leader]
    );
    let started = Instant::now();
    let certs = simagent::join_all(addrs[leader], cluster.tls(), cluster.token(), nodes).await?;
    eprintln!(
        "{nodes} nodes joined in {:.1} s; registering with the leader ...",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let sims = SimAgents::start(
        addrs[leader],
        certs,
        SimConfig {
            heartbeat_ms: args.heartbeat_ms,
            images: vec![args.image.clone()],
        },
    )
    .await?;
    eprintln!(
        "{nodes} nodes registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader_rss_nodes_only_mb = proc_status(pid).rss_mb;

    let total = args.services as u64 * args.replicas;
    let (progress_tx, progress) = watch::channel(Progress::default());
    let watcher = tokio::spawn(watch_tasks(
        follower,
        cluster.tls().clone(),
        total,
        progress_tx,
    ));
    // Let the watch open before the first task exists.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_before = cpu_seconds(pid);
    let t0 = Instant::now();
    let host = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let term_before = cluster::status(addrs[leader], cluster.tls()).await?.term;
    let replicas = args.replicas.to_string();
    let tls_dir = cluster.tls_dir();
    let creates: Vec<usize> = (0..args.services).collect();
    for wave in creates.chunks(args.create_concurrency.max(1)) {
        let mut children = tokio::task::JoinSet::new();
        for s in wave {
            let child = tokio::process::Command::new(exe)
                .args(["--host", &host])
                .arg("--tls-dir")
                .arg(&tls_dir)
                .args(["service", "create", "--name"])
                .arg(format!("bench-{s:04}"))
                .args(["--replicas", &replicas, &args.image])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("running shoal service create")?;
            children.spawn(child.wait_with_output());
        }
        while let Some(out) = children.join_next().await {
            let out = out?.context("running shoal service create")?;
            if !out.status.success() {
                bail!(
                    "service create failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
    let seconds_to_create_services = t0.elapsed().as_secs_f64();
    let deadline = t0 + Duration::from_secs(args.timeout);
    let mut last_print = Instant::now();
    let p = loop {
        let p = progress.borrow().clone();
        if p.running >= total || Instant::now() >= deadline || watcher.is_finished() {
            break p;
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            let c = &sims.counters;
            eprintln!(
                "{:>6.1} s: {} assigned, {} running of {total}; sets {}, heartbeat errors {}, report errors {} (last: {})",
                t0.elapsed().as_secs_f64(),
                p.assigned,
                p.running,
                c.assignment_sets.load(Ordering::Relaxed),
                c.heartbeat_errors.load(Ordering::Relaxed),
                c.report_errors.load(Ordering::Relaxed),
                c.last_error(),
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    watcher.abort();
    let cpu = cpu_seconds(pid) - cpu_before;
    let mut term_after = term_before;
    for addr in &addrs {
        if let Ok(s) = cluster::status(*addr, cluster.tls()).await {
            term_after = term_after.max(s.term);
        }
    }
    let status = proc_status(pid);
    let since = |t: Option<Instant>| t.map(|t| round(t.duration_since(t0).as_secs_f64()));
    let last_assigned = p.last_assigned.map(|t| t.duration_since(t0).as_secs_f64());
    let c = &sims.counters;
    let run = Run {
        nodes,
        tasks: total,
        complete: p.running >= total,
        assigned: p.assigned,
        running: p.running,
        placements_per_sec: match last_assigned {
            Some(s) if s > 0.0 => round(p.assigned as f64 / s),
            _ => 0.0,
        },
        seconds_to_all_assigned: if p.assigned >= total {
            since(p.last_assigned)
        } else {
            None
        },
        seconds_to_all_running: if p.running >= total {
            since(p.last_running)
        } else {
            None
        },
        seconds_to_create_services: round(seconds_to_create_services),
        leader_cpu_seconds: round(cpu),
        leader_peak_rss_mb: status.hwm_mb,
        leader_rss_loaded_mb: status.rss_mb,
        managers_idle_rss_mb,
        leader_rss_nodes_only_mb,
        sim_heartbeats: c.heartbeats.load(Ordering::Relaxed),
        sim_heartbeat_errors: c.heartbeat_errors.load(Ordering::Relaxed),
        sim_assignment_sets: c.assignment_sets.load(Ordering::Relaxed),
        sim_report_errors: c.report_errors.load(Ordering::Relaxed),
        sim_stream_errors: c.stream_errors.load(Ordering::Relaxed),
        term_changes: term_after - term_before,
    };
    drop(sims);
    drop(cluster);
    Ok(run)
}

#[derive(Debug, Clone, Default)]
struct Progress {
    assigned: u64,
    running: u64,
    last_assigned: Option<Instant>,
    last_running: Option<Instant>,
}

#[derive(Deserialize)]
struct TaskHead {
    id: String,
    state: String,
}

/// Follows `/shoal/tasks/` on a follower and counts each task's first ASSIGNED-or-later and
/// first RUNNING, with the time they were seen.
async fn watch_tasks(
    addr: SocketAddr,
    tls: Credentials,
    total: u64,
    progress: watch::Sender<Progress>,
) -> Result<()> {
    let channel = cluster::connect(cluster::endpoint(addr)?.tcp_nodelay(true), &tls).await?;
    let mut kv = KvClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let mut stream = kv
        .watch(WatchRequest {
            key: b"/shoal/tasks/".to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    // 1: seen assigned (or later), 2: seen running.
    let mut seen: HashMap<String, u8> = HashMap::with_capacity(total as usize);
    let mut p = Progress::default();
    while let Some(batch) = stream.message().await? {
        let now = Instant::now();
        for e in batch.events {
            let Some(kv) = e.kv else { continue };
            let Ok(t) = serde_json::from_slice::<TaskHead>(&kv.value) else {
                continue;
            };
            let level = match t.state.as_str() {
                "new" | "pending" => 0,
                "running" | "complete" | "failed" | "shutdown" => 2,
                _ => 1,
            };
            let had = seen.get(&t.id).copied().unwrap_or(0);
            if level > had {
                if had == 0 {
                    p.assigned += 1;
                    p.last_assigned = Some(now);
                }
                if level == 2 {
                    p.running += 1;
                    p.last_running = Some(now);
                }
                seen.insert(t.id, level);
            }
        }
        progress.send_replace(p.clone());
    }
    Ok(())
}

fn print_run(r: &Run) {
    let opt = |x: Option<f64>| x.map_or("not reached".to_string(), |s| format!("{s:.1} s"));
    println!();
    println!(
        "| nodes | tasks | placements/s | all ASSIGNED | all RUNNING | leader CPU s | leader peak RSS MB | term changes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {} | {:.0} | {} | {} | {:.1} | {:.0} | {} |",
        r.nodes,
        r.tasks,
        r.placements_per_sec,
        opt(r.seconds_to_all_assigned),
        opt(r.seconds_to_all_running),
        r.leader_cpu_seconds,
        r.leader_peak_rss_mb,
        r.term_changes
    );
    println!(
        "assigned {} running {} of {}; services created in {:.1} s; idle RSS {:?} MB, with nodes {:.0} MB, loaded {:.0} MB",
        r.assigned,
        r.running,
        r.tasks,
        r.seconds_to_create_services,
        r.managers_idle_rss_mb,
        r.leader_rss_nodes_only_mb,
        r.leader_rss_loaded_mb
    );
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Debug, Default)]
struct ProcStatus {
    rss_mb: f64,
    hwm_mb: f64,
}

/// VmRSS and VmHWM of a process, in MB (0 if it is gone).
fn proc_status(pid: u32) -> ProcStatus {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    ProcStatus {
        rss_mb: round(kb("VmRSS:") / 1024.0),
        hwm_mb: round(kb("VmHWM:") / 1024.0),
    }
}

/// User plus system CPU seconds of a process (0 if it is gone).
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    match (ticks(14), ticks(15)) {
        (Some(u), Some(s)) => (u + s) / clk_tck(),
        _ => 0.0,
    }
}

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
