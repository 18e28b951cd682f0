//! Errors of the model boundary: malformed values in a service spec or a task-state change that
//! its actor may not make.

use super::task_state::{Actor, TaskState};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    #[error("invalid restart policy {0:?}: expected always, on-failure[:MAX] or no")]
    RestartPolicy(String),

    #[error("invalid port {0:?}: expected [HOST:]CONTAINER[/tcp|/udp], ports 1 to 65535")]
    Port(String),

    #[error("invalid label {label}: {reason}")]
    PlacementLabel { label: String, reason: String },

    #[error("invalid reschedule policy {0:?}: expected on-node-failure or off")]
    ReschedulePolicy(String),

    #[error("invalid health check: {0}")]
    HealthCheck(String),

    #[error("invalid update policy: {0}")]
    UpdatePolicy(String),

    /// A malformed name, image or other value of a spec; `what` names it.
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },

    #[error("task {task}: the {actor} may not move it from {from} to {to}")]
    Transition {
        task: String,
        actor: Actor,
        from: TaskState,
        to: TaskState,
    },
}
