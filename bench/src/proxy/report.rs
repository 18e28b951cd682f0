//! The proxy bench's report: propagation figures per task, one window per measured change, and
//! how they print (a Markdown table) next to the JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use tokio::time::Instant;

use super::load::Counters;
use crate::failover;
use crate::report::Header;

#[derive(Debug, Serialize)]
pub(super) struct Report {
    #[serde(flatten)]
    pub(super) header: Header,
    /// `/proc/loadavg` when the cluster started and when the measurements ended: other work on
    /// the machine shows here.
    pub(super) loadavg_start: String,
    pub(super) loadavg_end: String,
    pub(super) clients: usize,
    pub(super) step: u64,
    pub(super) poll_ms: u64,
    pub(super) propagation: Propagation,
    pub(super) windows: Vec<Window>,
}

#[derive(Debug, Serialize)]
pub(super) struct Propagation {
    /// New tasks measured.
    pub(super) tasks: usize,
    /// Replicas at the end of the scale-ups.
    pub(super) replicas: u64,
    /// First answer through nginx − first poll that saw the task RUNNING.
    pub(super) polled: Latency,
    /// First answer through nginx (wall clock) − the RUNNING record's `updated_ms` (the clock of
    /// the manager that wrote it: the same machine).
    pub(super) from_record: Latency,
    /// `from_record` in three parts, on the wall clock. The RUNNING record's `updated_ms` → the
    /// first poll that saw the task in the leader's rendered config (`/shoal/proxy/config`).
    pub(super) record_to_config: Latency,
    /// That poll → `shoal proxy` logging the first generation that has the task as live (it
    /// has written the file, run `nginx -t` and sent SIGHUP).
    pub(super) config_to_signal: Latency,
    /// `record_to_config` + `config_to_signal`: shoal's own part, before nginx.
    pub(super) record_to_signal: Latency,
    /// That log line → the first answer through nginx: nginx re-reading its config and
    /// starting new workers, and the load's turn coming round to the new server.
    pub(super) signal_to_answer: Latency,
    /// Tasks whose first answer came before the poller saw them RUNNING (counted as 0 ms).
    pub(super) answered_before_poll: usize,
    /// Tasks RUNNING that no request reached within the step's timeout.
    pub(super) unanswered: Vec<String>,
    /// Requests per second the load loop got through nginx during the scale-ups.
    pub(super) requests_per_sec: f64,
    pub(super) per_task: Vec<TaskFigures>,
}

#[derive(Debug, Serialize)]
pub(super) struct TaskFigures {
    pub(super) task: String,
    /// Replicas after the scale-up that added it.
    pub(super) replicas: u64,
    pub(super) running_to_answer_ms: f64,
    pub(super) record_to_answer_ms: f64,
    pub(super) record_to_config_ms: Option<f64>,
    pub(super) config_to_signal_ms: Option<f64>,
    pub(super) record_to_signal_ms: Option<f64>,
    pub(super) signal_to_answer_ms: Option<f64>,
    pub(super) answered_before_poll: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) max_ms: f64,
    pub(super) all_ms: Vec<f64>,
}

impl Latency {
    pub(super) fn of(all: Vec<f64>) -> Latency {
        let f = failover::figures(all);
        Latency {
            p50_ms: f.p50_ms,
            p99_ms: f.p99_ms,
            max_ms: f.max_ms,
            all_ms: f.all_ms,
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Window {
    pub(super) window: String,
    pub(super) requests: u64,
    pub(super) failed: u64,
    pub(super) seconds: f64,
    /// Failed requests by kind.
    pub(super) errors: BTreeMap<String, u64>,
}

pub(super) fn window(
    name: impl Into<String>,
    before: &Counters,
    after: &Counters,
    start: Instant,
) -> Window {
    let mut errors = after.errors.clone();
    for (kind, n) in &before.errors {
        if let Some(m) = errors.get_mut(kind) {
            *m -= n;
        }
    }
    errors.retain(|_, n| *n > 0);
    Window {
        window: name.into(),
        requests: after.sent - before.sent,
        failed: after.failed - before.failed,
        seconds: (start.elapsed().as_secs_f64() * 100.0).round() / 100.0,
        errors,
    }
}
pub(super) fn print(r: &Report) {
    r.header.print_command_and_date();
    r.header.print_machine();
    println!(
        "loadavg:  {} at the start, {} at the end (1, 5, 15 min)",
        r.loadavg_start, r.loadavg_end
    );
    let p = &r.propagation;
    println!(
        "load:     {} clients in a closed loop through nginx, {:.0} requests/s during the scale-ups \
         to {} replicas (+{} each)",
        r.clients, p.requests_per_sec, p.replicas, r.step
    );
    println!();
    println!("| task RUNNING → first request it answers through nginx | tasks | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    let rows = [
        (
            format!(
                "from the first poll that saw it RUNNING (every {} ms)",
                r.poll_ms
            ),
            &p.polled,
        ),
        (
            "from the RUNNING record's updated_ms".to_string(),
            &p.from_record,
        ),
        (
            "├ updated_ms → seen in the leader's rendered config".to_string(),
            &p.record_to_config,
        ),
        (
            "├ rendered → shoal proxy has run nginx -t and sent SIGHUP".to_string(),
            &p.config_to_signal,
        ),
        (
            "├ (both: updated_ms → SIGHUP sent, shoal's own part)".to_string(),
            &p.record_to_signal,
        ),
        (
            "└ SIGHUP → first answer (new workers, the load's turn)".to_string(),
            &p.signal_to_answer,
        ),
    ];
    for (name, l) in rows {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |",
            l.all_ms.len(),
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        );
    }
    // The load reaches a new server only when its turn comes round: the later, the more servers.
    let mut by_replicas: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for t in &p.per_task {
        by_replicas
            .entry(t.replicas)
            .or_default()
            .push(t.running_to_answer_ms);
    }
    let steps: Vec<String> = by_replicas
        .iter()
        .map(|(n, v)| format!("{n}: {:.0}", v.iter().sum::<f64>() / v.len() as f64))
        .collect();
    println!("mean ms by replicas after the step: {}", steps.join(", "));
    if p.answered_before_poll > 0 {
        println!(
            "{} tasks answered before the poller saw them RUNNING (counted as 0 ms)",
            p.answered_before_poll
        );
    }
    if !p.unanswered.is_empty() {
        println!(
            "tasks RUNNING that never answered: {}",
            p.unanswered.join(" ")
        );
    }
    println!();
    println!("| window | requests | failed | seconds |");
    println!("|---|---:|---:|---:|");
    for w in &r.windows {
        println!(
            "| {} | {} | {} | {:.1} |",
            w.window, w.requests, w.failed, w.seconds
        );
    }
    for w in &r.windows {
        for (kind, n) in &w.errors {
            println!("{}: {n} × {kind}", w.window);
        }
    }
    println!();
}
