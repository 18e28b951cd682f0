//! The scheduler's decisions: classic Swarm's filters and strategies as pure functions over
//! one read of the store. No store, no clock, no I/O; randomness only from the caller's RNG.
//! The loop that feeds it views and commits its decisions is `manager::control::placement`;
//! the Docker API and the CLI use its expression checks and image names.

mod batch;
mod error;
mod expr;
mod filter;
mod occupancy;
mod strategy;
mod view;

#[cfg(test)]
mod equivalence_tests;
#[cfg(test)]
mod naive;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::HashMap;

use rand::Rng;

use crate::model::{Node, Service, Task, TaskState};

pub use self::error::{ExprError, UnknownStrategy};
pub(crate) use self::filter::normalize_image;
pub use self::occupancy::Occupancy;
pub use self::strategy::Strategy;

/// One consistent read of the store, borrowed (an index of `Arc`s lends it without a copy):
/// every node and service, and the tasks that matter here, those occupying a node or PENDING.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    pub nodes: Vec<&'a Node>,
    pub services: Vec<&'a Service>,
    pub tasks: Vec<&'a Task>,
}

impl<'a> Snapshot<'a> {
    /// Keeps of `tasks` only those that occupy a node or are PENDING.
    pub fn new(
        nodes: impl IntoIterator<Item = &'a Node>,
        services: impl IntoIterator<Item = &'a Service>,
        tasks: impl IntoIterator<Item = &'a Task>,
    ) -> Snapshot<'a> {
        Snapshot {
            nodes: nodes.into_iter().collect(),
            services: services.into_iter().collect(),
            tasks: tasks
                .into_iter()
                .filter(|t| t.state.occupies_node() || t.state == TaskState::Pending)
                .collect(),
        }
    }

    /// Tasks waiting for a node (PENDING, meant to run), oldest first.
    pub fn pending(&self) -> Vec<&'a Task> {
        let mut pending: Vec<&Task> = self
            .tasks
            .iter()
            .copied()
            .filter(|t| t.state == TaskState::Pending && t.desired_state == TaskState::Running)
            .collect();
        pending.sort_by(|a, b| {
            (a.created_ms, &a.service_id, a.slot, &a.id).cmp(&(
                b.created_ms,
                &b.service_id,
                b.slot,
                &b.id,
            ))
        });
        pending
    }
}

/// How the reason for a task no node may take begins (`Decision::Unschedulable`).
pub const NO_SUITABLE_NODE: &str = "no suitable node";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Move the task to ASSIGNED on this node.
    Assign { task_id: String, node_id: String },
    /// Leave the task PENDING, showing why (`no suitable node: constraint storage==ssd: 0 of 2
    /// nodes match`, or the expression that does not parse).
    Unschedulable { task_id: String, reason: String },
}

/// Checks a service's constraints and affinities before it is accepted.
pub fn validate(service: &Service) -> Result<(), ExprError> {
    view::parse_all(expr::Kind::Constraint, &service.constraints)?;
    view::parse_all(expr::Kind::Affinity, &service.affinities)?;
    Ok(())
}

/// Whether a task of `service` may run on `node` for what the node is (ready and active, its
/// engine's images, its attributes against the service's hard constraints), whatever else runs
/// there: the nodes a rebalance spreads a service over.
pub fn admits(service: &Service, node: &Node) -> bool {
    let probe = Task::new(String::new(), service.id.clone(), 0, 0);
    let Ok(request) = view::Request::new(&probe, service) else {
        return false;
    };
    let images = std::sync::Arc::new(view::engine_images(node));
    filter::admits(&request, &view::NodeInfo::bare(node, images))
}

/// Decides a node for each of `pending`, in order, as one batch: each placement counts for the
/// next (host ports, slots, reservations, spreading), as if already committed. Consecutive tasks
/// with the same request are placed as a group (`batch.rs`), with the decisions of placing
/// them one by one.
pub fn schedule<R: Rng + ?Sized>(
    pending: &[&Task],
    snapshot: &Snapshot,
    strategy: Strategy,
    rng: &mut R,
) -> Vec<Decision> {
    let services = snapshot.services.iter().copied();
    let mut occupancy = Occupancy::of(services, snapshot.tasks.iter().copied());
    schedule_on(pending, snapshot, &mut occupancy, strategy, rng)
}

/// [`schedule`] with what the nodes hold counted already (`occupancy`, kept by the caller
/// across plans); `snapshot.tasks` is not read. The plan's placements are not added to
/// `occupancy`: the caller counts them once they are in the store.
pub fn schedule_on<R: Rng + ?Sized>(
    pending: &[&Task],
    snapshot: &Snapshot,
    occupancy: &mut Occupancy,
    strategy: Strategy,
    rng: &mut R,
) -> Vec<Decision> {
    let services: HashMap<&str, &Service> = snapshot
        .services
        .iter()
        .map(|s| (s.id.as_str(), *s))
        .collect();
    let mut nodes = occupancy.infos(&snapshot.nodes);
    let mut decisions = Vec::with_capacity(pending.len());
    let mut rest = pending;
    while let Some(first) = rest.first() {
        let Some(&service) = services.get(first.service_id.as_str()) else {
            decisions.push(Decision::Unschedulable {
                task_id: first.id.clone(),
                reason: format!("service {} does not exist", first.service_id),
            });
            rest = &rest[1..];
            continue;
        };
        let ports = view::host_ports(first, Some(service));
        let len = rest
            .iter()
            .take_while(|t| {
                t.service_id == first.service_id
                    && t.moves_from == first.moves_from
                    && view::host_ports(t, Some(service)) == ports
            })
            .count();
        let (group, tail) = rest.split_at(len);
        rest = tail;
        let request = match view::Request::new(first, service) {
            Ok(request) => request,
            Err(e) => {
                decisions.extend(group.iter().map(|t| Decision::Unschedulable {
                    task_id: t.id.clone(),
                    reason: e.to_string(),
                }));
                continue;
            }
        };
        if !request.has_preferences() {
            batch::place(
                group,
                service,
                &request,
                &mut nodes,
                strategy,
                rng,
                &mut decisions,
            );
            continue;
        }
        // Soft preferences score nodes by what each placement changes: one task at a time.
        for task in group {
            match filter::candidates(&request, &nodes) {
                Ok(candidates) => {
                    let want = request.reservations;
                    let i = strategy.pick(&candidates, &nodes, want, rng);
                    nodes[i].add(&view::Placed::new(task, Some(service)));
                    decisions.push(Decision::Assign {
                        task_id: task.id.clone(),
                        node_id: nodes[i].node.id.clone(),
                    });
                }
                Err(reason) => decisions.push(Decision::Unschedulable {
                    task_id: task.id.clone(),
                    reason,
                }),
            }
        }
    }
    decisions
}
