//! What a control-plane writer asks of the store: typed writes, each with what it expects of
//! the key it writes (read when the decision was made), and their translation into one
//! fenced `Batch` entry of conditional writes.

use serde::Serialize;
use shoal_raft::{Batch, Compare, CompareOp, CompareTarget, Delete, Merge, Op, Put, Txn};

use crate::model::{keys, Node, ProxyConfig, Service, Task};

/// What a write expects of the key it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (a new task).
    Absent,
    /// The key must still be at this revision.
    ModRevision(u64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Task {
        task: Task,
        expect: Expect,
    },
    Node {
        node: Node,
        expect: Expect,
    },
    /// A service's update status, as the orchestrator moves it on (paused, rolled back, done).
    Service {
        service: Box<Service>,
        expect: Expect,
    },
    /// Part of a task changed (its state as its agent reported it): only the changed fields
    /// travel the log, as a JSON merge patch (`patch`, from [`Write::task_change`]).
    TaskChange {
        id: String,
        mod_revision: u64,
        patch: serde_json::Value,
    },
    DeleteTask {
        id: String,
        mod_revision: u64,
    },
    /// A plain container's removal (`--rm`), with its name key.
    DeleteService {
        id: String,
        name: String,
        mod_revision: u64,
    },
    Proxy {
        config: ProxyConfig,
        expect: Expect,
    },
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Whether each write applied, in order. A write that did not met newer state: read
    /// again and decide again.
    Done(Vec<bool>),
    /// A later leader's term is in the store: nothing was written, and nothing this term
    /// writes will be.
    Fenced,
}

impl Commit {
    /// Whether every write landed.
    pub fn all_applied(&self) -> bool {
        matches!(self, Commit::Done(applied) if applied.iter().all(|a| *a))
    }
}

/// Most bytes of values in one entry: small enough that replicating one (of the 16 an append
/// may carry, `RaftTuning`) never holds up a heartbeat.
const ENTRY_BYTES: usize = 256 << 10;

/// What a write does to its key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Effect {
    Put(Vec<u8>),
    /// A JSON merge patch (an object) into the stored JSON object.
    Merge(Vec<u8>),
    Delete,
}

impl Write {
    /// The write that turns `before` (read at `mod_revision`) into `after`, the same task: its
    /// changed fields only. None when nothing changed.
    pub fn task_change(before: &Task, mod_revision: u64, after: &Task) -> Option<Write> {
        let value = |t: &Task| serde_json::to_value(t).expect("tasks serialize");
        let patch = shoal_raft::merge_diff(&value(before), &value(after));
        if patch.as_object().is_some_and(|p| p.is_empty()) {
            return None;
        }
        Some(Write::TaskChange {
            id: after.id.clone(),
            mod_revision,
            patch,
        })
    }

    pub(crate) fn key(&self) -> String {
        match self {
            Write::Task { task, .. } => keys::task(&task.id),
            Write::TaskChange { id, .. } => keys::task(id),
            Write::Node { node, .. } => keys::node(&node.id),
            Write::Service { service, .. } => keys::service(&service.id),
            Write::DeleteTask { id, .. } => keys::task(id),
            Write::DeleteService { id, .. } => keys::service(id),
            Write::Proxy { .. } => keys::PROXY_CONFIG.to_string(),
        }
    }

    /// The mod revision the key must have (0: absent, as the store compares a missing key).
    pub(crate) fn expected_revision(&self) -> u64 {
        match self {
            Write::Task { expect, .. }
            | Write::Node { expect, .. }
            | Write::Service { expect, .. }
            | Write::Proxy { expect, .. } => match expect {
                Expect::Absent => 0,
                Expect::ModRevision(r) => *r,
            },
            Write::DeleteTask { mod_revision, .. }
            | Write::DeleteService { mod_revision, .. }
            | Write::TaskChange { mod_revision, .. } => *mod_revision,
        }
    }

    /// What the write does to its key.
    pub(crate) fn effect(&self) -> Effect {
        match self {
            Write::Task { task, .. } => Effect::Put(json(task)),
            Write::Node { node, .. } => Effect::Put(json(node)),
            Write::Service { service, .. } => Effect::Put(json(service)),
            Write::Proxy { config, .. } => Effect::Put(json(config)),
            Write::TaskChange { patch, .. } => Effect::Merge(json(patch)),
            Write::DeleteTask { .. } | Write::DeleteService { .. } => Effect::Delete,
        }
    }

    /// Keys deleted with this write besides its own.
    pub(crate) fn also_deleted(&self) -> Option<String> {
        match self {
            Write::DeleteService { name, .. } => Some(keys::service_name(name)),
            _ => None,
        }
    }

    fn txn(&self) -> Txn {
        let key = self.key().into_bytes();
        let compare = vec![Compare {
            key: key.clone(),
            target: CompareTarget::ModRevision(self.expected_revision()),
            op: CompareOp::Equal,
        }];
        let mut success = vec![match self.effect() {
            Effect::Put(value) => Op::Put(Put {
                key,
                value,
                ..Default::default()
            }),
            Effect::Merge(patch) => Op::Merge(Merge { key, patch }),
            Effect::Delete => delete(key),
        }];
        if let Some(other) = self.also_deleted() {
            success.push(delete(other.into_bytes()));
        }
        Txn {
            compare,
            success,
            failure: vec![],
        }
    }
}

/// The fence every control-plane write compares: the leader term, zero-padded so that byte
/// order is number order.
pub fn term_value(term: u64) -> Vec<u8> {
    format!("{term:020}").into_bytes()
}

pub(crate) fn fence(term: u64) -> Compare {
    Compare {
        key: keys::LEADER_TERM.as_bytes().to_vec(),
        target: CompareTarget::Value(term_value(term)),
        op: CompareOp::Equal,
    }
}

/// `writes` as batches fenced by `term`, each within one entry's limits, in order.
pub(crate) fn batches(term: u64, writes: &[Write]) -> Vec<Batch> {
    let mut out = Vec::new();
    let mut current = Batch {
        fence: vec![fence(term)],
        writes: Vec::new(),
    };
    let mut bytes = 0;
    for write in writes {
        let txn = write.txn();
        let size: usize = txn
            .success
            .iter()
            .map(|op| match op {
                Op::Put(p) => p.key.len() + p.value.len(),
                Op::Merge(m) => m.key.len() + m.patch.len(),
                Op::Delete(d) => d.key.len(),
                Op::Range(_) => 0,
            })
            .sum();
        let full =
            current.writes.len() >= shoal_raft::MAX_BATCH_WRITES || bytes + size > ENTRY_BYTES;
        if full && !current.writes.is_empty() {
            out.push(std::mem::replace(
                &mut current,
                Batch {
                    fence: vec![fence(term)],
                    writes: Vec::new(),
                },
            ));
            bytes = 0;
        }
        bytes += size;
        current.writes.push(txn);
    }
    if !current.writes.is_empty() {
        out.push(current);
    }
    out
}

fn delete(key: Vec<u8>) -> Op {
    Op::Delete(Delete {
        key,
        ..Default::default()
    })
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("model objects serialize")
}
