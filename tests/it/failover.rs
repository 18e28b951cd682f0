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
