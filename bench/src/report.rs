//! Figures as a person and a script read them: the machine, the command, and one row per phase
//! as a table and as JSON. Latency percentiles are exact (from every request's latency).

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::load::Outcome;

#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    pub(crate) nproc: usize,
    pub(crate) cpu: String,
    pub(crate) mem_total: String,
    pub(crate) kernel: String,
    /// `df` for the data directory: device, type, mount point.
    pub(crate) data_dir_fs: String,
}

impl Machine {
    pub(crate) fn probe(data_dir: &Path) -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            mem_total: field(&meminfo, "MemTotal").unwrap_or_else(|| "unknown".into()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().into()),
            data_dir_fs: df(data_dir).unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// What every bench's report starts with (flattened into its JSON): which bench, the command line
/// as typed, when (UTC), and the machine.
#[derive(Debug, Serialize)]
pub(crate) struct Header {
    pub(crate) benchmark: &'static str,
    pub(crate) command: String,
    pub(crate) date: String,
    pub(crate) machine: Machine,
}

impl Header {
    /// The header of `benchmark` run now, the machine probed with `data_dir` as its data dir.
    pub(crate) fn new(benchmark: &'static str, data_dir: &Path) -> Header {
        Header {
            benchmark,
            command: command_line(),
            date: now_utc(),
            machine: Machine::probe(data_dir),
        }
    }

    /// The `command:` and `date:` lines that open a printed report.
    pub(crate) fn print_command_and_date(&self) {
        println!("command:  {}", self.command);
        println!("date:     {}", self.date);
    }

    /// The `machine:` line: cpus, memory, kernel.
    pub(crate) fn print_machine(&self) {
        let m = &self.machine;
        println!(
            "machine:  {} cpus ({}), memory {}, kernel {}",
            m.nproc, m.cpu, m.mem_total, m.kernel
        );
    }
}

/// `key: value` from a /proc file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn df(dir: &Path) -> Option<String> {
    let out = Command::new("df").arg("-PT").arg(dir).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cols: Vec<&str> = text.lines().nth(1)?.split_whitespace().collect();
    // Filesystem Type 1024-blocks Used Available Capacity Mounted-on
    Some(format!(
        "{} ({}) mounted on {}",
        cols.first()?,
        cols.get(1)?,
        cols.get(6)?
    ))
}

/// Writes a bench's JSON report to `path`, or prints it on stdout without one.
pub(crate) fn emit_json<T: serde::Serialize>(
    report: &T,
    path: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let json = serde_json::to_string_pretty(report)?;
    match path {
        Some(path) => {
            std::fs::write(path, json + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            println!("JSON written to {}", path.display());
        }
        None => println!("{json}"),
    }
    Ok(())
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// The command line as typed, quoted where a shell would need it.
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Debug, Serialize)]
pub(crate) struct Row {
    pub(crate) phase: &'static str,
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    pub(crate) seconds: f64,
    /// Successful requests per second.
    pub(crate) ops_per_sec: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    /// Stale reads that saw no value or an older one (allowed for stale reads).
    pub(crate) stale_reads: u64,
}

impl Row {
    pub(crate) fn new(phase: &'static str, o: &mut Outcome) -> Row {
        o.latencies_ns.sort_unstable();
        let ok = o.latencies_ns.len() as f64;
        let ms = |q: f64| percentile(&o.latencies_ns, q) as f64 / 1e6;
        Row {
            phase,
            ops: o.ops,
            errors: o.errors,
            seconds: round(o.seconds, 3),
            ops_per_sec: round(if o.seconds > 0.0 { ok / o.seconds } else { 0.0 }, 1),
            p50_ms: round(ms(0.50), 3),
            p99_ms: round(ms(0.99), 3),
            max_ms: round(ms(1.0), 3),
            stale_reads: o.stale,
        }
    }
}

/// The smallest latency that at least `q` of the requests did not exceed (0 if none).
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub(crate) fn table(rows: &[Row]) -> String {
    let mut out = format!(
        "{:<10} {:>8} {:>7} {:>9} {:>10} {:>9} {:>9} {:>9}\n",
        "phase", "ops", "errors", "seconds", "ops/s", "p50 ms", "p99 ms", "max ms"
    );
    for r in rows {
        out += &format!(
            "{:<10} {:>8} {:>7} {:>9.2} {:>10.0} {:>9.3} {:>9.3} {:>9.3}\n",
            r.phase, r.ops, r.errors, r.seconds, r.ops_per_sec, r.p50_ms, r.p99_ms, r.max_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_ranks() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
