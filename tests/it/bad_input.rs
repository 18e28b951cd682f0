//! Bad input gets one clear error line and a non-zero exit, in bounded time, and changes nothing:
//! bad keys and values, unknown flags, unreachable managers, wrong tokens, foreign or corrupted
//! data dirs.

use std::time::Duration;

use shoal_proto::v1 as pb;
use tonic::Code;

use crate::cluster::{bounded, free_port, put, read_prefix, run_cli, serial, Cluster, Manager};

/// The key and value limits documented in README.md.
const MAX_KEY: usize = 4 * 1024;
const MAX_VALUE: usize = 1024 * 1024;

fn one_error_line(stderr: &str) -> bool {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    lines.len() == 1 && lines[0].starts_with("error: ")
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_with_code_2() {
    for args in [
        &["kv", "get", "k", "--bogus"][..],
        &["--bogus", "kv", "get", "k"],
        &["kv", "put", "k", "v", "--ttl", "2x"],
        &["kv", "put", "k", "v", "--ttl", "2"],
        &["kv", "put", "k", "v", "--cas", "minus-one"],
        &["manager", "--listen", "127.0.0.1:1"],
        &["manager", "--data-dir", "/tmp/x", "--token", "t"],
        &[
            "manager",
            "--data-dir",
            "/tmp/x",
            "--listen",
            "not-an-address",
        ],
        &["frobnicate"],
        &["manager", "--data-dir", "/tmp/x", "--quota-bytes", "0"],
        &["manager", "--data-dir", "/tmp/x", "--quota-bytes=-1"],
        &["manager", "--data-dir", "/tmp/x", "--quota-bytes", "2 gigs"],
        &["manager", "--data-dir", "/tmp/x", "--quota-bytes", "1.5GiB"],
        &["manager", "--data-dir", "/tmp/x", "--quota-bytes", "512KiB"],
    ] {
        let out = run_cli(args, None, &[]).await;
        assert_eq!(out.code, Some(2), "shoal {args:?}: {out:?}");
        assert!(out.stderr.contains("error:"), "shoal {args:?}: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_host_fails_fast() {
    let port = free_port().to_string();
    let host = format!("127.0.0.1:{port},127.0.0.1:1");
    for args in [
        &["--host", &host, "kv", "get", "k"][..],
        &["--host", &host, "kv", "put", "k", "v"],
    ] {
        let out = run_cli(args, None, &[]).await;
        assert_eq!(out.code, Some(1), "{out:?}");
        assert!(
            one_error_line(&out.stderr) && out.stderr.contains("no manager reachable"),
            "{out:?}"
        );
        assert!(out.took < Duration::from_secs(20), "took {:?}", out.took);
    }
    // SHOAL_HOST is honoured the same way.
    let out = run_cli(&["kv", "get", "k"], None, &[("SHOAL_HOST", &host)]).await;
    assert!(out.stderr.contains(&port), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_and_values_are_refused() {
    let _serial = serial().await;
    let mut c = Cluster::start(1).await;
    c.wait_leader().await;

    let out = c.cli(&["kv", "put", "", "v"]).await;
    assert_eq!(out.code, Some(1), "empty key: {out:?}");
    assert!(one_error_line(&out.stderr), "{out:?}");
    let long_key = "k".repeat(MAX_KEY + 1);
    let out = c.cli(&["kv", "put", &long_key, "v"]).await;
    assert_eq!(out.code, Some(1), "oversized key: {out:?}");
    assert!(one_error_line(&out.stderr), "{out:?}");
    let hosts = c.hosts();
    let out = run_cli(
        &["--host", &hosts, "kv", "put", "big"],
        Some(vec![b'x'; MAX_VALUE + 1]),
        &[("SHOAL_TLS_DIR", c.admin_tls.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.code, Some(1), "oversized value: {out:?}");
    assert!(one_error_line(&out.stderr), "{out:?}");

    // The same through gRPC: InvalidArgument, at exactly the documented limits.
    let mut kv = c.managers[0].kv();
    let put_raw = |key: Vec<u8>, value: Vec<u8>| pb::PutRequest {
        key,
        value,
        ..Default::default()
    };
    for (what, req) in [
        ("empty key", put_raw(vec![], b"v".to_vec())),
        (
            "key of 4 KiB + 1",
            put_raw(vec![b'k'; MAX_KEY + 1], b"v".to_vec()),
        ),
        (
            "value of 1 MiB + 1",
            put_raw(b"big".to_vec(), vec![b'x'; MAX_VALUE + 1]),
        ),
    ] {
        let err = bounded(kv.put(req)).await.expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}: the error says why");
    }
    bounded(kv.put(put_raw(vec![b'k'; MAX_KEY], b"v".to_vec())))
        .await
        .expect("a key of exactly 4 KiB");
    bounded(kv.put(put_raw(b"big".to_vec(), vec![b'x'; MAX_VALUE])))
        .await
        .expect("a value of exactly 1 MiB");
    let err = bounded(kv.lease_keep_alive(pb::LeaseKeepAliveRequest { id: 987_654_321 }))
        .await
        .expect_err("unknown lease");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let out = c.cli(&["kv", "get", ""]).await;
    assert_eq!(out.code, Some(1), "get of an empty key: {out:?}");

    // Nothing of that was written.
    let all = read_prefix(&mut kv, "big", false).await.unwrap();
    assert_eq!(
        all.get("big").map(String::len),
        Some(MAX_VALUE),
        "only the 1 MiB value was stored"
    );
}

/// Starts a lone manager that should refuse to run; returns its exit status and output.
async fn refused(m: &mut Manager, args: &[&str]) -> String {
    m.spawn(args);
    let status = m.wait_exit(Duration::from_secs(60)).await;
    let log = m.log_text();
    let status =
        status.unwrap_or_else(|| panic!("{} kept running with {args:?}; log:\n{log}", m.name));
    assert!(
        !status.success(),
        "{} exited successfully with {args:?}; log:\n{log}",
        m.name
    );
    assert!(
        log.lines().any(|l| l.starts_with("error: ")),
        "no `error:` line from {} ({args:?}):\n{log}",
        m.name
    );
    log
}

#[tokio::test(flavor = "multi_thread")]
async fn joining_needs_a_reachable_manager_and_the_right_token() {
    let _serial = serial().await;
    let mut c = Cluster::start(1).await;
    c.wait_leader().await;
    let root = tempfile::tempdir().unwrap();

    let mut lost = Manager::new(root.path(), "unreachable");
    let nowhere = format!("127.0.0.1:{}", free_port());
    refused(&mut lost, &["--join", &nowhere, "--token", &c.token]).await;

    let mut intruder = Manager::new(root.path(), "wrong-token");
    let join = c.managers[0].grpc.clone();
    let log = refused(
        &mut intruder,
        &["--join", &join, "--token", "not-the-token"],
    )
    .await;
    assert!(
        log.to_lowercase().contains("token"),
        "the error names the token:\n{log}"
    );

    // The cluster is untouched: still one voter, still serving.
    c.wait_voters(1).await;
    let mut kv = c.managers[0].kv();
    put(&mut kv, "still", "here")
        .await
        .expect("the cluster still serves");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_of_another_cluster_is_refused() {
    let _serial = serial().await;
    let mut a = Cluster::start(1).await;
    let mut b = Cluster::start(1).await;
    a.wait_leader().await;
    b.wait_leader().await;
    let mut kv = b.managers[0].kv();
    put(&mut kv, "b-data", "precious").await.unwrap();
    b.managers[0].stop().await;

    // B's data dir, told to join A: refused, and B's data is left as it was.
    let mut m = Manager::new(a.root(), "foreign");
    m.data_dir = b.managers[0].data_dir.clone();
    let join = a.managers[0].grpc.clone();
    refused(&mut m, &["--join", &join, "--token", &a.token]).await;
    a.wait_voters(1).await;

    b.managers[0].spawn(&[]);
    b.wait_leader().await;
    let all = read_prefix(&mut kv, "b-data", false)
        .await
        .expect("B still reads");
    assert_eq!(all.get("b-data").map(String::as_str), Some("precious"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_data_dir_is_refused() {
    let _serial = serial().await;
    let mut c = Cluster::start(1).await;
    c.wait_leader().await;
    let mut kv = c.managers[0].kv();
    put(&mut kv, "k", "v").await.unwrap();
    c.managers[0].stop().await;

    // Break every RocksDB CURRENT file (the pointer to the live manifest).
    let mut broken = 0;
    let mut dirs = vec![c.managers[0].data_dir.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "CURRENT") {
                std::fs::write(&path, b"MANIFEST-999999\n").unwrap();
                broken += 1;
            }
        }
    }
    assert!(
        broken > 0,
        "no RocksDB CURRENT file under {}",
        c.managers[0].data_dir.display()
    );
    let mut m = Manager::new(c.root(), "corrupt");
    m.data_dir = c.managers[0].data_dir.clone();
    m.grpc = c.managers[0].grpc.clone();
    refused(&mut m, &[]).await;
}
