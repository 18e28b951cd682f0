//! Cluster objects as the store holds them under `/shoal/`: nodes, services, tasks and the task
//! lifecycle. Plain serde data (JSON, snake_case fields); nothing here does I/O or reads a clock.

mod acl;
mod container;
mod error;
mod health;
pub mod keys;
mod node;
mod placement;
mod port;
mod proxy;
mod service;
mod task;
mod task_state;
mod update;

pub use self::acl::{is_sha256_hex, secret_sha256, Access, AclToken, KeyRule};
pub use self::container::{
    compose_service, Container, Handover, HandoverPolicy, COMPOSE_NUMBER, COMPOSE_PROJECT,
    COMPOSE_SERVICE, HANDOVER_MAX_MS, HANDOVER_ORPHAN_MS, HANDOVER_TIMEOUT_MS, UPDATE_LABELS,
};
pub use self::error::ModelError;
pub use self::health::{Health, HealthCheck};
pub use self::node::{
    is_node_id, Availability, Node, NodeStatus, DEFAULT_HEARTBEAT_MS, ENGINE_LABEL_PREFIX,
    OPERATOR_LABEL_PREFIX,
};
pub use self::placement::Placement;
pub use self::port::{PortSpec, Protocol, PublishedPort};
pub use self::proxy::{Balance, ProxyConfig, ProxyHost, ProxyModel, ProxyStatus, Upstream};
pub use self::service::{
    check_image, check_service_name, Reservations, RestartPolicy, Service, DEFAULT_STOP_GRACE_MS,
};
pub use self::task::{Task, TaskStatus};
pub use self::task_state::{Actor, TaskState};
pub use self::update::{
    parse_failure_ratio, FailureAction, UpdateOrder, UpdatePolicy, UpdateState, UpdateStatus,
    DEFAULT_MONITOR_MS, MAX_POLICY_MS,
};
