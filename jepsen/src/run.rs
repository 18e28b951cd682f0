//! One run: build the network and the cluster, drive the workloads while the nemesis runs, heal,
//! let the cluster recover, make the final reads, check, and write the results directory. The
//! network and the managers are torn down on every way out (they are owned values with Drop).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;
use tokio::sync::watch;

use crate::checker::{self, overall, Validity, Verdict};
use crate::cluster::Cluster;
use crate::error::HarnessError;
use crate::history::{self, Op, Recorder};
use crate::nemesis::{self, Fault, Schedule};
use crate::netns::{self, Net};
use crate::report;
use crate::workload::{self, Ctx, Workload};

#[derive(Debug, Clone)]
pub struct Options {
    pub workloads: Vec<Workload>,
    pub faults: Vec<Fault>,
    pub time_limit: Duration,
    pub interval: Duration,
    pub recovery: Duration,
    pub nodes: usize,
    pub agents: usize,
    pub max_replicas: u64,
    pub concurrency: usize,
    pub seed: u64,
    pub shoal_bin: PathBuf,
    pub results: PathBuf,
    pub check_limit: Duration,
    pub double_run_bound: Duration,
    pub keep_data: bool,
    /// The command line, for the report.
    pub command: String,
}

/// Runs and checks; returns the overall verdict. Ctrl-C (`shutdown`) ends the run with an error
/// after tearing everything down.
pub async fn run(
    opts: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<Validity, HarnessError> {
    netns::preflight()?;
    std::fs::create_dir_all(&opts.results)
        .map_err(|e| HarnessError::io("creating", &opts.results, e))?;
    netns::sweep_stale();
    tokio::select! {
        r = run_inner(&opts) => r,
        () = shutdown => Err(HarnessError::Interrupted),
    }
}

async fn run_inner(opts: &Options) -> Result<Validity, HarnessError> {
    let net = Net::create(opts.nodes)?;
    eprintln!(
        "shoal-jepsen: {} managers in namespaces {}-n*, results in {}",
        opts.nodes,
        net.prefix(),
        opts.results.display()
    );
    let mut cluster = Cluster::start(&opts.shoal_bin, &opts.results, net).await?;
    let rec = Recorder::new(tokio::time::Instant::now());
    let (stop_tx, stop_rx) = watch::channel(false);
    let (finals_tx, finals_rx) = watch::channel(false);
    let ctx = Ctx::new(
        rec.clone(),
        cluster.addrs(),
        cluster.auth().clone(),
        stop_rx.clone(),
        finals_rx,
        opts.concurrency,
        opts.seed,
    );
    let mut tasks = Vec::new();
    for &w in &opts.workloads {
        let ctx = ctx.clone();
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            match w {
                Workload::Register => workload::register::run(ctx).await,
                Workload::Set => workload::set::run(ctx).await,
                Workload::Lock => workload::lock::run(ctx).await,
                Workload::Watch => workload::watch::run(ctx).await,
                Workload::Scheduler => {
                    workload::scheduler::run(ctx, &opts.shoal_bin, opts.agents, opts.max_replicas)
                        .await
                }
            }
        }));
    }
    let timer = {
        let limit = opts.time_limit;
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let _ = stop_tx.send(true);
        })
    };
    let schedule = Schedule {
        faults: opts.faults.clone(),
        interval: opts.interval,
    };
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let nemesis_result = nemesis::run(&mut cluster, &schedule, &rec, &mut rng, stop_rx).await;
    let _ = timer.await;
    nemesis::heal_all(&mut cluster).await?;
    nemesis_result?;
    eprintln!("shoal-jepsen: healed; recovering for {:?}", opts.recovery);
    tokio::time::sleep(opts.recovery).await;
    let healthy = cluster.wait_healthy(Duration::from_secs(60)).await;
    let _ = finals_tx.send(true);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(180), t)
            .await
            .is_err()
        {
            eprintln!("shoal-jepsen: a workload did not finish its final reads in time");
        }
    }
    let ops = rec.snapshot();
    drop(cluster);
    if !opts.keep_data {
        let _ = std::fs::remove_dir_all(opts.results.join("data"));
    }
    let verdicts = check_and_write(opts, &ops, healthy)?;
    Ok(overall(&verdicts))
}

/// The checkers that judge a workload's part of the history.
pub fn check(
    workloads: &[Workload],
    ops: &[Op],
    opts_limit: Duration,
    bound: Duration,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    for w in workloads {
        out.push(match w {
            Workload::Register => checker::wgl::check(ops, opts_limit),
            Workload::Set => checker::set::check(ops),
            Workload::Lock => checker::lock::check(ops),
            Workload::Watch => checker::watch::check(ops),
            Workload::Scheduler => checker::scheduler::check(ops, bound),
        });
    }
    out
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), HarnessError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text).map_err(|e| HarnessError::io("writing", path, e))
}

fn check_and_write(
    opts: &Options,
    ops: &[Op],
    healthy: bool,
) -> Result<Vec<Verdict>, HarnessError> {
    let dir = &opts.results;
    let path = dir.join("history.jsonl");
    history::write_jsonl(&path, ops).map_err(|e| HarnessError::io("writing", &path, e))?;
    let verdicts = check(
        &opts.workloads,
        ops,
        opts.check_limit,
        opts.double_run_bound,
    );
    for v in &verdicts {
        write_json(&dir.join(format!("{}.json", v.checker)), v)?;
    }
    let secs = opts.time_limit.as_secs_f64();
    let client_ops = history::pairs(ops)
        .iter()
        .filter(|p| p.invoke.process != nemesis::NEMESIS)
        .count();
    let validity = overall(&verdicts);
    let summary = json!({
        "command": opts.command,
        "seed": opts.seed,
        "nodes": opts.nodes,
        "workloads": opts.workloads.iter().map(|w| w.name()).collect::<Vec<_>>(),
        "nemesis": opts.faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
        "time_limit_s": secs,
        "operations": client_ops,
        "ops_per_s": client_ops as f64 / secs.max(1e-9),
        "healthy_after_recovery": healthy,
        "validity": validity,
        "verdicts": verdicts.iter().map(|v| json!({"checker": v.checker, "validity": v.validity, "ops": v.ops, "summary": v.summary})).collect::<Vec<_>>(),
    });
    write_json(&dir.join("results.json"), &summary)?;
    let html = report::render(&opts.command, ops, &verdicts);
    let path = dir.join("report.html");
    std::fs::write(&path, html).map_err(|e| HarnessError::io("writing", &path, e))?;
    for v in &verdicts {
        eprintln!(
            "shoal-jepsen: {:<12} {:<8} {:>7} ops  {}",
            v.checker,
            format!("{:?}", v.validity).to_lowercase(),
            v.ops,
            v.summary
        );
    }
    eprintln!(
        "shoal-jepsen: {client_ops} operations in {secs:.0} s ({:.1}/s); overall {}; report {}",
        client_ops as f64 / secs.max(1e-9),
        format!("{validity:?}").to_lowercase(),
        path.display()
    );
    Ok(verdicts)
}
