//! Rolling updates end to end, on the real engine and a real nginx with its retries off: an
//! update under load drops no request and ends with every task on the new image; an update to
//! an image whose health check fails stops after its first slot and rolls back, dropping
//! nothing; kill -9 of the leader in the middle of an update: the next leader carries on, no
//! slot updated twice, none skipped; a service with `--rebalance` spreads onto a node that
//! joins, start-first, dropping nothing.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cluster::serial;
use crate::fleet::{docker_inspect, is_live, node_names, whoami_with_check, Fleet};
use crate::proxy::{wait_backends, Load, Proxy};

/// The test image with a passing `HEALTHCHECK`, and the same under a second tag (a new image
/// reference, so a new spec).
const GOOD: &str = "shoal/whoami-good:it";
const GOOD_V2: &str = "shoal/whoami-good:it-v2";
/// The test image with a `HEALTHCHECK` that always fails.
const SICK: &str = "shoal/whoami-sick:it";

fn images() {
    whoami_with_check(GOOD, &["check"]);
    whoami_with_check(SICK, &["exit", "1"]);
    crate::fleet::docker_tag(GOOD, GOOD_V2);
}

/// `web`, routed by nginx as test.local, on `image`.
async fn web(fleet: &Fleet, replicas: usize, image: &str, extra: &[&str]) {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        &replicas,
        "-p",
        "80",
        "--label",
        "interlock.hostname=test",
        "--label",
        "interlock.domain=local",
    ];
    args.extend_from_slice(extra);
    args.push(image);
    fleet.ok(&args).await;
}

async fn inspect(fleet: &Fleet) -> Value {
    fleet.json(&["service", "inspect", "web"]).await[0].clone()
}

/// Waits until web's update is in `state`; returns the service.
async fn wait_update(fleet: &Fleet, state: &str) -> Value {
    fleet
        .wait_for(&format!("web's update to be {state}"), || async {
            let service = inspect(fleet).await;
            (service["update"]["state"] == state).then_some(service)
        })
        .await
}

fn version(v: &Value) -> u64 {
    v["version"]
        .as_u64()
        .or_else(|| v["spec_version"].as_u64())
        .unwrap_or(0)
}

/// How many tasks (finished ones included) each slot had on spec `version`.
fn per_slot(tasks: &[Value], version: u64) -> BTreeMap<u64, usize> {
    let mut slots = BTreeMap::new();
    for t in tasks.iter().filter(|t| self::version(t) == version) {
        *slots.entry(t["slot"].as_u64().unwrap()).or_insert(0) += 1;
    }
    slots
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_under_load_drops_no_request_and_ends_on_the_new_image() {
    let _serial = serial().await;
    images();
    let fleet = Fleet::start(1, 2).await;
    web(&fleet, 4, GOOD, &[]).await;
    fleet.wait_running("web", 4).await;

    // Bad input first: one line each, nothing written.
    for (args, needle) in [
        (&["service", "update", "web"][..], "nothing to update"),
        (
            &["service", "update", "nosuch", "--image", GOOD_V2][..],
            "no such service: nosuch",
        ),
        (&["service", "rollback", "web"][..], "no previous spec"),
        (
            &["service", "update", "web", "--update-order", "x"][..],
            "stop-first or start-first",
        ),
    ] {
        let out = fleet.cluster.cli(args).await;
        assert!(!out.ok(), "{args:?} succeeded");
        assert_eq!(
            out.stderr.trim().lines().count(),
            1,
            "{args:?}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
    assert_eq!(version(&inspect(&fleet).await), 0);

    let proxy = Proxy::without_retries(&fleet, "px1").await;
    let before = wait_backends(&fleet, &proxy, 4).await;
    let load = Load::start(proxy.addr());
    fleet
        .ok(&["service", "update", "web", "--image", GOOD_V2])
        .await;
    let service = wait_update(&fleet, "completed").await;
    let after = wait_backends(&fleet, &proxy, 4).await;
    load.finish_without_failures(&proxy).await;

    assert_eq!(
        (version(&service), service["image"].as_str()),
        (1, Some(GOOD_V2))
    );
    assert!(
        before.is_disjoint(&after),
        "every backend is new: {before:?} {after:?}"
    );
    let tasks = fleet.tasks("web").await;
    let live: Vec<&Value> = tasks.iter().filter(|t| is_live(t)).collect();
    assert_eq!(live.len(), 4, "{tasks:#?}");
    for t in live {
        assert_eq!(version(t), 1, "{t}");
        let image = docker_inspect(t["container_id"].as_str().unwrap(), "{{.Config.Image}}");
        assert_eq!(image, GOOD_V2);
    }
    // One new task per slot: none replaced twice.
    assert_eq!(
        per_slot(&tasks, 1),
        BTreeMap::from([(1, 1), (2, 1), (3, 1), (4, 1)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_whose_health_check_fails_rolls_back_after_one_slot() {
    let _serial = serial().await;
    images();
    let fleet = Fleet::start(1, 2).await;
    web(
        &fleet,
        4,
        GOOD,
        &[
            "--update-failure-action",
            "rollback",
            "--update-monitor",
            "2s",
        ],
    )
    .await;
    fleet.wait_running("web", 4).await;
    let proxy = Proxy::without_retries(&fleet, "px1").await;
    wait_backends(&fleet, &proxy, 4).await;

    let load = Load::start(proxy.addr());
    fleet
        .ok(&["service", "update", "web", "--image", SICK])
        .await;
    let service = wait_update(&fleet, "rollback_completed").await;
    wait_backends(&fleet, &proxy, 4).await;
    load.finish_without_failures(&proxy).await;

    let message = service["update"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("update rolled back: 1 of 4 updated tasks failed"),
        "{service}"
    );
    assert_eq!(
        (version(&service), service["image"].as_str()),
        (0, Some(GOOD))
    );
    let tasks = fleet.tasks("web").await;
    // The update stopped at its first slot: one sick task, in slot 1.
    assert_eq!(per_slot(&tasks, 1), BTreeMap::from([(1, 1)]), "{tasks:#?}");
    for t in tasks.iter().filter(|t| is_live(t)) {
        assert_eq!(version(t), 0, "{t}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_update_survives_a_leader_kill_without_repeating_or_skipping_a_slot() {
    let _serial = serial().await;
    images();
    let mut fleet = Fleet::start(3, 2).await;
    web(&fleet, 6, GOOD, &["--update-delay", "1s"]).await;
    fleet.wait_running("web", 6).await;

    fleet
        .ok(&["service", "update", "web", "--image", GOOD_V2])
        .await;
    fleet
        .wait_for("two slots updated", || async {
            let tasks = fleet.tasks("web").await;
            let updated = tasks
                .iter()
                .filter(|t| version(t) == 1 && t["state"] == "running")
                .count();
            (updated >= 2).then_some(())
        })
        .await;
    let leader = fleet.cluster.wait_leader().await;
    fleet.cluster.managers[leader].kill();
    fleet.cluster.wait_leader().await;

    let service = wait_update(&fleet, "completed").await;
    assert_eq!(version(&service), 1);
    let tasks = fleet.tasks("web").await;
    let all: BTreeMap<u64, usize> = (1..=6).map(|slot| (slot, 1)).collect();
    assert_eq!(per_slot(&tasks, 1), all, "{tasks:#?}");
    let live: Vec<&Value> = tasks.iter().filter(|t| is_live(t)).collect();
    assert_eq!(live.len(), 6, "{tasks:#?}");
    assert!(live.iter().all(|t| version(t) == 1), "{tasks:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_under_load_starts_replacements_first_and_drops_no_request() {
    let _serial = serial().await;
    images();
    let fleet = Fleet::start(1, 2).await;
    web(&fleet, 4, GOOD, &[]).await;
    let tasks = fleet.wait_running("web", 4).await;
    assert!(
        node_names(&tasks).contains(&"node-2".to_string()),
        "{tasks:#?}"
    );
    let proxy = Proxy::without_retries(&fleet, "px1").await;
    wait_backends(&fleet, &proxy, 4).await;

    let load = Load::start(proxy.addr());
    // --wait returns once nothing runs on node-2 any more.
    fleet
        .ok(&[
            "node",
            "update",
            "--availability",
            "drain",
            "--wait",
            "node-2",
        ])
        .await;
    let tasks = fleet.tasks("web").await;
    let on_node_2 = tasks
        .iter()
        .filter(|t| t["node_name"] == "node-2" && t["state"] == "running")
        .count();
    assert_eq!(on_node_2, 0, "{tasks:#?}");
    let live = fleet.wait_running("web", 4).await;
    assert_eq!(node_names(&live), ["node-1"; 4]);
    wait_backends(&fleet, &proxy, 4).await;
    load.finish_without_failures(&proxy).await;

    let out = fleet
        .cluster
        .cli(&["node", "update", "--wait", "--label-add", "a=b", "node-1"])
        .await;
    assert!(!out.ok() && out.stderr.contains("--wait goes with --availability drain"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_spreads_onto_a_new_node_under_load_and_drops_no_request() {
    let _serial = serial().await;
    images();
    let mut fleet = Fleet::start(1, 1).await;
    web(&fleet, 4, GOOD, &["--rebalance"]).await;
    let tasks = fleet.wait_running("web", 4).await;
    assert_eq!(node_names(&tasks), ["node-1"; 4]);
    assert_eq!(inspect(&fleet).await["update_policy"]["rebalance"], true);
    let proxy = Proxy::without_retries(&fleet, "px1").await;
    wait_backends(&fleet, &proxy, 4).await;

    let load = Load::start(proxy.addr());
    fleet.add_agent("node-2", vec![]);
    fleet.wait_nodes_ready(2).await;
    fleet
        .wait_for("web to spread over both nodes", || async {
            let tasks = fleet.tasks("web").await;
            let live: Vec<Value> = tasks.into_iter().filter(is_live).collect();
            let running = live.iter().all(|t| t["state"] == "running");
            (running && node_names(&live) == ["node-1", "node-1", "node-2", "node-2"]).then_some(())
        })
        .await;
    wait_backends(&fleet, &proxy, 4).await;
    load.finish_without_failures(&proxy).await;
    // Two moves, each of its own slot, each replacing a task on node-1 that stopped.
    let tasks = fleet.tasks("web").await;
    let movers: Vec<&Value> = tasks
        .iter()
        .filter(|t| !t["moves_from"].is_null())
        .collect();
    assert_eq!(movers.len(), 2, "{tasks:#?}");
    for m in &movers {
        assert!(is_live(m) && m["node_name"] == "node-2", "{tasks:#?}");
        let replaced = tasks
            .iter()
            .find(|t| t["slot"] == m["slot"] && t["id"] != m["id"]);
        let replaced = replaced.unwrap_or_else(|| panic!("{tasks:#?}"));
        assert_eq!(
            (
                replaced["node_name"].as_str(),
                replaced["desired_state"].as_str()
            ),
            (Some("node-1"), Some("shutdown")),
            "{tasks:#?}"
        );
    }
    assert_ne!(movers[0]["slot"], movers[1]["slot"]);

    // Turned off, a crowded node stays as it is.
    fleet
        .ok(&["service", "update", "web", "--rebalance=false"])
        .await;
    assert_eq!(
        inspect(&fleet).await["update_policy"]["rebalance"],
        Value::Null
    );
}
