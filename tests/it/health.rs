//! Health checks end to end against the real engine: `--health-*` flags and an image's own
//! `HEALTHCHECK` reach the containers, agents report the health Docker observes, `service ps`,
//! `docker ps` and `docker inspect` through a manager show it, and a task whose check fails is
//! stopped and replaced as a failed one.

use std::process::Command;

use serde_json::Value;

use crate::cluster::serial;
use crate::docker_api::raw;
use crate::fleet::{whoami_with_check, Fleet, WHOAMI};

/// An image with its own `HEALTHCHECK`: the whoami server asked for `/health`.
const CHECKED: &str = "shoal/whoami-checked:it";

fn build_checked_image() {
    whoami_with_check(CHECKED, &["check"]);
}

/// `docker -H tcp://HOST ARGS`; stdout, trimmed, asserting success.
fn docker(host: &str, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["60", "docker", "-H", &format!("tcp://{host}")])
        .args(args)
        .env_remove("DOCKER_HOST")
        .output()
        .expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn health(task: &Value) -> &str {
    task["health"].as_str().unwrap_or("none")
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_reported_shown_and_an_unhealthy_task_is_replaced() {
    let _serial = serial().await;
    build_checked_image();
    let fleet = Fleet::start(1, 1).await;
    let api = fleet.cluster.managers[0].docker_api.clone();

    // A check that passes, given on the command line (exec form: the image has no shell).
    let fast = [
        "--health-interval",
        "300ms",
        "--health-timeout",
        "2s",
        "--health-retries",
        "2",
    ];
    let mut args = vec!["--health-cmd", r#"["/whoami","exit","0"]"#];
    args.extend_from_slice(&fast);
    fleet.create_whoami("ok", 1, &args).await;
    let task = fleet
        .wait_for("ok's task to be healthy", || async {
            let tasks = fleet.wait_running("ok", 1).await;
            (health(&tasks[0]) == "healthy").then(|| tasks[0].clone())
        })
        .await;
    let ps = fleet.ok(&["service", "ps", "ok"]).await;
    assert!(ps.contains("RUNNING (healthy)"), "{ps}");
    let listed = docker(&api, &["ps", "--format", "{{.Names}} {{.Status}}"]);
    let line = listed
        .lines()
        .find(|l| l.starts_with("node-1/ok.1"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(line.ends_with("(healthy)"), "{line}");
    let id = task["container_id"].as_str().unwrap();
    let inspected = docker(
        &api,
        &[
            "inspect",
            "-f",
            "{{.State.Health.Status}} {{json .Config.Healthcheck.Test}}",
            id,
        ],
    );
    assert_eq!(inspected, r#"healthy ["CMD","/whoami","exit","0"]"#);
    let filtered = docker(&api, &["ps", "-q", "--filter", "health=healthy"]);
    assert_eq!(filtered, id[..12], "{listed}");

    // The image's own HEALTHCHECK, with no flag: healthy once the server answers /health.
    fleet
        .ok(&["service", "create", "--name", "own", "-p", "80", CHECKED])
        .await;
    fleet
        .wait_for("own's task to be healthy", || async {
            let tasks = fleet.wait_running("own", 1).await;
            (health(&tasks[0]) == "healthy").then_some(())
        })
        .await;

    // A check that fails: the task turns unhealthy, is stopped as a failure and replaced.
    let mut args = vec!["--health-cmd", r#"["/whoami","exit","1"]"#];
    args.extend_from_slice(&fast);
    fleet.create_whoami("sick", 1, &args).await;
    let (first, replacement) = fleet
        .wait_for("sick's first task to be replaced", || async {
            let tasks = fleet.tasks("sick").await;
            let first = tasks
                .iter()
                .find(|t| t["failures"].as_u64().unwrap_or(0) == 0)?;
            let next = tasks.iter().find(|t| t["failures"].as_u64() == Some(1))?;
            (first["state"] == "shutdown").then(|| (first.clone(), next.clone()))
        })
        .await;
    assert_eq!(health(&first), "unhealthy", "{first}");
    assert_eq!(first["desired_state"], "shutdown", "{first}");
    assert_eq!(first["slot"], replacement["slot"]);
    assert!(
        first["message"]
            .as_str()
            .unwrap_or("")
            .contains("exit code 1"),
        "the failing probe is named: {first}"
    );
    // Its container is gone from the engine.
    let container = first["container_id"].as_str().unwrap();
    let out = Command::new("docker")
        .args(["inspect", container])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{container} still exists");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_health_settings_are_refused_in_one_line() {
    let _serial = serial().await;
    let fleet = Fleet::start(1, 0).await;
    for (flags, want) in [
        (
            &["--health-interval", "-1s"][..],
            "invalid --health-interval \"-1s\"",
        ),
        (
            &["--health-retries", "0"][..],
            "invalid --health-retries \"0\": expected a whole number of at least 1",
        ),
        (
            &["--health-timeout", "2"][..],
            "invalid --health-timeout \"2\"",
        ),
        (&["--stop-grace", "x"][..], "invalid --stop-grace \"x\""),
    ] {
        let mut args = vec!["service", "create", "--name", "bad"];
        args.extend_from_slice(flags);
        args.push(WHOAMI);
        let out = fleet.cluster.cli(&args).await;
        assert!(!out.ok(), "{flags:?} was accepted");
        let err = out.stderr.trim();
        assert!(
            err.lines().count() == 1 && err.contains(want),
            "{flags:?}: {err}"
        );
    }
    // The Docker API: a 400 with a JSON message.
    let api = fleet.cluster.managers[0].docker_api.clone();
    for body in [
        r#"{"Image":"x","Healthcheck":{"Interval":-1000000}}"#,
        r#"{"Image":"x","Healthcheck":{"Test":["CMD"],"Retries":1}}"#,
        r#"{"Image":"x","Healthcheck":{"Retries":-1}}"#,
    ] {
        let (code, _, text) = raw(&api, "POST", "/v1.44/containers/create", body).await;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert!(
            code == 400
                && json["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("health check"),
            "{body}: {code} {text}"
        );
    }
}
