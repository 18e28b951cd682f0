//! The CLI's own contract on a one-manager cluster: output formats, `--json`, `--cas`, `--prefix`,
//! missing keys, `cluster status|token`.

use serde_json::Value;

use crate::cluster::{serial, Cluster};

#[tokio::test(flavor = "multi_thread")]
async fn kv_commands_and_their_output() {
    let _serial = serial().await;
    let mut c = Cluster::start(1).await;
    c.wait_leader().await;

    let out = c.cli(&["kv", "put", "app/a", "hello world"]).await;
    assert!(
        out.ok() && out.stdout.starts_with("OK revision "),
        "{out:?}"
    );
    let out = c.cli(&["kv", "get", "app/a"]).await;
    assert_eq!(out.stdout, "hello world\n", "{out:?}");
    let out = c.cli(&["kv", "get", "app/a", "--stale"]).await;
    assert_eq!(out.stdout, "hello world\n", "{out:?}");

    let out = c.cli(&["kv", "get", "app/a", "--json"]).await;
    let doc: Value = serde_json::from_str(&out.stdout).expect("kv get --json is JSON");
    assert_eq!(doc["key"], "app/a");
    assert_eq!(doc["value"], "hello world");
    let rev = doc["mod_revision"].as_u64().unwrap();
    assert!(rev > 0 && doc["version"] == 1, "{doc}");

    // --cas: a stale revision fails with the current one, the right one succeeds.
    let out = c
        .cli(&[
            "kv",
            "put",
            "app/a",
            "second",
            "--cas",
            &(rev + 100).to_string(),
        ])
        .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr.trim_end(),
        format!("error: cas failed: app/a is at revision {rev}")
    );
    let out = c
        .cli(&["kv", "put", "app/a", "second", "--cas", &rev.to_string()])
        .await;
    assert!(out.ok(), "{out:?}");
    let out = c.cli(&["kv", "put", "app/a", "third", "--cas", "0"]).await;
    assert_eq!(out.code, Some(1), "--cas 0 on an existing key: {out:?}");
    assert!(
        out.stderr
            .starts_with("error: cas failed: app/a is at revision "),
        "{out:?}"
    );
    let out = c.cli(&["kv", "put", "app/b", "new", "--cas", "0"]).await;
    assert!(out.ok(), "--cas 0 on a new key: {out:?}");

    // The value from stdin, and lossy UTF-8 on the way out.
    let hosts = c.hosts();
    let out = crate::cluster::run_cli(
        &["--host", &hosts, "kv", "put", "app/c"],
        Some(b"from\xffstdin".to_vec()),
        &[("SHOAL_TLS_DIR", c.admin_tls.to_str().unwrap())],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    let out = c.cli(&["kv", "get", "app/c"]).await;
    assert_eq!(out.stdout, "from\u{fffd}stdin\n");

    let out = c.cli(&["kv", "get", "app/", "--prefix"]).await;
    assert_eq!(
        out.stdout, "app/a\tsecond\napp/b\tnew\napp/c\tfrom\u{fffd}stdin\n",
        "{out:?}"
    );
    let out = c.cli(&["kv", "get", "app/", "--prefix", "--json"]).await;
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(doc["kvs"].as_array().unwrap().len(), 3, "{doc}");
    assert!(doc["revision"].as_u64().unwrap() > rev);

    let out = c.cli(&["kv", "ls", "app/"]).await;
    assert_eq!(out.stdout, "app/a\napp/b\napp/c\n", "{out:?}");
    let out = c.cli(&["kv", "put", "other", "x"]).await;
    assert!(out.ok());
    let out = c.cli(&["kv", "ls"]).await;
    // Everything, the cluster's own records under /shoal/ included (the leader's term, and the
    // proxy config once the leader has rendered it), then the user's keys in byte order.
    let user_keys = |listed: Vec<&str>| -> Vec<String> {
        assert!(listed.contains(&"/shoal/leader/term"), "{listed:?}");
        listed
            .into_iter()
            .filter(|k| !k.starts_with("/shoal/"))
            .map(String::from)
            .collect()
    };
    assert_eq!(
        user_keys(out.stdout.lines().collect()),
        ["app/a", "app/b", "app/c", "other"],
        "kv ls without a prefix lists everything: {out:?}"
    );
    let out = c.cli(&["kv", "ls", "--json"]).await;
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let keys: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(user_keys(keys), ["app/a", "app/b", "app/c", "other"]);

    let out = c.cli(&["kv", "del", "app/", "--prefix"]).await;
    assert!(out.ok() && out.stdout.starts_with("deleted 3 "), "{out:?}");
    let out = c.cli(&["kv", "get", "app/a"]).await;
    assert_eq!(
        (out.code, out.stderr.as_str()),
        (Some(1), "error: key not found: app/a\n")
    );
    let out = c.cli(&["kv", "del", "app/a"]).await;
    assert!(out.ok() && out.stdout.starts_with("deleted 0 "), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_and_token() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;

    let out = c.cli(&["cluster", "status", "--json"]).await;
    assert!(out.ok(), "{out:?}");
    let doc: Value =
        serde_json::from_str(&out.stdout).expect("cluster status --json is one JSON document");
    assert_eq!(doc["leader_id"].as_u64(), Some(c.managers[leader].id));
    assert!(doc["term"].as_u64().unwrap() >= 1);
    assert!(doc["commit_index"].as_u64().unwrap() >= 1);
    let members = doc["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{doc}");
    for m in members {
        assert!(m["id"].as_u64().unwrap() > 0);
        assert!(
            c.managers
                .iter()
                .any(|x| x.grpc == m["addr"].as_str().unwrap()),
            "{m}"
        );
        assert!(
            ["leader", "follower"].contains(&m["role"].as_str().unwrap()),
            "{m}"
        );
        assert!(
            m["healthy"].is_boolean() && m["applied_index"].is_u64(),
            "{m}"
        );
    }

    let out = c.cli(&["cluster", "status"]).await;
    assert!(out.ok(), "{out:?}");
    for word in [
        "leader", "term", "commit", "ID", "ADDRESS", "ROLE", "HEALTH", "APPLIED",
    ] {
        assert!(
            out.stdout.contains(word),
            "{word} missing from:\n{}",
            out.stdout
        );
    }
    for m in &c.managers {
        assert!(
            out.stdout.contains(&m.grpc),
            "{} missing from:\n{}",
            m.grpc,
            out.stdout
        );
    }

    // Without a role: the manager token, which joins any role (as the one token did before).
    let out = c.cli(&["cluster", "token"]).await;
    assert_eq!(out.stdout.trim(), c.token, "{out:?}");
    // The bootstrap printed it too, and the worker token beside it.
    let worker = c.cli(&["cluster", "token", "worker"]).await;
    assert!(worker.ok(), "{worker:?}");
    assert_ne!(worker.stdout.trim(), c.token);
    let log = c.managers[0].log_text();
    assert!(
        log.contains(&format!("join token (manager): {}", c.token)),
        "{log}"
    );
    assert!(
        log.contains(&format!("join token (worker): {}", worker.stdout.trim())),
        "{log}"
    );
}
