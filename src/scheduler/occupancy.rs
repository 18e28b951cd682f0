//! What every node holds, kept from one plan to the next: the caller adds and removes only the
//! tasks that changed between two reads of the store, instead of the scheduler counting every
//! task of the cluster again for every plan. Each plan works on O(1) copies of the counters.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::model::{Node, Service, Task};

use super::view::{engine_images, Held, NodeInfo, Placed};

/// The counters of every node that tasks occupy, by node id, and each node's engine images as
/// Docker names them. A node that is gone keeps its counters until its tasks are gone too: it
/// may come back.
#[derive(Debug, Clone, Default)]
pub struct Occupancy {
    held: HashMap<String, Held>,
    /// Node id → the images it reported and their normalized set, recomputed when they change.
    engines: HashMap<String, (Vec<String>, Arc<HashSet<String>>)>,
}

impl PartialEq for Occupancy {
    /// Equal counters: the engine cache is a cache.
    fn eq(&self, other: &Occupancy) -> bool {
        self.held == other.held
    }
}

impl Occupancy {
    /// The counters of `tasks`, each counted with its service in `services`.
    pub fn of<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> Occupancy {
        let services: HashMap<&str, &Service> =
            services.into_iter().map(|s| (s.id.as_str(), s)).collect();
        let mut occupancy = Occupancy::default();
        for task in tasks {
            occupancy.add(task, services.get(task.service_id.as_str()).copied());
        }
        occupancy
    }

    /// Counts `task` on its node if it occupies one, with what its service (if any) holds.
    pub fn add(&mut self, task: &Task, service: Option<&Service>) {
        if let Some(node) = occupied(task) {
            let held = match self.held.get_mut(node) {
                Some(held) => held,
                None => self.held.entry(node.to_string()).or_default(),
            };
            held.add(&Placed::new(task, service));
        }
    }

    /// Takes away what [`Occupancy::add`] counted for the same `task` and `service`.
    pub fn remove(&mut self, task: &Task, service: Option<&Service>) {
        let Some(node) = occupied(task) else {
            return;
        };
        if let Some(held) = self.held.get_mut(node) {
            held.remove(&Placed::new(task, service));
            if held.tasks == 0 {
                self.held.remove(node);
            }
        }
    }

    /// The nodes as the scheduler works on them, sorted by id (strategies break ties by
    /// index), each with an O(1) copy of its counters.
    pub(crate) fn infos<'a>(&mut self, nodes: &[&'a Node]) -> Vec<NodeInfo<'a>> {
        let mut infos: Vec<NodeInfo<'a>> = nodes
            .iter()
            .map(|&node| NodeInfo {
                node,
                held: self.held.get(&node.id).cloned().unwrap_or_default(),
                engine_images: self.engine_images(node),
            })
            .collect();
        infos.sort_by(|a, b| a.node.id.cmp(&b.node.id));
        if self.engines.len() > nodes.len() {
            let current: HashSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
            self.engines.retain(|id, _| current.contains(id.as_str()));
        }
        infos
    }

    fn engine_images(&mut self, node: &Node) -> Arc<HashSet<String>> {
        match self.engines.get(&node.id) {
            Some((reported, normalized)) if *reported == node.images => normalized.clone(),
            _ => {
                let normalized = Arc::new(engine_images(node));
                let entry = (node.images.clone(), normalized.clone());
                self.engines.insert(node.id.clone(), entry);
                normalized
            }
        }
    }
}

/// The node `task` occupies, if it occupies one.
fn occupied(task: &Task) -> Option<&str> {
    task.node_id
        .as_deref()
        .filter(|_| task.state.occupies_node())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::testutil::{node, service, task};

    #[test]
    fn removing_what_was_added_leaves_nothing() {
        let mut web = service("web");
        web.labels.insert("tier".into(), "front".into());
        web.image = "redis:7".into();
        let on_n1 = task(&web, 1, Some("n1"));
        let pending = task(&web, 2, None);

        let mut occupancy = Occupancy::default();
        occupancy.add(&pending, Some(&web));
        assert_eq!(
            occupancy,
            Occupancy::default(),
            "a PENDING task holds nothing"
        );
        occupancy.add(&on_n1, Some(&web));
        let n1 = node(1, &[]);
        let held = occupancy.infos(&[&n1])[0].held.clone();
        assert_eq!(held.tasks, 1);
        assert_eq!(held.images.get("redis"), Some(&1));
        assert_eq!(held.images.get("redis:7"), Some(&1));
        assert_eq!(
            held.labels.get("tier").and_then(|v| v.get("front")),
            Some(&1)
        );
        assert!(held.names.contains_key("web"));
        assert!(held.names.contains_key("web.1"));

        occupancy.remove(&on_n1, Some(&web));
        assert_eq!(occupancy, Occupancy::default());
        assert_eq!(occupancy.infos(&[&n1])[0].held, Held::default());
    }
}
