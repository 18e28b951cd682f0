//! `shoal-jepsen`: a thin clap front end over `run::run`. Exit codes: 0 every checker valid,
//! 1 some history illegal, 2 some checker undecided (unknown), 3 the harness itself failed.
#![forbid(unsafe_code)]

mod checker;
mod cluster;
mod error;
mod history;
mod nemesis;
mod netns;
mod report;
mod run;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::error::HarnessError;

/// A Jepsen-style fault harness for shoal: managers in network namespaces, nemeses, workloads,
/// checkers and an HTML report. See jepsen/README.md.
#[derive(Debug, Parser)]
#[command(name = "shoal-jepsen", version)]
struct Cli {
    /// Workloads, comma-separated: register, set, lock, watch, scheduler, or all.
    #[arg(long, default_value = "register")]
    workload: String,
    /// Nemeses, comma-separated: kill, pause, partition (all shapes) or partition-halves,
    /// partition-leader, partition-ring, partition-bridge; membership; none.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// Seconds of workload under faults (then heal, recovery, final reads).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seconds between faults, and how long each fault lasts.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Seconds of calm after the heal before the final reads.
    #[arg(long, default_value_t = 5)]
    recovery: u64,
    /// Managers (3 or 5).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Simulated agents for the scheduler workload.
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// The scheduler workload scales each service to 0..=this many replicas.
    #[arg(long, default_value_t = 4)]
    max_replicas: u64,
    /// Clients per workload.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// Seed of the fault schedule and of the workloads' choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// The `shoal` binary (default: `shoal` next to this binary).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Results directory (default: jepsen-results/<time>-<seed>).
    #[arg(long)]
    results: Option<PathBuf>,
    /// Time limit of the linearizability search, in seconds (past it: unknown).
    #[arg(long, default_value_t = 60)]
    check_limit: u64,
    /// Longest a replica may run on two connected nodes at once, in seconds.
    #[arg(long, default_value_t = 5)]
    double_run_bound: u64,
    /// Keep the managers' data dirs in the results directory.
    #[arg(long)]
    keep_data: bool,
    /// Check an existing results directory again (its history.jsonl) instead of running.
    #[arg(long, value_name = "DIR")]
    recheck: Option<PathBuf>,
}

fn options(cli: Cli) -> Result<run::Options, HarnessError> {
    netns::preflight()?;
    let workloads = workload::parse_list(&cli.workload)?;
    let faults = nemesis::parse_list(&cli.nemesis)?;
    if !(3..=9).contains(&cli.nodes) {
        return Err(HarnessError::Usage(format!(
            "--nodes {}: use 3 or 5 (up to 9)",
            cli.nodes
        )));
    }
    if cli.time_limit == 0 || cli.interval == 0 || cli.concurrency == 0 {
        return Err(HarnessError::Usage(
            "--time-limit, --interval and --concurrency must be positive".into(),
        ));
    }
    let seed = cli.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            % 1_000_000_007
    });
    let shoal_bin = match cli.shoal_bin {
        Some(p) => p,
        None => std::env::current_exe()
            .map_err(|e| HarnessError::Preflight(format!("locating this binary: {e}")))?
            .with_file_name("shoal"),
    };
    if !shoal_bin.is_file() {
        return Err(HarnessError::Preflight(format!(
            "no shoal binary at {} (build it with `cargo build -p shoal`, or pass --shoal-bin)",
            shoal_bin.display()
        )));
    }
    let shoal_bin = shoal_bin.canonicalize().unwrap_or(shoal_bin);
    let results = cli.results.unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        PathBuf::from("jepsen-results").join(format!("{now}-{seed}"))
    });
    let results = std::path::absolute(&results).unwrap_or(results);
    Ok(run::Options {
        workloads,
        faults,
        time_limit: Duration::from_secs(cli.time_limit),
        interval: Duration::from_secs(cli.interval),
        recovery: Duration::from_secs(cli.recovery),
        nodes: cli.nodes,
        agents: cli.agents.max(1),
        max_replicas: cli.max_replicas,
        concurrency: cli.concurrency,
        seed,
        shoal_bin,
        results,
        check_limit: Duration::from_secs(cli.check_limit),
        double_run_bound: Duration::from_secs(cli.double_run_bound),
        keep_data: cli.keep_data,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    })
}

fn recheck(dir: PathBuf, cli: &Cli) -> Result<checker::Validity, HarnessError> {
    let workloads = workload::parse_list(&cli.workload)?;
    let path = dir.join("history.jsonl");
    let ops = history::read_jsonl(&path).map_err(|e| HarnessError::io("reading", &path, e))?;
    let verdicts = run::check(
        &workloads,
        &ops,
        Duration::from_secs(cli.check_limit),
        Duration::from_secs(cli.double_run_bound),
    );
    for v in &verdicts {
        println!(
            "{} {:?} {} ops: {}",
            v.checker, v.validity, v.ops, v.summary
        );
    }
    Ok(checker::overall(&verdicts))
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let result = match cli.recheck.clone() {
        Some(dir) => recheck(dir, &cli),
        None => match options(cli) {
            Ok(opts) => {
                eprintln!("shoal-jepsen: seed {}", opts.seed);
                runtime.block_on(run::run(opts, shutdown_signal()))
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(v) => ExitCode::from(v.exit_code()),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(3)
        }
    }
}
