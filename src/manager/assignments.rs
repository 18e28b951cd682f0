//! The assignment sets of every node, built from the object index and shared by all the
//! dispatcher's assignment streams of one leader term. At each new view only the nodes whose
//! tasks (or those tasks' services) changed get a new set, and in it only the changed tasks are
//! encoded again: a change costs what it touched, not the size of the cluster. A stream sends its
//! node either the whole set after each change or, when the agent asks for `incremental`, the
//! complete set once and then only what changed (SwarmKit's `AssignmentChange`s).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use imbl::ordmap::DiffItem;
use imbl::OrdMap;
use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tonic::{Code, Status};

use super::control::Leading;
use crate::model::{Task, TaskState};
use crate::objects::{ObjectStore, Versioned, View};

/// One task of a node's set: the index's own record, shared rather than copied, and encoded
/// only when a stream sends it (a set holds a pointer per task, not a second copy of it).
#[derive(Debug, Clone)]
pub(crate) struct Entry(Arc<Versioned<Task>>);

impl Entry {
    /// The mod revision of the task's record.
    pub fn version(&self) -> u64 {
        self.0.mod_revision
    }

    pub fn service_id(&self) -> &str {
        &self.0.value.service_id
    }

    /// The task as agents receive it (JSON).
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(&self.0.value).expect("tasks serialize"))
    }
}

/// The mod revision says it all: two entries of one task at one revision hold the same task.
impl PartialEq for Entry {
    fn eq(&self, other: &Entry) -> bool {
        self.version() == other.version() && self.service_id() == other.service_id()
    }
}

/// A node's set: its tasks from ASSIGNED on, and the services they use (mod revision, JSON).
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSet {
    /// The revision of the view this set was last changed at.
    pub revision: u64,
    pub tasks: OrdMap<String, Entry>,
    pub services: OrdMap<String, (u64, Bytes)>,
}

impl NodeSet {
    /// Whether `other` holds the same tasks and services at the same versions. Sets patched from
    /// one another share structure, and the diffs skip what they share.
    pub fn same(&self, other: &NodeSet) -> bool {
        self.tasks.diff(&other.tasks).next().is_none() && same_services(self, other)
    }

    /// The whole set, each task with its service (empty if gone): what a whole-set stream sends.
    pub fn whole(&self) -> pb::AssignmentSet {
        pb::AssignmentSet {
            revision: self.revision,
            tasks: self
                .tasks
                .values()
                .map(|e| pb::Assignment {
                    task: e.encode(),
                    service: self
                        .services
                        .get(e.service_id())
                        .map(|(_, json)| json.clone())
                        .unwrap_or_default(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// The first message of an incremental stream: every task, and every service once.
    pub fn complete(&self) -> pb::AssignmentSet {
        pb::AssignmentSet {
            revision: self.revision,
            tasks: self.tasks.values().map(|e| bare(e.encode())).collect(),
            services: self.services.values().map(|(_, s)| s.clone()).collect(),
            ..Default::default()
        }
    }

    /// What changed from `sent` to this set, as an incremental message; None if nothing did.
    /// Sets patched from one another share structure, and the diff skips what they share: the
    /// cost is the change, not the size of the set.
    pub fn changes_since(&self, sent: &NodeSet) -> Option<pb::AssignmentSet> {
        let mut msg = pb::AssignmentSet {
            revision: self.revision,
            changes: true,
            ..Default::default()
        };
        for d in sent.tasks.diff(&self.tasks) {
            match d {
                DiffItem::Add(_, e) | DiffItem::Update { new: (_, e), .. } => {
                    msg.tasks.push(bare(e.encode()))
                }
                DiffItem::Remove(id, _) => msg.removed.push(id.clone()),
            }
        }
        for d in sent.services.diff(&self.services) {
            match d {
                DiffItem::Add(_, (_, json))
                | DiffItem::Update {
                    new: (_, (_, json)),
                    ..
                } => msg.services.push(json.clone()),
                DiffItem::Remove(id, _) => msg.removed_services.push(id.clone()),
            }
        }
        let empty = msg.tasks.is_empty()
            && msg.removed.is_empty()
            && msg.services.is_empty()
            && msg.removed_services.is_empty();
        (!empty).then_some(msg)
    }
}

/// Whether two sets use the same services at the same versions.
fn same_services(a: &NodeSet, b: &NodeSet) -> bool {
    a.services.ptr_eq(&b.services)
        || (a.services.len() == b.services.len()
            && a.services
                .iter()
                .zip(b.services.iter())
                .all(|((x, (vx, _)), (y, (vy, _)))| x == y && vx == vy))
}

/// An assignment without its service (incremental streams send services apart).
fn bare(task: Bytes) -> pb::Assignment {
    pb::Assignment {
        task,
        service: Bytes::new(),
    }
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
                        revision: *revision,
                        ..Default::default()
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

/// How long the reader lets changes gather before patching the sets.
const GATHER: Duration = Duration::from_millis(10);

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
    let mut encoder = Encoder::default();
    let mut sets = group(&view, None, &OrdMap::new(), &mut encoder);
    let end = loop {
        tx.send_replace(Published::Sets {
            revision: view.revision(),
            nodes: sets.clone(),
        });
        let seen = view.clone();
        tokio::select! {
            r = views.wait_for(|v| v.revision() > seen.revision() && v.objects_differ(&seen)) => match r {
                Ok(_) => {}
                Err(_) => break stopped(super::dispatcher::leadership_changed()),
            },
            _ = terms.wait_for(|l| l.as_ref().map(|l| l.term) != Some(leading.term)) => {
                break stopped(super::dispatcher::leadership_changed());
            }
            _ = tx.closed() => {
                break stopped(Status::unavailable("assignment reader stopped; connect again"));
            }
        }
        // Changes come in bursts (a plan, a batch of reports): gather them, then patch once.
        tokio::time::sleep(GATHER).await;
        view = views.borrow_and_update().clone();
        sets = group(&view, Some(&seen), &sets, &mut encoder);
    };
    tx.send_replace(end);
}

/// The JSON of each service, encoded once per mod revision.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    services: HashMap<String, (u64, Bytes)>,
}

impl Encoder {
    fn service(&mut self, view: &View, id: &str) -> Option<(u64, Bytes)> {
        let Some(service) = view.service(id) else {
            self.services.remove(id);
            return None;
        };
        if let Some(cached) = self
            .services
            .get(id)
            .filter(|c| c.0 == service.mod_revision)
        {
            return Some(cached.clone());
        }
        let json = Bytes::from(serde_json::to_vec(&service.value).expect("services serialize"));
        let encoded = (service.mod_revision, json);
        self.services.insert(id.to_string(), encoded.clone());
        Some(encoded)
    }
}

/// Every node's set in `view`: from scratch without `last`, else `previous` with the sets of the
/// nodes whose tasks or their services changed since `last` patched, encoding only what changed.
/// A node whose set did not change keeps the same `Arc`.
pub(crate) fn group(
    view: &View,
    last: Option<&View>,
    previous: &OrdMap<String, Arc<NodeSet>>,
    encoder: &mut Encoder,
) -> OrdMap<String, Arc<NodeSet>> {
    let Some(last) = last else {
        let mut out = OrdMap::new();
        let nodes: BTreeSet<&str> = view
            .tasks()
            .filter_map(|t| t.value.node_id.as_deref())
            .collect();
        for node in nodes {
            let mut set = NodeSet {
                revision: view.revision(),
                ..Default::default()
            };
            for t in view.tasks_of_node(node) {
                if t.value.state >= TaskState::Assigned {
                    if let Some(e) = entry(view, &t.value.id) {
                        set.tasks.insert(t.value.id.clone(), e);
                    }
                }
            }
            if !set.tasks.is_empty() {
                set.services = services_of(&set.tasks, view, encoder);
                out.insert(node.to_string(), Arc::new(set));
            }
        }
        return out;
    };
    // Per dirty node, the tasks that changed on it (none: only a service changed).
    let mut dirty: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in view.task_changes(last) {
        for t in [c.previous(), c.current()].into_iter().flatten() {
            if let Some(node) = &t.value.node_id {
                dirty
                    .entry(node.clone())
                    .or_default()
                    .push(t.value.id.clone());
            }
        }
    }
    let mut services_changed: BTreeSet<String> = BTreeSet::new();
    for c in view.service_changes(last) {
        let s = c.current().or(c.previous()).expect("a change has a side");
        for t in view.tasks_of_service(&s.value.id) {
            if let Some(node) = &t.value.node_id {
                dirty.entry(node.clone()).or_default();
                services_changed.insert(node.clone());
            }
        }
    }
    let mut out = previous.clone();
    for (node, changed) in dirty {
        let before = previous.get(&node);
        let mut tasks = before.map(|s| s.tasks.clone()).unwrap_or_default();
        // Whether an entry changed; services newly used (tasks added), and whether the set of
        // services used may have shrunk or changed (tasks removed or moved, services changed).
        let (mut touched, mut recount) = (false, services_changed.contains(&node));
        let mut added: Vec<String> = Vec::new();
        for id in changed {
            match view.task(&id) {
                Some(t)
                    if t.value.node_id.as_deref() == Some(node.as_str())
                        && t.value.state >= TaskState::Assigned =>
                {
                    let old = tasks.get(&id);
                    if old.map(Entry::version) != Some(t.mod_revision) {
                        match old {
                            None => added.push(t.value.service_id.clone()),
                            Some(e) if e.service_id() != t.value.service_id => recount = true,
                            Some(_) => {}
                        }
                        touched = true;
                        if let Some(e) = entry(view, &id) {
                            tasks.insert(id, e);
                        }
                    }
                }
                _ => {
                    if tasks.remove(&id).is_some() {
                        touched = true;
                        recount = true;
                    }
                }
            }
        }
        if tasks.is_empty() {
            out.remove(&node);
            continue;
        }
        let services = match before {
            Some(b) if !recount => {
                let mut services = b.services.clone();
                for id in added {
                    if !services.contains_key(&id) {
                        if let Some(encoded) = encoder.service(view, &id) {
                            services.insert(id, encoded);
                        }
                    }
                }
                services
            }
            _ => services_of(&tasks, view, encoder),
        };
        let set = NodeSet {
            revision: view.revision(),
            services,
            tasks,
        };
        if touched || !before.is_some_and(|b| same_services(b, &set)) {
            out.insert(node, Arc::new(set));
        }
    }
    out
}

/// Task `id`'s entry: its record in `view`, shared.
fn entry(view: &View, id: &str) -> Option<Entry> {
    view.shared_task(id).cloned().map(Entry)
}

/// The services `tasks` use that exist in `view`.
fn services_of(
    tasks: &OrdMap<String, Entry>,
    view: &View,
    encoder: &mut Encoder,
) -> OrdMap<String, (u64, Bytes)> {
    let ids: BTreeSet<&str> = tasks.values().map(Entry::service_id).collect();
    ids.into_iter()
        .filter_map(|id| Some((id.to_string(), encoder.service(view, id)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::Service;

    fn task(id: &str, node: Option<&str>, state: TaskState, rev: u64) -> Versioned<Task> {
        task_of("s", id, node, state, rev)
    }

    fn task_of(
        service: &str,
        id: &str,
        node: Option<&str>,
        state: TaskState,
        rev: u64,
    ) -> Versioned<Task> {
        let mut t = Task::new(id.into(), service.into(), 1, 10);
        t.node_id = node.map(String::from);
        t.state = state;
        Versioned {
            value: t,
            mod_revision: rev,
        }
    }

    fn service(id: &str, rev: u64) -> Versioned<Service> {
        Versioned {
            value: serde_json::from_value(serde_json::json!({
                "id": id, "name": format!("svc-{id}"), "image": format!("img:{rev}"), "replicas": 1,
            }))
            .unwrap(),
            mod_revision: rev,
        }
    }

    fn ids(set: &NodeSet) -> Vec<String> {
        set.tasks.keys().cloned().collect()
    }

    #[test]
    fn sets_group_assigned_tasks_by_node_and_are_rebuilt_only_where_tasks_changed() {
        let v1 = View::build(
            9,
            vec![],
            vec![service("s", 1)],
            vec![
                task("t1", Some("n1"), TaskState::Assigned, 5),
                task("t2", Some("n2"), TaskState::Running, 6),
                task("t3", None, TaskState::Pending, 7),
                task("t4", Some("n1"), TaskState::Running, 8),
            ],
            None,
        );
        let mut enc = Encoder::default();
        let first = group(&v1, None, &OrdMap::new(), &mut enc);
        assert_eq!(first.len(), 2);
        assert_eq!(ids(first.get("n1").unwrap()), ["t1", "t4"]);
        assert_eq!(ids(first.get("n2").unwrap()), ["t2"]);
        let whole = first.get("n1").unwrap().whole();
        assert_eq!(whole.tasks.len(), 2);
        assert!(whole.tasks.iter().all(|a| !a.service.is_empty()));

        // t1 moves on: n1's set is patched, n2's is the same one.
        let mut v2 = v1.clone();
        v2.put_task(task("t1", Some("n1"), TaskState::Running, 10));
        v2.set_revision(10);
        let second = group(&v2, Some(&v1), &first, &mut enc);
        assert!(Arc::ptr_eq(
            first.get("n2").unwrap(),
            second.get("n2").unwrap()
        ));
        let n1 = second.get("n1").unwrap();
        assert!(!Arc::ptr_eq(first.get("n1").unwrap(), n1));
        assert_eq!(n1.revision, 10);
        // Only t1 changed: t4's entry is the index's same record, not a copy.
        assert!(Arc::ptr_eq(
            &n1.tasks.get("t4").unwrap().0,
            &first.get("n1").unwrap().tasks.get("t4").unwrap().0
        ));
        assert!(Arc::ptr_eq(
            &n1.tasks.get("t4").unwrap().0,
            v2.shared_task("t4").unwrap()
        ));
        // An incremental stream that sent `first` gets t1 alone.
        let change = n1
            .changes_since(first.get("n1").unwrap())
            .expect("a change");
        assert!(change.changes);
        assert_eq!(change.tasks.len(), 1);
        let sent: Task = serde_json::from_slice(&change.tasks[0].task).unwrap();
        assert_eq!((sent.id.as_str(), sent.state), ("t1", TaskState::Running));
        assert!(change.removed.is_empty() && change.services.is_empty());
        assert!(n1.changes_since(n1).is_none());

        // t2 is deleted: n2 has no set, and gets an empty one at the view's revision.
        let mut v3 = v2.clone();
        v3.delete_record(&crate::model::keys::task("t2"));
        v3.set_revision(11);
        let third = group(&v3, Some(&v2), &second, &mut enc);
        assert!(third.get("n2").is_none());
        let published = Published::Sets {
            revision: 11,
            nodes: third,
        };
        let empty = published.node("n2").expect("a set");
        assert!(empty.tasks.is_empty() && empty.services.is_empty());
        assert_eq!(empty.revision, 11);
        let change = empty.changes_since(second.get("n2").unwrap()).unwrap();
        assert_eq!(change.removed, ["t2"]);
        assert_eq!(change.removed_services, ["s"]);
    }

    /// What an incremental client holds: task id -> task JSON, service id -> service JSON.
    #[derive(Debug, Default, PartialEq)]
    struct Client {
        tasks: BTreeMap<String, Bytes>,
        services: BTreeMap<String, Bytes>,
    }

    impl Client {
        fn apply(&mut self, msg: &pb::AssignmentSet) {
            if !msg.changes {
                *self = Client::default();
            }
            for id in &msg.removed {
                assert!(self.tasks.remove(id).is_some(), "removed {id}, never sent");
            }
            for id in &msg.removed_services {
                assert!(self.services.remove(id).is_some(), "removed service {id}");
            }
            for a in &msg.tasks {
                assert!(a.service.is_empty());
                let t: Task = serde_json::from_slice(&a.task).unwrap();
                self.tasks.insert(t.id, a.task.clone());
            }
            for json in &msg.services {
                let s: Service = serde_json::from_slice(json).unwrap();
                self.services.insert(s.id, json.clone());
            }
        }

        fn of(set: &NodeSet) -> Client {
            Client {
                tasks: set
                    .tasks
                    .iter()
                    .map(|(id, e)| (id.clone(), e.encode()))
                    .collect(),
                services: set
                    .services
                    .iter()
                    .map(|(id, (_, json))| (id.clone(), json.clone()))
                    .collect(),
            }
        }
    }

    /// Random task and service changes: the patched sets always equal sets built from scratch,
    /// and a client that applies each incremental message holds exactly the current set.
    #[test]
    fn patched_sets_equal_sets_from_scratch_and_changes_rebuild_them_on_the_client() {
        let nodes = ["n1", "n2", "n3"];
        let states = [
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Shutdown,
        ];
        for seed in 0..40u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut view = View::build(1, vec![], vec![service("a", 1)], vec![], None);
            let mut rev = 1;
            let mut enc = Encoder::default();
            let mut sets = group(&view, None, &OrdMap::new(), &mut enc);
            let mut clients: BTreeMap<&str, (Arc<NodeSet>, Client)> = BTreeMap::new();
            for step in 0..60 {
                let last = view.clone();
                for _ in 0..rng.random_range(1..5) {
                    rev += 1;
                    match rng.random_range(0..10) {
                        0 => view.put_service(service(["a", "b"][rng.random_range(0..2)], rev)),
                        1 => view.delete_record(&crate::model::keys::service("b")),
                        2 => view.delete_record(&crate::model::keys::task(&format!(
                            "t{}",
                            rng.random_range(0..12)
                        ))),
                        _ => {
                            let node = rng
                                .random_bool(0.8)
                                .then(|| nodes[rng.random_range(0..nodes.len())]);
                            view.put_task(task_of(
                                ["a", "b"][rng.random_range(0..2)],
                                &format!("t{}", rng.random_range(0..12)),
                                node,
                                states[rng.random_range(0..states.len())],
                                rev,
                            ));
                        }
                    }
                }
                view.set_revision(rev);
                sets = group(&view, Some(&last), &sets, &mut enc);
                let scratch = group(&view, None, &OrdMap::new(), &mut Encoder::default());
                assert_eq!(
                    sets.keys().collect::<Vec<_>>(),
                    scratch.keys().collect::<Vec<_>>(),
                    "seed {seed} step {step}"
                );
                for (node, set) in &sets {
                    let fresh = scratch.get(node).unwrap();
                    assert!(set.same(fresh), "seed {seed} step {step} node {node}");
                    assert_eq!(
                        Client::of(set),
                        Client::of(fresh),
                        "seed {seed} step {step}"
                    );
                }
                let published = Published::Sets {
                    revision: rev,
                    nodes: sets.clone(),
                };
                for node in nodes {
                    let now = published.node(node).unwrap();
                    let (sent, client) = clients.entry(node).or_insert_with(|| {
                        let mut c = Client::default();
                        c.apply(&now.complete());
                        (now.clone(), c)
                    });
                    if let Some(msg) = now.changes_since(sent) {
                        client.apply(&msg);
                    }
                    *sent = now.clone();
                    assert_eq!(*client, Client::of(&now), "seed {seed} step {step} {node}");
                }
            }
        }
    }
}
