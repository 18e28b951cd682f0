//! The scheduler's working copy of one store read: each node with counters of what its tasks
//! hold (names, images, labels, host ports, reservations), and each pending task's parsed
//! placement rules. Placements made during a batch are added here, so later tasks see them.
//! Counters, not task lists: every filter reads a node in O(1), however many tasks it runs.
//! The counters outlive a plan (`Occupancy`): only what changed between two reads is counted.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::sync::Arc;

use crate::model::{Node, Protocol, Reservations, Service, Task};

use super::error::ExprError;
use super::expr::{Expr, Kind};
use super::filter::normalize_image;

/// What a task placed on a node holds there. Borrows its service: no copy per task.
#[derive(Debug, Clone)]
pub(crate) struct Placed<'a> {
    /// Its container name (`web.1`) and its service's name (`web`): what affinities, links and
    /// `--volumes-from` refer to. None when its service is gone.
    pub names: Option<(String, &'a str)>,
    pub image: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub host_ports: Vec<(u16, Protocol)>,
    pub reservations: Reservations,
}

static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

impl<'a> Placed<'a> {
    /// A task whose service is gone still holds the host ports it published.
    pub fn new(task: &Task, service: Option<&'a Service>) -> Placed<'a> {
        let host_ports = host_ports(task, service);
        match service {
            Some(svc) => Placed {
                names: Some((task.name(&svc.name), svc.name.as_str())),
                image: &svc.image,
                labels: &svc.labels,
                host_ports,
                reservations: svc.reservations,
            },
            None => Placed {
                names: None,
                image: "",
                labels: &NO_LABELS,
                host_ports,
                reservations: Reservations::default(),
            },
        }
    }

    /// The container name and the service name, when the service exists.
    pub fn names(&self) -> impl Iterator<Item = &str> + use<'_, 'a> {
        self.names
            .iter()
            .flat_map(|(task, service)| [task.as_str(), *service])
    }
}

/// The host ports a task holds, sorted: those it published and those its service asks for.
pub(crate) fn host_ports(task: &Task, service: Option<&Service>) -> Vec<(u16, Protocol)> {
    let published = task.ports.iter().map(|p| (p.host_port, p.protocol));
    let mut ports: Vec<(u16, Protocol)> = published
        .chain(service.into_iter().flat_map(Service::host_ports))
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// What the tasks placed on one node hold, as counts. Persistent maps: a copy is O(1), so each
/// plan adds its placements to its own copy of every node's counters without copying them.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Held {
    /// How many tasks occupy the node.
    pub tasks: usize,
    /// The sum of their reservations.
    pub reserved: Reservations,
    pub host_ports: imbl::HashMap<(u16, Protocol), usize>,
    /// Container and service names → how many tasks carry each.
    pub names: imbl::HashMap<String, usize>,
    /// Task images, each also untagged (`redis:7` and `redis`) → how many tasks.
    pub images: imbl::HashMap<String, usize>,
    /// Task label key → value → how many tasks.
    pub labels: imbl::HashMap<String, imbl::HashMap<String, usize>>,
}

impl Held {
    /// Counts `placed` as running here.
    pub fn add(&mut self, placed: &Placed) {
        self.count(placed, Step::Up);
    }

    /// Takes away what [`Held::add`] counted for `placed`; nothing is left of a count at zero.
    pub fn remove(&mut self, placed: &Placed) {
        self.count(placed, Step::Down);
    }

    fn count(&mut self, placed: &Placed, step: Step) {
        let (reserved, want) = (&mut self.reserved, placed.reservations);
        match step {
            Step::Up => {
                self.tasks += 1;
                reserved.nano_cpus += want.nano_cpus;
                reserved.memory_bytes += want.memory_bytes;
            }
            Step::Down => {
                self.tasks = self.tasks.saturating_sub(1);
                reserved.nano_cpus = reserved.nano_cpus.saturating_sub(want.nano_cpus);
                reserved.memory_bytes = reserved.memory_bytes.saturating_sub(want.memory_bytes);
            }
        }
        for port in &placed.host_ports {
            step.apply(&mut self.host_ports, port);
        }
        for name in placed.names() {
            step.apply(&mut self.names, name);
        }
        let untagged = untagged(placed.image);
        step.apply(&mut self.images, placed.image);
        if untagged != placed.image {
            step.apply(&mut self.images, untagged);
        }
        for (key, value) in placed.labels {
            let values = match (self.labels.get_mut(key.as_str()), step) {
                (Some(values), _) => values,
                (None, Step::Up) => self.labels.entry(key.clone()).or_default(),
                (None, Step::Down) => continue,
            };
            step.apply(values, value.as_str());
            if values.is_empty() {
                self.labels.remove(key.as_str());
            }
        }
    }
}

/// Which way a placement changes the counts.
#[derive(Clone, Copy)]
enum Step {
    Up,
    Down,
}

impl Step {
    /// Moves `key`'s count one step; a count that reaches zero is removed.
    fn apply<K, Q>(self, counts: &mut imbl::HashMap<K, usize>, key: &Q)
    where
        K: Borrow<Q> + Hash + Eq + Clone,
        Q: ToOwned<Owned = K> + Hash + Eq + ?Sized,
    {
        match (counts.get_mut(key), self) {
            (Some(n), Step::Up) => *n += 1,
            (None, Step::Up) => {
                counts.insert(key.to_owned(), 1);
            }
            (Some(n), Step::Down) => {
                *n -= 1;
                if *n == 0 {
                    counts.remove(key);
                }
            }
            (None, Step::Down) => {}
        }
    }
}

/// A node and what the tasks placed on it hold.
pub(crate) struct NodeInfo<'a> {
    pub node: &'a Node,
    pub held: Held,
    /// The engine's images as Docker names them (`filter::normalize_image`).
    pub engine_images: Arc<HashSet<String>>,
}

impl<'a> NodeInfo<'a> {
    /// A node nothing runs on yet.
    #[cfg(test)]
    pub fn new(node: &'a Node) -> NodeInfo<'a> {
        NodeInfo::bare(node, Arc::new(engine_images(node)))
    }

    /// A node nothing runs on yet, with its engine's images as Docker names them.
    pub fn bare(node: &'a Node, engine_images: Arc<HashSet<String>>) -> NodeInfo<'a> {
        NodeInfo {
            node,
            held: Held::default(),
            engine_images,
        }
    }

    /// Counts `placed` as running here.
    pub fn add(&mut self, placed: &Placed) {
        self.held.add(placed);
    }

    /// Reserved share of the node's CPU plus that of its memory, in millionths (0..=2_000_000
    /// when nothing is overcommitted), counting `extra` as if it were placed too.
    pub fn load(&self, extra: Reservations) -> u128 {
        let used = self.held.reserved;
        let share = |used: u64, extra: u64, capacity: u64| match capacity {
            0 => 0,
            cap => (u128::from(used) + u128::from(extra)) * 1_000_000 / u128::from(cap),
        };
        share(used.nano_cpus, extra.nano_cpus, self.node.nano_cpus())
            + share(
                used.memory_bytes,
                extra.memory_bytes,
                self.node.memory_bytes,
            )
    }
}

/// `redis:7` → `redis`; a registry port (`host:5000/redis`) is not a tag.
pub(crate) fn untagged(image: &str) -> &str {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => image,
    }
}

/// The engine's images of `node` as Docker names them.
pub(crate) fn engine_images(node: &Node) -> HashSet<String> {
    node.images.iter().map(|i| normalize_image(i)).collect()
}

/// A pending task with the rules its placement must follow.
pub(crate) struct Request {
    /// The image as Docker names it; None for a digest or an image id, which cannot be checked
    /// against the tags an engine reports.
    pub image: Option<String>,
    pub host_ports: Vec<(u16, Protocol)>,
    pub reservations: Reservations,
    pub constraints: Vec<Expr>,
    pub affinities: Vec<Expr>,
    pub dependencies: Vec<String>,
    /// The node a rebalancing task leaves (`Task::moves_from`).
    pub moves_from: Option<String>,
}

impl Request {
    pub fn new(task: &Task, service: &Service) -> Result<Request, ExprError> {
        let image = &service.image;
        Ok(Request {
            image: (!image.contains('@') && !image.starts_with("sha256:"))
                .then(|| normalize_image(image)),
            host_ports: host_ports(task, Some(service)),
            reservations: service.reservations,
            constraints: parse_all(Kind::Constraint, &service.constraints)?,
            affinities: parse_all(Kind::Affinity, &service.affinities)?,
            dependencies: service
                .dependencies()
                .into_iter()
                .map(String::from)
                .collect(),
            moves_from: task.moves_from.clone(),
        })
    }

    /// Whether a soft expression (`==~`, `!=~`) narrows the choice: its score changes with
    /// every placement, so such requests are placed one task at a time.
    pub fn has_preferences(&self) -> bool {
        self.constraints
            .iter()
            .chain(&self.affinities)
            .any(|e| e.soft)
    }
}

pub(crate) fn parse_all(kind: Kind, texts: &[String]) -> Result<Vec<Expr>, ExprError> {
    texts.iter().map(|t| Expr::parse(kind, t)).collect()
}
