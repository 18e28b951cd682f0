//! The load generator: N concurrent clients share one op counter and run a phase (puts, gets or
//! stale gets) until it is used up, timing every request. It knows nothing of shoal: a store is
//! a `KvDriver`, so the same load can be pointed at another store (etcd, issue 8).
//! A failed request is counted and never retried.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::time::Instant;

/// One client connection to the store under test.
pub(crate) trait KvDriver: Send + 'static {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> impl Future<Output = Result<()>> + Send;
    /// The key's value, or `None` if it does not exist.
    fn get(
        &mut self,
        key: Vec<u8>,
        stale: bool,
    ) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Put,
    Get,
    StaleGet,
}

impl Phase {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Phase::Put => "put",
            Phase::Get => "get",
            Phase::StaleGet => "stale-get",
        }
    }
}

/// What a phase did: latencies (ns) of the successful requests and what failed. A linearizable
/// read that misses an acknowledged put, or sees another value, is an error.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) ops: u64,
    pub(crate) errors: u64,
    /// Stale reads that found no value or an older one: allowed, so not errors.
    pub(crate) stale: u64,
    pub(crate) seconds: f64,
    pub(crate) latencies_ns: Vec<u64>,
    /// The first few distinct error messages, to say what went wrong.
    pub(crate) samples: Vec<String>,
    /// Put phase: the indices of the keys whose put was acknowledged, sorted.
    pub(crate) written: Vec<u64>,
}

const SAMPLES: usize = 5;

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.ops += other.ops;
        self.errors += other.errors;
        self.stale += other.stale;
        self.latencies_ns.extend(other.latencies_ns);
        self.written.extend(other.written);
        for s in other.samples {
            if self.samples.len() < SAMPLES && !self.samples.contains(&s) {
                self.samples.push(s);
            }
        }
    }

    pub(crate) fn error(&mut self, msg: String) {
        self.errors += 1;
        if self.samples.len() < SAMPLES && !self.samples.contains(&msg) {
            self.samples.push(msg);
        }
    }
}

/// What the phase reads and writes: key `i` holds `value(i)`.
pub(crate) struct Keyspace {
    pub(crate) value_size: usize,
    /// Keys that exist (acknowledged puts); reads pick among them.
    pub(crate) existing: Vec<u64>,
}

pub(crate) fn key(i: u64) -> Vec<u8> {
    format!("/bench/kv/{i:010}").into_bytes()
}

/// A value that depends on the key and does not compress to nothing (RocksDB uses LZ4).
pub(crate) fn value(i: u64, size: usize) -> Vec<u8> {
    let mut state = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut out = Vec::with_capacity(size + 8);
    while out.len() < size {
        // splitmix64
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Runs `ops` requests of `phase` over all `drivers` concurrently, or fewer if `limit` is
/// given and runs out first (no request starts after it); gives the drivers back.
pub(crate) async fn run<D: KvDriver>(
    drivers: Vec<D>,
    phase: Phase,
    ops: u64,
    limit: Option<Duration>,
    keys: Arc<Keyspace>,
) -> Result<(Vec<D>, Outcome)> {
    if phase != Phase::Put && keys.existing.is_empty() && ops > 0 {
        anyhow::bail!("{}: no key was written, nothing to read", phase.name());
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = limit.map(|l| start + l);
    let tasks: Vec<_> = drivers
        .into_iter()
        .map(|driver| {
            tokio::spawn(client(
                driver,
                phase,
                ops,
                deadline,
                next.clone(),
                keys.clone(),
            ))
        })
        .collect();
    let mut drivers = Vec::with_capacity(tasks.len());
    let mut total = Outcome::default();
    for task in tasks {
        let (driver, outcome) = task.await?;
        drivers.push(driver);
        total.merge(outcome);
    }
    total.seconds = start.elapsed().as_secs_f64();
    total.written.sort_unstable();
    Ok((drivers, total))
}

async fn client<D: KvDriver>(
    mut driver: D,
    phase: Phase,
    ops: u64,
    deadline: Option<Instant>,
    next: Arc<AtomicU64>,
    keys: Arc<Keyspace>,
) -> (D, Outcome) {
    let mut out = Outcome::default();
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= ops {
            break;
        }
        out.ops += 1;
        // Reads visit the written keys in a scattered order rather than the order they were put.
        let i = match phase {
            Phase::Put => n,
            _ => {
                keys.existing[(n.wrapping_mul(2_654_435_761) % keys.existing.len() as u64) as usize]
            }
        };
        let started = Instant::now();
        let result = match phase {
            Phase::Put => driver
                .put(key(i), value(i, keys.value_size))
                .await
                .map(|()| None),
            Phase::Get | Phase::StaleGet => {
                driver.get(key(i), phase == Phase::StaleGet).await.map(Some)
            }
        };
        let elapsed = started.elapsed().as_nanos() as u64;
        match result {
            Ok(None) => {
                out.latencies_ns.push(elapsed);
                out.written.push(i);
            }
            Ok(Some(got)) => {
                let expected = value(i, keys.value_size);
                if got.as_deref() == Some(&expected[..]) {
                    out.latencies_ns.push(elapsed);
                } else if phase == Phase::StaleGet {
                    // A stale read may lag behind: legal, but worth reporting.
                    out.latencies_ns.push(elapsed);
                    out.stale += 1;
                } else if got.is_none() {
                    out.error(format!(
                        "key {i}: missing although its put was acknowledged"
                    ));
                } else {
                    out.error(format!("key {i}: another value than the one put"));
                }
            }
            Err(e) => out.error(format!("{e:#}")),
        }
    }
    (driver, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_sized_and_differ_by_key() {
        assert_eq!(value(1, 256).len(), 256);
        assert_eq!(value(1, 3).len(), 3);
        assert_eq!(value(7, 256), value(7, 256));
        assert_ne!(value(7, 256), value(8, 256));
    }
}
