//! `shoal-bench`: benchmarks that start their own cluster on loopback, drive it, and print
//! figures (a table, then JSON). They measure; they are not tests and assert nothing.
#![forbid(unsafe_code)]

mod cluster;
mod compare;
mod dockerrun;
mod etcd;
mod failover;
mod fanout;
mod footprint;
mod kv;
mod load;
mod proxy;
mod report;
mod scale;
mod sched;
mod shoal;
mod simagent;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{signal, SignalKind};

/// The same allocator as `shoal`: the simulated nodes share the machine with the managers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "shoal-bench",
    about = "Throughput and latency figures for shoal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a cluster on loopback and measure puts, linearizable gets and stale gets.
    Kv(kv::KvArgs),
    /// Shoal and a 3-member etcd 3.4 side by side: puts, gets, stale gets, watch fan-out.
    Compare(compare::CompareArgs),
    /// With real agents on the local Docker engine: node loss and leader loss repair times.
    Failover(failover::FailoverArgs),
    /// Simulated nodes (a test double) and 100,000 tasks: placements/s, time to RUNNING, footprint.
    Scale(scale::ScaleArgs),
    /// The pure scheduler alone on synthetic clusters in memory: decisions per CPU second.
    Sched(sched::SchedArgs),
    /// The leader's long-lived in-memory structures at 100,000 tasks, built in process: bytes per task.
    Footprint(footprint::FootprintArgs),
    /// `docker run -d` through a follower next to the same command straight against the engine.
    DockerRun(dockerrun::DockerRunArgs),
    /// With real agents, nginx and `shoal proxy`: RUNNING → first request, failed requests.
    Proxy(proxy::ProxyArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let run = async {
        match cli.command {
            Command::Kv(args) => kv::run(args).await,
            Command::Compare(args) => compare::run(args).await,
            Command::Failover(args) => failover::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Scale(args) => scale::run(args).await,
            Command::Sched(args) => sched::run(args),
            Command::Footprint(args) => footprint::run(args),
            Command::DockerRun(args) => dockerrun::run(args).await,
        }
    };
    // Ctrl-C, SIGTERM or SIGHUP drops `run`, and with it the guards that kill what it started.
    let result = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        () = signalled(SignalKind::terminate()) => Err(anyhow::anyhow!("terminated")),
        () = signalled(SignalKind::hangup()) => Err(anyhow::anyhow!("hung up")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Waits for `kind`; if it cannot be listened for, says so and waits forever.
async fn signalled(kind: SignalKind) {
    match signal(kind) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            eprintln!("warning: cannot listen for a signal: {e}");
            std::future::pending().await
        }
    }
}
