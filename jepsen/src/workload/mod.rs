//! Workloads: clients that drive the store (or the scheduler) while the nemesis runs, recording
//! every operation. Each runs until `stop`, then waits for `finals` (set after the heal and the
//! recovery period) to make its final reads. Writes are never retried: a write whose outcome is
//! unknown is recorded as `info` and its process is retired.

pub mod lock;
pub mod register;
pub mod scheduler;
pub mod set;
pub mod watch;

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use shoal::client::{Client, ClientConfig, ClientError};
use tokio::sync::watch as signal;

use crate::cluster::Auth;
use crate::error::HarnessError;
use crate::history::{Kind, Op, Recorder};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    Register,
    Set,
    Lock,
    Watch,
    Scheduler,
}

impl FromStr for Workload {
    type Err = HarnessError;
    fn from_str(s: &str) -> Result<Workload, HarnessError> {
        Ok(match s {
            "register" => Workload::Register,
            "set" => Workload::Set,
            "lock" => Workload::Lock,
            "watch" => Workload::Watch,
            "scheduler" => Workload::Scheduler,
            other => {
                return Err(HarnessError::Usage(format!(
                    "unknown workload {other:?} (register, set, lock, watch, scheduler, all)"
                )))
            }
        })
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Lock => "lock",
            Workload::Watch => "watch",
            Workload::Scheduler => "scheduler",
        }
    }
}

/// Parses `--workload`: a comma-separated list, or `all` (the four store workloads and the
/// scheduler).
pub fn parse_list(s: &str) -> Result<Vec<Workload>, HarnessError> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if part == "all" {
            out.extend([
                Workload::Register,
                Workload::Set,
                Workload::Lock,
                Workload::Watch,
                Workload::Scheduler,
            ]);
        } else {
            out.insert(part.parse()?);
        }
    }
    if out.is_empty() {
        return Err(HarnessError::Usage("--workload names no workload".into()));
    }
    Ok(out.into_iter().collect())
}

/// What every workload gets.
#[derive(Clone)]
pub struct Ctx {
    pub rec: Recorder,
    pub hosts: Vec<String>,
    /// The manager token and the harness's client certificate (managers speak mutual TLS only).
    pub auth: Auth,
    pub stop: signal::Receiver<bool>,
    pub finals: signal::Receiver<bool>,
    pub concurrency: usize,
    pub seed: u64,
    /// Pause between one client's operations (keeps a 2-core machine responsive).
    pub think: Duration,
    procs: Arc<AtomicU64>,
}

impl Ctx {
    pub fn new(
        rec: Recorder,
        hosts: Vec<String>,
        auth: Auth,
        stop: signal::Receiver<bool>,
        finals: signal::Receiver<bool>,
        concurrency: usize,
        seed: u64,
    ) -> Ctx {
        Ctx {
            rec,
            hosts,
            auth,
            stop,
            finals,
            concurrency,
            seed,
            think: Duration::from_millis(10),
            procs: Arc::new(AtomicU64::new(1)),
        }
    }

    pub fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// A new logical process.
    pub fn process(&self) -> Proc {
        Proc {
            id: self.procs.fetch_add(1, Ordering::Relaxed),
            rec: self.rec.clone(),
            procs: self.procs.clone(),
        }
    }

    /// Sleeps `d`, or less if the run stops.
    pub async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }

    pub async fn wait_finals(&self) {
        let mut finals = self.finals.clone();
        let _ = finals.wait_for(|s| *s).await;
    }

    /// A client whose host list starts at `offset`, so that clients spread over the managers;
    /// None if the run stops before a manager answers.
    pub async fn client(&self, offset: usize) -> Option<Client> {
        let config = self.config(offset);
        loop {
            if self.stopped() {
                return None;
            }
            match Client::connect(config.clone()).await {
                Ok(c) => return Some(c),
                Err(_) => self.pause(Duration::from_millis(300)).await,
            }
        }
    }

    /// A client for the final reads, after the heal: tries for up to a minute.
    pub async fn final_client(&self, offset: usize) -> Option<Client> {
        let config = self.config(offset);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            if let Ok(c) = Client::connect(config.clone()).await {
                return Some(c);
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        None
    }

    fn config(&self, offset: usize) -> ClientConfig {
        let n = self.hosts.len().max(1);
        let mut hosts = self.hosts.clone();
        hosts.rotate_left(offset % n);
        let mut config = self.auth.config(hosts);
        config.connect_timeout = Duration::from_millis(500);
        config.request_timeout = Duration::from_secs(5);
        config
    }
}

/// One logical client: at most one operation in flight; after an `info` it takes a new id.
pub struct Proc {
    pub id: u64,
    rec: Recorder,
    procs: Arc<AtomicU64>,
}

impl Proc {
    pub fn invoke(&self, f: &str, key: &str, value: Value) -> Op {
        self.rec
            .record(Op::new(self.id, Kind::Invoke, f, key, value, 0))
    }

    pub fn complete(&mut self, invoke: &Op, kind: Kind, value: Value, error: Option<String>) {
        let mut op = Op::new(self.id, kind, &invoke.f, &invoke.key, value, 0);
        op.error = error;
        self.rec.record(op);
        if kind == Kind::Info {
            self.id = self.procs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a write's error: `fail` only when the request provably never reached a manager,
    /// else `info` (it may have been applied).
    pub fn write_failed(&mut self, invoke: &Op, e: &ClientError) {
        let kind = match e {
            ClientError::BadAddress { .. }
            | ClientError::Connect { .. }
            | ClientError::Unreachable { .. } => Kind::Fail,
            _ => Kind::Info,
        };
        self.complete(invoke, kind, invoke.value.clone(), Some(e.to_string()));
    }

    /// A read that failed changed nothing.
    pub fn read_failed(&mut self, invoke: &Op, e: &ClientError) {
        self.complete(invoke, Kind::Fail, Value::Null, Some(e.to_string()));
    }

    /// An entry that is an observation, not an operation (a watch delivery, a task seen running).
    pub fn note(&self, f: &str, key: &str, value: Value) {
        self.rec
            .record(Op::new(self.id, Kind::Ok, f, key, value, 0));
    }
}

/// Shared key space: each workload owns one prefix.
pub(crate) const ROOT: &str = "/jepsen/";

pub(crate) fn revision(h: &Option<shoal_proto::v1::Header>) -> u64 {
    h.as_ref().map_or(0, |h| h.revision)
}
