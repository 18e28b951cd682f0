//! A manager stopped while 50,000 writes happen, long enough for the leader to purge the log it
//! would need: it catches up through a snapshot and serves every key from its own replica.

use std::time::Duration;

use tokio::time::{sleep, Instant};

use crate::cluster::{put, read_prefix, serial, Cluster, WAIT};

const WRITES: usize = 50_000;
const WRITERS: usize = 64;

#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_manager_catches_up_through_a_snapshot() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let lagging = (leader + 1) % 3;
    let stopped_at = c.managers[lagging]
        .status()
        .await
        .expect("status")
        .applied_index;
    c.managers[lagging].kill();

    // 50,000 puts, 64 concurrent writers, through the leader. A write that fails (an election
    // on a busy machine) is retried with the same key and value: only presence is asserted.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..WRITERS {
        let mut kv = c.managers[leader].kv();
        let mut other = c.managers[3 - leader - lagging].kv();
        tasks.push(tokio::spawn(async move {
            for i in (t..WRITES).step_by(WRITERS) {
                let (key, value) = (format!("s/{i:05}"), format!("value-{i}"));
                let deadline = Instant::now() + WAIT;
                let mut attempt = 0;
                loop {
                    let kv = if attempt % 2 == 0 {
                        &mut kv
                    } else {
                        &mut other
                    };
                    match put(kv, &key, &value).await {
                        Ok(_) => break,
                        Err(e) => {
                            assert!(Instant::now() < deadline, "put {key}: {e}");
                            attempt += 1;
                            sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!("{WRITES} puts took {:?}", started.elapsed());

    // The log the lagging manager would need is gone from the leader.
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = c.wait_leader().await;
        let status = c.managers[leader].status().await.expect("leader status");
        if status.purged_index > stopped_at {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never purged its log past {stopped_at} (purged {}, snapshot {})",
            status.purged_index,
            status.snapshot_index
        );
        sleep(Duration::from_millis(500)).await;
    }

    c.managers[lagging].spawn(&[]);
    let commit = c.commit_index().await;
    let status = c.wait_applied(lagging, commit).await;
    assert!(
        status.snapshot_index > stopped_at,
        "{} caught up without a snapshot past index {stopped_at} (its snapshot index: {})",
        c.managers[lagging].name,
        status.snapshot_index
    );

    let mut kv = c.managers[lagging].kv();
    let mut seen = 0;
    for d in 0..5 {
        let part = read_prefix(&mut kv, &format!("s/{d}"), true)
            .await
            .expect("stale read on the caught-up manager");
        for (key, value) in &part {
            let i: usize = key[2..].parse().unwrap();
            assert_eq!(value, &format!("value-{i}"), "{key}");
        }
        seen += part.len();
    }
    assert_eq!(
        seen, WRITES,
        "keys on the manager that caught up through a snapshot"
    );
}
