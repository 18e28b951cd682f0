//! A rolling update's next step, decided from the service record and its tasks alone: which
//! outdated slots to replace now (at most `parallelism` in flight, `delay` after the last one
//! came to serve), and whether the update pauses, rolls back or completes. A slot is updated
//! once its live task runs the service's spec version, so a new leader reading the same store
//! carries on where the last one stopped: no slot is replaced twice, none is skipped. Pure: the
//! orchestrator applies the step.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{FailureAction, Service, Task, UpdateStatus};

/// What an update asks of one orchestrator round.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Step {
    /// Outdated slots whose task is replaced now.
    pub replace: BTreeSet<u64>,
    /// The service record with its update moved on (paused, rolled back, completed).
    pub service: Option<Service>,
    /// Decide again at this time: a delay or a monitoring period ending.
    pub wake_at_ms: Option<u64>,
}

/// Where one slot stands in the update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A task on the service's version serves.
    Done,
    /// Only tasks on an older version are live: to be replaced.
    Outdated,
    /// Anything else: a new task on its way, or nothing live (a restart pending).
    InFlight,
}

/// The next step of `service`'s update over `tasks` (all of the service's, as this round left
/// them) at `now_ms`; an empty step for a service without an update rolling.
pub(super) fn step(
    service: &Service,
    tasks: &[&Task],
    now_ms: u64,
    failed: impl Fn(&Task) -> bool,
) -> Step {
    let Some(status) = service.update.as_ref().filter(|u| u.state.is_rolling()) else {
        return Step::default();
    };
    if status.started_ms == 0 {
        // Started by a client: the leader's clock stamps it, so that every time the update
        // compares (task creations, serving, delays) comes from one clock.
        return Step {
            service: Some(Service {
                update: Some(UpdateStatus {
                    started_ms: now_ms,
                    ..status.clone()
                }),
                ..service.clone()
            }),
            ..Step::default()
        };
    }
    let policy = service.update_policy;
    let ours = |t: &Task| t.spec_version == service.version && t.created_ms >= status.started_ms;

    let failures: Vec<&Task> = tasks
        .iter()
        .copied()
        .filter(|t| ours(t) && failed(t))
        .collect();
    let failing = policy.too_many_failures(failures.len() as u64, service.replicas);
    if failing && policy.failure_action != FailureAction::Continue {
        let why = failure_message(&failures, service.replicas);
        let rolled_back = match (policy.failure_action, status.state.is_rollback()) {
            (FailureAction::Rollback, false) => {
                service.rolled_back(now_ms, format!("update rolled back: {why}"))
            }
            _ => None,
        };
        let service = rolled_back.unwrap_or_else(|| Service {
            update: Some(UpdateStatus {
                state: status.state.paused(),
                message: format!("update paused: {why}"),
                ..status.clone()
            }),
            ..service.clone()
        });
        return Step {
            service: Some(service),
            ..Step::default()
        };
    }

    let slots = slots(service, tasks);
    // When the latest of this update's tasks came to serve (its last write: RUNNING, healthy).
    let last_served = tasks
        .iter()
        .filter(|t| ours(t) && t.serves())
        .map(|t| t.updated_ms)
        .max();
    let mut step = Step::default();
    if slots.values().all(|s| *s == Slot::Done) && !older_still_live(service, tasks) {
        let done_at = last_served
            .unwrap_or(status.started_ms)
            .saturating_add(policy.monitor_ms);
        if done_at <= now_ms {
            step.service = Some(Service {
                update: Some(UpdateStatus {
                    state: status.state.completed(),
                    completed_ms: Some(now_ms),
                    ..status.clone()
                }),
                ..service.clone()
            });
        } else {
            step.wake_at_ms = Some(done_at);
        }
        return step;
    }
    if let Some(served) = last_served.filter(|_| policy.delay_ms > 0) {
        let next_at = served.saturating_add(policy.delay_ms);
        if next_at > now_ms {
            step.wake_at_ms = Some(next_at);
            return step;
        }
    }
    let in_flight = slots.values().filter(|s| **s == Slot::InFlight).count() as u64;
    let budget = match policy.parallelism {
        0 => u64::MAX,
        n => n.saturating_sub(in_flight),
    };
    step.replace = slots
        .iter()
        .filter(|(_, s)| **s == Slot::Outdated)
        .map(|(slot, _)| *slot)
        .take(usize::try_from(budget).unwrap_or(usize::MAX))
        .collect();
    step
}

/// Each slot of the replica count, from its live tasks.
fn slots(service: &Service, tasks: &[&Task]) -> BTreeMap<u64, Slot> {
    let mut slots: BTreeMap<u64, Slot> = (1..=service.replicas)
        .map(|s| (s, Slot::InFlight))
        .collect();
    let mut current_live: BTreeSet<u64> = BTreeSet::new();
    for t in tasks.iter().filter(|t| live(t)) {
        let Some(slot) = slots.get_mut(&t.slot) else {
            continue;
        };
        if t.spec_version == service.version {
            current_live.insert(t.slot);
            if t.serves() {
                *slot = Slot::Done;
            }
        } else if *slot == Slot::InFlight && !current_live.contains(&t.slot) {
            *slot = Slot::Outdated;
        }
    }
    // A slot with a new task on its way is in flight even if an older one still runs there.
    for s in current_live {
        if let Some(slot @ Slot::Outdated) = slots.get_mut(&s) {
            *slot = Slot::InFlight;
        }
    }
    slots
}

fn live(task: &Task) -> bool {
    !task.state.is_terminal() && task.desired_state == crate::model::TaskState::Running
}

/// Whether a task on an older version still runs anywhere (start-first's old task, until this
/// round's stop of it lands).
fn older_still_live(service: &Service, tasks: &[&Task]) -> bool {
    tasks
        .iter()
        .any(|t| live(t) && t.spec_version != service.version && t.slot <= service.replicas)
}

fn failure_message(failures: &[&Task], replicas: u64) -> String {
    let first = failures.iter().min_by_key(|t| (t.updated_ms, t.slot));
    let detail = first.map_or(String::new(), |t| match t.message.as_str() {
        "" => format!(": slot {} {}", t.slot, t.state),
        m => format!(": slot {} {}", t.slot, m),
    });
    format!(
        "{} of {replicas} updated tasks failed{detail}",
        failures.len()
    )
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
