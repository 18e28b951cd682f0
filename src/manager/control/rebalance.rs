//! Rebalancing (`--rebalance`): which slots of a service move now so that its tasks spread
//! evenly again over the nodes that may run it, after nodes joined or came back. A move is
//! start-first: a new task of the slot (`Task::moves_from`, which the scheduler never places on
//! the node it leaves) starts, and the slot's task on the crowded node stops only once the new
//! one serves, so the service never has fewer serving tasks than replicas. Moves start only on
//! a settled service (every live task serving, no update rolling), at most `parallelism` at a
//! time, and not within [`RETRY_AFTER_MS`] of a move that failed or found no node. Decided from
//! the store alone, like `rollout`: a new leader carries on. Pure: the orchestrator applies it.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Node, Service, Task};
use crate::scheduler;

/// How long after a move that failed (or found no node) the next one may start.
pub const RETRY_AFTER_MS: u64 = 10_000;

/// What a rebalance asks of one orchestrator round.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Moves {
    /// Slots that start a new task now, each with the node it leaves.
    pub slots: Vec<(u64, String)>,
    /// Decide again at this time (a retry after a failed move).
    pub wake_at_ms: Option<u64>,
}

/// Whether `task` is a rebalance move still under way: it has not taken over its slot yet.
pub(super) fn in_flight(task: &Task, slot_tasks: &[&Task]) -> bool {
    let Some(from) = task.moves_from.as_deref() else {
        return false;
    };
    live(task)
        && slot_tasks
            .iter()
            .any(|o| o.id != task.id && live(o) && o.node_id.as_deref() == Some(from))
}

fn live(task: &Task) -> bool {
    !task.state.is_terminal() && task.desired_state == crate::model::TaskState::Running
}

/// The moves `service` makes now over `tasks` (all of its tasks, as this round left them) and
/// `nodes` (every node) at `now_ms`; none for a service without `--rebalance`.
pub(super) fn moves<'a>(
    service: &Service,
    tasks: &[&Task],
    nodes: impl IntoIterator<Item = &'a Node>,
    now_ms: u64,
) -> Moves {
    let policy = service.update_policy;
    let rolling = service
        .update
        .as_ref()
        .is_some_and(|u| u.state.is_rolling());
    if !policy.rebalance || service.is_container() || service.replicas == 0 || rolling {
        return Moves::default();
    }
    // A move that failed or found no node: wait before the next.
    let retry_at = tasks
        .iter()
        .filter(|t| t.moves_from.is_some() && t.state.is_terminal())
        .map(|t| t.updated_ms.saturating_add(RETRY_AFTER_MS))
        .max();
    if let Some(at) = retry_at.filter(|at| *at > now_ms) {
        return Moves {
            slots: Vec::new(),
            wake_at_ms: Some(at),
        };
    }
    let mut slots: BTreeMap<u64, Vec<&Task>> = BTreeMap::new();
    for t in tasks.iter().copied().filter(|t| live(t)) {
        slots.entry(t.slot).or_default().push(t);
    }
    // Slots a move is under way in; anything else unsettled waits.
    let mut busy: BTreeSet<u64> = BTreeSet::new();
    for (slot, in_slot) in &slots {
        if in_slot.iter().any(|t| in_flight(t, in_slot)) {
            busy.insert(*slot);
        } else if in_slot.len() > 1 || !in_slot[0].serves() {
            // A task starting or unhealthy, a slot being replaced.
            return Moves::default();
        }
    }
    let moving = busy.len();
    let budget = match policy.parallelism {
        0 => service.replicas as usize,
        n => n as usize,
    }
    .saturating_sub(moving);
    if budget == 0 {
        return Moves::default();
    }
    // Tasks per node that may run the service, moves under way counted where they go.
    let mut load: BTreeMap<&str, usize> = nodes
        .into_iter()
        .filter(|n| scheduler::admits(service, n))
        .map(|n| (n.id.as_str(), 0))
        .collect();
    if load.len() < 2 {
        return Moves::default();
    }
    for (slot, in_slot) in &slots {
        for t in in_slot {
            // In a slot a move is under way in, the mover counts where it goes, not the task
            // it replaces.
            if busy.contains(slot) && t.moves_from.is_none() {
                continue;
            }
            if let Some(n) = t.node_id.as_deref().and_then(|n| load.get_mut(n)) {
                *n += 1;
            }
        }
    }
    let mut out = Moves::default();
    for _ in 0..budget {
        let (&most, &high) = load
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
            .expect("two nodes or more");
        let (&least, &low) = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then(a.0.cmp(b.0)))
            .expect("two nodes or more");
        if high < low + 2 {
            break;
        }
        // The highest slot on the crowded node that serves and is not moving already.
        let Some(task) = slots
            .iter()
            .rev()
            .filter(|(slot, _)| !busy.contains(slot))
            .map(|(_, in_slot)| in_slot[0])
            .find(|t| t.node_id.as_deref() == Some(most))
        else {
            break;
        };
        busy.insert(task.slot);
        out.slots.push((task.slot, most.to_string()));
        *load.get_mut(most).expect("a loaded node") -= 1;
        *load.get_mut(least).expect("a loaded node") += 1;
    }
    out
}
