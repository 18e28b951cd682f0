//! Grow to 5 managers, remove 2 with `shoal manager remove`, keep serving; lose quorum (writes
//! fail clearly, in bounded time); recover the survivor with `--force-new-cluster`, data intact.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::sleep;

use crate::cluster::{assert_contains, put, read_prefix, run_cli, serial, Cluster};

#[tokio::test(flavor = "multi_thread")]
async fn grow_shrink_lose_quorum_and_force_a_new_cluster() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    c.add_manager().await;
    c.add_manager().await;
    let leader = c.wait_leader().await;

    let mut acked = BTreeMap::new();
    let mut kv = c.managers[leader].kv();
    for i in 0..100 {
        let (key, value) = (format!("f/{i:03}"), format!("v{i}"));
        put(&mut kv, &key, &value).await.expect("put on 5 managers");
        acked.insert(key, value);
    }

    // Remove two followers through the CLI.
    let removed: Vec<usize> = (0..5).filter(|&i| i != leader).take(2).collect();
    for &r in &removed {
        let id = c.managers[r].id.to_string();
        let out = c.cli(&["manager", "remove", &id]).await;
        assert!(out.ok(), "manager remove {id}: {out:?}");
        assert!(out.stdout.contains("voters"), "{out:?}");
    }
    for &r in &removed {
        c.managers[r].kill();
    }
    c.wait_voters(3).await;
    let status = c.any_status().await.unwrap();
    for &r in &removed {
        let id = c.managers[r].id;
        assert!(
            status.members.iter().all(|m| m.id != id || !m.voter),
            "removed manager {id} is still a voter"
        );
    }

    // The remaining three keep serving.
    let remaining: Vec<usize> = (0..5).filter(|i| !removed.contains(i)).collect();
    let hosts = c.hosts_of(&remaining);
    for i in 100..150 {
        let (key, value) = (format!("f/{i:03}"), format!("v{i}"));
        let out = run_cli(
            &["--host", &hosts, "kv", "put", &key, &value],
            None,
            &[("SHOAL_TLS_DIR", c.admin_tls.to_str().unwrap())],
        )
        .await;
        assert!(out.ok(), "put after the removal: {out:?}");
        acked.insert(key, value);
    }

    // Kill two of the three: no quorum. A write fails with one clear error line, in bounded time.
    let survivor = remaining[0];
    for &k in &remaining[1..] {
        c.managers[k].kill();
    }
    let only = c.managers[survivor].grpc.clone();
    let out = run_cli(
        &[
            "--host",
            &only,
            "--timeout",
            "20s",
            "kv",
            "put",
            "f/lost",
            "x",
        ],
        None,
        &[("SHOAL_TLS_DIR", c.admin_tls.to_str().unwrap())],
    )
    .await;
    assert_eq!(
        out.code,
        Some(1),
        "a write without quorum must fail: {out:?}"
    );
    assert!(
        out.stderr
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ")),
        "{out:?}"
    );
    assert!(
        out.took < Duration::from_secs(60),
        "the failing write took {:?}",
        out.took
    );

    // Recover: the survivor restarts as a one-member cluster with all its data.
    c.managers[survivor].stop().await;
    c.managers[survivor].spawn(&["--force-new-cluster"]);
    let leader = c.wait_leader().await;
    assert_eq!(leader, survivor);
    let status = c.managers[survivor].status().await.expect("status");
    assert_eq!(
        status.members.iter().filter(|m| m.voter).count(),
        1,
        "{status:?}"
    );
    let mut kv = c.managers[survivor].kv();
    let all = read_prefix(&mut kv, "f/", false)
        .await
        .expect("read after --force-new-cluster");
    assert_contains(&all, &acked, "after --force-new-cluster");
    put(&mut kv, "f/after", "x")
        .await
        .expect("a write after --force-new-cluster");

    // And it stays a one-member cluster across a plain restart.
    c.managers[survivor].stop().await;
    c.managers[survivor].spawn(&[]);
    c.wait_leader().await;
    sleep(Duration::from_millis(200)).await;
    let all = read_prefix(&mut kv, "f/", false)
        .await
        .expect("read after a restart");
    assert_eq!(all.get("f/after").map(String::as_str), Some("x"));
}
