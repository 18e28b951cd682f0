//! Rolling updates as data: how a service's tasks move to a new spec (its update policy) and
//! where the current update stands (its status). Both live in the service record, so whichever
//! manager leads continues an update from the store; which slots are done is read from the tasks'
//! spec versions, never remembered elsewhere.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

/// `--update-order`: whether a slot's new task starts before its old one stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (Docker's default): never more tasks than
    /// replicas, at the cost of a slot's capacity while it is updated.
    #[default]
    StopFirst,
    /// Start the new task and stop the old one only once the new one serves: never less
    /// capacity, at the cost of a second container per slot for a while.
    StartFirst,
}

/// `--update-failure-action`: what an update does once too many of its new tasks failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Stop updating; what was updated stays, the rest keeps the old spec.
    #[default]
    Pause,
    /// Go back to the previous spec, slot by slot, with the same policy.
    Rollback,
    /// Keep going.
    Continue,
}

/// How an update proceeds: Docker's `--update-*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdatePolicy {
    /// Slots updated at a time (0: all at once).
    #[serde(default = "one")]
    pub parallelism: u64,
    /// Wait between one batch serving and the next one starting.
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub order: UpdateOrder,
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long after the last slot serves the update still counts failures before it is
    /// complete.
    #[serde(default = "default_monitor_ms")]
    pub monitor_ms: u64,
    /// Failed new tasks tolerated, in thousandths of the replica count (Docker's
    /// `--update-max-failure-ratio` 0.1 is 100): more is a failure of the update.
    #[serde(default)]
    pub max_failure_permille: u16,
    /// `--rebalance`: spread the service again when nodes join or come back, moving a task at
    /// a time (`parallelism` at most) start-first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rebalance: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Docker's default `--update-monitor`.
pub const DEFAULT_MONITOR_MS: u64 = 5_000;

/// The longest delay or monitor period a policy may have: a day.
pub const MAX_POLICY_MS: u64 = 86_400_000;

fn one() -> u64 {
    1
}

fn default_monitor_ms() -> u64 {
    DEFAULT_MONITOR_MS
}

impl Default for UpdatePolicy {
    fn default() -> UpdatePolicy {
        UpdatePolicy {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::default(),
            failure_action: FailureAction::default(),
            monitor_ms: DEFAULT_MONITOR_MS,
            max_failure_permille: 0,
            rebalance: false,
        }
    }
}

impl UpdatePolicy {
    pub fn is_default(&self) -> bool {
        *self == UpdatePolicy::default()
    }

    /// Whether `failed` failed tasks out of `replicas` exceed what the policy tolerates.
    pub fn too_many_failures(&self, failed: u64, replicas: u64) -> bool {
        failed > 0 && failed * 1_000 > u64::from(self.max_failure_permille) * replicas.max(1)
    }
}

/// Where a service's latest update stands (Docker's `UpdateStatus.State`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackPaused,
    RollbackCompleted,
}

impl UpdateState {
    /// Whether outdated tasks are being replaced.
    pub fn is_rolling(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }

    /// The state an update in this state moves to once it stops on failures.
    pub fn paused(self) -> UpdateState {
        match self.is_rollback() {
            true => UpdateState::RollbackPaused,
            false => UpdateState::Paused,
        }
    }

    /// The state an update in this state moves to once every slot runs its spec.
    pub fn completed(self) -> UpdateState {
        match self.is_rollback() {
            true => UpdateState::RollbackCompleted,
            false => UpdateState::Completed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The service's latest update: written by `service update|rollback` when it starts and by the
/// orchestrator when it pauses, rolls back or completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    pub state: UpdateState,
    /// Milliseconds since the epoch when it (or its rollback) started: tasks created before
    /// belong to an earlier update and do not count as its failures.
    pub started_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_ms: Option<u64>,
    #[serde(default)]
    pub message: String,
}

impl FromStr for UpdateOrder {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<UpdateOrder, ModelError> {
        match s {
            "stop-first" => Ok(UpdateOrder::StopFirst),
            "start-first" => Ok(UpdateOrder::StartFirst),
            _ => Err(ModelError::UpdatePolicy(format!(
                "order {s:?}: expected stop-first or start-first"
            ))),
        }
    }
}

impl FromStr for FailureAction {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<FailureAction, ModelError> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "rollback" => Ok(FailureAction::Rollback),
            "continue" => Ok(FailureAction::Continue),
            _ => Err(ModelError::UpdatePolicy(format!(
                "failure action {s:?}: expected pause, rollback or continue"
            ))),
        }
    }
}

/// Docker's `--update-max-failure-ratio`: a fraction from 0 to 1, kept in thousandths.
pub fn parse_failure_ratio(s: &str) -> Result<u16, ModelError> {
    let bad = || {
        ModelError::UpdatePolicy(format!(
            "max failure ratio {s:?}: expected a fraction from 0 to 1 such as 0.2"
        ))
    };
    let (whole, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: u64 = match whole {
        "" => 0,
        w => w.parse().map_err(|_| bad())?,
    };
    // Thousandths: digits beyond the third are dropped.
    let mut permille = whole.checked_mul(1_000).ok_or_else(bad)?;
    for (i, d) in frac.bytes().take(3).enumerate() {
        permille += u64::from(d - b'0') * 10u64.pow(2 - i as u32);
    }
    if permille > 1_000 {
        return Err(bad());
    }
    Ok(permille as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_ratios_parse_as_thousandths() {
        assert_eq!(parse_failure_ratio("0"), Ok(0));
        assert_eq!(parse_failure_ratio("0.2"), Ok(200));
        assert_eq!(parse_failure_ratio(".25"), Ok(250));
        assert_eq!(parse_failure_ratio("1"), Ok(1_000));
        assert_eq!(parse_failure_ratio("0.1234"), Ok(123));
        for bad in ["", ".", "1.5", "-0.1", "x", "0.2x", "99999999999999999999"] {
            let err = parse_failure_ratio(bad).unwrap_err();
            assert!(
                err.to_string().contains("max failure ratio"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_policy_tolerates_failures_up_to_its_ratio() {
        let strict = UpdatePolicy::default();
        assert!(!strict.too_many_failures(0, 4));
        assert!(strict.too_many_failures(1, 4));
        let lenient = UpdatePolicy {
            max_failure_permille: 250,
            ..UpdatePolicy::default()
        };
        assert!(!lenient.too_many_failures(1, 4));
        assert!(lenient.too_many_failures(2, 4));
    }

    #[test]
    fn the_policy_defaults_to_dockers_and_round_trips() {
        let policy: UpdatePolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(policy, UpdatePolicy::default());
        assert_eq!(policy.parallelism, 1);
        assert_eq!(policy.monitor_ms, DEFAULT_MONITOR_MS);
        let custom = UpdatePolicy {
            parallelism: 2,
            delay_ms: 1_000,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor_ms: 0,
            max_failure_permille: 100,
            rebalance: true,
        };
        let json = serde_json::to_value(custom).unwrap();
        assert_eq!(json["order"], "start-first");
        assert_eq!(json["rebalance"], true);
        assert_eq!(json["failure_action"], "rollback");
        assert_eq!(
            serde_json::from_value::<UpdatePolicy>(json).unwrap(),
            custom
        );
        assert_eq!("start-first".parse(), Ok(UpdateOrder::StartFirst));
        assert!("sideways".parse::<UpdateOrder>().is_err());
        assert_eq!("rollback".parse(), Ok(FailureAction::Rollback));
        assert!("panic".parse::<FailureAction>().is_err());
    }

    #[test]
    fn states_know_their_pause_and_completion() {
        assert_eq!(UpdateState::Updating.paused(), UpdateState::Paused);
        assert_eq!(
            UpdateState::RollbackStarted.paused(),
            UpdateState::RollbackPaused
        );
        assert_eq!(UpdateState::Updating.completed(), UpdateState::Completed);
        assert_eq!(
            UpdateState::RollbackStarted.completed(),
            UpdateState::RollbackCompleted
        );
        assert!(UpdateState::RollbackStarted.is_rolling());
        assert!(!UpdateState::Paused.is_rolling());
        assert_eq!(
            serde_json::to_value(UpdateState::RollbackStarted).unwrap(),
            "rollback_started"
        );
    }
}
