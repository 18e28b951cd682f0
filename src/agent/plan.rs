//! The agent's reconcile decision as a pure function: this node's assignment set and the containers
//! Docker has for it in, the container actions to take and the task states to report out. No I/O and
//! no clock, so every rule (adopt rather than restart, never two containers for one task, stop what is
//! no longer wanted, nothing at all before the first set) is unit-tested with plain data.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use super::container;
use crate::engine::{ContainerInfo, ContainerSpec, ContainerState};
use crate::model::{Health, Service, Task, TaskState, TaskStatus};

/// One task of the node's assignment set, with its service (None if the service is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Assignment {
    pub task: Task,
    pub service: Option<Service>,
}

/// What the agent knows of the engine's side.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observed<'a> {
    /// Every container labelled with this node, running or not.
    pub containers: &'a [ContainerInfo],
    /// Tasks this agent process already created a container for: never a second one.
    pub started: &'a HashSet<String>,
}

/// Who this node is: the owner label its containers carry and the address they publish on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Node<'a> {
    pub id: &'a str,
    pub host_ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Tell the leader a task's observed state.
    Report(TaskStatus),
    /// Remove at once a container that never started, so that its task can start afresh.
    Remove { container: String },
    /// Stop (gracefully) and, if `remove`, remove a container, then report `then` if any. A
    /// plain container's is kept while its task is listed (`docker ps -a`, logs, exit code).
    /// `drain`: keep it running that long first (the task's drain delay: the proxies drop a
    /// task asked to stop at once, its container goes only after they reloaded).
    Stop {
        container: String,
        name: String,
        then: Option<TaskStatus>,
        remove: bool,
        drain: Duration,
    },
    /// Create and start a task's container: report ACCEPTED first (if `accept`), then RUNNING with
    /// the container's id and ports, or REJECTED with the engine's reason.
    Start {
        task: String,
        spec: Box<ContainerSpec>,
        accept: bool,
    },
}

/// The actions that bring Docker in line with `assignments` (None: no set has arrived yet, so
/// nothing is known and nothing is done). Removals come before starts.
pub(crate) fn plan(
    assignments: Option<&[Assignment]>,
    observed: Observed<'_>,
    node: Node<'_>,
) -> Vec<Action> {
    let Some(assignments) = assignments else {
        return Vec::new();
    };
    let mut tasks: BTreeMap<&str, &Assignment> = BTreeMap::new();
    for a in assignments {
        tasks.entry(a.task.id.as_str()).or_insert(a);
    }

    let mut actions = Vec::new();
    let mut kept: BTreeMap<&str, &ContainerInfo> = BTreeMap::new();
    let mut by_task: BTreeMap<&str, Vec<&ContainerInfo>> = BTreeMap::new();
    for c in observed.containers {
        match &c.owner {
            Some(owner) if owner.node == node.id => {
                by_task.entry(owner.task.as_str()).or_default().push(c)
            }
            // Listed by this node's label, yet it names another node: not ours to touch.
            Some(_) => {}
            // Labelled with the node but with no task: belongs to nothing.
            None => actions.push(stop(c, None)),
        }
    }
    for (task_id, mut containers) in by_task {
        let wanted = tasks
            .get(task_id)
            .filter(|a| !a.task.state.is_terminal() || a.is_container());
        if wanted.is_some() {
            // Keep one: a running one if any, else the first by name; the others are extra.
            containers.sort_by_key(|c| (!c.state.is_running(), c.name.clone()));
            kept.insert(task_id, containers.remove(0));
        }
        actions.extend(containers.into_iter().map(|c| stop(c, None)));
    }

    let mut starts = Vec::new();
    for a in tasks.values() {
        let task = &a.task;
        let container = kept.get(task.id.as_str()).copied();
        if task.state.is_terminal() {
            // A plain container's finished task keeps its container, stopped.
            if let Some(c) = container.filter(|c| c.state.is_running()) {
                actions.push(halt(c, None));
            }
            continue;
        }
        if task.state < TaskState::Assigned {
            continue;
        }
        if task.desired_state != TaskState::Running {
            // The orchestrator's reason (scaled down, unhealthy, ...), else a generic one.
            let why = match task.message.as_str() {
                "" => "stopped: no longer wanted".to_string(),
                m => format!("stopped: {m}"),
            };
            let mut done = status(task, TaskState::Shutdown, why);
            let action = match container {
                Some(c) if a.is_container() => {
                    done.exit_code = exit_code(c);
                    halt(c, Some(done))
                }
                Some(c) => stop(c, Some(done)),
                None => Action::Report(done),
            };
            let up = container.is_some_and(|c| c.state.is_running());
            actions.push(drained(action, task, up));
            continue;
        }
        match (container, &a.service) {
            (Some(c), _) if c.state.is_running() => {
                // Docker restarting a container in place (`restart: always` after a crash) binds
                // its ephemeral host ports anew: the task's must follow, or the proxies keep
                // sending its traffic to the old ones.
                let rebound = c.state == ContainerState::Running
                    && !c.ports.is_empty()
                    && c.ports != task.ports;
                // Health decides whether the proxies route to it and whether it is replaced.
                let health = c.health != task.health;
                if task.state != TaskState::Running || rebound || health {
                    actions.push(Action::Report(running(task, c)));
                }
            }
            // Created but never started: the agent stopped halfway through starting it.
            (Some(c), Some(service))
                if c.state == ContainerState::Created && task.state < TaskState::Running =>
            {
                actions.push(Action::Remove {
                    container: c.id.clone(),
                });
                starts.push(start(task, service, node));
            }
            (Some(c), _) => actions.push(Action::Report(ended(task, c))),
            (None, _)
                if task.state > TaskState::Assigned || observed.started.contains(&task.id) =>
            {
                let gone = status(task, TaskState::Failed, "container disappeared");
                actions.push(Action::Report(gone));
            }
            (None, Some(service)) => starts.push(start(task, service, node)),
            (None, None) => {
                let message = format!("service {} no longer exists", task.service_id);
                actions.push(Action::Report(status(task, TaskState::Rejected, message)));
            }
        }
    }
    actions.extend(starts);
    actions
}

/// Starts the task's container on the spec version it was created from (a rolling update
/// runs two side by side).
fn start(task: &Task, service: &Service, node: Node<'_>) -> Action {
    let Some(spec) = service.spec_for(task.spec_version) else {
        let message = format!(
            "its spec (version {}) was replaced twice before it started",
            task.spec_version
        );
        return Action::Report(status(task, TaskState::Rejected, message));
    };
    Action::Start {
        task: task.id.clone(),
        spec: Box::new(container::spec(task, spec, node.id, node.host_ip)),
        accept: task.state < TaskState::Accepted,
    }
}

impl Assignment {
    /// Whether the task is a plain container's (whose container outlives the task's end).
    fn is_container(&self) -> bool {
        self.service.as_ref().is_some_and(Service::is_container)
    }
}

/// Stop and remove.
fn stop(c: &ContainerInfo, then: Option<TaskStatus>) -> Action {
    Action::Stop {
        container: c.id.clone(),
        name: c.name.clone(),
        then,
        remove: true,
        drain: Duration::ZERO,
    }
}

/// Stop, and keep the container.
fn halt(c: &ContainerInfo, then: Option<TaskStatus>) -> Action {
    Action::Stop {
        container: c.id.clone(),
        name: c.name.clone(),
        then,
        remove: false,
        drain: Duration::ZERO,
    }
}

/// The stop of a task asked to stop, after its drain delay if it may be in a proxy config
/// (RUNNING and healthy or without a health check, as the proxy model reads it, and its
/// container `up`); a task that never served, or whose container is already down, is stopped
/// at once.
fn drained(action: Action, task: &Task, up: bool) -> Action {
    let serving = up && task.state == TaskState::Running && Health::serves(task.health);
    match action {
        Action::Stop {
            container,
            name,
            then,
            remove,
            drain: _,
        } if serving => Action::Stop {
            container,
            name,
            then,
            remove,
            drain: Duration::from_millis(task.stop_grace_ms),
        },
        other => other,
    }
}

fn exit_code(c: &ContainerInfo) -> Option<i64> {
    match c.state {
        ContainerState::Exited { exit_code, .. } => Some(exit_code),
        _ => None,
    }
}

fn status(task: &Task, state: TaskState, message: impl Into<String>) -> TaskStatus {
    TaskStatus {
        task_id: task.id.clone(),
        state,
        message: message.into(),
        container_id: task.container_id.clone(),
        ports: Vec::new(),
        exit_code: None,
        health: None,
    }
}

/// RUNNING with the container, the ports Docker published and its health (with what its last
/// failed probe said, while it is not healthy).
pub(crate) fn running(task: &Task, c: &ContainerInfo) -> TaskStatus {
    TaskStatus {
        task_id: task.id.clone(),
        state: TaskState::Running,
        message: health_message(c),
        container_id: Some(c.id.clone()),
        ports: c.ports.clone(),
        exit_code: None,
        health: c.health,
    }
}

/// A RUNNING task's message: what the last failed probe of a container that is not healthy said.
pub(crate) fn health_message(c: &ContainerInfo) -> String {
    match (c.health, &c.health_output) {
        (Some(Health::Starting | Health::Unhealthy), Some(out)) => out.clone(),
        _ => String::new(),
    }
}

/// COMPLETE or FAILED for a container that stopped and that Docker will not restart.
fn ended(task: &Task, c: &ContainerInfo) -> TaskStatus {
    let (state, mut message) = match &c.state {
        ContainerState::Exited {
            oom_killed: true, ..
        } => (TaskState::Failed, "OOM killed".to_string()),
        ContainerState::Exited { exit_code: 0, .. } => (TaskState::Complete, "exit code 0".into()),
        ContainerState::Exited { exit_code, .. } => {
            (TaskState::Failed, format!("exit code {exit_code}"))
        }
        ContainerState::Dead => (TaskState::Failed, "container is dead".into()),
        ContainerState::Removing => (TaskState::Failed, "container disappeared".into()),
        _ => (TaskState::Failed, "container is not running".into()),
    };
    if let Some(error) = &c.error {
        message.push_str(": ");
        message.push_str(error);
    }
    TaskStatus {
        task_id: task.id.clone(),
        state,
        message,
        container_id: Some(c.id.clone()),
        ports: Vec::new(),
        exit_code: exit_code(c),
        health: None,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
