//! The pause before an agent tries a manager again after a failure: exponential with jitter, so
//! that thousands of agents losing their leader at the same instant come back spread out rather
//! than as one wave, and a long outage costs a few attempts per agent instead of one every
//! 150 ms. The first pause stays short (a failover must be quick), each one doubles the ceiling
//! up to [`MAX`], and the pause is drawn uniformly between a quarter of the ceiling and the
//! ceiling ("full jitter" with a floor, so that it never spins). A session that stayed up for
//! [`STABLE`] starts the next series from the beginning again.
//!
//! The cap must also leave time to reach a new leader before it declares the node DOWN (3
//! heartbeat periods after it took over): the session lowers it to half the heartbeat period in
//! force ([`Backoff::cap`]). In a small cluster (500 ms periods) that keeps pauses under 250 ms;
//! the leader stretches the periods of large clusters (2.5 s at 5,000 nodes), and with them the
//! cap, which is where spreading matters.
//!
//! Pure: time comes in as arguments and the randomness is the caller's (a seeded one in tests).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The ceiling of the first pause (the first pause is 50..200 ms).
pub(crate) const INITIAL: Duration = Duration::from_millis(200);
/// The highest ceiling: an agent tries again at least every 5 s, whatever its heartbeat period.
pub(crate) const MAX: Duration = Duration::from_secs(5);
/// How long a session must have stayed up for its end to count as a new failure, not another
/// one of a series (a leader that takes the session and then drops it must not be hammered).
pub(crate) const STABLE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Backoff<R = StdRng> {
    initial: Duration,
    /// The highest ceiling the policy allows.
    max: Duration,
    /// The highest ceiling now (at most `max`, at least `initial`).
    cap: Duration,
    /// Failures in a row so far.
    failures: u32,
    /// When the current session came up, if it is up.
    up_since: Option<Instant>,
    rng: R,
}

impl Backoff<StdRng> {
    /// The agents' policy, with randomness from the operating system (so that agents started
    /// together do not draw the same pauses).
    pub(crate) fn new() -> Backoff<StdRng> {
        Backoff::with_rng(INITIAL, MAX, StdRng::from_os_rng())
    }
}

impl<R: Rng> Backoff<R> {
    /// Ceilings from `initial` doubling up to `max` (at least `initial`), pauses drawn with `rng`.
    pub(crate) fn with_rng(initial: Duration, max: Duration, rng: R) -> Backoff<R> {
        let max = max.max(initial);
        Backoff {
            initial,
            max,
            cap: max,
            failures: 0,
            up_since: None,
            rng,
        }
    }

    /// Lowers (or raises back) the highest ceiling to `cap`, kept within the initial ceiling and
    /// the policy's maximum.
    pub(crate) fn cap(&mut self, cap: Duration) {
        self.cap = cap.clamp(self.initial, self.max);
    }

    /// A session is up (registered, assignments flowing) since `now`.
    pub(crate) fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// An attempt failed or a session ended at `now`: the pause before the next attempt.
    pub(crate) fn failed(&mut self, now: Instant) -> Duration {
        if let Some(up) = self.up_since.take() {
            if now.saturating_duration_since(up) >= STABLE {
                self.failures = 0;
            }
        }
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let floor = ceiling / 4;
        let span = u64::try_from((ceiling - floor).as_micros()).unwrap_or(u64::MAX);
        floor + Duration::from_micros(self.rng.random_range(0..=span))
    }

    /// The most the next pause can be.
    pub(crate) fn ceiling(&self) -> Duration {
        // 2^16 times any sensible initial pause is past any sensible cap.
        let doubled = self.initial.saturating_mul(1u32 << self.failures.min(16));
        doubled.min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(seed: u64) -> Backoff<StdRng> {
        Backoff::with_rng(INITIAL, MAX, StdRng::seed_from_u64(seed))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceilings_double_from_the_initial_pause_up_to_the_cap() {
        let mut b = backoff(1);
        let now = Instant::now();
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling());
            b.failed(now);
        }
        assert_eq!(
            ceilings,
            [
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000),
                ms(5000)
            ]
        );
        // Thousands of failures in a row neither overflow nor pass the cap.
        for _ in 0..100_000 {
            assert!(b.failed(now) <= MAX);
        }
    }

    #[test]
    fn every_pause_is_between_a_quarter_of_its_ceiling_and_the_ceiling() {
        let now = Instant::now();
        for seed in 0..200 {
            let mut b = backoff(seed);
            for _ in 0..10 {
                let ceiling = b.ceiling();
                let pause = b.failed(now);
                assert!(
                    pause >= ceiling / 4 && pause <= ceiling,
                    "seed {seed}: {pause:?} outside {:?}..={ceiling:?}",
                    ceiling / 4
                );
            }
        }
    }

    #[test]
    fn the_first_retry_after_a_leader_loss_is_quick() {
        let now = Instant::now();
        for seed in 0..200 {
            let pause = backoff(seed).failed(now);
            assert!(
                pause >= ms(50) && pause <= ms(200),
                "seed {seed}: {pause:?}"
            );
        }
    }

    #[test]
    fn agents_failing_together_spread_their_retries() {
        // 1,000 agents lose their leader at the same instant: their first retries cover the
        // window rather than landing on one instant.
        let now = Instant::now();
        let mut buckets = [0u32; 10];
        for seed in 0..1000 {
            let pause = backoff(seed).failed(now);
            let slot = ((pause - ms(50)).as_micros() * 10 / ms(150).as_micros()).min(9);
            buckets[slot as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (50..=150).contains(&n)),
            "first pauses of 1,000 agents by 15 ms slot: {buckets:?}"
        );
    }

    #[test]
    fn a_session_that_stayed_up_starts_the_series_afresh() {
        let start = Instant::now();
        let mut b = backoff(7);
        for _ in 0..5 {
            b.failed(start);
        }
        assert_eq!(b.ceiling(), ms(5000));
        // Up for a moment only: the series goes on.
        b.connected(start);
        b.failed(start + ms(100));
        assert_eq!(b.ceiling(), ms(5000));
        // Up long enough: the next failure is a first one again.
        b.connected(start + ms(200));
        let pause = b.failed(start + ms(200) + STABLE);
        assert!(pause <= INITIAL, "{pause:?}");
        assert_eq!(b.ceiling(), ms(400));
        // A failure with no session in between never resets.
        b.failed(start + Duration::from_secs(600));
        assert_eq!(b.ceiling(), ms(800));
    }

    #[test]
    fn the_cap_follows_the_heartbeat_period_within_the_policy() {
        let now = Instant::now();
        let mut b = backoff(11);
        // Half of a 500 ms period: pauses stay within reach of a new leader's grace.
        b.cap(ms(250));
        let ceilings: Vec<Duration> = (0..4)
            .map(|_| {
                let c = b.ceiling();
                assert!(b.failed(now) <= c);
                c
            })
            .collect();
        assert_eq!(ceilings, [ms(200), ms(250), ms(250), ms(250)]);
        // A large cluster's stretched period lets the series grow on (four failures so far),
        // up to the policy's cap.
        b.cap(Duration::from_secs(60));
        assert_eq!(b.ceiling(), ms(3200));
        b.failed(now);
        assert_eq!(b.ceiling(), MAX);
        // Never below the first ceiling: a tiny heartbeat does not make agents spin.
        b.cap(ms(5));
        assert_eq!(b.ceiling(), INITIAL);
    }

    #[test]
    fn a_cap_below_the_initial_pause_is_the_initial_pause() {
        let mut b = Backoff::with_rng(ms(200), ms(10), StdRng::seed_from_u64(3));
        assert!(b.failed(Instant::now()) <= ms(200));
        assert_eq!(b.ceiling(), ms(200));
    }
}
