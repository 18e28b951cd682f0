//! `shoal-bench footprint`: what the leader's long-lived in-memory structures cost per task,
//! built in this process from synthetic objects (no store, no network): the object index fed
//! through `Index::apply` as the state machine feeds it, the scheduler's followed counters,
//! and per node its assigned tasks shaped like the dispatcher's assignment sets (the index's
//! records, shared). Each figure is the growth of this process's resident memory (VmRSS) while
//! that structure is built and the ones before it are kept: an upper bound, since the allocator
//! may keep freed pages.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use imbl::OrdMap;
use serde::Serialize;
use shoal::model::{keys, Service, Task, TaskState};
use shoal::objects::{Index, Versioned, Write};
use shoal::scheduler::Occupancy;
use shoal_raft::{Event, EventKind, KeyValue};

use crate::report::{self, Header};
use crate::sched::{bench_node, bench_service};

#[derive(Debug, Args)]
pub(crate) struct FootprintArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 100)]
    services: usize,
    #[arg(long, default_value_t = 1000)]
    replicas: u64,
    /// Tasks per applied entry (the orchestrator's and the dispatcher's batches).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Write the JSON report to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Part {
    what: &'static str,
    rss_mb: f64,
    bytes_per_task: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    nodes: usize,
    tasks: usize,
    /// The JSON of one RUNNING task, as the store holds it.
    task_json_bytes: usize,
    /// What an agent's RUNNING report writes to the log for one task: the JSON merge patch of
    /// the fields it changed (`Write::TaskChange`), where the whole task went before.
    status_change_bytes: usize,
    parts: Vec<Part>,
}

pub(crate) fn run(args: FootprintArgs) -> Result<()> {
    if args.nodes == 0 || args.services == 0 || args.replicas == 0 || args.batch == 0 {
        bail!("--nodes, --services, --replicas and --batch must be at least 1");
    }
    let image = |s: usize| format!("bench/app-{}:1", s % 10);
    let services: Vec<Service> = (0..args.services)
        .map(|s| bench_service(s, image(s)))
        .collect();
    let tasks = running_tasks(&services, args.replicas, args.nodes);
    let task_json_bytes = serde_json::to_vec(&tasks[0])?.len();
    let status_change_bytes = {
        let mut assigned = tasks[0].clone();
        assigned.state = TaskState::Assigned;
        assigned.container_id = None;
        assigned.updated_ms = assigned.created_ms + 40;
        match Write::task_change(&assigned, 1, &tasks[0]) {
            Some(Write::TaskChange { patch, .. }) => serde_json::to_vec(&patch)?.len(),
            other => bail!("a RUNNING report made {other:?}"),
        }
    };
    let mut parts = Vec::new();
    let mut last = rss_bytes();
    let mut measure = |what: &'static str, parts: &mut Vec<Part>| {
        let now = rss_bytes();
        let grown = now.saturating_sub(last) as f64;
        last = now;
        parts.push(Part {
            what,
            rss_mb: (grown / (1 << 20) as f64 * 10.0).round() / 10.0,
            bytes_per_task: (grown / tasks.len() as f64).round(),
        });
    };
    measure(
        "synthetic tasks (the input, not a leader structure)",
        &mut parts,
    );

    // The index, as apply builds it: every task PENDING, then ASSIGNED, then RUNNING, one
    // entry per batch, each a put of the task's JSON.
    let index = Index::new();
    let mut revision = 0;
    let put = |key: String, value: Vec<u8>, revision: u64| Event {
        kind: EventKind::Put,
        kv: KeyValue {
            key: key.into_bytes(),
            value,
            mod_revision: revision,
            ..Default::default()
        },
        prev_kv: None,
    };
    revision += 1;
    let mut events = Vec::new();
    for i in 0..args.nodes {
        let node = bench_node(i, args.services.min(10), &image);
        events.push(put(
            keys::node(&node.id),
            serde_json::to_vec(&node)?,
            revision,
        ));
    }
    for s in &services {
        events.push(put(keys::service(&s.id), serde_json::to_vec(s)?, revision));
    }
    index.apply(revision, &events);
    for state in [TaskState::Pending, TaskState::Assigned, TaskState::Running] {
        for chunk in tasks.chunks(args.batch) {
            revision += 1;
            let events: Vec<Event> = chunk
                .iter()
                .map(|t| {
                    let mut t = t.clone();
                    t.state = state;
                    if state == TaskState::Pending {
                        t.node_id = None;
                        t.container_id = None;
                    }
                    put(
                        keys::task(&t.id),
                        serde_json::to_vec(&t).expect("json"),
                        revision,
                    )
                })
                .collect();
            index.apply(revision, &events);
        }
    }
    let view = index.view();
    measure(
        "object index (View: maps by id, service, node; one decoded copy)",
        &mut parts,
    );

    let occupancy = Occupancy::of(
        view.services().map(|s| &s.value),
        view.tasks().map(|t| &t.value),
    );
    measure("scheduler counters (Occupancy)", &mut parts);

    // Shaped like the dispatcher's assignment sets: per node, task id -> the index's own record
    // (shared, encoded only when sent).
    let mut sets: OrdMap<String, OrdMap<String, Arc<Versioned<Task>>>> = OrdMap::new();
    for t in view.tasks() {
        let node = t.value.node_id.clone().unwrap_or_default();
        let shared = view.shared_task(&t.value.id).expect("listed").clone();
        sets.entry(node)
            .or_default()
            .insert(t.value.id.clone(), shared);
    }
    measure(
        "assignment sets (per node, each task's record shared with the index)",
        &mut parts,
    );

    let report = Report {
        header: Header::new("footprint", &std::env::temp_dir()),
        nodes: args.nodes,
        tasks: tasks.len(),
        task_json_bytes,
        status_change_bytes,
        parts,
    };
    report.header.print_command_and_date();
    println!(
        "tasks:    {} on {} nodes; one RUNNING task's JSON: {} bytes",
        report.tasks, report.nodes, report.task_json_bytes
    );
    println!(
        "status:   a RUNNING report writes {} bytes of merge patch per task to the log (the whole task before)",
        report.status_change_bytes
    );
    println!();
    println!("| structure | RSS growth MB | bytes per task |");
    println!("|---|---:|---:|");
    for p in &report.parts {
        println!("| {} | {} | {} |", p.what, p.rss_mb, p.bytes_per_task);
    }
    drop((view, occupancy, sets));
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}

/// Every task of `services` RUNNING, spread round-robin over `nodes`, with the ids, container
/// ids and timestamps real tasks carry.
fn running_tasks(services: &[Service], replicas: u64, nodes: usize) -> Vec<Task> {
    let mut tasks = Vec::with_capacity(services.len() * replicas as usize);
    for svc in services {
        for slot in 1..=replicas {
            let n = tasks.len();
            let mut t = Task::new(
                format!("{:025x}", 0x5eed_0000_0000_u64 + n as u64),
                svc.id.clone(),
                slot,
                1_796_000_000_000 + n as u64,
            );
            t.node_id = Some(format!("node-{:05}", n % nodes));
            t.state = TaskState::Running;
            t.container_id = Some(format!("{:064x}", n));
            t.updated_ms = t.created_ms + 1_500;
            tasks.push(t);
        }
    }
    tasks
}

/// This process's resident memory.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
