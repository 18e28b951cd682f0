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

mod drive;
mod load;
mod measure;
mod nginx;
mod poll;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cluster;

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

pub(crate) async fn run(args: ProxyArgs) -> Result<()> {
    if args.clients == 0 || args.step == 0 {
        bail!("--clients and --step must be at least 1");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-proxy-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a temporary dir in {}", args.dir.display()))?;
    let result = measure::measure(&args, &exe, tmp.path()).await;
    if result.is_err() || args.keep {
        let kept = tmp.keep();
        eprintln!("logs and data dirs kept in {}", kept.display());
    }
    result
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
fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}
