//! What a control-plane writer asks of the store: typed writes, each with what it expects of
//! the key it writes (read when the decision was made), and their translation into one
//! fenced `Batch` entry of conditional writes.

use serde::Serialize;
use shoal_raft::{Batch, Compare, CompareOp, CompareTarget, Delete, Op, Put, Txn};

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

impl Write {
    pub(crate) fn key(&self) -> String {
        match self {
            Write::Task { task, .. } => keys::task(&task.id),
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
            Write::DeleteTask { mod_revision, .. } | Write::DeleteService { mod_revision, .. } => {
                *mod_revision
            }
        }
    }

    /// The stored value a put writes; None for a delete.
    pub(crate) fn value(&self) -> Option<Vec<u8>> {
        match self {
            Write::Task { task, .. } => Some(json(task)),
            Write::Node { node, .. } => Some(json(node)),
            Write::Service { service, .. } => Some(json(service)),
            Write::Proxy { config, .. } => Some(json(config)),
            Write::DeleteTask { .. } | Write::DeleteService { .. } => None,
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
        let mut success = vec![match self.value() {
            Some(value) => Op::Put(Put {
                key,
                value,
                ..Default::default()
            }),
            None => delete(key),
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
