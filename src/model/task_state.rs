//! The task lifecycle: states only move forward, and each move has one owner (see
//! docs/task-model.md). The check here is what every writer of a task's state must call.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Declared in lifecycle order: a move is forward when the target is declared later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Starting,
    Running,
    Complete,
    Failed,
    Shutdown,
    Rejected,
    Orphaned,
}

/// Who may write a task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Actor {
    Orchestrator,
    Scheduler,
    Agent,
}

impl TaskState {
    /// COMPLETE and every state after it: the task will never run again.
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }

    /// Whether a task in this state holds its node's ports, slots and reservations.
    pub fn occupies_node(self) -> bool {
        (TaskState::Assigned..=TaskState::Running).contains(&self)
    }

    /// Whether `actor` may move a task from `self` to `to`:
    /// - orchestrator: NEW→PENDING; NEW|PENDING|ASSIGNED→SHUTDOWN (no agent has taken it yet);
    ///   any live state→ORPHANED (its node is DOWN and cannot report);
    /// - scheduler: PENDING→ASSIGNED;
    /// - agent: from ASSIGNED on, forward to ACCEPTED..=REJECTED.
    pub fn may_move(self, to: TaskState, actor: Actor) -> bool {
        use TaskState::*;
        if self.is_terminal() || to <= self {
            return false;
        }
        match actor {
            Actor::Orchestrator => match to {
                Pending => self == New,
                Shutdown => self <= Assigned,
                Orphaned => true,
                _ => false,
            },
            Actor::Scheduler => self == Pending && to == Assigned,
            Actor::Agent => self >= Assigned && (Accepted..=Rejected).contains(&to),
        }
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).ok();
        let name = s.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
        f.write_str(&name.to_uppercase())
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Actor::Orchestrator => "orchestrator",
            Actor::Scheduler => "scheduler",
            Actor::Agent => "agent",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Actor::*;
    use super::TaskState::*;
    use super::*;

    const ALL: [TaskState; 11] = [
        New, Pending, Assigned, Accepted, Starting, Running, Complete, Failed, Shutdown, Rejected,
        Orphaned,
    ];

    #[test]
    fn each_owner_makes_only_its_own_moves() {
        assert!(New.may_move(Pending, Orchestrator));
        assert!(!New.may_move(Pending, Scheduler));
        assert!(Pending.may_move(Assigned, Scheduler));
        assert!(!Pending.may_move(Assigned, Orchestrator));
        assert!(!Pending.may_move(Assigned, Agent));
        assert!(Assigned.may_move(Accepted, Agent));
        assert!(Assigned.may_move(Rejected, Agent));
        assert!(Accepted.may_move(Running, Agent));
        assert!(Running.may_move(Failed, Agent));
        assert!(Running.may_move(Shutdown, Agent));
        assert!(
            !Running.may_move(Shutdown, Orchestrator),
            "a started task is stopped by its agent"
        );
        assert!(Pending.may_move(Shutdown, Orchestrator));
        assert!(Running.may_move(Orphaned, Orchestrator));
        assert!(!Running.may_move(Orphaned, Agent));
        assert!(
            !Pending.may_move(Accepted, Agent),
            "the agent only sees assigned tasks"
        );
    }

    #[test]
    fn states_never_move_backward_or_out_of_a_terminal_state() {
        for from in ALL {
            for to in ALL {
                for actor in [Orchestrator, Scheduler, Agent] {
                    if from.may_move(to, actor) {
                        assert!(to > from, "{from} -> {to} by {actor}");
                        assert!(!from.is_terminal(), "{from} -> {to} by {actor}");
                    }
                }
            }
        }
        assert!(!Complete.may_move(Failed, Agent));
        assert!(!Running.may_move(Starting, Agent));
    }

    #[test]
    fn json_and_display_names() {
        assert_eq!(serde_json::to_string(&Running).unwrap(), "\"running\"");
        assert_eq!(
            serde_json::from_str::<TaskState>("\"orphaned\"").unwrap(),
            Orphaned
        );
        assert_eq!(Pending.to_string(), "PENDING");
        assert!(Running.occupies_node() && Assigned.occupies_node());
        assert!(!Pending.occupies_node() && !Failed.occupies_node());
    }
}
