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
}
