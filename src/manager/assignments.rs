//! The assignment sets of every node, read once per store revision and shared by all the
//! dispatcher's assignment streams of one leader term. Each stream used to read and decode the
//! whole store on every revision: with 1,000 nodes that was 1,000 full reads per change, three
//! quarters of the leader's CPU in the scheduling benchmark (`bench/README.md`). A node's set is
//! serialized again only when one of its tasks or their services changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use shoal_proto::v1 as pb;
use shoal_raft::Store;
use tokio::sync::watch;
use tonic::{Code, Status};

use super::control::objects::{ClusterState, ObjectStore};
use super::control::Leading;
use crate::model::{Service, TaskState};

/// A node's set and the (task id, version) list that tells two sets apart.
#[derive(Debug, Default)]
pub(crate) struct NodeSet {
    pub set: pb::AssignmentSet,
    pub versions: Vec<(String, u64)>,
}

/// What the shared reader has published.
#[derive(Debug, Clone)]
pub(crate) enum Published {
    /// The first read is under way.
    Starting,
    /// Every node's set as of one read (a node absent here has no tasks).
    Sets {
        revision: u64,
        nodes: Arc<HashMap<String, Arc<NodeSet>>>,
    },
    /// The reader stopped: a failed read, a new term, or no stream left. Streams end with it.
    Stopped(Code, String),
}

impl Published {
    /// `node`'s set; an empty one (at the read's revision) if it has no tasks.
    pub fn node(&self, node: &str) -> Option<Arc<NodeSet>> {
        match self {
            Published::Sets { revision, nodes } => {
                Some(nodes.get(node).cloned().unwrap_or_else(|| {
                    Arc::new(NodeSet {
                        set: pb::AssignmentSet {
                            revision: *revision,
                            tasks: Vec::new(),
                        },
                        versions: Vec::new(),
                    })
                }))
            }
            _ => None,
        }
    }

    pub fn stopped(&self) -> Option<Status> {
        match self {
            Published::Stopped(code, message) => Some(Status::new(*code, message.clone())),
            _ => None,
        }
    }
}

/// A term and its reader's channel.
type Reader = (u64, Arc<watch::Sender<Published>>);

/// The current term's reader, started by the first stream that needs it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Readers {
    slot: Arc<Mutex<Option<Reader>>>,
}

impl Readers {
    /// A subscription to the reader of `leading`'s term, starting one if there is none running.
    pub fn subscribe(
        &self,
        store: &Store,
        leading: &Leading,
        terms: watch::Receiver<Option<Leading>>,
    ) -> watch::Receiver<Published> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((term, tx)) = slot.as_ref() {
            if *term == leading.term && !matches!(*tx.borrow(), Published::Stopped(..)) {
                return tx.subscribe();
            }
        }
        let tx = Arc::new(watch::Sender::new(Published::Starting));
        let rx = tx.subscribe();
        *slot = Some((leading.term, tx.clone()));
        tokio::spawn(read_loop(store.clone(), leading.clone(), terms, tx));
        rx
    }
}

/// Reads the store (linearizably: a new leader's first sets must not miss what its predecessor
/// committed, as an agent removes containers whose tasks are not in its set) after every change,
/// until the term ends, a read fails, or no stream listens.
async fn read_loop(
    store: Store,
    leading: Leading,
    mut terms: watch::Receiver<Option<Leading>>,
    tx: Arc<watch::Sender<Published>>,
) {
    let mut revisions = leading.revisions.clone();
    let mut previous: HashMap<String, Arc<NodeSet>> = HashMap::new();
    let end = loop {
        let state = match store.read(true).await {
            Ok(state) => state,
            Err(e) => {
                let status = Status::from(e);
                break Published::Stopped(status.code(), status.message().to_string());
            }
        };
        previous = group(&state, &previous);
        tx.send_replace(Published::Sets {
            revision: state.revision,
            nodes: Arc::new(previous.clone()),
        });
        let seen = state.revision;
        tokio::select! {
            r = revisions.wait_for(|r| *r > seen) => if r.is_err() {
                break Published::Stopped(Code::Unavailable, "leadership changed; find the new leader".into());
            },
            _ = terms.wait_for(|l| l.as_ref().map(|l| l.term) != Some(leading.term)) => {
                break Published::Stopped(Code::Unavailable, "leadership changed; find the new leader".into());
            }
            _ = tx.closed() => {
                break Published::Stopped(Code::Unavailable, "assignment reader stopped; connect again".into());
            }
        }
    };
    tx.send_replace(end);
}

/// Every node's set from `state`, reusing `previous` sets whose versions did not change.
pub(crate) fn group(
    state: &ClusterState,
    previous: &HashMap<String, Arc<NodeSet>>,
) -> HashMap<String, Arc<NodeSet>> {
    let services: BTreeMap<&str, (&Service, u64)> = state
        .services
        .iter()
        .map(|s| (s.value.id.as_str(), (&s.value, s.mod_revision)))
        .collect();
    let mut by_node: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, t) in state.tasks.iter().enumerate() {
        let task = &t.value;
        if task.state < TaskState::Assigned {
            continue;
        }
        if let Some(node) = task.node_id.as_deref() {
            by_node.entry(node).or_default().push(i);
        }
    }
    let mut out = HashMap::with_capacity(by_node.len());
    for (node, tasks) in by_node {
        let versions: Vec<(String, u64)> = tasks
            .iter()
            .map(|&i| {
                let t = &state.tasks[i];
                let service_rev = services
                    .get(t.value.service_id.as_str())
                    .map_or(0, |(_, rev)| *rev);
                (t.value.id.clone(), t.mod_revision ^ (service_rev << 32))
            })
            .collect();
        if let Some(same) = previous.get(node).filter(|p| p.versions == versions) {
            out.insert(node.to_string(), same.clone());
            continue;
        }
        let mut set = pb::AssignmentSet {
            revision: state.revision,
            tasks: Vec::with_capacity(tasks.len()),
        };
        for &i in &tasks {
            let task = &state.tasks[i].value;
            let service = services.get(task.service_id.as_str());
            set.tasks.push(pb::Assignment {
                task: serde_json::to_vec(task).expect("tasks serialize"),
                service: service
                    .map(|(s, _)| serde_json::to_vec(s).expect("services serialize"))
                    .unwrap_or_default(),
            });
        }
        out.insert(node.to_string(), Arc::new(NodeSet { set, versions }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::control::objects::Versioned;
    use crate::model::Task;

    fn task(id: &str, node: Option<&str>, state: TaskState, rev: u64) -> Versioned<Task> {
        let mut t = Task::new(id.into(), "s".into(), 1, 10);
        t.node_id = node.map(String::from);
        t.state = state;
        Versioned {
            value: t,
            mod_revision: rev,
        }
    }

    #[test]
    fn sets_group_assigned_tasks_by_node_and_are_reused_until_they_change() {
        let mut state = ClusterState {
            revision: 9,
            tasks: vec![
                task("t1", Some("n1"), TaskState::Assigned, 5),
                task("t2", Some("n2"), TaskState::Running, 6),
                task("t3", None, TaskState::Pending, 7),
                task("t4", Some("n1"), TaskState::Running, 8),
            ],
            ..Default::default()
        };
        let first = group(&state, &HashMap::new());
        assert_eq!(first.len(), 2);
        let ids = |n: &str| -> Vec<String> {
            first[n].versions.iter().map(|(id, _)| id.clone()).collect()
        };
        assert_eq!(ids("n1"), ["t1", "t4"]);
        assert_eq!(ids("n2"), ["t2"]);
        assert_eq!(first["n1"].set.tasks.len(), 2);

        // t1 moves on: n1's set is rebuilt, n2's is the same one.
        state.revision = 10;
        state.tasks[0] = task("t1", Some("n1"), TaskState::Running, 10);
        let second = group(&state, &first);
        assert!(Arc::ptr_eq(&first["n2"], &second["n2"]));
        assert!(!Arc::ptr_eq(&first["n1"], &second["n1"]));
        assert_eq!(second["n1"].set.revision, 10);

        // A node without tasks gets an empty set at the read's revision.
        let published = Published::Sets {
            revision: 10,
            nodes: Arc::new(second),
        };
        let empty = published.node("n3").expect("a set");
        assert!(empty.set.tasks.is_empty() && empty.versions.is_empty());
        assert_eq!(empty.set.revision, 10);
    }
}
