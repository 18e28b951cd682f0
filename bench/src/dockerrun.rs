//! `shoal-bench docker-run`: what shoal adds to `docker run -d`. A fresh 3-manager cluster and
//! one real agent on the local engine; then, alternately, `docker -H <follower's Docker API>
//! run -d IMAGE` (the request crosses a follower, the leader's store, the scheduler, the
//! dispatcher and the agent, and returns when the container runs, as Docker's does) and the
//! same `docker run -d IMAGE` straight against the engine. Both go through the docker CLI, so
//! its own start-up is in both figures and cancels out in the difference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tokio::time::Instant;

use crate::cluster::{self, Cluster};
use crate::failover::{figures, leader_index, remove_labelled, start_agents, Figures};
use crate::report::{self, Header};

#[derive(Debug, Args)]
pub(crate) struct DockerRunArgs {
    /// `docker run -d` calls on each path.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Image to run; it must be in the local engine (`deploy/images/build whoami`).
    #[arg(long, default_value = "shoal/whoami:latest")]
    image: String,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    image: String,
    /// Through a follower's Docker API.
    shoal: Figures,
    /// Straight against the local engine.
    engine: Figures,
    /// shoal's p50 and p99 minus the engine's.
    added_p50_ms: f64,
    added_p99_ms: f64,
}

/// Label on every container this bench starts, so that it removes exactly those.
const LABEL: &str = "shoal-bench=docker-run";

pub(crate) async fn run(args: DockerRunArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    std::fs::create_dir_all(&args.dir)?;
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-docker-run-")
        .tempdir_in(&args.dir)?;
    let result = measure(&args, &exe, tmp.path()).await;
    // shoal's containers carry the label too: the agent keeps the create body's labels.
    remove_labelled(LABEL);
    if result.is_err() {
        eprintln!("data dirs and logs kept in {}", tmp.keep().display());
    }
    let report = result?;
    println!(
        "| path | runs | p50 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|\n| shoal (follower) | {} | {:.0} | {:.0} | {:.0} |\n| engine | {} | {:.0} | {:.0} | {:.0} |",
        report.shoal.trials,
        report.shoal.p50_ms,
        report.shoal.p99_ms,
        report.shoal.max_ms,
        report.engine.trials,
        report.engine.p50_ms,
        report.engine.p99_ms,
        report.engine.max_ms,
    );
    println!(
        "shoal adds {:.0} ms at p50, {:.0} ms at p99",
        report.added_p50_ms, report.added_p99_ms
    );
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

async fn measure(args: &DockerRunArgs, exe: &Path, dir: &Path) -> Result<Report> {
    let cluster = Cluster::start(exe, dir, 3).await?;
    let addrs = cluster.addrs();
    let leader = leader_index(&addrs, cluster.tls()).await?;
    let follower = cluster.docker_addrs()[(leader + 1) % addrs.len()];
    let _agents = start_agents(exe, dir, &addrs[leader].to_string(), cluster.token(), 1)?;
    let host = format!("tcp://{follower}");
    // The first run waits for the agent to register and report its images.
    let ready = Instant::now() + Duration::from_secs(60);
    loop {
        if docker(Some(&host), &args.image, "warm-up").is_ok() {
            break;
        }
        if Instant::now() >= ready {
            bail!("no docker run through {host} succeeded within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (mut shoal, mut engine) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        shoal.push(docker(Some(&host), &args.image, &format!("shoal-{i}"))?);
        engine.push(docker(None, &args.image, &format!("engine-{i}"))?);
    }
    let (shoal, engine) = (figures(shoal), figures(engine));
    Ok(Report {
        header: Header::new("docker-run", dir),
        image: args.image.clone(),
        added_p50_ms: shoal.p50_ms - engine.p50_ms,
        added_p99_ms: shoal.p99_ms - engine.p99_ms,
        shoal,
        engine,
    })
}

/// One `docker run -d` (against `host`, else the local engine); its wall time in ms.
fn docker(host: Option<&str>, image: &str, name: &str) -> Result<f64> {
    let mut cmd = Command::new("docker");
    if let Some(host) = host {
        cmd.args(["-H", host]);
    }
    let name = format!("bench-run-{}-{name}", std::process::id());
    let t = std::time::Instant::now();
    let out = cmd
        .args(["run", "-d", "--label", LABEL, "--name", &name, image])
        .output()
        .context("running docker")?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if !out.status.success() {
        bail!(
            "docker run failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ms)
}
