//! The orchestrator: keeps every service at its replica count and on its spec. From one read of
//! the store it decides which tasks to create (a slot without a live task, as the restart policy
//! allows and after a backoff for failing slots; a slot a rolling update replaces), which to stop
//! (scale down, service removed, a duplicate in a slot, an unhealthy container: a failure, as a
//! crash is; an outdated task, or one on a drained node, once its replacement serves), which to
//! orphan (their node is DOWN) and which finished tasks to forget. Pure: no store, no clock; the driver in
//! `control` commits the plan.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{
    Actor, Availability, Health, Node, NodeStatus, RestartPolicy, Service, Task, TaskState,
    UpdateOrder, DEFAULT_STOP_GRACE_MS,
};
use crate::objects::{Expect, Versioned, View, Write};
use crate::proxy::labels;
use crate::scheduler::NO_SUITABLE_NODE;

use super::{handover, rebalance, rollout, Plan};

/// Why a slot's live task is replaced by a new one this round.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Replace {
    /// A rolling update, in its order.
    Update(UpdateOrder),
    /// A rebalance, off this node, start-first.
    Move(String),
}

/// Finished tasks kept per slot, newest first, for `service ps`.
pub const RETAINED_PER_SLOT: usize = 5;

/// Restart backoff after the first failure in a row: 1 s, doubling, at most this.
const MAX_BACKOFF_MS: u64 = 10_000;

/// How long a slot whose latest task failed `failures` times in a row waits before a new task.
pub fn backoff_ms(failures: u32) -> u64 {
    match failures {
        0 | 1 => 0,
        n => (1_000u64 << (n - 2).min(16)).min(MAX_BACKOFF_MS),
    }
}

/// The drain delay a new task of `service` carries: `--stop-grace` if given, else the default
/// for a service the proxy routes to (its tasks may be in a proxy config) and none for others.
pub fn stop_grace_ms(service: &Service) -> u64 {
    match service.stop_grace_ms {
        Some(ms) => ms,
        None if service.labels.contains_key(labels::HOSTNAME) => DEFAULT_STOP_GRACE_MS,
        None => 0,
    }
}

/// Whether a task ended, or is ending, as a failure: FAILED, REJECTED, or (a service's) stopped
/// because its container became unhealthy.
fn failed(task: &Task, service: &Service) -> bool {
    matches!(task.state, TaskState::Failed | TaskState::Rejected) || unhealthy(task, service)
}

/// A service's task whose container is unhealthy: a failure. A plain container's is not, as
/// with Docker (whose engine leaves an unhealthy container running): it only loses its traffic.
fn unhealthy(task: &Task, service: &Service) -> bool {
    task.health == Some(Health::Unhealthy) && !service.is_container()
}

/// Decides the orchestrator's writes for `state` at `now_ms`; `new_id` names new tasks.
pub fn plan(state: &View, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
    let mut ids: BTreeSet<&str> = state.services().map(|s| s.value.id.as_str()).collect();
    // Tasks whose service was removed.
    ids.extend(state.tasks().map(|t| t.value.service_id.as_str()));
    plan_services(state, ids, now_ms, new_id)
}

/// The same decisions for the services in `ids` only (present or removed): everything the
/// orchestrator decides about a service depends on that service, its tasks, their nodes and
/// the time, so a round over the services whose objects changed decides what a full round
/// would, but for backoffs that end (the caller plans in full at `wake_at_ms`).
pub fn plan_services<'a>(
    state: &'a View,
    ids: impl IntoIterator<Item = &'a str>,
    now_ms: u64,
    new_id: &mut dyn FnMut() -> String,
) -> Plan {
    let mut round = Round {
        now_ms,
        state,
        changed: BTreeMap::new(),
        writes: Vec::new(),
        wake_at_ms: None,
    };
    for id in ids {
        let tasks: Vec<&Versioned<Task>> = state.tasks_of_service(id).collect();
        match state.service(id) {
            Some(service) => {
                round.service(service, &tasks, new_id);
                round.auto_remove(service, &tasks);
            }
            // Tasks whose service was removed: stop what runs, forget what finished.
            None => {
                for t in tasks {
                    round.without_service(t);
                }
            }
        }
    }
    round.finish()
}

/// The orchestrator loop's memory between rounds: the view it last planned on, so the next
/// round reconsiders only the services whose service, tasks or nodes changed since.
#[derive(Default)]
pub struct Orchestrator {
    last: Option<View>,
    wake_at_ms: Option<u64>,
    /// Containers handing over (`handover`): planned every round, since what they wait for
    /// (their successor serving) is another service's change.
    handing_over: BTreeSet<String>,
}

impl Orchestrator {
    pub fn plan(&mut self, state: &View, now_ms: u64, new_id: &mut dyn FnMut() -> String) -> Plan {
        let woken = self.wake_at_ms.is_some_and(|at| at <= now_ms);
        let plan = match self.last.as_ref().filter(|_| !woken) {
            None => {
                self.handing_over = state
                    .services()
                    .filter(|s| handing_over(state, &s.value.id))
                    .map(|s| s.value.id.clone())
                    .collect();
                plan(state, now_ms, new_id)
            }
            Some(last) => {
                let mut dirty = dirty_services(state, last);
                for c in state.service_changes(last) {
                    let s = c.current().or(c.previous()).expect("a change has a side");
                    self.handing_over.remove(&s.value.id);
                }
                self.handing_over
                    .extend(dirty.iter().filter(|id| handing_over(state, id)).cloned());
                dirty.extend(self.handing_over.iter().cloned());
                let plan = plan_services(state, dirty.iter().map(String::as_str), now_ms, new_id);
                // A backoff still running elsewhere keeps its wake-up time.
                Plan {
                    wake_at_ms: match (plan.wake_at_ms, self.wake_at_ms) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    },
                    ..plan
                }
            }
        };
        self.last = Some(state.clone());
        self.wake_at_ms = plan.wake_at_ms;
        plan
    }
}

fn handing_over(state: &View, id: &str) -> bool {
    state
        .service(id)
        .and_then(|s| s.value.container.as_ref())
        .is_some_and(|c| c.handover.is_some())
}

/// The services whose service record, tasks or tasks' nodes differ between `last` and `state`.
fn dirty_services(state: &View, last: &View) -> BTreeSet<String> {
    let mut dirty = BTreeSet::new();
    for c in state.service_changes(last) {
        let s = c.current().or(c.previous()).expect("a change has a side");
        dirty.insert(s.value.id.clone());
    }
    for c in state.task_changes(last) {
        for t in [c.previous(), c.current()].into_iter().flatten() {
            dirty.insert(t.value.service_id.clone());
        }
    }
    let mut nodes_changed = false;
    for c in state.node_changes(last) {
        let n = c.current().or(c.previous()).expect("a change has a side");
        for t in state.tasks_of_node(&n.value.id) {
            dirty.insert(t.value.service_id.clone());
        }
        nodes_changed = true;
    }
    // A node that joins, comes back or gets the image: services that rebalance may spread
    // onto it (node records change seldom: registrations, status, availability, images).
    if nodes_changed {
        for s in state.services() {
            if s.value.update_policy.rebalance {
                dirty.insert(s.value.id.clone());
            }
        }
    }
    dirty
}

struct Round<'a> {
    now_ms: u64,
    state: &'a View,
    /// Tasks changed this round, by id, with the revision they were read at.
    changed: BTreeMap<String, (Task, u64)>,
    writes: Vec<Write>,
    wake_at_ms: Option<u64>,
}

impl<'a> Round<'a> {
    /// The task as this round has left it so far.
    fn current<'s>(&'s self, t: &'s Versioned<Task>) -> &'s Task {
        match self.changed.get(&t.value.id) {
            Some((task, _)) => task,
            None => &t.value,
        }
    }

    fn update(&mut self, t: &Versioned<Task>, task: Task) {
        if task != t.value {
            self.changed.insert(task.id.clone(), (task, t.mod_revision));
        }
    }

    fn node_of(&self, task: &Task) -> Option<&'a Node> {
        let state = self.state;
        task.node_id
            .as_deref()
            .and_then(|id| state.node(id))
            .map(|n| &n.value)
    }

    fn on_drained_node(&self, task: &Task) -> bool {
        self.node_of(task)
            .is_some_and(|n| n.availability == Availability::Drain)
    }

    /// Whether the task's node can no longer report on it: DOWN, or gone from the store.
    fn node_lost(&self, task: &Task) -> Option<String> {
        let id = task.node_id.as_deref()?;
        match self.state.node(id).map(|n| &n.value) {
            None => Some(format!("node {id} was removed")),
            Some(n) if n.status == NodeStatus::Down => Some(format!("node {} is down", n.name)),
            Some(_) => None,
        }
    }

    /// Stops a live task: directly while no agent has it, else by asking its agent; a task
    /// whose node is lost is orphaned instead (its agent cannot answer).
    fn stop(&mut self, t: &Versioned<Task>, why: &str) {
        let mut task = self.current(t).clone();
        if task.state.is_terminal() {
            return;
        }
        task.desired_state = TaskState::Shutdown;
        if let Some(lost) = self
            .node_lost(&task)
            .filter(|_| task.state >= TaskState::Assigned)
        {
            let _ = task.transition(TaskState::Orphaned, Actor::Orchestrator, lost, self.now_ms);
        } else if task.state <= TaskState::Assigned {
            let _ = task.transition(TaskState::Shutdown, Actor::Orchestrator, why, self.now_ms);
        } else if task.message.is_empty() {
            task.message = why.to_string();
        }
        self.update(t, task);
    }

    fn wake_at(&mut self, at_ms: u64) {
        self.wake_at_ms = Some(self.wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
    }

    fn service(
        &mut self,
        versioned: &Versioned<Service>,
        tasks: &[&'a Versioned<Task>],
        new_id: &mut dyn FnMut() -> String,
    ) {
        let service = &versioned.value;
        // A container handing over to its successor (compose's recreate with a policy): its
        // stop takes effect once the successor serves. The stop itself is the next round's,
        // on the record as written, as a `docker stop`'s is.
        match handover::decide(service, self.state, self.now_ms) {
            handover::Decision::None => {}
            handover::Decision::Wait { until_ms } => self.wake_at(until_ms),
            handover::Decision::Stop { handed_over, why } => {
                if handed_over {
                    tracing::info!(container = %service.name, "{why}");
                } else {
                    tracing::warn!(container = %service.name, "handover: {why}");
                }
                self.writes.push(Write::Service {
                    service: Box::new(handover::stopped(service)),
                    expect: Expect::ModRevision(versioned.mod_revision),
                });
                return;
            }
        }
        // Per task: lost nodes, drained nodes, slots beyond the replica count, and finishing
        // what was already asked to stop.
        for t in tasks {
            let task = self.current(t);
            if task.state.is_terminal() {
                continue;
            }
            // A plain container without `reschedule:on-node-failure` stays with its node.
            if task.state >= TaskState::Assigned && service.reschedules() {
                if let Some(lost) = self.node_lost(task) {
                    let mut task = task.clone();
                    task.desired_state = TaskState::Shutdown;
                    let _ = task.transition(
                        TaskState::Orphaned,
                        Actor::Orchestrator,
                        lost,
                        self.now_ms,
                    );
                    self.update(t, task);
                    continue;
                }
            }
            if task.slot > service.replicas {
                self.stop(t, "scaled down");
            } else if self.on_drained_node(task) && (service.is_container() || !task.serves()) {
                // A service's serving task waits for its replacement instead (see `slot`).
                self.stop(t, "node drained");
            } else if task.desired_state == TaskState::Shutdown && task.state <= TaskState::Assigned
            {
                self.stop(t, "shut down");
            } else if task.desired_state == TaskState::Running && unhealthy(task, service) {
                // A failure, as a crash is: stopped, and its slot refilled as the restart
                // policy says (see `slot`).
                let mut task = task.clone();
                task.desired_state = TaskState::Shutdown;
                // The agent's words on it are what its last failed probe said.
                task.message = match task.message.as_str() {
                    "" => "unhealthy".into(),
                    probe => format!("unhealthy: {probe}"),
                };
                self.update(t, task);
            } else if task.state == TaskState::New {
                let mut task = task.clone();
                let _ = task.transition(TaskState::Pending, Actor::Orchestrator, "", self.now_ms);
                self.update(t, task);
            }
        }

        // A rolling update: the slots it replaces now, and its status moved on.
        let mut step = rollout::Step::default();
        if service
            .update
            .as_ref()
            .is_some_and(|u| u.state.is_rolling())
        {
            let current: Vec<Task> = tasks.iter().map(|t| self.current(t).clone()).collect();
            let current: Vec<&Task> = current.iter().collect();
            step = rollout::step(service, &current, self.now_ms, |t| failed(t, service));
        }
        if let Some(at) = step.wake_at_ms {
            self.wake_at(at);
        }
        let moved_on = step.service.take();
        if let Some(moved_on) = &moved_on {
            self.writes.push(Write::Service {
                service: Box::new(moved_on.clone()),
                expect: Expect::ModRevision(versioned.mod_revision),
            });
        }
        // Rolled back: slots refilled this round already run the spec rolled back to.
        let service = match &moved_on {
            Some(back) if back.version != service.version => back,
            _ => service,
        };

        // A rebalance, on a settled service only: slots that move off crowded nodes now.
        let settled = step.replace.is_empty() && moved_on.is_none();
        let moves = match service.update_policy.rebalance && settled {
            true => {
                let current: Vec<&Task> = tasks.iter().map(|t| self.current(t)).collect();
                let nodes = self.state.nodes().map(|n| &n.value);
                rebalance::moves(service, &current, nodes, self.now_ms)
            }
            false => rebalance::Moves::default(),
        };
        if let Some(at) = moves.wake_at_ms {
            self.wake_at(at);
        }

        // The tasks by slot, each slot's in the order given.
        let mut by_slot: Vec<&'a Versioned<Task>> = tasks.to_vec();
        by_slot.sort_by_key(|t| t.value.slot);
        let slots: Vec<&[&'a Versioned<Task>]> = by_slot
            .chunk_by(|a, b| a.value.slot == b.value.slot)
            .collect();
        let mut next = slots.iter().peekable();
        for slot in 1..=service.replicas {
            while next.next_if(|s| s[0].value.slot < slot).is_some() {}
            let in_slot = next.next_if(|s| s[0].value.slot == slot).copied();
            let replace = match moves.slots.iter().find(|(s, _)| *s == slot) {
                Some((_, from)) => Some(Replace::Move(from.clone())),
                None => step
                    .replace
                    .contains(&slot)
                    .then_some(Replace::Update(service.update_policy.order)),
            };
            self.slot(service, slot, in_slot.unwrap_or(&[]), replace, new_id);
        }
        // Forget finished tasks: beyond the replica count all of them, else the oldest. A
        // plain container keeps its newest (a stopped container is still listed, with its exit
        // code and its logs).
        for in_slot in &slots {
            let keep = match (
                service.is_container(),
                in_slot[0].value.slot > service.replicas,
            ) {
                (true, _) => 1,
                (false, true) => 0,
                (false, false) => RETAINED_PER_SLOT,
            };
            self.forget_finished(in_slot, keep);
        }
    }

    /// `docker run --rm`: once its task has ended (and no start is pending), the container goes.
    fn auto_remove(&mut self, versioned: &Versioned<Service>, tasks: &[&'a Versioned<Task>]) {
        let service = &versioned.value;
        let Some(container) = service.container.as_ref().filter(|c| c.auto_remove) else {
            return;
        };
        let current: Vec<&Task> = tasks.iter().map(|t| self.current(t)).collect();
        let ended = !current.is_empty()
            && current.iter().all(|t| t.state.is_terminal())
            && current.iter().any(|t| t.start_seq >= container.start_seq);
        let starting = self
            .writes
            .iter()
            .any(|w| matches!(w, Write::Task { task, .. } if task.service_id == service.id));
        if ended && !starting {
            self.writes.push(Write::DeleteService {
                id: service.id.clone(),
                name: service.name.clone(),
                mod_revision: versioned.mod_revision,
            });
        }
    }

    /// Keeps one live task in `slot`: removes duplicates, replaces its task when a rolling
    /// update or a rebalance says so (`replace`), or starts one as the restart policy allows.
    fn slot(
        &mut self,
        service: &Service,
        slot: u64,
        tasks: &[&'a Versioned<Task>],
        replace: Option<Replace>,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let mut live: Vec<&'a Versioned<Task>> = tasks
            .iter()
            .copied()
            .filter(|t| {
                let task = self.current(t);
                !task.state.is_terminal() && task.desired_state == TaskState::Running
            })
            .collect();
        // A drain is start-first: a serving task on a drained node stays until a replacement
        // elsewhere serves.
        let (drained, staying): (Vec<&'a Versioned<Task>>, Vec<_>) = live
            .iter()
            .copied()
            .partition(|t| self.on_drained_node(self.current(t)));
        if !drained.is_empty() {
            if staying.iter().any(|t| self.current(t).serves()) {
                for t in drained {
                    self.stop(t, "node drained");
                }
            } else if staying.is_empty() {
                self.create(service, slot, 0, new_id);
                return;
            }
            live = staying;
        }
        // A rebalance move: the task it replaces gives way once it serves; a move that finds
        // no node is called off.
        let current: Vec<&Task> = match live.len() {
            // A move under way is two live tasks in the slot.
            0 | 1 => Vec::new(),
            _ => live.iter().map(|t| self.current(t)).collect(),
        };
        if let Some(mover) = live
            .iter()
            .copied()
            .find(|t| rebalance::in_flight(self.current(t), &current))
        {
            let task = self.current(mover);
            let from = task.moves_from.clone();
            if task.serves() {
                let why = match task.node_id.as_deref().and_then(|n| self.state.node(n)) {
                    Some(n) => format!("rebalanced to node {}", n.value.name),
                    None => "rebalanced".to_string(),
                };
                let left: Vec<_> = live
                    .iter()
                    .copied()
                    .filter(|t| t.value.id != mover.value.id && self.current(t).node_id == from)
                    .collect();
                for t in &left {
                    self.stop(t, &why);
                }
                live.retain(|t| !left.iter().any(|l| l.value.id == t.value.id));
            } else if task.state == TaskState::Pending && task.message.starts_with(NO_SUITABLE_NODE)
            {
                let why = format!("rebalance called off: {}", task.message);
                self.stop(mover, &why);
                live.retain(|t| t.value.id != mover.value.id);
            } else {
                return;
            }
        }
        // An updated task and older ones: the older give way once it serves (start-first), and
        // stay until then.
        let (updated, older): (Vec<&'a Versioned<Task>>, Vec<_>) = live
            .iter()
            .copied()
            .partition(|t| self.current(t).spec_version == service.version);
        if !updated.is_empty() && !older.is_empty() {
            if updated.iter().any(|t| self.current(t).serves()) {
                let why = format!("updated to version {}", service.version);
                for t in older {
                    self.stop(t, &why);
                }
            }
            live = updated;
        }
        if live.len() > 1 {
            // Keep the most advanced (then the newest); the others are duplicates.
            live.sort_by(|a, b| {
                let (a, b) = (self.current(a), self.current(b));
                (a.state, a.created_ms, &a.id).cmp(&(b.state, b.created_ms, &b.id))
            });
            live.pop();
            for t in live {
                self.stop(t, "superseded by another task of its slot");
            }
            return;
        }
        if let [only] = live[..] {
            match replace {
                Some(Replace::Update(order)) => {
                    if order == UpdateOrder::StopFirst {
                        let why = format!("updated to version {}", service.version);
                        self.stop(only, &why);
                    }
                    self.create(service, slot, 0, new_id);
                }
                Some(Replace::Move(from)) => {
                    let task = self.new_task(service, slot, 0, new_id);
                    self.writes.push(Write::Task {
                        task: Task {
                            moves_from: Some(from),
                            ..task
                        },
                        expect: Expect::Absent,
                    });
                }
                None => {}
            }
            return;
        }
        // The slot's latest task decides whether, and when, it is replaced.
        let latest = tasks
            .iter()
            .map(|t| self.current(t).clone())
            .max_by_key(|task| (task.updated_ms, task.created_ms, task.id.clone()));
        let failures = match &latest {
            None => 0,
            // `docker start` since this task was created: run again, at once.
            Some(task) if task.start_seq < service.start_seq() => 0,
            Some(task) => {
                let failed = failed(task, service);
                // An unhealthy task is a failure whatever state its stop leaves it in.
                let state = match failed {
                    true => TaskState::Failed,
                    false => task.state,
                };
                let restart = match (state, service.restart) {
                    // Stopped or orphaned by the cluster itself: the slot still needs a task.
                    (TaskState::Shutdown | TaskState::Orphaned, _) => true,
                    (TaskState::Complete, policy) => policy == RestartPolicy::Always,
                    (_, RestartPolicy::No) => false,
                    (_, RestartPolicy::Always) => true,
                    (_, RestartPolicy::OnFailure { max }) => {
                        max.is_none_or(|max| task.failures < max)
                    }
                };
                if !restart {
                    return;
                }
                let failures = if failed { task.failures + 1 } else { 0 };
                let due = task.updated_ms.saturating_add(backoff_ms(failures));
                if due > self.now_ms {
                    self.wake_at(due);
                    return;
                }
                failures
            }
        };
        self.create(service, slot, failures, new_id);
    }

    /// A new task in `slot`, on the service's current spec.
    fn create(
        &mut self,
        service: &Service,
        slot: u64,
        failures: u32,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let task = self.new_task(service, slot, failures, new_id);
        self.writes.push(Write::Task {
            task,
            expect: Expect::Absent,
        });
    }

    fn new_task(
        &self,
        service: &Service,
        slot: u64,
        failures: u32,
        new_id: &mut dyn FnMut() -> String,
    ) -> Task {
        let mut task = Task::new(new_id(), service.id.clone(), slot, self.now_ms);
        task.failures = failures;
        task.start_seq = service.start_seq();
        task.stop_grace_ms = stop_grace_ms(service);
        task.spec_version = service.version;
        let _ = task.transition(TaskState::Pending, Actor::Orchestrator, "", self.now_ms);
        task
    }

    fn forget_finished(&mut self, tasks: &[&Versioned<Task>], keep: usize) {
        let mut finished: Vec<&Versioned<Task>> = tasks
            .iter()
            .copied()
            .filter(|t| t.value.state.is_terminal() && !self.changed.contains_key(&t.value.id))
            .collect();
        finished.sort_by_key(|t| std::cmp::Reverse((t.value.updated_ms, t.value.created_ms)));
        for t in finished.into_iter().skip(keep) {
            self.writes.push(Write::DeleteTask {
                id: t.value.id.clone(),
                mod_revision: t.mod_revision,
            });
        }
    }

    fn without_service(&mut self, t: &Versioned<Task>) {
        if t.value.state.is_terminal() {
            self.writes.push(Write::DeleteTask {
                id: t.value.id.clone(),
                mod_revision: t.mod_revision,
            });
        } else {
            self.stop(t, "service removed");
        }
    }

    fn finish(self) -> Plan {
        let mut writes: Vec<Write> = self
            .changed
            .into_values()
            .map(|(task, rev)| Write::Task {
                task,
                expect: Expect::ModRevision(rev),
            })
            .collect();
        writes.extend(self.writes);
        Plan {
            writes,
            wake_at_ms: self.wake_at_ms,
        }
    }
}

#[cfg(test)]
#[path = "orchestrator_tests.rs"]
mod tests;
