//! 3 managers: 1,000 writes through a follower, kill -9 the leader, writes go on through the new
//! leader, every acknowledged write reads back from every survivor, the old leader catches up.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::cluster::{assert_contains, put, read_prefix, serial, Cluster};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_a_leader_kill() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;

    // 1,000 writes through a follower (it forwards them), 16 at a time: all must succeed.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut kv = c.managers[follower].kv();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..1000).step_by(16) {
                let (key, value) = (format!("a/{i:04}"), format!("value-{i}"));
                put(&mut kv, &key, &value)
                    .await
                    .unwrap_or_else(|e| panic!("put {key} through a follower: {e}"));
                acked.lock().unwrap().insert(key, value);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), 1000);

    c.managers[leader].kill();

    // Writes continue: the follower forwards to whoever wins the election. Failures during the
    // election are allowed (and not counted); 200 more must be acknowledged within the bound.
    let mut kv = c.managers[follower].kv();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut next, mut after) = (1000, 0);
    while after < 200 {
        let (key, value) = (format!("a/{next:04}"), format!("value-{next}"));
        next += 1;
        match put(&mut kv, &key, &value).await {
            Ok(_) => {
                acked.lock().unwrap().insert(key, value);
                after += 1;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes did not resume after the leader kill: {e}\n{}",
                    c.logs()
                );
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    let acked = acked.lock().unwrap().clone();

    // Every survivor: stale reads once it has applied the leader's commit index, and
    // linearizable reads.
    let commit = c.commit_index().await;
    for s in (0..3).filter(|&s| s != leader) {
        c.wait_applied(s, commit).await;
        let mut kv = c.managers[s].kv();
        let stale = read_prefix(&mut kv, "a/", true).await.expect("stale read");
        assert_contains(
            &stale,
            &acked,
            &format!("stale read on {}", c.managers[s].name),
        );
        let linear = read_prefix(&mut kv, "a/", false)
            .await
            .expect("linearizable read");
        assert_contains(
            &linear,
            &acked,
            &format!("linearizable read on {}", c.managers[s].name),
        );
    }

    // The old leader restarts from its data dir (no --join) and catches up.
    c.managers[leader].spawn(&[]);
    let commit = c.commit_index().await;
    c.wait_applied(leader, commit).await;
    let mut kv = c.managers[leader].kv();
    let stale = read_prefix(&mut kv, "a/", true)
        .await
        .expect("stale read on the old leader");
    assert_contains(&stale, &acked, "stale read on the restarted old leader");
    let linear = read_prefix(&mut kv, "a/", false)
        .await
        .expect("linearizable read on the old leader");
    assert_contains(
        &linear,
        &acked,
        "linearizable read on the restarted old leader",
    );
}

/// A leader stopped with SIGTERM hands leadership to another manager before it exits (it logs
/// the hand-over: leadership moved, it was not lost to an election timeout), and every write
/// acknowledged through a follower meanwhile is kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_leader_hands_over_and_keeps_every_acknowledged_write() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;

    // A writer through the follower, before, during and after the stop.
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let mut kv = c.managers[follower].kv();
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (key, value) = (format!("h/{i:05}"), format!("value-{i}"));
                i += 1;
                if put(&mut kv, &key, &value).await.is_ok() {
                    acked.lock().unwrap().insert(key, value);
                } else {
                    sleep(Duration::from_millis(10)).await;
                }
            }
        })
    };
    while acked.lock().unwrap().len() < 50 {
        sleep(Duration::from_millis(10)).await;
    }

    c.managers[leader].stop().await;
    let log = c.managers[leader].log_text();
    assert!(
        log.contains("handed leadership over"),
        "the stopped leader did not hand over:\n{}",
        crate::cluster::tail(&log)
    );
    let new_leader = c.wait_leader().await;
    assert_ne!(new_leader, leader);
    let before = acked.lock().unwrap().len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.lock().unwrap().len() < before + 50 {
        assert!(
            Instant::now() < deadline,
            "writes did not go on after the hand-over\n{}",
            c.logs()
        );
        sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let mut kv = c.managers[new_leader].kv();
    let linear = read_prefix(&mut kv, "h/", false)
        .await
        .expect("linearizable read on the new leader");
    assert_contains(&linear, &acked, "linearizable read after the hand-over");
}
