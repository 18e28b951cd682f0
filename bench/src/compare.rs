//! `shoal-bench compare`: shoal side by side with etcd 3.4 on the same machine, in one run.
//! Starts a 3-manager shoal cluster and a 3-member etcd cluster on loopback (data dirs in one
//! temporary dir), then, for each client count, runs puts, linearizable gets and stale gets
//! against shoal and then etcd with the same load generator; last a watch fan-out on each.
//! Prints both systems' figures and the ratios shoal/etcd, then JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::cluster::{self, Cluster};
use crate::etcd::{self, EtcdCluster, EtcdDriver};
use crate::fanout;
use crate::load::{self, Keyspace, KvDriver, Phase};
use crate::report::{self, Header, Row};
use crate::shoal::ShoalDriver;

#[derive(Debug, Args)]
pub(crate) struct CompareArgs {
    /// Client counts to run every phase with (each client has its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Most requests per phase.
    #[arg(long, default_value_t = 50_000)]
    ops: u64,
    /// Most seconds per phase: no request starts after it.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Watch streams in the fan-out phase, all on one key.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Connections the watch streams are spread over.
    #[arg(long, default_value_t = 16)]
    watch_connections: usize,
    /// Puts in the fan-out phase, each waited for until every watcher saw it.
    #[arg(long, default_value_t = 50)]
    watch_rounds: u64,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// The `etcd` binary (default: `etcd` on the PATH, installing Debian's etcd-server if none).
    #[arg(long)]
    etcd_bin: Option<PathBuf>,
    /// Where to create the temporary dir holding both systems' data dirs.
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
    /// Keep the data dirs and logs (they are also kept when the run fails).
    #[arg(long)]
    keep: bool,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Measured {
    system: &'static str,
    clients: usize,
    #[serde(flatten)]
    row: Row,
}

#[derive(Debug, Serialize)]
struct Ratio {
    phase: &'static str,
    clients: usize,
    /// shoal ops/s ÷ etcd ops/s: above 1, shoal is faster.
    ops_per_sec: f64,
    /// shoal p99 ÷ etcd p99: below 1, shoal's tail is shorter.
    p99: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    data_dir: PathBuf,
    shoal_bin: PathBuf,
    etcd_bin: PathBuf,
    etcd_version: String,
    bench_profile: &'static str,
    value_size: usize,
    max_ops_per_phase: u64,
    max_seconds_per_phase: f64,
    watchers: usize,
    results: Vec<Measured>,
    ratios: Vec<Ratio>,
}

const FANOUT: &str = "watch-fanout";

pub(crate) async fn run(args: CompareArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs counts of at least 1");
    }
    if args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--seconds must be positive");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    let (etcd_exe, etcd_version) = etcd::etcd_exe(args.etcd_bin.as_deref())?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-compare-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a temporary dir in {}", args.dir.display()))?;
    let dir = tmp.path().to_path_buf();
    let report = Report {
        header: Header::new("compare", &dir),
        data_dir: dir.clone(),
        shoal_bin: exe,
        etcd_bin: etcd_exe,
        etcd_version,
        bench_profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        value_size: args.value_size,
        max_ops_per_phase: args.ops,
        max_seconds_per_phase: args.seconds,
        watchers: args.watchers,
        results: Vec::new(),
        ratios: Vec::new(),
    };
    let result = measure(&args, report).await;
    if result.is_err() || args.keep {
        let kept = tmp.keep();
        eprintln!("data dirs and logs kept in {}", kept.display());
    }
    result
}

async fn measure(args: &CompareArgs, mut report: Report) -> Result<()> {
    report.header.print_command_and_date();
    report.header.print_machine();
    let m = &report.header.machine;
    println!(
        "data dir: {} on {}",
        report.data_dir.display(),
        m.data_dir_fs
    );
    println!(
        "shoal:    {} (bench built as {}); etcd {} ({})",
        report.shoal_bin.display(),
        report.bench_profile,
        report.etcd_version,
        report.etcd_bin.display()
    );
    let shoal_dir = report.data_dir.join("shoal");
    let etcd_dir = report.data_dir.join("etcd");
    std::fs::create_dir_all(&shoal_dir)?;
    std::fs::create_dir_all(&etcd_dir)?;
    let shoal = Cluster::start(&report.shoal_bin, &shoal_dir, 3).await?;
    let etcd = EtcdCluster::start(&report.etcd_bin, &etcd_dir, 3).await?;
    let (shoal_addrs, etcd_addrs) = (shoal.addrs(), etcd.addrs());
    println!("clusters: shoal {shoal_addrs:?}, etcd {etcd_addrs:?}");
    println!();

    let limit = Some(Duration::from_secs_f64(args.seconds));
    for &clients in &args.clients {
        let mut drivers = Vec::with_capacity(clients);
        for i in 0..clients {
            drivers
                .push(ShoalDriver::connect(shoal_addrs[i % shoal_addrs.len()], shoal.tls()).await?);
        }
        let rows = phases(drivers, args, limit, "shoal", clients).await?;
        report.results.extend(rows);
        let mut drivers = Vec::with_capacity(clients);
        for i in 0..clients {
            drivers.push(EtcdDriver::connect(etcd_addrs[i % etcd_addrs.len()]).await?);
        }
        let rows = phases(drivers, args, limit, "etcd", clients).await?;
        report.results.extend(rows);
    }

    let key = b"/bench/watch/fanout".to_vec();
    eprintln!("shoal {FANOUT}: {} watchers ...", args.watchers);
    let watchers = fanout::shoal_watchers(
        &shoal_addrs,
        shoal.tls(),
        args.watch_connections,
        args.watchers,
        &key,
    )
    .await?;
    let mut driver = ShoalDriver::connect(shoal_addrs[0], shoal.tls()).await?;
    let mut outcome = fanout::run(watchers, &mut driver, &key, args.watch_rounds).await?;
    report.results.push(measured(
        "shoal",
        args.watchers,
        Row::new(FANOUT, &mut outcome),
        &outcome.samples,
    ));
    eprintln!("etcd {FANOUT}: {} watchers ...", args.watchers);
    let watchers =
        fanout::etcd_watchers(&etcd_addrs, args.watch_connections, args.watchers, &key).await?;
    let mut driver = EtcdDriver::connect(etcd_addrs[0]).await?;
    let mut outcome = fanout::run(watchers, &mut driver, &key, args.watch_rounds).await?;
    report.results.push(measured(
        "etcd",
        args.watchers,
        Row::new(FANOUT, &mut outcome),
        &outcome.samples,
    ));
    drop(shoal);
    drop(etcd);

    report.ratios = ratios(&report.results);
    println!("{}", table(&report.results, &report.ratios));
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

/// Put, linearizable get and stale get phases with `drivers`, one system, one client count.
async fn phases<D: KvDriver>(
    mut drivers: Vec<D>,
    args: &CompareArgs,
    limit: Option<Duration>,
    system: &'static str,
    clients: usize,
) -> Result<Vec<Measured>> {
    let mut keys = Arc::new(Keyspace {
        value_size: args.value_size,
        existing: Vec::new(),
    });
    let mut rows = Vec::new();
    for phase in [Phase::Put, Phase::Get, Phase::StaleGet] {
        eprintln!("{system} {} with {clients} clients ...", phase.name());
        let (back, mut outcome) = load::run(drivers, phase, args.ops, limit, keys.clone()).await?;
        drivers = back;
        if phase == Phase::Put {
            keys = Arc::new(Keyspace {
                value_size: args.value_size,
                existing: std::mem::take(&mut outcome.written),
            });
        }
        let row = Row::new(phase.name(), &mut outcome);
        rows.push(measured(system, clients, row, &outcome.samples));
    }
    Ok(rows)
}

fn measured(system: &'static str, clients: usize, row: Row, samples: &[String]) -> Measured {
    eprintln!(
        "{system} {} ({clients}): {:.0} ops/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
        row.phase, row.ops_per_sec, row.p50_ms, row.p99_ms, row.errors
    );
    for s in samples {
        eprintln!("  {s}");
    }
    Measured {
        system,
        clients,
        row,
    }
}

fn ratios(results: &[Measured]) -> Vec<Ratio> {
    let find = |system: &str, phase: &str, clients: usize| {
        results
            .iter()
            .find(|m| m.system == system && m.row.phase == phase && m.clients == clients)
    };
    results
        .iter()
        .filter(|m| m.system == "shoal")
        .filter_map(|s| {
            let e = find("etcd", s.row.phase, s.clients)?;
            let div = |a: f64, b: f64| {
                if b > 0.0 {
                    (a / b * 100.0).round() / 100.0
                } else {
                    0.0
                }
            };
            Some(Ratio {
                phase: s.row.phase,
                clients: s.clients,
                ops_per_sec: div(s.row.ops_per_sec, e.row.ops_per_sec),
                p99: div(s.row.p99_ms, e.row.p99_ms),
            })
        })
        .collect()
}

fn table(results: &[Measured], ratios: &[Ratio]) -> String {
    let mut out = format!(
        "| {:<12} | {:>7} | {:>11} | {:>8} | {:>8} | {:>10} | {:>8} | {:>8} | {:>11} | {:>9} |\n",
        "phase",
        "clients",
        "shoal ops/s",
        "p50 ms",
        "p99 ms",
        "etcd ops/s",
        "p50 ms",
        "p99 ms",
        "ops/s ratio",
        "p99 ratio"
    );
    out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in ratios {
        let get = |system: &str| {
            results
                .iter()
                .find(|m| m.system == system && m.row.phase == r.phase && m.clients == r.clients)
        };
        let (Some(s), Some(e)) = (get("shoal"), get("etcd")) else {
            continue;
        };
        let phase = if r.phase == "get" {
            "get (lin.)"
        } else {
            r.phase
        };
        out += &format!(
            "| {:<12} | {:>7} | {:>11.0} | {:>8.2} | {:>8.2} | {:>10.0} | {:>8.2} | {:>8.2} | {:>11.2} | {:>9.2} |\n",
            phase,
            r.clients,
            s.row.ops_per_sec,
            s.row.p50_ms,
            s.row.p99_ms,
            e.row.ops_per_sec,
            e.row.p50_ms,
            e.row.p99_ms,
            r.ops_per_sec,
            r.p99
        );
    }
    let errors: u64 = results.iter().map(|m| m.row.errors).sum();
    out += &format!("\nerrors over all phases: {errors}");
    out += &format!(
        "\n{FANOUT}: clients = watchers; ops/s = rounds per second; p50/p99 = put sent → the last watcher saw it"
    );
    out
}
