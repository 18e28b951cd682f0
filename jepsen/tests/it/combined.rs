//! register + set + lock + watch under partitions and kill -9 on 3 managers, about a minute of
//! faults: every checker must say valid and the results directory must hold its files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shoal_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_shoal-jepsen")).with_file_name("shoal")
}

fn preflight() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "the jepsen integration test creates network namespaces and iptables rules: run it as root (CI does)"
    );
    for tool in ["ip", "iptables", "setpriv"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(
            found,
            "the jepsen integration test needs `{tool}` on the PATH"
        );
    }
    assert!(
        shoal_bin().is_file(),
        "no shoal binary at {} (run `cargo build -p shoal` or `cargo test --workspace`)",
        shoal_bin().display()
    );
}

#[test]
fn short_combined_run_is_valid() {
    preflight();
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_shoal-jepsen"))
        .args([
            "--workload",
            "register,set,lock,watch",
            "--nemesis",
            "partition,kill",
            "--time-limit",
            "50",
            "--interval",
            "6",
            "--recovery",
            "3",
            "--nodes",
            "3",
            "--concurrency",
            "3",
            "--seed",
            "42",
            "--shoal-bin",
        ])
        .arg(shoal_bin())
        .arg("--results")
        .arg(&results)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running shoal-jepsen");
    let prefix = format!("sj{:x}", child.id());
    let out = child.wait_with_output().expect("waiting for shoal-jepsen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let keep = std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_some();
    if keep {
        let kept = dir.keep();
        eprintln!("kept {}", kept.display());
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "shoal-jepsen did not find every history valid:\n{stderr}"
    );
    for file in [
        "history.jsonl",
        "results.json",
        "report.html",
        "linearizable.json",
        "set.json",
        "lock.json",
        "watch.json",
        "nodes/n1.log",
    ] {
        assert!(
            results.join(file).is_file() || keep,
            "missing {file}:\n{stderr}"
        );
    }
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("results.json")).unwrap_or_default())
            .unwrap_or_default();
    assert!(
        summary["operations"].as_u64().unwrap_or(0) > 100,
        "too few operations: {summary}"
    );
    // Nothing of the run is left in the host's network.
    for args in [&["-o", "link"][..], &["netns", "list"][..]] {
        let listed = Command::new("ip").args(args).output().expect("ip");
        let listed = String::from_utf8_lossy(&listed.stdout);
        assert!(
            !listed.contains(&prefix),
            "ip {args:?} still lists {prefix}*:\n{listed}"
        );
    }
}

/// The scheduler under leader kills at scale: two services scaled between 0 and 5,000
/// replicas (up to 10,000 tasks on 20 simulated agents) while managers, the leader half the
/// time, are killed with SIGKILL. The checker then requires exactly the replicas asked for,
/// RUNNING on the agents, with no slot run twice beyond the bound: 10 s here, as an agent that
/// comes back holding 500 tasks needs longer than the default 5 s to get its set and stop the
/// superseded copies (a run at 5 s saw 5.5 s). A fault run of about a minute: out of CI, run it
/// with `cargo test --workspace --test it -- --ignored ten_thousand`.
#[test]
#[ignore = "a one-minute fault run; see its doc comment"]
fn ten_thousand_tasks_placed_through_leader_kills_end_exact() {
    preflight();
    let dir = tempfile::tempdir().expect("temp dir");
    let results = dir.path().join("run");
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-jepsen"))
        .args([
            "--workload",
            "scheduler",
            "--nemesis",
            "kill",
            "--max-replicas",
            "5000",
            "--agents",
            "20",
            "--time-limit",
            "40",
            "--interval",
            "6",
            "--recovery",
            "5",
            "--nodes",
            "3",
            "--seed",
            "7",
            "--double-run-bound",
            "10",
            "--shoal-bin",
        ])
        .arg(shoal_bin())
        .arg("--results")
        .arg(&results)
        .output()
        .expect("running shoal-jepsen");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if std::env::var_os("SHOAL_KEEP_TEST_DIRS").is_some() {
        eprintln!("kept {}", dir.keep().display());
    }
    assert_eq!(
        out.status.code(),
        Some(0),
        "shoal-jepsen did not find the scheduler's history valid:\n{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(results.join("results.json")).unwrap_or_default())
            .unwrap_or_default();
    assert!(
        summary.to_string().contains("scheduler"),
        "no scheduler verdict in {summary}"
    );
}
