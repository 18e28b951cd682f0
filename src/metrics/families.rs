//! The event-driven families, one static each, and which process serves which.

use super::{Counter, Family, Gauge, Histogram, SECONDS};

// The manager's HTTP APIs (Docker API, Consul-compatible HTTP API).
pub static API_REQUESTS: Counter = Counter::new(
    "shoal_api_requests_total",
    "Requests answered by a manager's HTTP API, by API (docker, http), route and status code.",
    &["api", "route", "code"],
);
pub static API_SECONDS: Histogram = Histogram::new(
    "shoal_api_request_duration_seconds",
    "Time from a request's head to its response's head (streams: to their start), by API and route.",
    &["api", "route"],
    SECONDS,
);

// The leader's control loops.
pub static CONTROL_PASS_SECONDS: Histogram = Histogram::new(
    "shoal_control_pass_duration_seconds",
    "Time one control loop took to plan a pass, by loop.",
    &["loop"],
    SECONDS,
);
pub static CONTROL_WRITES: Counter = Counter::new(
    "shoal_control_writes_total",
    "Writes the control loops committed (or tried to), by loop.",
    &["loop"],
);
pub static CONTROL_CONFLICTS: Counter = Counter::new(
    "shoal_control_commit_conflicts_total",
    "Control-loop writes refused because the object changed since the loop read it, by loop.",
    &["loop"],
);
pub static CONTROL_COMMIT_ERRORS: Counter = Counter::new(
    "shoal_control_commit_errors_total",
    "Control-loop commits that failed (the loop retries), by loop.",
    &["loop"],
);
pub static PLACEMENTS: Counter = Counter::new(
    "shoal_scheduler_placements_total",
    "Tasks the scheduler assigned to a node.",
    &[],
);
pub static UNSCHEDULABLE: Counter = Counter::new(
    "shoal_scheduler_unschedulable_total",
    "Times the scheduler found no node for a task (a new reason each time).",
    &[],
);
pub static PLACEMENT_SECONDS: Histogram = Histogram::new(
    "shoal_scheduler_placement_latency_seconds",
    "Time from a task's creation until the scheduler assigned it to a node.",
    &[],
    SECONDS,
);

// The dispatcher.
pub static DISPATCHER_SESSIONS: Gauge = Gauge::new(
    "shoal_dispatcher_sessions",
    "Agent sessions (assignment streams) open on this manager.",
    &[],
);
pub static HEARTBEATS_MISSED: Counter = Counter::new(
    "shoal_dispatcher_heartbeats_missed_total",
    "Times the leader found a ready node silent for 3 heartbeat periods and marked it down.",
    &[],
);
pub static STATUS_BATCHES: Counter = Counter::new(
    "shoal_dispatcher_status_batches_total",
    "Batches of agents' task-state reports committed.",
    &[],
);
pub static STATUS_REPORTS: Counter = Counter::new(
    "shoal_dispatcher_status_reports_total",
    "Agents' task-state reports taken into batches.",
    &[],
);

// The agent.
pub static AGENT_SESSIONS: Counter = Counter::new(
    "shoal_agent_sessions_total",
    "Sessions this agent opened with the leader (the first, and one after every loss).",
    &[],
);
pub static AGENT_CONNECTED: Gauge = Gauge::new(
    "shoal_agent_session_connected",
    "1 while this agent has a session with the leader.",
    &[],
);
pub static AGENT_ENGINE_ERRORS: Counter = Counter::new(
    "shoal_agent_engine_errors_total",
    "Calls to the node's Docker engine that failed, by operation.",
    &["op"],
);
pub static AGENT_TASKS: Gauge = Gauge::new(
    "shoal_agent_tasks",
    "Tasks assigned to this agent, by the state it last reported.",
    &["state"],
);

/// What a manager serves.
pub static MANAGER: &[Family] = &[
    Family::Counter(&API_REQUESTS),
    Family::Histogram(&API_SECONDS),
    Family::Histogram(&CONTROL_PASS_SECONDS),
    Family::Counter(&CONTROL_WRITES),
    Family::Counter(&CONTROL_CONFLICTS),
    Family::Counter(&CONTROL_COMMIT_ERRORS),
    Family::Counter(&PLACEMENTS),
    Family::Counter(&UNSCHEDULABLE),
    Family::Histogram(&PLACEMENT_SECONDS),
    Family::Gauge(&DISPATCHER_SESSIONS),
    Family::Counter(&HEARTBEATS_MISSED),
    Family::Counter(&STATUS_BATCHES),
    Family::Counter(&STATUS_REPORTS),
];

/// What an agent serves.
pub static AGENT: &[Family] = &[
    Family::Counter(&AGENT_SESSIONS),
    Family::Gauge(&AGENT_CONNECTED),
    Family::Counter(&AGENT_ENGINE_ERRORS),
    Family::Gauge(&AGENT_TASKS),
];
