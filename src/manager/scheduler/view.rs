//! The scheduler's working copy of one store read: each node with what its tasks hold (names,
//! images, labels, host ports, reservations), and each pending task's parsed placement rules.
//! Placements made during a batch are added here, so later tasks of the batch see them.

use std::collections::{BTreeMap, HashMap};

use crate::model::{Node, Protocol, Reservations, Service, Task};

use super::error::ExprError;
use super::expr::{Expr, Kind};

/// What a task placed on a node holds there.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// Its container name (`web.1`) and its service's name (`web`): what affinities, links and
    /// `--volumes-from` refer to.
    pub names: Vec<String>,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub host_ports: Vec<(u16, Protocol)>,
    pub reservations: Reservations,
}

impl Placed {
    /// A task whose service is gone still holds the host ports it published.
    pub fn new(task: &Task, service: Option<&Service>) -> Placed {
        let mut host_ports: Vec<(u16, Protocol)> = task
            .ports
            .iter()
            .map(|p| (p.host_port, p.protocol))
            .collect();
        let mut placed = Placed {
            names: Vec::new(),
            image: String::new(),
            labels: BTreeMap::new(),
            host_ports: Vec::new(),
            reservations: Reservations::default(),
        };
        if let Some(svc) = service {
            placed.names = vec![task.name(&svc.name), svc.name.clone()];
            placed.image = svc.image.clone();
            placed.labels = svc.labels.clone();
            placed.reservations = svc.reservations;
            host_ports.extend(svc.host_ports());
        }
        host_ports.sort_unstable();
        host_ports.dedup();
        placed.host_ports = host_ports;
        placed
    }
}

pub(crate) struct NodeInfo<'a> {
    pub node: &'a Node,
    pub tasks: Vec<Placed>,
}

impl NodeInfo<'_> {
    pub fn reserved(&self) -> Reservations {
        self.tasks
            .iter()
            .fold(Reservations::default(), |acc, t| Reservations {
                nano_cpus: acc.nano_cpus + t.reservations.nano_cpus,
                memory_bytes: acc.memory_bytes + t.reservations.memory_bytes,
            })
    }

    /// Reserved share of the node's CPU plus that of its memory, in millionths (0..=2_000_000
    /// when nothing is overcommitted), counting `extra` as if it were placed too.
    pub fn load(&self, extra: Reservations) -> u128 {
        let used = self.reserved();
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

/// Every node (by id), with the tasks that occupy it.
pub(crate) fn nodes<'a>(
    nodes: &'a [Node],
    tasks: &[Task],
    services: &HashMap<&str, &Service>,
) -> Vec<NodeInfo<'a>> {
    let mut infos: Vec<NodeInfo<'a>> = nodes
        .iter()
        .map(|node| NodeInfo {
            node,
            tasks: Vec::new(),
        })
        .collect();
    infos.sort_by(|a, b| a.node.id.cmp(&b.node.id));
    let index: HashMap<&str, usize> = infos
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.id.as_str(), i))
        .collect();
    for task in tasks.iter().filter(|t| t.state.occupies_node()) {
        let Some(&i) = task.node_id.as_deref().and_then(|id| index.get(id)) else {
            continue;
        };
        let service = services.get(task.service_id.as_str()).copied();
        infos[i].tasks.push(Placed::new(task, service));
    }
    infos
}

/// A pending task with the rules its placement must follow.
pub(crate) struct Request {
    pub placed: Placed,
    pub constraints: Vec<Expr>,
    pub affinities: Vec<Expr>,
    pub dependencies: Vec<String>,
}

impl Request {
    pub fn new(task: &Task, service: &Service) -> Result<Request, ExprError> {
        Ok(Request {
            placed: Placed::new(task, Some(service)),
            constraints: parse_all(Kind::Constraint, &service.constraints)?,
            affinities: parse_all(Kind::Affinity, &service.affinities)?,
            dependencies: service
                .dependencies()
                .into_iter()
                .map(String::from)
                .collect(),
        })
    }
}

pub(crate) fn parse_all(kind: Kind, texts: &[String]) -> Result<Vec<Expr>, ExprError> {
    texts.iter().map(|t| Expr::parse(kind, t)).collect()
}
