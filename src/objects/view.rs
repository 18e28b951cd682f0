//! One immutable, indexed snapshot of the cluster's objects at an applied revision: nodes,
//! services and tasks by id, tasks by service and by node, pending tasks in scheduling order,
//! services and nodes by name. Persistent maps, so a clone is O(1) and two views taken from one lineage
//! share everything but what changed (which also makes their difference cheap to compute).

use std::sync::Arc;

use imbl::ordmap::DiffItem;
use imbl::{OrdMap, OrdSet};
use serde::de::DeserializeOwned;

use crate::model::{keys, Node, ProxyConfig, Service, Task, TaskState};

/// A cluster object with the revision of the write that last changed it. `Eq` matters: it lets
/// `Arc<Versioned<_>>` compare by pointer first, so a diff between two views never compares the
/// contents of a record they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// First, so that comparing two different records stops at the revision, which differs
    /// for every write, before comparing their contents.
    pub mod_revision: u64,
    pub value: T,
}

type Shared<T> = Arc<Versioned<T>>;

/// Where a pending task stands in line: oldest first, then by service, slot and id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct InLine {
    created_ms: u64,
    service_id: String,
    slot: u64,
    id: String,
}

impl InLine {
    /// Some for a task waiting for a node (PENDING and meant to run).
    fn of(task: &Task) -> Option<InLine> {
        (task.state == TaskState::Pending && task.desired_state == TaskState::Running).then(|| {
            InLine {
                created_ms: task.created_ms,
                service_id: task.service_id.clone(),
                slot: task.slot,
                id: task.id.clone(),
            }
        })
    }
}

/// A change between two views of one kind of object.
#[derive(Debug)]
pub enum Change<'a, T> {
    Added(&'a Versioned<T>),
    Updated {
        old: &'a Versioned<T>,
        new: &'a Versioned<T>,
    },
    Removed(&'a Versioned<T>),
}

impl<'a, T> Change<'a, T> {
    /// The object as it is now; None once removed.
    pub fn current(&self) -> Option<&'a Versioned<T>> {
        match self {
            Change::Added(new) | Change::Updated { new, .. } => Some(new),
            Change::Removed(_) => None,
        }
    }

    /// The object as it was; None if it is new.
    pub fn previous(&self) -> Option<&'a Versioned<T>> {
        match self {
            Change::Updated { old, .. } | Change::Removed(old) => Some(old),
            Change::Added(_) => None,
        }
    }
}

/// The cluster's objects at one revision. Reads are O(log n); cloning is O(1).
#[derive(Debug, Clone, Default)]
pub struct View {
    revision: u64,
    nodes: OrdMap<String, Shared<Node>>,
    services: OrdMap<String, Shared<Service>>,
    tasks: OrdMap<String, Shared<Task>>,
    by_service: OrdMap<String, OrdSet<String>>,
    by_node: OrdMap<String, OrdSet<String>>,
    pending: OrdSet<InLine>,
    names: OrdMap<String, String>,
    /// Node name -> ids of the nodes with it (names of nodes need not be unique: a node that is
    /// down may still hold the name a new one registers with).
    node_names: OrdMap<String, OrdSet<String>>,
    proxy: Option<Shared<ProxyConfig>>,
}

fn decode<T: DeserializeOwned>(key: &str, value: &[u8], mod_revision: u64) -> Option<Versioned<T>> {
    match serde_json::from_slice(value) {
        Ok(value) => Some(Versioned {
            value,
            mod_revision,
        }),
        Err(e) => {
            // Someone wrote it by hand (`shoal kv put`): skipped, not fatal to any reader.
            tracing::warn!(key, error = %e, "skipping a record that is not a valid object");
            None
        }
    }
}

impl View {
    /// A view of the given objects (tests, and the in-memory store double).
    pub fn build(
        revision: u64,
        nodes: impl IntoIterator<Item = Versioned<Node>>,
        services: impl IntoIterator<Item = Versioned<Service>>,
        tasks: impl IntoIterator<Item = Versioned<Task>>,
        proxy: Option<Versioned<ProxyConfig>>,
    ) -> View {
        let mut view = View {
            revision,
            ..Default::default()
        };
        nodes.into_iter().for_each(|n| view.put_node(n));
        services.into_iter().for_each(|s| view.put_service(s));
        tasks.into_iter().for_each(|t| view.put_task(t));
        view.proxy = proxy.map(Arc::new);
        view
    }

    /// The store revision this view reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    pub(crate) fn set_revision(&mut self, revision: u64) {
        self.revision = revision;
    }

    /// Every node, by id.
    pub fn nodes(&self) -> impl Iterator<Item = &Versioned<Node>> + '_ {
        self.nodes.values().map(|n| &**n)
    }

    /// Every service, by id.
    pub fn services(&self) -> impl Iterator<Item = &Versioned<Service>> + '_ {
        self.services.values().map(|s| &**s)
    }

    /// Every task, by id.
    pub fn tasks(&self) -> impl Iterator<Item = &Versioned<Task>> + '_ {
        self.tasks.values().map(|t| &**t)
    }

    pub fn node(&self, id: &str) -> Option<&Versioned<Node>> {
        self.nodes.get(id).map(|n| &**n)
    }

    pub fn service(&self, id: &str) -> Option<&Versioned<Service>> {
        self.services.get(id).map(|s| &**s)
    }

    pub fn task(&self, id: &str) -> Option<&Versioned<Task>> {
        self.tasks.get(id).map(|t| &**t)
    }

    /// Task `id`'s record itself, for holders that keep it beyond this view without a copy.
    pub fn shared_task(&self, id: &str) -> Option<&Arc<Versioned<Task>>> {
        self.tasks.get(id)
    }

    pub fn service_by_name(&self, name: &str) -> Option<&Versioned<Service>> {
        self.names.get(name).and_then(|id| self.service(id))
    }

    /// The nodes named `name`, by id. O(log n).
    pub fn nodes_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a Versioned<Node>> {
        self.node_names
            .get(name)
            .into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.node(id))
    }

    /// The tasks of a service (finished ones included), by id.
    pub fn tasks_of_service<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Versioned<Task>> {
        self.members(self.by_service.get(id))
    }

    /// The tasks ever assigned to a node and still in the store, by id.
    pub fn tasks_of_node<'a>(&'a self, id: &str) -> impl Iterator<Item = &'a Versioned<Task>> {
        self.members(self.by_node.get(id))
    }

    fn members<'a>(
        &'a self,
        ids: Option<&'a OrdSet<String>>,
    ) -> impl Iterator<Item = &'a Versioned<Task>> {
        ids.into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.task(id))
    }

    /// Tasks waiting for a node (PENDING, meant to run), oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Versioned<Task>> + '_ {
        self.pending.iter().filter_map(|k| self.task(&k.id))
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// The proxy config the leader last rendered.
    pub fn proxy(&self) -> Option<&Versioned<ProxyConfig>> {
        self.proxy.as_deref()
    }

    /// What happened to tasks between `older` and this view. Cheap when both come from one
    /// index (shared structure is skipped), O(n) otherwise.
    pub fn task_changes<'a>(&'a self, older: &'a View) -> impl Iterator<Item = Change<'a, Task>> {
        changes(&older.tasks, &self.tasks)
    }

    pub fn service_changes<'a>(
        &'a self,
        older: &'a View,
    ) -> impl Iterator<Item = Change<'a, Service>> {
        changes(&older.services, &self.services)
    }

    pub fn node_changes<'a>(&'a self, older: &'a View) -> impl Iterator<Item = Change<'a, Node>> {
        changes(&older.nodes, &self.nodes)
    }

    /// Whether any node, service, task or the proxy config differs from `older`'s.
    pub fn objects_differ(&self, older: &View) -> bool {
        !(self.nodes.ptr_eq(&older.nodes)
            && self.services.ptr_eq(&older.services)
            && self.tasks.ptr_eq(&older.tasks)
            && match (&self.proxy, &older.proxy) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            })
    }

    /// Applies a stored record at `key` (ignored unless it is a node, service, task or the
    /// proxy config). A record that does not decode removes the object: readers see only
    /// valid objects, as a full read would.
    pub(crate) fn put_record(&mut self, key: &str, value: &[u8], mod_revision: u64) {
        if keys::id_of(keys::NODES, key).is_some() {
            match decode(key, value, mod_revision) {
                Some(n) => self.put_node(n),
                None => self.delete_record(key),
            }
        } else if keys::id_of(keys::SERVICES, key).is_some() {
            match decode(key, value, mod_revision) {
                Some(s) => self.put_service(s),
                None => self.delete_record(key),
            }
        } else if keys::id_of(keys::TASKS, key).is_some() {
            match decode(key, value, mod_revision) {
                Some(t) => self.put_task(t),
                None => self.delete_record(key),
            }
        } else if key == keys::PROXY_CONFIG {
            self.proxy = decode(key, value, mod_revision).map(Arc::new);
        }
    }

    /// Removes the object stored at `key`, if it is one.
    pub(crate) fn delete_record(&mut self, key: &str) {
        if let Some(id) = keys::id_of(keys::NODES, key) {
            self.remove_node(id);
        } else if let Some(id) = keys::id_of(keys::SERVICES, key) {
            if let Some(old) = self.services.remove(id) {
                if self.names.get(&old.value.name).map(String::as_str) == Some(id) {
                    self.names.remove(&old.value.name);
                }
            }
        } else if let Some(id) = keys::id_of(keys::TASKS, key) {
            self.remove_task(id);
        } else if key == keys::PROXY_CONFIG {
            self.proxy = None;
        }
    }

    pub(crate) fn put_node(&mut self, node: Versioned<Node>) {
        let (id, name) = (&node.value.id, &node.value.name);
        if self.nodes.get(id).is_none_or(|old| old.value.name != *name) {
            self.remove_node(id);
            self.node_names
                .entry(name.clone())
                .or_default()
                .insert(id.clone());
        }
        self.nodes.insert(id.clone(), Arc::new(node));
    }

    fn remove_node(&mut self, id: &str) {
        if let Some(old) = self.nodes.remove(id) {
            remove_member(&mut self.node_names, &old.value.name, id);
        }
    }

    pub(crate) fn put_service(&mut self, service: Versioned<Service>) {
        let id = service.value.id.clone();
        if let Some(old) = self.services.get(&id) {
            if old.value.name != service.value.name {
                self.names.remove(&old.value.name);
            }
        }
        self.names.insert(service.value.name.clone(), id.clone());
        self.services.insert(id, Arc::new(service));
    }

    pub(crate) fn put_task(&mut self, task: Versioned<Task>) {
        let t = &task.value;
        self.remove_task(&t.id);
        self.by_service
            .entry(t.service_id.clone())
            .or_default()
            .insert(t.id.clone());
        if let Some(node) = &t.node_id {
            self.by_node
                .entry(node.clone())
                .or_default()
                .insert(t.id.clone());
        }
        if let Some(key) = InLine::of(t) {
            self.pending.insert(key);
        }
        self.tasks.insert(t.id.clone(), Arc::new(task));
    }

    fn remove_task(&mut self, id: &str) {
        let Some(old) = self.tasks.remove(id) else {
            return;
        };
        let t = &old.value;
        remove_member(&mut self.by_service, &t.service_id, id);
        if let Some(node) = &t.node_id {
            remove_member(&mut self.by_node, node, id);
        }
        if let Some(key) = InLine::of(t) {
            self.pending.remove(&key);
        }
    }
}

fn remove_member(index: &mut OrdMap<String, OrdSet<String>>, key: &str, id: &str) {
    if let Some(set) = index.get_mut(key) {
        set.remove(id);
        if set.is_empty() {
            index.remove(key);
        }
    }
}

fn changes<'a, T: PartialEq>(
    older: &'a OrdMap<String, Shared<T>>,
    newer: &'a OrdMap<String, Shared<T>>,
) -> impl Iterator<Item = Change<'a, T>> {
    older.diff(newer).map(|item| match item {
        DiffItem::Add(_, new) => Change::Added(&**new),
        DiffItem::Update { old, new } => Change::Updated {
            old: &**old.1,
            new: &**new.1,
        },
        DiffItem::Remove(_, old) => Change::Removed(&**old),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, service: &str, node: Option<&str>, state: TaskState) -> Versioned<Task> {
        let mut t = Task::new(id.into(), service.into(), 1, 10);
        t.state = state;
        t.node_id = node.map(String::from);
        Versioned {
            value: t,
            mod_revision: 1,
        }
    }

    #[test]
    fn indexes_follow_puts_and_deletes() {
        let mut v = View::default();
        v.put_task(task("t1", "s1", None, TaskState::Pending));
        v.put_task(task("t2", "s1", Some("n1"), TaskState::Running));
        let ids = |it: &mut dyn Iterator<Item = &Versioned<Task>>| -> Vec<String> {
            it.map(|t| t.value.id.clone()).collect()
        };
        assert_eq!(ids(&mut v.tasks_of_service("s1")), ["t1", "t2"]);
        assert_eq!(ids(&mut v.pending()), ["t1"]);
        assert_eq!(ids(&mut v.tasks_of_node("n1")), ["t2"]);

        let before = v.clone();
        // t1 is assigned: out of line, onto n2.
        v.put_task(task("t1", "s1", Some("n2"), TaskState::Assigned));
        assert!(!v.has_pending());
        assert_eq!(ids(&mut v.tasks_of_node("n2")), ["t1"]);
        v.delete_record(&keys::task("t2"));
        assert_eq!(ids(&mut v.tasks_of_node("n1")), Vec::<String>::new());
        assert_eq!(ids(&mut v.tasks_of_service("s1")), ["t1"]);
        // The older view is untouched, and the difference names both tasks.
        assert_eq!(ids(&mut before.pending()), ["t1"]);
        let changed: Vec<(String, bool)> = v
            .task_changes(&before)
            .map(|c| match c {
                Change::Updated { new, .. } => (new.value.id.clone(), true),
                Change::Removed(old) => (old.value.id.clone(), false),
                Change::Added(new) => panic!("{new:?}"),
            })
            .collect();
        assert_eq!(changed, [("t1".into(), true), ("t2".into(), false)]);
    }

    #[test]
    fn a_record_that_does_not_decode_removes_the_object() {
        let mut v = View::default();
        let t = task("t1", "s1", None, TaskState::Pending);
        let key = keys::task("t1");
        v.put_record(&key, &serde_json::to_vec(&t.value).unwrap(), 3);
        assert_eq!(v.task("t1").map(|t| t.mod_revision), Some(3));
        v.put_record(&key, b"not json", 4);
        assert!(v.task("t1").is_none() && !v.has_pending());
        // Keys that are not objects are ignored.
        v.put_record("/shoal/leader/term", b"00000000000000000001", 5);
        v.put_record(&keys::task("a/b"), b"{}", 5);
        assert_eq!(v.task_count(), 0);
    }
}
