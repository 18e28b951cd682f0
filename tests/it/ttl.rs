//! `kv put --ttl 2s`: the key is there for its whole TTL and gone soon after, also when the leader
//! that granted the lease dies.

use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::cluster::{read_prefix, serial, Cluster};

/// Polls `key` through the managers in `readers` (linearizable reads) from `t0` on. Returns when
/// it is seen absent. Panics if it is absent in a read that finished before `t0 + ttl` (too
/// early), or still present after `t0 + ttl + slack` (too late). With `check_present`, it must
/// also have been seen present at 3/4 of its TTL (not asserted across an election, when reads
/// may all fail at that moment).
async fn watch_expiry(
    c: &Cluster,
    readers: &[usize],
    key: &str,
    t0: Instant,
    ttl: Duration,
    slack: Duration,
    check_present: bool,
) {
    let mut seen_present_late = false;
    loop {
        for &r in readers {
            let mut kv = c.managers[r].kv();
            let Ok(found) = read_prefix(&mut kv, key, false).await else {
                continue;
            };
            let finished = Instant::now();
            if found.contains_key(key) {
                if finished >= t0 + ttl.mul_f32(0.75) {
                    seen_present_late = true;
                }
                assert!(
                    finished < t0 + ttl + slack,
                    "{key} still present {:?} after it was put",
                    finished - t0
                );
            } else {
                assert!(
                    finished >= t0 + ttl,
                    "{key} disappeared after {:?}, before its ttl of {ttl:?}",
                    finished - t0
                );
                assert!(
                    seen_present_late || !check_present,
                    "{key} was never seen present at 3/4 of its ttl"
                );
                return;
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_with_a_ttl_lives_that_long_and_no_longer() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    c.wait_leader().await;

    let t0 = Instant::now();
    let out = c.cli(&["kv", "put", "--ttl", "2s", "ttl/a", "x"]).await;
    assert!(out.ok(), "{out:?}");
    assert!(
        out.stdout.contains("lease "),
        "put --ttl prints the lease id: {out:?}"
    );
    let until_check = (t0 + Duration::from_millis(1500)).saturating_duration_since(Instant::now());
    sleep(until_check).await;
    watch_expiry(
        &c,
        &[0, 1, 2],
        "ttl/a",
        t0,
        Duration::from_secs(2),
        Duration::from_secs(4),
        true,
    )
    .await;

    // Across a leader change: the lease outlives the leader that granted it, and the new leader
    // expires it.
    let leader = c.wait_leader().await;
    let t0 = Instant::now();
    let out = c.cli(&["kv", "put", "--ttl", "2s", "ttl/b", "y"]).await;
    assert!(out.ok(), "{out:?}");
    c.managers[leader].kill();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    sleep(Duration::from_millis(1000)).await;
    watch_expiry(
        &c,
        &survivors,
        "ttl/b",
        t0,
        Duration::from_secs(2),
        Duration::from_secs(20),
        false,
    )
    .await;
}
