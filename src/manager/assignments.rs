//! The assignment sets of every node, built from the object index and shared by all the
//! dispatcher's assignment streams of one leader term. At each new view only the nodes whose
//! tasks (or those tasks' services) changed get a new set; the others keep theirs, so a change
//! costs what it touched, not the size of the cluster.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use imbl::OrdMap;
use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Code, Status};

use super::control::Leading;
use crate::model::TaskState;
use crate::objects::{ObjectStore, View};

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
        nodes: OrdMap<String, Arc<NodeSet>>,
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
    pub fn subscribe<S: ObjectStore>(
        &self,
        objects: &S,
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
        tokio::spawn(read_loop(objects.clone(), leading.clone(), terms, tx));
        rx
    }
}

fn stopped(status: Status) -> Published {
    Published::Stopped(status.code(), status.message().to_string())
}

/// Builds the sets from the index after every change, until the term ends or no stream
/// listens. The first view is taken behind a barrier: a new leader's first sets must not miss
/// what its predecessor committed, as an agent removes containers whose tasks are not in its
/// set; later views of this leader's index only move forward.
async fn read_loop<S: ObjectStore>(
    objects: S,
    leading: Leading,
    mut terms: watch::Receiver<Option<Leading>>,
    tx: Arc<watch::Sender<Published>>,
) {
    let mut views = objects.subscribe();
    let mut view = match objects.barrier().await {
        Ok(view) => view,
        Err(e) => {
            tx.send_replace(stopped(Status::from(e)));
            return;
        }
    };
    let mut sets = group(&view, None, &OrdMap::new());
    let end = loop {
        tx.send_replace(Published::Sets {
            revision: view.revision(),
            nodes: sets.clone(),
        });
        let seen = view.clone();
        tokio::select! {
            r = views.wait_for(|v| v.revision() > seen.revision() && v.objects_differ(&seen)) => match r {
                Ok(v) => view = v.clone(),
                Err(_) => break stopped(super::dispatcher::leadership_changed()),
            },
            _ = terms.wait_for(|l| l.as_ref().map(|l| l.term) != Some(leading.term)) => {
                break stopped(super::dispatcher::leadership_changed());
            }
            _ = tx.closed() => {
                break stopped(Status::unavailable("assignment reader stopped; connect again"));
            }
        }
        sets = group(&view, Some(&seen), &sets);
    };
    tx.send_replace(end);
}

/// Every node's set in `view`: from scratch without `last`, else `previous` with the sets of
/// the nodes whose tasks or their services changed since `last` built again.
pub(crate) fn group(
    view: &View,
    last: Option<&View>,
    previous: &OrdMap<String, Arc<NodeSet>>,
) -> OrdMap<String, Arc<NodeSet>> {
    let Some(last) = last else {
        let mut out = OrdMap::new();
        let nodes: BTreeSet<&str> = view
            .tasks()
            .filter_map(|t| t.value.node_id.as_deref())
            .collect();
        for node in nodes {
            if let Some(set) = node_set(view, node) {
                out.insert(node.to_string(), Arc::new(set));
            }
        }
        return out;
    };
    let mut dirty: BTreeSet<String> = BTreeSet::new();
    for c in view.task_changes(last) {
        for t in [c.previous(), c.current()].into_iter().flatten() {
            dirty.extend(t.value.node_id.clone());
        }
    }
    for c in view.service_changes(last) {
        let s = c.current().or(c.previous()).expect("a change has a side");
        for t in view.tasks_of_service(&s.value.id) {
            dirty.extend(t.value.node_id.clone());
        }
    }
    let mut out = previous.clone();
    for node in dirty {
        match node_set(view, &node) {
            Some(set)
                if previous
                    .get(&node)
                    .is_some_and(|p| p.versions == set.versions) => {}
            Some(set) => {
                out.insert(node, Arc::new(set));
            }
            None => {
                out.remove(&node);
            }
        }
    }
    out
}

/// The set of one node: its tasks from ASSIGNED on, each with its service. None if empty.
fn node_set(view: &View, node: &str) -> Option<NodeSet> {
    let tasks: Vec<_> = view
        .tasks_of_node(node)
        .filter(|t| t.value.state >= TaskState::Assigned)
        .collect();
    if tasks.is_empty() {
        return None;
    }
    let mut set = pb::AssignmentSet {
        revision: view.revision(),
        tasks: Vec::with_capacity(tasks.len()),
    };
    let mut versions = Vec::with_capacity(tasks.len());
    for t in tasks {
        let service = view.service(&t.value.service_id);
        let service_rev = service.map_or(0, |s| s.mod_revision);
        versions.push((t.value.id.clone(), t.mod_revision ^ (service_rev << 32)));
        set.tasks.push(pb::Assignment {
            task: serde_json::to_vec(&t.value).expect("tasks serialize"),
            service: service
                .map(|s| serde_json::to_vec(&s.value).expect("services serialize"))
                .unwrap_or_default(),
        });
    }
    Some(NodeSet { set, versions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;
    use crate::objects::Versioned;

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
    fn sets_group_assigned_tasks_by_node_and_are_rebuilt_only_where_tasks_changed() {
        let v1 = View::build(
            9,
            vec![],
            vec![],
            vec![
                task("t1", Some("n1"), TaskState::Assigned, 5),
                task("t2", Some("n2"), TaskState::Running, 6),
                task("t3", None, TaskState::Pending, 7),
                task("t4", Some("n1"), TaskState::Running, 8),
            ],
            None,
        );
        let first = group(&v1, None, &OrdMap::new());
        assert_eq!(first.len(), 2);
        let ids = |n: &str| -> Vec<String> {
            first
                .get(n)
                .unwrap()
                .versions
                .iter()
                .map(|(id, _)| id.clone())
                .collect()
        };
        assert_eq!(ids("n1"), ["t1", "t4"]);
        assert_eq!(ids("n2"), ["t2"]);
        assert_eq!(first.get("n1").unwrap().set.tasks.len(), 2);

        // t1 moves on: n1's set is rebuilt, n2's is the same one.
        let mut v2 = v1.clone();
        v2.put_task(task("t1", Some("n1"), TaskState::Running, 10));
        v2.set_revision(10);
        let second = group(&v2, Some(&v1), &first);
        assert!(Arc::ptr_eq(
            first.get("n2").unwrap(),
            second.get("n2").unwrap()
        ));
        assert!(!Arc::ptr_eq(
            first.get("n1").unwrap(),
            second.get("n1").unwrap()
        ));
        assert_eq!(second.get("n1").unwrap().set.revision, 10);
        // Built from scratch, the same sets.
        let scratch = group(&v2, None, &OrdMap::new());
        for n in ["n1", "n2"] {
            assert_eq!(
                scratch.get(n).unwrap().versions,
                second.get(n).unwrap().versions
            );
        }

        // t2 is deleted: n2 has no set, and gets an empty one at the view's revision.
        let mut v3 = v2.clone();
        v3.delete_record(&crate::model::keys::task("t2"));
        v3.set_revision(11);
        let third = group(&v3, Some(&v2), &second);
        assert!(third.get("n2").is_none());
        let published = Published::Sets {
            revision: 11,
            nodes: third,
        };
        let empty = published.node("n2").expect("a set");
        assert!(empty.set.tasks.is_empty() && empty.versions.is_empty());
        assert_eq!(empty.set.revision, 11);
    }
}
