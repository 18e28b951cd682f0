//! Which manager the agent's session talks to next. A manager that is not the leader names it, and
//! the agent goes there at once; with no name (no leader known yet) or an unreachable manager it tries
//! the `--join` addresses in turn, pausing briefly between attempts so that it never spins.

use std::time::Duration;

/// The pause before trying another `--join` address, or before following yet another leader hint.
pub(crate) const BACKOFF: Duration = Duration::from_millis(150);

/// Leader hints followed in a row without a pause; more means managers disagree (an election is
/// under way), and the agent slows down to BACKOFF.
const QUICK_HOPS: u32 = 3;

#[derive(Debug)]
pub(crate) struct Follow {
    join: Vec<String>,
    next_join: usize,
    current: String,
    hops: u32,
}

impl Follow {
    /// Starts with the first `--join` address; `join` must not be empty.
    pub(crate) fn new(join: Vec<String>) -> Follow {
        let current = join.first().cloned().unwrap_or_default();
        Follow {
            join,
            next_join: 1,
            current,
            hops: 0,
        }
    }

    /// The manager to talk to now.
    pub(crate) fn current(&self) -> &str {
        &self.current
    }

    /// The session with `current` is up: the next failure starts afresh.
    pub(crate) fn connected(&mut self) {
        self.hops = 0;
    }

    /// `current` is not the leader and named `leader` (None or empty: it knows of none). Returns the
    /// pause before the next attempt.
    pub(crate) fn not_leader(&mut self, leader: Option<&str>) -> Duration {
        match leader {
            Some(leader) if !leader.is_empty() && leader != self.current => {
                self.current = leader.to_string();
                self.hops += 1;
                if self.hops <= QUICK_HOPS {
                    Duration::ZERO
                } else {
                    BACKOFF
                }
            }
            _ => self.failed(),
        }
    }

    /// `current` is unreachable or failed: move on to the next `--join` address (another one than
    /// `current` when there is one). Returns the pause before the next attempt.
    pub(crate) fn failed(&mut self) -> Duration {
        for _ in 0..self.join.len() {
            let next = self.join[self.next_join % self.join.len()].clone();
            self.next_join = (self.next_join + 1) % self.join.len();
            if next != self.current || self.join.len() == 1 {
                self.current = next;
                break;
            }
        }
        self.hops += 1;
        BACKOFF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow() -> Follow {
        Follow::new(vec!["m1:1".into(), "m2:1".into(), "m3:1".into()])
    }

    #[test]
    fn a_leader_hint_is_followed_at_once() {
        let mut f = follow();
        assert_eq!(f.current(), "m1:1");
        assert_eq!(f.not_leader(Some("m3:1")), Duration::ZERO);
        assert_eq!(f.current(), "m3:1");
    }

    #[test]
    fn no_hint_or_a_dead_manager_moves_to_the_next_join_address_after_a_pause() {
        let mut f = follow();
        assert_eq!(f.not_leader(Some("")), BACKOFF);
        assert_eq!(f.current(), "m2:1");
        assert_eq!(f.not_leader(None), BACKOFF);
        assert_eq!(f.current(), "m3:1");
        assert_eq!(f.failed(), BACKOFF);
        assert_eq!(f.current(), "m1:1", "round and round, never stuck");
        // A hint naming the manager that gave it is no hint.
        assert_eq!(f.not_leader(Some("m1:1")), BACKOFF);
        assert_eq!(f.current(), "m2:1");
    }

    #[test]
    fn a_dead_leader_outside_the_join_list_is_left_for_the_join_list() {
        let mut f = follow();
        f.not_leader(Some("10.0.0.9:7946"));
        f.connected();
        assert_eq!(f.failed(), BACKOFF);
        assert_eq!(f.current(), "m2:1");
    }

    #[test]
    fn hints_going_round_in_circles_slow_down() {
        let mut f = follow();
        let pauses: Vec<Duration> = ["m2:1", "m3:1", "m2:1", "m3:1"]
            .into_iter()
            .map(|hint| f.not_leader(Some(hint)))
            .collect();
        assert_eq!(
            pauses,
            [Duration::ZERO, Duration::ZERO, Duration::ZERO, BACKOFF]
        );
        f.connected();
        assert_eq!(f.not_leader(Some("m1:1")), Duration::ZERO);
    }

    #[test]
    fn one_join_address_is_retried() {
        let mut f = Follow::new(vec!["m1:1".into()]);
        assert_eq!(f.failed(), BACKOFF);
        assert_eq!(f.current(), "m1:1");
    }
}
