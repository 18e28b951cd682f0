//! `shoal-bench sched`: the pure scheduler (`shoal::scheduler::schedule`) alone, on
//! synthetic clusters built in memory: no store, no network. For each node count, S services of
//! R replicas all PENDING; figures: decisions per second of CPU time and of wall time.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use shoal::model::{Node, NodeStatus, Reservations, Service, Task, TaskState};
use shoal::scheduler::{schedule, Decision, Snapshot, Strategy};

use crate::report::{self, Header};
use crate::scale::cpu_seconds;

#[derive(Debug, Args)]
pub(crate) struct SchedArgs {
    /// Node counts, one cluster each.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    nodes: Vec<usize>,
    /// Services, each with its own image and reservations.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Replicas per service, all PENDING.
    #[arg(long, default_value_t = 1000)]
    replicas: u64,
    /// spread, binpack or random.
    #[arg(long, default_value = "spread")]
    strategy: Strategy,
    /// Seed of the RNG the random strategy draws from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Run {
    nodes: usize,
    tasks: usize,
    assigned: usize,
    unschedulable: usize,
    /// Fewest and most tasks on one node after the run.
    min_per_node: usize,
    max_per_node: usize,
    cpu_seconds: f64,
    wall_seconds: f64,
    decisions_per_cpu_second: f64,
    decisions_per_wall_second: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    profile: &'static str,
    strategy: Strategy,
    services: usize,
    replicas: u64,
    runs: Vec<Run>,
}

pub(crate) fn run(args: SchedArgs) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.contains(&0) || args.services == 0 {
        bail!("--nodes and --services must be at least 1");
    }
    let mut report = Report {
        header: Header::new("sched", &std::env::temp_dir()),
        profile: if cfg!(debug_assertions) {
            "dev"
        } else {
            "release"
        },
        strategy: args.strategy,
        services: args.services,
        replicas: args.replicas,
        runs: Vec::new(),
    };
    report.header.print_command_and_date();
    println!(
        "machine:  {} cpus ({}), profile {}",
        report.header.machine.nproc, report.header.machine.cpu, report.profile
    );
    println!();
    println!("| nodes | tasks | assigned | per node min..max | CPU s | wall s | decisions/CPU s | decisions/wall s |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.nodes {
        let r = one(&args, n);
        println!(
            "| {} | {} | {} | {}..{} | {:.2} | {:.2} | {:.0} | {:.0} |",
            r.nodes,
            r.tasks,
            r.assigned,
            r.min_per_node,
            r.max_per_node,
            r.cpu_seconds,
            r.wall_seconds,
            r.decisions_per_cpu_second,
            r.decisions_per_wall_second
        );
        report.runs.push(r);
    }
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

/// One cluster of `n` nodes: builds it, then times the snapshot, `pending()` and `schedule`.
fn one(args: &SchedArgs, n: usize) -> Run {
    let image = |s: usize| format!("bench/app-{}:1", s % 10);
    let nodes: Vec<Node> = (0..n)
        .map(|i| bench_node(i, args.services.min(10), &image))
        .collect();
    let services: Vec<Service> = (0..args.services)
        .map(|s| bench_service(s, image(s)))
        .collect();
    let tasks: Vec<Task> = services
        .iter()
        .enumerate()
        .flat_map(|(s, svc)| {
            (1..=args.replicas).map(move |slot| {
                let mut t = Task::new(
                    format!("{}.{slot}", svc.name),
                    svc.id.clone(),
                    slot,
                    s as u64,
                );
                t.state = TaskState::Pending;
                t
            })
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let cpu = cpu_seconds(std::process::id());
    let wall = Instant::now();
    let snapshot = Snapshot::new(&nodes, &services, &tasks);
    let pending = snapshot.pending();
    let decisions = schedule(&pending, &snapshot, args.strategy, &mut rng);
    let wall_seconds = wall.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds(std::process::id()) - cpu;
    let mut per_node = std::collections::HashMap::<&str, usize>::new();
    for d in &decisions {
        if let Decision::Assign { node_id, .. } = d {
            *per_node.entry(node_id.as_str()).or_default() += 1;
        }
    }
    let assigned: usize = per_node.values().sum();
    let rate = |s: f64| {
        if s > 0.0 {
            round(decisions.len() as f64 / s)
        } else {
            0.0
        }
    };
    Run {
        nodes: n,
        tasks: decisions.len(),
        assigned,
        unschedulable: decisions.len() - assigned,
        min_per_node: if per_node.len() < n {
            0
        } else {
            per_node.values().copied().min().unwrap_or(0)
        },
        max_per_node: per_node.values().copied().max().unwrap_or(0),
        cpu_seconds: round(cpu_seconds),
        wall_seconds: round(wall_seconds),
        decisions_per_cpu_second: rate(cpu_seconds),
        decisions_per_wall_second: rate(wall_seconds),
    }
}

/// 4, 8 or 16 CPUs with 4 GiB each, a zone label, and the first `images` service images.
pub(crate) fn bench_node(i: usize, images: usize, image: &dyn Fn(usize) -> String) -> Node {
    let cpus = [4, 8, 16][i % 3];
    Node {
        id: format!("node-{i:05}"),
        name: format!("node-{i:05}"),
        addr: format!("10.{}.{}.{}:7000", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        engine_addr: String::new(),
        labels: [("zone".to_string(), ["a", "b", "c"][i % 3].to_string())].into(),
        operator_labels: Default::default(),
        cpus,
        memory_bytes: u64::from(cpus) << 32,
        engine_version: "27.0.0".into(),
        images: (0..images).map(image).collect(),
        status: NodeStatus::Ready,
        availability: Default::default(),
        heartbeat_ms: 500,
        message: String::new(),
    }
}

/// A service reserving a little CPU and memory, so spread and binpack both have loads to rank.
pub(crate) fn bench_service(s: usize, image: String) -> Service {
    Service {
        id: format!("svc-{s:04}"),
        name: format!("bench-{s:04}"),
        image,
        cmd: vec![],
        env: vec![],
        labels: [("tier".to_string(), format!("t{}", s % 4))].into(),
        ports: vec![],
        replicas: 0,
        restart: Default::default(),
        constraints: vec![],
        affinities: vec![],
        reservations: Reservations {
            nano_cpus: 10_000_000 * (1 + s as u64 % 5),
            memory_bytes: (16 << 20) * (1 + s as u64 % 4),
        },
        reschedule_on_node_failure: false,
        links: vec![],
        volumes_from: vec![],
        network_mode: None,
        container: None,
        health: None,
        stop_grace_ms: None,
        version: 0,
        update_policy: Default::default(),
        update: None,
        previous: None,
        service_labels: Default::default(),
        created_ms: 0,
    }
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
