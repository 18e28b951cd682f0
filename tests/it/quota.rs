//! The storage quota: three managers, one started with `--quota-bytes 2MiB` (the smallest quota
//! governs). Writes fill the store until one is refused with the error naming the quota; the
//! NOSPACE alarm shows in `cluster status` on every manager; deletes and lease revokes go on;
//! once keys are deleted, writes go through again and the alarm clears. No manager exits.

use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::time::{sleep, Instant};
use tonic::Code;

use crate::cluster::{bounded, delete, put, serial, Cluster, WAIT};

const QUOTA: u64 = 2 << 20;

/// A 64 KiB value, recognisable per key.
fn value(i: usize) -> String {
    format!("{i}:{}", "v".repeat(64 << 10))
}

/// Waits until every manager's status satisfies `ok`.
async fn wait_all(c: &mut Cluster, what: &str, ok: impl Fn(&pb::StatusResponse) -> bool) {
    let deadline = Instant::now() + WAIT;
    'again: loop {
        assert!(
            Instant::now() < deadline,
            "not every manager saw {what}\n{}",
            c.logs()
        );
        for m in &c.managers {
            match m.status().await {
                Ok(s) if ok(&s) => {}
                _ => {
                    sleep(Duration::from_millis(200)).await;
                    continue 'again;
                }
            }
        }
        return;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn past_the_quota_writes_are_refused_deletes_go_on_and_no_manager_exits() {
    let _serial = serial().await;
    let mut c = Cluster::start_with(3, &["--quota-bytes", "2MiB"]).await;
    wait_all(&mut c, "the 2 MiB quota", |s| s.quota_bytes == QUOTA).await;
    let leader = c.wait_leader().await;
    let mut kv = c.managers[leader].kv();

    // Fill: 64 KiB values until one is refused. Each also sits in the change history, which
    // gives way first, so 2 MiB holds a dozen or more.
    let mut stored = Vec::new();
    let refused = loop {
        let key = format!("q/{:03}", stored.len());
        match put(&mut kv, &key, &value(stored.len())).await {
            Ok(_) => stored.push(key),
            Err(e) => break e,
        }
        assert!(
            stored.len() < 64,
            "64 values of 64 KiB fit in a 2 MiB quota"
        );
    };
    assert!(stored.len() >= 8, "only {} values fit", stored.len());
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("2 MiB quota (--quota-bytes)"),
        "the error does not name the quota: {}",
        refused.message()
    );

    // The alarm, on every manager, in the table and in the JSON.
    wait_all(&mut c, "the NOSPACE alarm", |s| {
        s.alarms.iter().any(|a| a.starts_with("NOSPACE"))
    })
    .await;
    let table = c.cli(&["cluster", "status"]).await;
    assert!(table.ok(), "{table:?}");
    assert!(
        table.stdout.contains("alarm     NOSPACE"),
        "{}",
        table.stdout
    );
    let json = c.cli(&["cluster", "status", "--json"]).await;
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("status JSON");
    assert_eq!(doc["quota_bytes"], QUOTA);
    assert!(
        doc["alarms"][0].as_str().unwrap().starts_with("NOSPACE"),
        "{doc}"
    );

    // From the CLI: one error line naming the quota, exit code 1.
    let big = "x".repeat(100 << 10);
    let out = c.cli(&["kv", "put", "q/cli", &big]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "{out:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains("quota (--quota-bytes)"),
        "{out:?}"
    );

    // A lease grant adds data: refused while the alarm is up. Deletes go through, and clear it.
    let grant = bounded(kv.lease_grant(pb::LeaseGrantRequest { ttl_ms: 10_000 })).await;
    assert_eq!(
        grant.map(|_| ()).unwrap_err().code(),
        Code::ResourceExhausted
    );
    for key in &stored[..6] {
        delete(&mut kv, key)
            .await
            .expect("a delete on a full store");
    }

    // Room again: writes go through; the alarm is cleared everywhere.
    put(&mut kv, "q/again", &value(1000))
        .await
        .expect("a write after deletes");
    wait_all(&mut c, "the alarm cleared", |s| s.alarms.is_empty()).await;
    let lease = bounded(kv.lease_grant(pb::LeaseGrantRequest { ttl_ms: 10_000 }))
        .await
        .expect("a lease grant after deletes");
    bounded(kv.lease_revoke(pb::LeaseRevokeRequest { id: lease.id }))
        .await
        .expect("a lease revoke");

    for m in &mut c.managers {
        assert!(m.is_running(), "{} exited\n{}", m.name, m.log_text());
    }
    // Every replica holds the same keys (apply refused the same writes everywhere).
    let leader = c.wait_leader().await;
    let want = c.managers[leader].status().await.unwrap().commit_index;
    for i in 0..c.managers.len() {
        let s = c.wait_applied(i, want).await;
        assert!(
            s.used_bytes <= QUOTA,
            "{} holds {} bytes",
            c.managers[i].name,
            s.used_bytes
        );
    }
    let mut revisions = Vec::new();
    for i in 0..c.managers.len() {
        let mut kv = c.managers[i].kv();
        let keys = crate::cluster::read_prefix(&mut kv, "q/", true)
            .await
            .unwrap();
        revisions.push(keys.keys().cloned().collect::<Vec<_>>());
    }
    assert!(
        revisions.windows(2).all(|w| w[0] == w[1]),
        "replicas differ: {revisions:?}"
    );
}
