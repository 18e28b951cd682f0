//! The task runner: reconciles the node's assignment set with its containers on Docker, whenever a
//! set arrives, a container changes (engine events) or a resync timer fires, by carrying out what
//! `plan` decides and queueing the resulting task states for the session. It does nothing before the
//! first set, and it never stops containers merely because the agent stops.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use super::plan::{self, Action, Node, Observed};
use super::session::Assignments;
use super::throttle::Throttle;
use crate::engine::{ContainerSpec, DockerRuntime, RuntimeError};
use crate::metrics::families::AGENT_ENGINE_ERRORS as ENGINE_ERRORS;
use crate::model::{Health, PublishedPort, TaskState, TaskStatus};

/// Fallback for missed engine events: Docker is looked at again after this long without a change.
const RESYNC: Duration = Duration::from_secs(2);
/// `docker stop`'s grace period before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The same state for the same task is queued again only after this long (the set lags behind a
/// report by a round trip through Raft; a report the leader lost is sent again).
const REPORT_AGAIN: Duration = Duration::from_secs(5);

/// A background stop finished: the container it concerned and the state to report then.
type Stopped = (String, String, Option<TaskStatus>, Result<(), RuntimeError>);
/// What was last queued for a task: state, published ports, health, and when.
type Reported = (TaskState, Vec<PublishedPort>, Option<Health>, Instant);

pub(crate) struct TaskRunner {
    docker: DockerRuntime,
    node_id: String,
    host_ip: IpAddr,
    assignments: watch::Receiver<Assignments>,
    reports: mpsc::UnboundedSender<TaskStatus>,
    wake: Arc<Notify>,
    /// Tasks this process created a container for: never a second one.
    started: HashSet<String>,
    /// Containers being stopped in the background (a stop may take STOP_TIMEOUT).
    stopping: HashSet<String>,
    stops: JoinSet<Stopped>,
    /// The last state (and published ports and health) queued per task, and when.
    reported: HashMap<String, Reported>,
    throttle: Throttle,
}

impl TaskRunner {
    pub(crate) fn new(
        docker: DockerRuntime,
        node_id: String,
        host_ip: IpAddr,
        assignments: watch::Receiver<Assignments>,
        reports: mpsc::UnboundedSender<TaskStatus>,
        wake: Arc<Notify>,
    ) -> TaskRunner {
        TaskRunner {
            docker,
            node_id,
            host_ip,
            assignments,
            reports,
            wake,
            started: HashSet::new(),
            stopping: HashSet::new(),
            stops: JoinSet::new(),
            reported: HashMap::new(),
            throttle: Throttle::default(),
        }
    }

    /// Runs until the agent stops (the task is then aborted; containers stay as they are).
    pub(crate) async fn run(mut self) {
        loop {
            tokio::select! {
                changed = self.assignments.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = self.wake.notified() => {}
                () = sleep(RESYNC) => {}
                Some(done) = self.stops.join_next(), if !self.stops.is_empty() => match done {
                    Ok(stopped) => self.stopped(stopped),
                    Err(e) => tracing::error!("a container stop failed to finish: {e}"),
                },
            }
            self.reconcile().await;
        }
    }

    async fn reconcile(&mut self) {
        let Some(set) = self.assignments.borrow_and_update().clone() else {
            return;
        };
        let containers = match self.docker.adopt(&self.node_id).await {
            Ok(containers) => containers,
            Err(e) => {
                ENGINE_ERRORS.inc(&["list"]);
                let line = e.to_string();
                if self.throttle.should_log(&line) {
                    tracing::warn!("{line}; will retry");
                }
                return;
            }
        };
        if self.throttle.clear() {
            tracing::info!("Docker engine answers again");
        }
        // Tasks that left the set never come back (a task is never revived).
        let in_set: HashSet<&str> = set.iter().map(|a| a.task.id.as_str()).collect();
        self.reported
            .retain(|task, _| in_set.contains(task.as_str()));
        self.publish_states();
        self.started.retain(|task| in_set.contains(task.as_str()));
        let observed = Observed {
            containers: &containers,
            started: &self.started,
        };
        let node = Node {
            id: &self.node_id,
            host_ip: self.host_ip,
        };
        let mut starts = Vec::new();
        for action in plan::plan(Some(&set), observed, node) {
            match action {
                Action::Report(status) => self.report(status),
                Action::Remove { container } => {
                    if let Err(e) = self.docker.remove(&container).await {
                        ENGINE_ERRORS.inc(&["remove"]);
                        tracing::warn!(%container, "removing a container that never started: {e}");
                    }
                }
                Action::Stop {
                    container,
                    name,
                    then,
                    remove,
                    drain,
                } => self.stop(container, name, then, remove, drain),
                Action::Start { task, spec, accept } => {
                    if accept {
                        self.report(accepted(&task));
                    }
                    self.started.insert(task.clone());
                    starts.push((task, spec));
                }
            }
        }
        let docker = &self.docker;
        let results = join_all(starts.iter().map(|(task, spec)| start(docker, task, spec))).await;
        for status in results.into_iter().flatten() {
            self.report(status);
        }
    }

    /// Queues `status` for the session, unless the same was queued a moment ago.
    fn report(&mut self, status: TaskStatus) {
        let now = Instant::now();
        if let Some((state, ports, health, at)) = self.reported.get(&status.task_id) {
            let same = *state == status.state && *ports == status.ports && *health == status.health;
            if same && now.duration_since(*at) < REPORT_AGAIN {
                return;
            }
        }
        let health = status.health.map_or("-", Health::as_str);
        tracing::info!(task = %status.task_id, state = %status.state, %health, message = %status.message, "task state");
        let queued = (status.state, status.ports.clone(), status.health, now);
        self.reported.insert(status.task_id.clone(), queued);
        self.publish_states();
        // The session outlives the runner; a closed channel only happens while the agent stops.
        let _ = self.reports.send(status);
    }

    /// The tasks of this node by the state last reported, for metrics.
    fn publish_states(&self) {
        let mut counts: std::collections::BTreeMap<String, i64> = Default::default();
        for (state, ..) in self.reported.values() {
            *counts.entry(state.to_string().to_lowercase()).or_default() += 1;
        }
        crate::metrics::families::AGENT_TASKS
            .replace(counts.into_iter().map(|(state, n)| (vec![state], n)));
    }

    /// Stops (and removes) a container in the background, after `drain` (the task's drain
    /// delay, counted from the first reconcile that asked for the stop; an agent restarted
    /// meanwhile counts it again, which only keeps the container longer).
    fn stop(
        &mut self,
        container: String,
        name: String,
        then: Option<TaskStatus>,
        remove: bool,
        drain: Duration,
    ) {
        if !self.stopping.insert(container.clone()) {
            return;
        }
        tracing::info!(%container, %name, remove, drain_ms = drain.as_millis() as u64, "stopping container");
        let docker = self.docker.clone();
        self.stops.spawn(async move {
            sleep(drain).await;
            let result = match docker.stop(&container, STOP_TIMEOUT).await {
                Ok(()) | Err(RuntimeError::NotFound { .. }) if remove => {
                    docker.remove(&container).await
                }
                Ok(()) | Err(RuntimeError::NotFound { .. }) => Ok(()),
                Err(e) => Err(e),
            };
            (container, name, then, result)
        });
    }

    fn stopped(&mut self, (container, name, then, result): Stopped) {
        self.stopping.remove(&container);
        match result {
            Ok(()) => {
                if let Some(status) = then {
                    self.report(status);
                }
            }
            Err(e) => {
                ENGINE_ERRORS.inc(&["stop"]);
                tracing::warn!(%container, %name, "stopping container: {e}; will retry")
            }
        }
    }
}

fn accepted(task: &str) -> TaskStatus {
    TaskStatus {
        task_id: task.to_string(),
        state: TaskState::Accepted,
        message: "accepted".into(),
        container_id: None,
        ports: Vec::new(),
        exit_code: None,
        health: None,
    }
}

/// Creates and starts a task's container; RUNNING with its id and published ports, or REJECTED with
/// the engine's reason. None when a container of that name already exists: the next reconcile sees it.
async fn start(docker: &DockerRuntime, task: &str, spec: &ContainerSpec) -> Option<TaskStatus> {
    tracing::info!(%task, container = %spec.name, image = %spec.image, "starting container");
    let rejected = |e: RuntimeError| TaskStatus {
        task_id: task.to_string(),
        state: TaskState::Rejected,
        message: e.to_string(),
        container_id: None,
        ports: Vec::new(),
        exit_code: None,
        health: None,
    };
    let id = match docker.create_and_start(spec).await {
        Ok(id) => id,
        Err(RuntimeError::NameConflict { name }) => {
            tracing::warn!(%task, container = %name, "container already exists; adopting it");
            return None;
        }
        Err(e) => {
            ENGINE_ERRORS.inc(&["start"]);
            return Some(rejected(e));
        }
    };
    match docker.inspect(&id).await {
        Ok(info) => Some(TaskStatus {
            task_id: task.to_string(),
            state: TaskState::Running,
            message: plan::health_message(&info),
            container_id: Some(id),
            ports: info.ports,
            exit_code: None,
            health: info.health,
        }),
        // RUNNING needs the ports; the next reconcile finds the container and reports it whole.
        Err(e) => {
            tracing::warn!(%task, container = %id, "inspecting a started container: {e}");
            None
        }
    }
}
