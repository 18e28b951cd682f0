//! A watcher started at revision R (the CLI's `kv watch --json --rev R`, given every manager in
//! --host) receives every change from R on exactly once and in order, across a leader kill that
//! takes down the very manager it listens to.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::time::{sleep, Instant};

use crate::cluster::{delete, put, serial, Cluster, SHOAL, WAIT};

/// One change as the test made it: (type, key, value).
type Change = (&'static str, String, Option<String>);

#[tokio::test(flavor = "multi_thread")]
async fn a_watch_sees_every_change_once_in_order_across_a_leader_kill() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let follower = (leader + 1) % 3;

    // Changes acknowledged by the cluster, by revision; and writes whose outcome is unknown.
    let mut acked: BTreeMap<u64, Change> = BTreeMap::new();
    let mut unknown: BTreeMap<String, String> = BTreeMap::new();
    let mut kv = c.managers[leader].kv();
    for i in 0..20 {
        let (key, value) = (format!("w/{i:04}"), format!("v{i}"));
        let rev = put(&mut kv, &key, &value)
            .await
            .expect("put before the watch");
        acked.insert(rev, ("PUT", key, Some(value)));
    }
    let start = *acked.keys().nth(10).unwrap();

    // The watcher listens to the leader first: killing the leader kills its stream.
    let order = [leader, follower, 3 - leader - follower];
    let hosts = c.hosts_of(&order);
    let mut watcher = tokio::process::Command::new(SHOAL)
        .args([
            "--host",
            &hosts,
            "kv",
            "watch",
            "w/",
            "--prefix",
            "--json",
            "--rev",
            &start.to_string(),
        ])
        .env("SHOAL_TLS_DIR", &c.admin_tls)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning kv watch");
    let lines = Arc::new(Mutex::new(Vec::<Value>::new()));
    let reader = {
        let lines = lines.clone();
        let stdout = watcher.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut stdout = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = stdout.next_line().await {
                let event: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad JSON line {line:?}: {e}"));
                lines.lock().unwrap().push(event);
            }
        })
    };

    // Puts and deletes through a follower, then kill the leader, then more through survivors.
    let mut kv = c.managers[follower].kv();
    for i in 20..120 {
        let (key, value) = (format!("w/{i:04}"), format!("v{i}"));
        let rev = put(&mut kv, &key, &value)
            .await
            .expect("put before the kill");
        acked.insert(rev, ("PUT", key, Some(value)));
        if i % 10 == 0 {
            let key = format!("w/{:04}", i - 5);
            let rev = delete(&mut kv, &key).await.expect("delete before the kill");
            acked.insert(rev, ("DELETE", key, None));
        }
    }
    // Let the watcher get going on the leader before its manager dies.
    sleep(Duration::from_millis(500)).await;
    c.managers[leader].kill();
    let deadline = Instant::now() + WAIT;
    let mut i = 120;
    let mut after = 0;
    while after < 100 {
        let (key, value) = (format!("w/{i:04}"), format!("v{i}"));
        i += 1;
        match put(&mut kv, &key, &value).await {
            Ok(rev) => {
                acked.insert(rev, ("PUT", key, Some(value)));
                after += 1;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "writes never resumed: {e}\n{}",
                    c.logs()
                );
                unknown.insert(key, value);
                sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Wait for the watcher to reach the last acknowledged revision.
    let last = *acked.keys().last().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = lines
            .lock()
            .unwrap()
            .last()
            .and_then(|e| e["revision"].as_u64())
            .unwrap_or(0);
        if seen >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the watcher stopped at revision {seen}, the last write is at {last}\n{}",
            c.logs()
        );
        sleep(Duration::from_millis(100)).await;
    }
    watcher.kill().await.unwrap();
    reader.await.unwrap();

    let events = lines.lock().unwrap().clone();
    let mut previous = 0;
    let mut by_revision = BTreeMap::new();
    for e in &events {
        let rev = e["revision"].as_u64().expect("revision");
        assert!(
            rev > previous,
            "revision {rev} after {previous}: out of order or delivered twice"
        );
        previous = rev;
        by_revision.insert(rev, e.clone());
    }
    assert_eq!(
        events.first().and_then(|e| e["revision"].as_u64()),
        Some(start),
        "first event"
    );
    for (rev, (kind, key, value)) in acked.range(start..) {
        let e = by_revision
            .get(rev)
            .unwrap_or_else(|| panic!("no event for the {kind} of {key} at revision {rev}"));
        assert_eq!(e["type"], *kind, "type at revision {rev}");
        assert_eq!(e["key"], key.as_str(), "key at revision {rev}");
        match value {
            Some(v) => assert_eq!(e["value"], v.as_str(), "value at revision {rev}"),
            None => assert!(e["value"].is_null(), "a delete has no value: {e}"),
        }
    }
    // Anything else must be a write whose outcome was unknown (it may have been applied).
    for (rev, e) in by_revision.range(start..=last) {
        if acked.contains_key(rev) {
            continue;
        }
        let key = e["key"].as_str().unwrap_or_default();
        assert!(
            e["type"] == "PUT" && unknown.get(key).map(String::as_str) == e["value"].as_str(),
            "event at revision {rev} matches no write: {e}"
        );
    }
}
