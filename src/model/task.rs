//! A task: one replica (slot) of a service, its placement and the state its agent reports.
//! Timestamps come from the log entry that wrote the change, never from a local clock.

use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::health::Health;
use super::port::PublishedPort;
use super::task_state::{Actor, TaskState};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    /// Replica number, from 1; a replacement keeps the slot of the task it replaces.
    pub slot: u64,
    /// Set by the scheduler together with ASSIGNED.
    #[serde(default)]
    pub node_id: Option<String>,
    /// RUNNING or SHUTDOWN; written by the orchestrator only.
    pub desired_state: TaskState,
    pub state: TaskState,
    /// Why the task is in its state: "no suitable node: ...", an engine error, an exit code.
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// How many tasks of this slot failed (or were rejected) in a row before this one: the
    /// orchestrator's restart backoff and `on-failure:MAX` count it.
    #[serde(default)]
    pub failures: u32,
    /// The container's `start_seq` when the task was created (0 for services).
    #[serde(default)]
    pub start_seq: u64,
    /// The container's exit code once it has exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The container's health as its agent last reported it while RUNNING (None: it has no
    /// health check). Kept once the task ended: an unhealthy end counts as a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The drain delay: once `desired_state` is SHUTDOWN, the agent keeps a serving container
    /// running this long (measured on its own clock from when it saw the change) before it
    /// stops it, so that the proxies drop the task first. Set by the orchestrator when it
    /// creates the task, from its service.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stop_grace_ms: u64,
    /// The version of its service's spec it runs (`Service::spec_for`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spec_version: u64,
    /// Set on a task that moves its slot off this node for a rebalance (`--rebalance`): the
    /// scheduler never places it there, and the slot's task on that node stops once it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moves_from: Option<String>,
    /// Milliseconds since the epoch, from the leader's clock when it proposed the task.
    pub created_ms: u64,
    /// Milliseconds since the epoch, from the clock of the writer of the last change.
    pub updated_ms: u64,
}

/// What an agent observed of one of its tasks, sent to the leader's dispatcher, which applies it
/// with `Task::transition(.., Actor::Agent, ..)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    pub state: TaskState,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub container_id: Option<String>,
    #[serde(default)]
    pub ports: Vec<PublishedPort>,
    /// The exit code, for a container that exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// The container's health (None: it has no health check); applied with a RUNNING report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Task {
    /// A fresh task the orchestrator is about to write: NEW, meant to run.
    pub fn new(id: String, service_id: String, slot: u64, now_ms: u64) -> Task {
        Task {
            id,
            service_id,
            slot,
            node_id: None,
            desired_state: TaskState::Running,
            state: TaskState::New,
            message: String::new(),
            container_id: None,
            ports: Vec::new(),
            failures: 0,
            start_seq: 0,
            exit_code: None,
            health: None,
            stop_grace_ms: 0,
            spec_version: 0,
            moves_from: None,
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// The container name of this task: `<service>.<slot>`.
    pub fn name(&self, service_name: &str) -> String {
        format!("{service_name}.{}", self.slot)
    }

    /// Whether the proxies may send it traffic: RUNNING, meant to run, and healthy or without
    /// a health check. The node's readiness is the proxy model's to check.
    pub fn serves(&self) -> bool {
        self.state == TaskState::Running
            && self.desired_state == TaskState::Running
            && Health::serves(self.health)
    }

    /// Moves the task to `to` if `actor` owns that move (see `TaskState::may_move`).
    pub fn transition(
        &mut self,
        to: TaskState,
        actor: Actor,
        message: impl Into<String>,
        now_ms: u64,
    ) -> Result<(), ModelError> {
        if !self.state.may_move(to, actor) {
            return Err(ModelError::Transition {
                task: self.id.clone(),
                actor,
                from: self.state,
                to,
            });
        }
        self.state = to;
        self.message = message.into();
        self.updated_ms = now_ms;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    #[test]
    fn json_round_trip() {
        let mut task = Task::new("t1".into(), "s1".into(), 2, 1_700_000_000_000);
        task.node_id = Some("n1".into());
        task.ports.push(PublishedPort {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: "127.0.0.2".into(),
            host_port: 32768,
        });
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(json["state"], "new");
        assert_eq!(json["desired_state"], "running");
        assert_eq!(json["node_id"], "n1");
        assert!(json.get("health").is_none() && json.get("stop_grace_ms").is_none());
        assert_eq!(serde_json::from_value::<Task>(json).unwrap(), task);
        assert_eq!(task.name("web"), "web.2");
        task.health = Some(Health::Starting);
        task.stop_grace_ms = 3_000;
        let json = serde_json::to_value(&task).unwrap();
        assert_eq!(
            (json["health"].as_str(), json["stop_grace_ms"].as_u64()),
            (Some("starting"), Some(3_000))
        );
        assert_eq!(serde_json::from_value::<Task>(json).unwrap(), task);
    }

    #[test]
    fn only_running_tasks_meant_to_run_and_not_unhealthy_serve() {
        let mut task = Task::new("t1".into(), "s1".into(), 1, 10);
        assert!(!task.serves(), "NEW");
        task.state = TaskState::Running;
        assert!(task.serves(), "no health check");
        for (health, serves) in [
            (Health::Starting, false),
            (Health::Healthy, true),
            (Health::Unhealthy, false),
        ] {
            task.health = Some(health);
            assert_eq!(task.serves(), serves, "{health:?}");
        }
        task.desired_state = TaskState::Shutdown;
        assert!(!task.serves(), "asked to stop");
    }

    #[test]
    fn transition_checks_owner_and_direction() {
        let mut task = Task::new("t1".into(), "s1".into(), 1, 10);
        task.transition(TaskState::Pending, Actor::Orchestrator, "", 11)
            .unwrap();
        let err = task
            .transition(TaskState::Running, Actor::Agent, "", 12)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "task t1: the agent may not move it from PENDING to RUNNING"
        );
        assert_eq!((task.state, task.updated_ms), (TaskState::Pending, 11));
        task.transition(TaskState::Assigned, Actor::Scheduler, "", 13)
            .unwrap();
        task.transition(TaskState::Running, Actor::Agent, "up", 14)
            .unwrap();
        assert_eq!(
            (task.state, task.message.as_str(), task.updated_ms),
            (TaskState::Running, "up", 14)
        );
    }
}
