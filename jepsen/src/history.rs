//! The history of a run: every operation as an invoke followed by ok, fail or info, stamped with
//! the harness's monotonic clock. Recording never blocks a client for long and never reorders.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

/// What a history entry says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The client is about to send the operation.
    Invoke,
    /// The operation happened, with this result.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// Unknown: it may have happened, at any time after its invoke.
    Info,
}

/// One history entry. `value` is workload-specific JSON (a register value, `[old, new]` for a
/// compare-and-set, a set element, a lock grant's revision, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub index: usize,
    /// A logical client. A client whose operation ended in `info` continues as a new process, so
    /// every process has at most one operation in flight, forever.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run, from the harness's monotonic clock.
    pub time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    pub fn new(process: u64, kind: Kind, f: &str, key: &str, value: Value, time: u64) -> Op {
        Op {
            index: 0,
            process,
            kind,
            f: f.to_string(),
            key: key.to_string(),
            value,
            time,
            error: None,
        }
    }
}

/// An operation with its completion (None: the run ended while it was in flight, same as info).
#[derive(Debug, Clone)]
pub struct Pair {
    pub invoke: Op,
    pub complete: Option<Op>,
}

impl Pair {
    pub fn kind(&self) -> Kind {
        self.complete.as_ref().map_or(Kind::Info, |c| c.kind)
    }

    /// Completion time; `u64::MAX` when the outcome is unknown (it may take effect at any time).
    pub fn end(&self) -> u64 {
        match &self.complete {
            Some(c) if c.kind != Kind::Info => c.time,
            _ => u64::MAX,
        }
    }

    /// The completion's value when there is one, else the invoke's.
    pub fn value(&self) -> &Value {
        match &self.complete {
            Some(c) if c.kind == Kind::Ok => &c.value,
            _ => &self.invoke.value,
        }
    }
}

/// Pairs each invoke with the next entry of the same process.
pub fn pairs(ops: &[Op]) -> Vec<Pair> {
    let mut open: std::collections::HashMap<u64, usize> = Default::default();
    let mut out: Vec<Pair> = Vec::new();
    for op in ops {
        if op.kind == Kind::Invoke {
            open.insert(op.process, out.len());
            out.push(Pair {
                invoke: op.clone(),
                complete: None,
            });
        } else if let Some(i) = open.remove(&op.process) {
            out[i].complete = Some(op.clone());
        }
    }
    out
}

/// The shared, append-only recorder every client writes to.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            ops: Arc::default(),
        }
    }

    /// Nanoseconds since the start of the run.
    pub fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends `op`, stamping its index and (when 0) its time, under one lock so that the order
    /// of the history is the order of the clock.
    pub fn record(&self, mut op: Op) -> Op {
        let mut ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        if op.time == 0 {
            op.time = self.now();
        }
        op.index = ops.len();
        ops.push(op.clone());
        op
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Writes a history as JSON lines.
pub fn write_jsonl(path: &Path, ops: &[Op]) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`].
pub fn read_jsonl(path: &Path) -> std::io::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        ops.push(serde_json::from_str(&line)?);
    }
    Ok(ops)
}

#[cfg(test)]
pub(crate) mod build {
    //! Hand-written histories for the checkers' tests: `inv(p, f, key, v, t)` and friends.
    use super::*;

    pub(crate) fn op(p: u64, kind: Kind, f: &str, key: &str, v: Value, t: u64) -> Op {
        Op::new(p, kind, f, key, v, t)
    }
    pub(crate) fn inv(p: u64, f: &str, key: &str, v: Value, t: u64) -> Op {
        op(p, Kind::Invoke, f, key, v, t)
    }
    pub(crate) fn ok(p: u64, f: &str, key: &str, v: Value, t: u64) -> Op {
        op(p, Kind::Ok, f, key, v, t)
    }
    pub(crate) fn fail(p: u64, f: &str, key: &str, v: Value, t: u64) -> Op {
        op(p, Kind::Fail, f, key, v, t)
    }
    pub(crate) fn info(p: u64, f: &str, key: &str, v: Value, t: u64) -> Op {
        op(p, Kind::Info, f, key, v, t)
    }
    /// Sorts by time (stable) and numbers the entries, as the recorder would.
    pub(crate) fn finish(mut ops: Vec<Op>) -> Vec<Op> {
        ops.sort_by_key(|o| o.time);
        for (i, o) in ops.iter_mut().enumerate() {
            o.index = i;
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_and_jsonl_round_trip() {
        let ops = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            inv(2, "read", "k", Value::Null, 2),
            ok(1, "write", "k", json!(1), 3),
            info(2, "read", "k", Value::Null, 4),
        ]);
        let p = pairs(&ops);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].kind(), p[0].end()), (Kind::Ok, 3));
        assert_eq!((p[1].kind(), p[1].end()), (Kind::Info, u64::MAX));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.jsonl");
        write_jsonl(&path, &ops).unwrap();
        assert_eq!(read_jsonl(&path).unwrap(), ops);
    }
}
