//! A plain container created through the Docker Engine API: a one-slot service whose task runs the
//! create body the client sent, with Docker's create/start/stop/rm life cycle on top.
//!
//! `replicas` says whether it should run (1) or not (0: created, stopped or killed); `start_seq`
//! makes `docker start` run it again even where the restart policy would leave it finished.

use serde::{Deserialize, Serialize};

/// What a service carries when it is a plain container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The Docker create body (`POST /containers/create`) as the client sent it, less classic
    /// Swarm's `constraint:`, `affinity:` and `reschedule:` environment entries. The agent
    /// creates the container from it; the scheduler reads the service fields derived from it.
    pub config: serde_json::Value,
    /// Bumped by every `docker start` and `docker restart`: a slot whose newest task has an older
    /// `start_seq` gets a new task whatever the restart policy says.
    #[serde(default)]
    pub start_seq: u64,
    /// `docker run --rm`: the orchestrator removes the container once its task has ended.
    #[serde(default)]
    pub auto_remove: bool,
    /// Milliseconds since the epoch, from the creating manager's clock.
    #[serde(default)]
    pub created_ms: u64,
    /// The update policy of its compose service (`shoal.update.*` labels): a stop hands over
    /// to the container compose creates in its place (`Handover`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover_policy: Option<HandoverPolicy>,
    /// A stop deferred until the container's successor serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// How compose's recreate of a service's containers proceeds, from the containers' labels
/// `shoal.update.parallelism` and `shoal.update.delay` (start-first is the only order: compose
/// without a policy already recreates stop-first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverPolicy {
    /// Containers of the compose service handing over at a time (0: all at once).
    pub parallelism: u64,
    /// Wait after a handover ends before the next stop of the service goes on.
    #[serde(default)]
    pub delay_ms: u64,
}

/// A `docker stop` of a container with a `HandoverPolicy`, answered at once while the container
/// keeps serving: the orchestrator stops it (out of the proxies first, after its drain delay)
/// once its successor serves (the container now named `name`, of the same compose service and
/// number). Bounded: with no successor after `HANDOVER_ORPHAN_MS`, with one that does not serve
/// within `HANDOVER_TIMEOUT_MS` of its start, or `HANDOVER_MAX_MS` after the stop, it stops
/// anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    /// The container's name when the stop came: compose gives it to the successor.
    pub name: String,
    /// When the stop came (the API manager's clock).
    pub since_ms: u64,
}

/// How long a handover waits for a successor to appear: compose creates it right after the stop
/// (and a rename); a stop that is not a recreate (`docker-compose stop`) ends this late.
pub const HANDOVER_ORPHAN_MS: u64 = 5_000;
/// The longest a handover waits for a started successor to serve (its health check's start).
pub const HANDOVER_TIMEOUT_MS: u64 = 40_000;
/// The longest a handover lasts in all (a successor created, never started).
pub const HANDOVER_MAX_MS: u64 = 120_000;

/// The labels of a `HandoverPolicy`, the only `shoal.` labels a container may carry: the
/// number of containers handing over at a time, the wait between turns, the order.
pub const UPDATE_LABELS: [&str; 3] = [
    "shoal.update.parallelism",
    "shoal.update.delay",
    "shoal.update.order",
];

/// Compose's labels naming a container's project, service and number.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
pub const COMPOSE_NUMBER: &str = "com.docker.compose.container-number";

/// The compose project and service of a container with these labels, if any.
pub fn compose_service(
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<(&str, &str)> {
    Some((
        labels.get(COMPOSE_PROJECT)?.as_str(),
        labels.get(COMPOSE_SERVICE)?.as_str(),
    ))
}
