//! The control loops' only access to the store: one typed read of every node, service and task
//! (each with the mod revision it was read at), and writes committed as txns fenced by the
//! leader's term and conditioned on those revisions. `ObjectStore` is the seam; `Store` is the
//! product implementation and tests may use an in-memory double.

use std::future::Future;

use serde::Serialize;
use shoal_raft::{
    Command, Compare, CompareOp, CompareTarget, Delete, Op, Put, Range, Response, Store,
    StoreError, Txn,
};

use crate::model::{keys, Node, ProxyConfig, Service, Task};

/// A cluster object with the revision of the write that last changed it.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: u64,
}

/// One consistent read of the cluster objects, each list sorted by id.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub revision: u64,
    pub nodes: Vec<Versioned<Node>>,
    pub services: Vec<Versioned<Service>>,
    pub tasks: Vec<Versioned<Task>>,
    /// The proxy config the leader last rendered.
    pub proxy: Option<Versioned<ProxyConfig>>,
}

impl ClusterState {
    pub fn node(&self, id: &str) -> Option<&Versioned<Node>> {
        self.nodes.iter().find(|n| n.value.id == id)
    }

    pub fn service(&self, id: &str) -> Option<&Versioned<Service>> {
        self.services.iter().find(|s| s.value.id == id)
    }
}

/// What a write expects of the key it writes, read when the decision was made.
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

impl Write {
    fn key(&self) -> String {
        match self {
            Write::Task { task, .. } => keys::task(&task.id),
            Write::Node { node, .. } => keys::node(&node.id),
            Write::DeleteTask { id, .. } => keys::task(id),
            Write::DeleteService { id, .. } => keys::service(id),
            Write::Proxy { .. } => keys::PROXY_CONFIG.to_string(),
        }
    }
}

/// How a batch of writes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Every write landed.
    Applied,
    /// Something changed since the read (or another leader took over): nothing of the chunk
    /// that failed was written; read again and decide again.
    Conflict,
}

/// The store as the control loops see it.
pub trait ObjectStore: Clone + Send + Sync + 'static {
    /// Every node, service and task. `linearizable`: as of now (the first read of a new leader);
    /// otherwise this replica's applied state, which is enough for a leader whose writes are
    /// conditioned.
    fn read(
        &self,
        linearizable: bool,
    ) -> impl Future<Output = Result<ClusterState, StoreError>> + Send;

    /// Commits `writes` (in chunks that fit a txn), each chunk fenced by `term`: it applies only
    /// while `term` is the latest leader term written and every expected revision still holds.
    fn commit(
        &self,
        term: u64,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<Commit, StoreError>> + Send;
}

/// The fence every control-loop txn compares: the leader term, zero-padded so that byte order is
/// number order.
pub fn term_value(term: u64) -> Vec<u8> {
    format!("{term:020}").into_bytes()
}

/// Compares and ops per write, plus the term compare, must fit one txn.
const WRITES_PER_TXN: usize = 60;

impl ObjectStore for Store {
    async fn read(&self, linearizable: bool) -> Result<ClusterState, StoreError> {
        let range = Range {
            key: b"/shoal/".to_vec(),
            prefix: true,
            ..Default::default()
        };
        let (result, revision) = self.range(&range, !linearizable).await?;
        let mut state = ClusterState {
            revision,
            ..Default::default()
        };
        for kv in result.kvs {
            let Ok(key) = std::str::from_utf8(&kv.key) else {
                continue;
            };
            let mod_revision = kv.mod_revision;
            if keys::id_of(keys::NODES, key).is_some() {
                push(&mut state.nodes, key, &kv.value, mod_revision);
            } else if keys::id_of(keys::SERVICES, key).is_some() {
                push(&mut state.services, key, &kv.value, mod_revision);
            } else if keys::id_of(keys::TASKS, key).is_some() {
                push(&mut state.tasks, key, &kv.value, mod_revision);
            } else if key == keys::PROXY_CONFIG {
                let mut one = Vec::new();
                push(&mut one, key, &kv.value, mod_revision);
                state.proxy = one.pop();
            }
        }
        Ok(state)
    }

    async fn commit(&self, term: u64, writes: Vec<Write>) -> Result<Commit, StoreError> {
        for chunk in writes.chunks(WRITES_PER_TXN) {
            let mut txn = Txn {
                compare: vec![Compare {
                    key: keys::LEADER_TERM.as_bytes().to_vec(),
                    target: CompareTarget::Value(term_value(term)),
                    op: CompareOp::Equal,
                }],
                ..Default::default()
            };
            for write in chunk {
                let key = write.key().into_bytes();
                let target = match write {
                    Write::Task { expect, .. }
                    | Write::Node { expect, .. }
                    | Write::Proxy { expect, .. } => match expect {
                        Expect::Absent => CompareTarget::Exists(false),
                        Expect::ModRevision(r) => CompareTarget::ModRevision(*r),
                    },
                    Write::DeleteTask { mod_revision, .. }
                    | Write::DeleteService { mod_revision, .. } => {
                        CompareTarget::ModRevision(*mod_revision)
                    }
                };
                txn.compare.push(Compare {
                    key: key.clone(),
                    target,
                    op: CompareOp::Equal,
                });
                match write {
                    Write::Task { task, .. } => txn.success.push(put(key, task)),
                    Write::Node { node, .. } => txn.success.push(put(key, node)),
                    Write::Proxy { config, .. } => txn.success.push(put(key, config)),
                    Write::DeleteTask { .. } => txn.success.push(delete(key)),
                    Write::DeleteService { name, .. } => {
                        txn.success.push(delete(key));
                        txn.success
                            .push(delete(keys::service_name(name).into_bytes()));
                    }
                }
            }
            match self.write(Command::Txn(txn)).await? {
                Response::Txn {
                    succeeded: true, ..
                } => {}
                Response::Txn { .. } => return Ok(Commit::Conflict),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "unexpected answer to a control-loop txn: {other:?}"
                    )))
                }
            }
        }
        Ok(Commit::Applied)
    }
}

fn delete(key: Vec<u8>) -> Op {
    Op::Delete(Delete {
        key,
        ..Default::default()
    })
}

fn put<T: Serialize>(key: Vec<u8>, value: &T) -> Op {
    Op::Put(Put {
        key,
        value: serde_json::to_vec(value).expect("model objects serialize"),
        ..Default::default()
    })
}

/// A record someone wrote by hand (`shoal kv put`) that is not a valid object is skipped, with
/// a warning, rather than stopping every control loop.
fn push<T: serde::de::DeserializeOwned>(
    into: &mut Vec<Versioned<T>>,
    key: &str,
    value: &[u8],
    mod_revision: u64,
) {
    match serde_json::from_slice(value) {
        Ok(value) => into.push(Versioned {
            value,
            mod_revision,
        }),
        Err(e) => tracing::warn!(key, error = %e, "skipping a record that is not a valid object"),
    }
}
