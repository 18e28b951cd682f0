//! Keeps retry loops' logs readable: a failure is logged when it starts or changes, then at most every
//! 30 s while it lasts, never once per retry.

use std::time::Duration;

use tokio::time::Instant;

const REPEAT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<(String, Instant)>,
}

impl Throttle {
    /// Whether `message` (the current failure) deserves a log line now.
    pub(crate) fn should_log(&mut self, message: &str) -> bool {
        self.should_log_at(message, Instant::now())
    }

    fn should_log_at(&mut self, message: &str, now: Instant) -> bool {
        let fresh = match &self.last {
            Some((last, at)) => last != message || now.duration_since(*at) >= REPEAT,
            None => true,
        };
        if fresh {
            self.last = Some((message.to_string(), now));
        }
        fresh
    }

    /// The failure is over; true if one had been logged (so that its end deserves a line too).
    pub(crate) fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_changes_and_then_every_thirty_seconds() {
        let mut t = Throttle::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(t.should_log_at("engine down", at(0)));
        assert!(!t.should_log_at("engine down", at(0)));
        assert!(!t.should_log_at("engine down", at(10)));
        assert!(t.should_log_at("permission denied", at(11)));
        assert!(!t.should_log_at("permission denied", at(40)));
        assert!(t.should_log_at("permission denied", at(41)));
        assert!(t.clear());
        assert!(!t.clear());
        assert!(t.should_log_at("permission denied", at(42)));
    }
}
