//! The scheduler's decisions: classic Swarm's filters and strategies as pure functions over
//! one read of the store. No store, no clock, no I/O; randomness only from the caller's RNG.
//! The control loop that reads the store and commits these decisions lives elsewhere.

mod error;
mod expr;
mod filter;
mod strategy;
mod view;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

use std::collections::HashMap;

use rand::Rng;

use crate::model::{Node, Service, Task, TaskState};

pub use self::error::{ExprError, UnknownStrategy};
pub(crate) use self::filter::normalize_image;
pub use self::strategy::Strategy;

/// One consistent read of the store: every node, service and task.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    pub nodes: &'a [Node],
    pub services: &'a [Service],
    pub tasks: &'a [Task],
}

impl<'a> Snapshot<'a> {
    /// Tasks waiting for a node (PENDING, meant to run), oldest first.
    pub fn pending(&self) -> Vec<&'a Task> {
        let mut pending: Vec<&Task> = self
            .tasks
            .iter()
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

/// Decides a node for each of `pending`, in order, as one batch: each placement counts for the
/// next (host ports, slots, reservations, spreading), as if already committed.
pub fn schedule<R: Rng + ?Sized>(
    pending: &[&Task],
    snapshot: &Snapshot,
    strategy: Strategy,
    rng: &mut R,
) -> Vec<Decision> {
    let services: HashMap<&str, &Service> = snapshot
        .services
        .iter()
        .map(|s| (s.id.as_str(), s))
        .collect();
    let mut nodes = view::nodes(snapshot.nodes, snapshot.tasks, &services);
    let mut decisions = Vec::with_capacity(pending.len());
    for task in pending {
        let unschedulable = |reason: String| Decision::Unschedulable {
            task_id: task.id.clone(),
            reason,
        };
        let Some(service) = services.get(task.service_id.as_str()) else {
            decisions.push(unschedulable(format!(
                "service {} does not exist",
                task.service_id
            )));
            continue;
        };
        let request = match view::Request::new(task, service) {
            Ok(request) => request,
            Err(e) => {
                decisions.push(unschedulable(e.to_string()));
                continue;
            }
        };
        match filter::candidates(&request, &nodes) {
            Ok(candidates) => {
                let want = request.placed.reservations;
                let i = strategy.pick(&candidates, &nodes, want, rng);
                nodes[i].tasks.push(request.placed);
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
