//! `shoal-bench kv`: starts a cluster on loopback, then runs three phases over N clients spread
//! round-robin over the managers: puts of distinct keys, linearizable gets and stale gets of the
//! keys written; prints the machine, a table and JSON.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use crate::cluster::{self, Cluster};
use crate::load::{self, Keyspace, Outcome, Phase};
use crate::report::{self, Header, Row};
use crate::shoal::ShoalDriver;

#[derive(Debug, Args)]
pub(crate) struct KvArgs {
    /// Managers to start (the first bootstraps, the others join it).
    #[arg(long, default_value_t = 3)]
    managers: usize,
    /// Concurrent clients, each with a connection of its own, spread round-robin over the managers.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Puts in the put phase, each to a distinct key.
    #[arg(long, default_value_t = 100_000)]
    puts: u64,
    /// Reads in each of the get and stale-get phases.
    #[arg(long, default_value_t = 100_000)]
    gets: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    /// Where to create the managers' temporary data dirs.
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
struct Report {
    #[serde(flatten)]
    header: Header,
    data_dir: PathBuf,
    shoal_bin: PathBuf,
    /// Profile this bench binary was built with; the managers' is that of `shoal_bin`.
    bench_profile: &'static str,
    managers: usize,
    clients: usize,
    value_size: usize,
    phases: Vec<Row>,
}

pub(crate) async fn run(args: KvArgs) -> Result<()> {
    if args.clients == 0 {
        bail!("--clients must be at least 1");
    }
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("shoal-bench-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a temporary dir in {}", args.dir.display()))?;
    let result = measure(&args, exe, tmp.path().to_path_buf()).await;
    if result.is_err() || args.keep {
        let kept = tmp.keep();
        eprintln!("data dirs and manager logs kept in {}", kept.display());
    }
    result
}

async fn measure(args: &KvArgs, exe: PathBuf, dir: PathBuf) -> Result<()> {
    let mut report = Report {
        header: Header::new("kv", &dir),
        data_dir: dir.clone(),
        shoal_bin: exe.clone(),
        bench_profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        managers: args.managers,
        clients: args.clients,
        value_size: args.value_size,
        phases: Vec::new(),
    };
    report.header.print_command_and_date();
    report.header.print_machine();
    let m = &report.header.machine;
    println!("data dir: {} on {}", dir.display(), m.data_dir_fs);
    println!(
        "shoal:    {} (bench built as {})",
        exe.display(),
        report.bench_profile
    );

    let started = tokio::time::Instant::now();
    let cluster = Cluster::start(&exe, &dir, args.managers).await?;
    let addrs = cluster.addrs();
    let status = cluster::status(addrs[0], cluster.tls()).await?;
    let leader = status
        .members
        .iter()
        .find(|m| m.id == status.leader_id)
        .map_or("?", |m| m.addr.as_str());
    println!(
        "cluster:  {} managers {} (leader {leader}), up in {:.1} s",
        addrs.len(),
        addrs
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed().as_secs_f64()
    );
    println!(
        "load:     {} clients, {}-byte values",
        args.clients, args.value_size
    );
    println!();

    let mut drivers = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        drivers.push(ShoalDriver::connect(addrs[i % addrs.len()], cluster.tls()).await?);
    }
    let mut keys = Arc::new(Keyspace {
        value_size: args.value_size,
        existing: Vec::new(),
    });
    let mut samples: Vec<(Phase, Vec<String>)> = Vec::new();
    for (phase, ops) in [
        (Phase::Put, args.puts),
        (Phase::Get, args.gets),
        (Phase::StaleGet, args.gets),
    ] {
        eprintln!("{}: {ops} requests ...", phase.name());
        let (back, mut outcome): (_, Outcome) =
            load::run(drivers, phase, ops, None, keys.clone()).await?;
        drivers = back;
        if phase == Phase::Put {
            keys = Arc::new(Keyspace {
                value_size: args.value_size,
                existing: std::mem::take(&mut outcome.written),
            });
        }
        let row = Row::new(phase.name(), &mut outcome);
        eprintln!(
            "{}: {:.0} ops/s, {} errors",
            phase.name(),
            row.ops_per_sec,
            row.errors
        );
        if row.stale_reads > 0 {
            samples.push((
                phase,
                vec![format!(
                    "{} reads saw no value or an older one (allowed)",
                    row.stale_reads
                )],
            ));
        }
        if !outcome.samples.is_empty() {
            samples.push((phase, outcome.samples));
        }
        report.phases.push(row);
    }
    drop(drivers);
    drop(cluster);

    println!("{}", report::table(&report.phases));
    for (phase, lines) in &samples {
        for line in lines {
            println!("{}: {line}", phase.name());
        }
    }
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}
