//! Lease expiry, decided by the leader alone. Deadlines live in the leader's memory and use
//! tokio's clock; keepalives never touch the log. An expired lease is revoked by a log entry,
//! so every replica deletes its keys at the same revision. A new leader grants every lease a
//! full TTL from its own start: a lease can outlive its TTL across a failover, never fall short.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::state_machine::LeaseRecord;

#[derive(Default)]
pub(crate) struct LeaseClock {
    inner: Mutex<ClockState>,
}

#[derive(Default)]
struct ClockState {
    /// The leadership term these deadlines belong to; None when not leader.
    term: Option<u64>,
    deadlines: HashMap<u64, Instant>,
}

impl LeaseClock {
    /// Forgets every deadline (this manager is not leader).
    pub(crate) fn step_down(&self) {
        let mut s = self.inner.lock().expect("lease clock");
        s.term = None;
        s.deadlines.clear();
    }

    /// Brings deadlines in line with the lease table for leadership `term` and returns the
    /// leases whose deadline has passed.
    pub(crate) fn tick(
        &self,
        term: u64,
        leases: &BTreeMap<u64, LeaseRecord>,
        now: Instant,
    ) -> Vec<u64> {
        let mut s = self.inner.lock().expect("lease clock");
        if s.term != Some(term) {
            s.term = Some(term);
            s.deadlines.clear();
        }
        s.deadlines.retain(|id, _| leases.contains_key(id));
        for (id, rec) in leases {
            s.deadlines
                .entry(*id)
                .or_insert_with(|| now + Duration::from_millis(rec.ttl_ms));
        }
        let mut expired: Vec<u64> = s
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        expired.sort_unstable();
        expired
    }

    /// Renews a lease; false if it is unknown or already past its deadline.
    pub(crate) fn keep_alive(&self, rec: &LeaseRecord, now: Instant) -> bool {
        let mut s = self.inner.lock().expect("lease clock");
        let fresh = now + Duration::from_millis(rec.ttl_ms);
        match s.deadlines.get_mut(&rec.id) {
            Some(d) if *d <= now => false,
            Some(d) => {
                *d = fresh;
                true
            }
            None => {
                s.deadlines.insert(rec.id, fresh);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: u64, ttl_ms: u64) -> (u64, LeaseRecord) {
        (
            id,
            LeaseRecord {
                id,
                ttl_ms,
                granted_at_ms: 0,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn expires_after_ttl_and_not_before() {
        let clock = LeaseClock::default();
        let table: BTreeMap<_, _> = [lease(1, 2000), lease(2, 5000)].into();
        let t0 = Instant::now();
        assert!(clock.tick(1, &table, t0).is_empty());
        assert!(clock
            .tick(1, &table, t0 + Duration::from_millis(1999))
            .is_empty());
        assert_eq!(
            clock.tick(1, &table, t0 + Duration::from_millis(2000)),
            vec![1]
        );
        assert_eq!(
            clock.tick(1, &table, t0 + Duration::from_millis(5000)),
            vec![1, 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keepalive_extends_and_new_term_restarts_the_clock() {
        let clock = LeaseClock::default();
        let table: BTreeMap<_, _> = [lease(1, 1000)].into();
        let t0 = Instant::now();
        clock.tick(1, &table, t0);
        assert!(clock.keep_alive(&table[&1], t0 + Duration::from_millis(900)));
        assert!(clock
            .tick(1, &table, t0 + Duration::from_millis(1800))
            .is_empty());
        assert_eq!(
            clock.tick(1, &table, t0 + Duration::from_millis(1900)),
            vec![1]
        );
        // Too late to renew once the deadline passed.
        assert!(!clock.keep_alive(&table[&1], t0 + Duration::from_millis(1950)));
        // A new leader term starts every lease afresh.
        assert!(clock
            .tick(2, &table, t0 + Duration::from_millis(1950))
            .is_empty());
        assert_eq!(
            clock.tick(2, &table, t0 + Duration::from_millis(2950)),
            vec![1]
        );
        clock.step_down();
        assert!(clock.tick(3, &BTreeMap::new(), t0).is_empty());
    }
}
