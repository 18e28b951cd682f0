//! The reference the scheduler must agree with (tests only): the algorithm before counters and
//! groups, kept as it was. Each task in turn runs every filter over every node, each filter
//! scanning the list of tasks on the node; a strategy picks among those that pass.

use std::collections::HashMap;

use rand::Rng;

use crate::model::{Node, Reservations, Service, Task};

use super::expr::Expr;
use super::filter::normalize_image;
use super::strategy::Strategy;
use super::view::{untagged, Placed, Request};
use super::{Decision, Snapshot};

struct NodeTasks<'a> {
    node: &'a Node,
    tasks: Vec<Placed<'a>>,
}

impl NodeTasks<'_> {
    fn reserved(&self) -> Reservations {
        self.tasks
            .iter()
            .fold(Reservations::default(), |acc, t| Reservations {
                nano_cpus: acc.nano_cpus + t.reservations.nano_cpus,
                memory_bytes: acc.memory_bytes + t.reservations.memory_bytes,
            })
    }

    fn load(&self, extra: Reservations) -> u128 {
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

pub(crate) fn schedule<R: Rng + ?Sized>(
    pending: &[&Task],
    snapshot: &Snapshot,
    strategy: Strategy,
    rng: &mut R,
) -> Vec<Decision> {
    let services: HashMap<&str, &Service> = snapshot
        .services
        .iter()
        .map(|s| (s.id.as_str(), *s))
        .collect();
    let mut nodes: Vec<NodeTasks> = snapshot
        .nodes
        .iter()
        .map(|&node| NodeTasks {
            node,
            tasks: Vec::new(),
        })
        .collect();
    nodes.sort_by(|a, b| a.node.id.cmp(&b.node.id));
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.node.id.as_str(), i))
        .collect();
    for task in snapshot.tasks.iter().filter(|t| t.state.occupies_node()) {
        let Some(&i) = task.node_id.as_deref().and_then(|id| index.get(id)) else {
            continue;
        };
        let service = services.get(task.service_id.as_str()).copied();
        nodes[i].tasks.push(Placed::new(task, service));
    }
    let mut decisions = Vec::with_capacity(pending.len());
    for task in pending {
        let unschedulable = |reason: String| Decision::Unschedulable {
            task_id: task.id.clone(),
            reason,
        };
        let Some(&service) = services.get(task.service_id.as_str()) else {
            decisions.push(unschedulable(format!(
                "service {} does not exist",
                task.service_id
            )));
            continue;
        };
        let request = match Request::new(task, service) {
            Ok(request) => request,
            Err(e) => {
                decisions.push(unschedulable(e.to_string()));
                continue;
            }
        };
        match candidates(&request, &nodes) {
            Ok(candidates) => {
                let want = request.reservations;
                let i = pick(strategy, &candidates, &nodes, want, rng);
                nodes[i].tasks.push(Placed::new(task, Some(service)));
                decisions.push(Decision::Assign {
                    task_id: task.id.clone(),
                    node_id: nodes[i].node.id.clone(),
                });
            }
            Err(reason) => decisions.push(unschedulable(reason)),
        }
    }
    decisions
}

fn pick<R: Rng + ?Sized>(
    strategy: Strategy,
    candidates: &[usize],
    nodes: &[NodeTasks],
    want: Reservations,
    rng: &mut R,
) -> usize {
    let id = |i: usize| nodes[i].node.id.as_str();
    let pick = match strategy {
        Strategy::Spread => candidates.iter().copied().min_by_key(|&i| {
            let n = &nodes[i];
            (n.tasks.len(), n.load(Reservations::default()), id(i))
        }),
        Strategy::Binpack => candidates.iter().copied().min_by_key(|&i| {
            let n = &nodes[i];
            (
                std::cmp::Reverse(n.load(want)),
                std::cmp::Reverse(n.tasks.len()),
                id(i),
            )
        }),
        Strategy::Random => Some(candidates[rng.random_range(0..candidates.len())]),
    };
    pick.expect("at least one candidate")
}

fn candidates(req: &Request, nodes: &[NodeTasks]) -> Result<Vec<usize>, String> {
    if nodes.is_empty() {
        return Err("no suitable node: the cluster has no nodes".to_string());
    }
    let mut passing = Vec::new();
    let mut rules: Vec<(String, usize)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut broken = check(req, node);
        if broken.is_empty() {
            passing.push(i);
        }
        broken.dedup();
        for rule in broken {
            match rules.iter_mut().find(|(r, _)| *r == rule) {
                Some((_, n)) => *n += 1,
                None => rules.push((rule, 1)),
            }
        }
    }
    if passing.is_empty() {
        rules.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let total = nodes.len();
        let detail: Vec<String> = rules
            .iter()
            .map(|(rule, n)| format!("{rule}: {} of {total} nodes match", total - n))
            .collect();
        return Err(format!("no suitable node: {}", detail.join("; ")));
    }
    let score = |i: &usize| -> usize {
        let n = &nodes[*i];
        let soft = |e: &&Expr| e.soft;
        let c = req.constraints.iter().filter(soft);
        let a = req.affinities.iter().filter(soft);
        c.filter(|e| constraint(e, n)).count() + a.filter(|e| affinity(e, n)).count()
    };
    let best = passing.iter().map(score).max().unwrap_or(0);
    passing.retain(|i| score(i) == best);
    Ok(passing)
}

/// The eight filters in their order, each as it read the task list.
fn check(req: &Request, n: &NodeTasks) -> Vec<String> {
    let mut broken = Vec::new();
    if !n.node.is_schedulable() {
        broken.push("health (ready and active)".to_string());
    }
    if let Some(want) = &req.image {
        if !n.node.images.iter().any(|h| normalize_image(h) == *want) {
            broken.push(format!("image {want} present"));
        }
    }
    for &(port, protocol) in &req.host_ports {
        if n.tasks
            .iter()
            .any(|t| t.host_ports.contains(&(port, protocol)))
        {
            broken.push(format!("host port {port}/{protocol} free"));
        }
    }
    let slots = n.node.label("containerslots");
    if slots
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|s| n.tasks.len() >= s)
    {
        broken.push("containerslots free".to_string());
    }
    for dep in &req.dependencies {
        if !n.tasks.iter().any(|t| t.names().any(|name| name == dep)) {
            broken.push(format!("dependency {dep} present"));
        }
    }
    for expr in req.affinities.iter().filter(|e| !e.soft) {
        if !affinity(expr, n) {
            broken.push(format!("affinity {expr}"));
        }
    }
    for expr in req.constraints.iter().filter(|e| !e.soft) {
        if !constraint(expr, n) {
            broken.push(format!("constraint {expr}"));
        }
    }
    let want = req.reservations;
    let used = n.reserved();
    if want.nano_cpus > 0 && used.nano_cpus + want.nano_cpus > n.node.nano_cpus() {
        let cpus = want.nano_cpus as f64 / 1e9;
        broken.push(format!("resources: {cpus} CPUs free"));
    }
    if want.memory_bytes > 0 && used.memory_bytes + want.memory_bytes > n.node.memory_bytes {
        broken.push(format!(
            "resources: {} bytes of memory free",
            want.memory_bytes
        ));
    }
    broken
}

fn affinity(expr: &Expr, n: &NodeTasks) -> bool {
    let tasks = &n.tasks;
    match expr.key.as_str() {
        "container" => expr.holds(tasks.iter().flat_map(Placed::names)),
        "image" => {
            let images = tasks.iter().map(|t| t.image);
            let images = images.chain(n.node.images.iter().map(String::as_str));
            expr.holds(images.flat_map(|i| [i, untagged(i)]))
        }
        label => expr.holds(
            tasks
                .iter()
                .filter_map(|t| t.labels.get(label).map(String::as_str)),
        ),
    }
}

fn constraint(expr: &Expr, n: &NodeTasks) -> bool {
    match expr.key.as_str() {
        "node" => expr.holds([n.node.id.as_str(), n.node.name.as_str()]),
        label => expr.holds(n.node.placement_label(label)),
    }
}
