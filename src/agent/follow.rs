//! Which manager the agent's session talks to next. A manager that is not the leader names it, and
//! the agent goes there at once; with no name (no leader known yet) or an unreachable manager it tries
//! the `--join` addresses in turn, pausing between attempts (how long is `backoff`'s call) so that
//! it never spins.

/// Leader hints followed in a row without a pause; more means managers disagree (an election is
/// under way), and the agent pauses as after a failure.
const QUICK_HOPS: u32 = 3;

/// When to make the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// At once: following a leader hint.
    Now,
    /// After a pause: the attempt failed.
    Pause,
}

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

    /// `current` is not the leader and named `leader` (None or empty: it knows of none). Returns
    /// when to make the next attempt.
    pub(crate) fn not_leader(&mut self, leader: Option<&str>) -> Next {
        match leader {
            Some(leader) if !leader.is_empty() && leader != self.current => {
                self.current = leader.to_string();
                self.hops += 1;
                if self.hops <= QUICK_HOPS {
                    Next::Now
                } else {
                    Next::Pause
                }
            }
            _ => self.failed(),
        }
    }

    /// `current` is unreachable or failed: move on to the next `--join` address (another one than
    /// `current` when there is one). The next attempt comes after a pause.
    pub(crate) fn failed(&mut self) -> Next {
        for _ in 0..self.join.len() {
            let next = self.join[self.next_join % self.join.len()].clone();
            self.next_join = (self.next_join + 1) % self.join.len();
            if next != self.current || self.join.len() == 1 {
                self.current = next;
                break;
            }
        }
        self.hops += 1;
        Next::Pause
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
        assert_eq!(f.not_leader(Some("m3:1")), Next::Now);
        assert_eq!(f.current(), "m3:1");
    }

    #[test]
    fn no_hint_or_a_dead_manager_moves_to_the_next_join_address_after_a_pause() {
        let mut f = follow();
        assert_eq!(f.not_leader(Some("")), Next::Pause);
        assert_eq!(f.current(), "m2:1");
        assert_eq!(f.not_leader(None), Next::Pause);
        assert_eq!(f.current(), "m3:1");
        assert_eq!(f.failed(), Next::Pause);
        assert_eq!(f.current(), "m1:1", "round and round, never stuck");
        // A hint naming the manager that gave it is no hint.
        assert_eq!(f.not_leader(Some("m1:1")), Next::Pause);
        assert_eq!(f.current(), "m2:1");
    }

    #[test]
    fn a_dead_leader_outside_the_join_list_is_left_for_the_join_list() {
        let mut f = follow();
        f.not_leader(Some("10.0.0.9:7946"));
        f.connected();
        assert_eq!(f.failed(), Next::Pause);
        assert_eq!(f.current(), "m2:1");
    }

    #[test]
    fn hints_going_round_in_circles_slow_down() {
        let mut f = follow();
        let pauses: Vec<Next> = ["m2:1", "m3:1", "m2:1", "m3:1"]
            .into_iter()
            .map(|hint| f.not_leader(Some(hint)))
            .collect();
        assert_eq!(pauses, [Next::Now, Next::Now, Next::Now, Next::Pause]);
        f.connected();
        assert_eq!(f.not_leader(Some("m1:1")), Next::Now);
    }

    #[test]
    fn one_join_address_is_retried() {
        let mut f = Follow::new(vec!["m1:1".into()]);
        assert_eq!(f.failed(), Next::Pause);
        assert_eq!(f.current(), "m1:1");
    }
}
