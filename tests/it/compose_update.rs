//! `docker-compose up -d` with a changed image, through shoal's Docker API, on a compose service
//! carrying an update policy (`shoal.update.*` labels): under a constant load through a real nginx
//! with its retries off, compose's recreate hands each container over to its successor one at a
//! time, dropping no request, and ends with one new container per old one, all on the new image.
//! A bad policy label is a 400 with a JSON message; `stop` then `start` calls the handovers off;
//! `docker-compose down` needs no successor; kill -9 of the leader mid-recreate: the next leader
//! carries the handovers on. Without a policy, compose's own recreate (stop-first) works too.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::serial;
use crate::docker_api::{client, docker, ok, raw, Out};
use crate::fleet::{whoami_with_check, Fleet};
use crate::proxy::{wait_backends, Load, Proxy};

const V1: &str = "shoal/whoami-good:it";
const V2: &str = "shoal/whoami-good:it-compose2";
const PROJECT: &str = "handover";

fn images() {
    whoami_with_check(V1, &["check"]);
    crate::fleet::docker_tag(V1, V2);
}

/// The compose file: `web`, routed as test.local, on `image`, one container at a time.
fn write_compose(dir: &std::path::Path, image: &str) {
    let policy = [
        "shoal.update.parallelism=1",
        "shoal.update.order=start-first",
    ];
    write_compose_with(dir, image, &policy)
}

/// The same with the labels `policy`.
fn write_compose_with(dir: &std::path::Path, image: &str, policy: &[&str]) {
    let policy: String = policy
        .iter()
        .map(|l| format!("      - \"{l}\"\n"))
        .collect();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            r#"version: "2"
services:
  web:
    image: {image}
    ports:
      - "80"
    labels:
      - "interlock.hostname=test"
      - "interlock.domain=local"
{policy}"#
        ),
    )
    .unwrap();
}

fn compose(host: &str, dir: &std::path::Path, args: &[&str]) -> Out {
    let file = dir.join("docker-compose.yml");
    let pre = [
        "-H",
        &format!("tcp://{host}"),
        "-p",
        PROJECT,
        "-f",
        file.to_str().unwrap(),
    ];
    client("docker-compose", &pre, args, None)
}

/// `docker ps` of the project through shoal: (id, name, image) of each container.
fn containers(host: &str, all: bool) -> Vec<(String, String, String)> {
    let filter = format!("label=com.docker.compose.project={PROJECT}");
    let mut args = vec!["ps", "--no-trunc", "--filter", &filter];
    if all {
        args.push("-a");
    }
    args.extend(["--format", "{{.ID}} {{.Names}} {{.Image}}"]);
    ok(docker(host, &args, None), "docker ps")
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[1].to_string(), w[2].to_string())
        })
        .collect()
}

/// The project's running containers on this machine's engine (the agents' engine).
fn engine_running() -> usize {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={PROJECT}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_recreates_with_an_update_policy_one_at_a_time_dropping_nothing() {
    let _serial = serial().await;
    images();
    let fleet = Fleet::start(1, 2).await;
    let api = fleet.cluster.managers[0].docker_api.clone();

    // Bad input: a bad policy label is a 400 with Docker's JSON error, and nothing is created.
    for (labels, needle) in [
        (
            r#""shoal.update.parallelism": "two""#,
            "shoal.update.parallelism=\\\"two\\\"",
        ),
        (r#""shoal.update.delay": "5""#, "shoal.update.delay"),
        (
            r#""shoal.update.order": "stop-first""#,
            "always starts first",
        ),
        (r#""shoal.update.monitor": "5s""#, "reserved for shoal"),
    ] {
        let body = format!(
            r#"{{"Image": "{V1}", "Labels": {{"com.docker.compose.project": "{PROJECT}",
                "com.docker.compose.service": "web", "com.docker.compose.container-number": "1",
                {labels}}}}}"#
        );
        let (code, ctype, text) = raw(&api, "POST", "/containers/create?name=bad1", &body).await;
        assert_eq!(code, 400, "{labels}: {text}");
        assert_eq!(ctype, "application/json", "{labels}");
        assert!(text.starts_with(r#"{"message":"#), "{labels}: {text}");
        assert!(text.contains(needle), "{labels}: {text}");
    }
    assert!(containers(&api, true).is_empty());

    let dir = tempfile::tempdir().unwrap();
    write_compose(dir.path(), V1);
    ok(
        compose(&api, dir.path(), &["up", "-d", "--scale", "web=4"]),
        "compose up",
    );
    let before = containers(&api, false);
    assert_eq!(before.len(), 4, "{before:?}");

    let proxy = Proxy::without_retries(&fleet, "px1").await;
    let backends = wait_backends(&fleet, &proxy, 4).await;
    let load = Load::start(proxy.addr());

    // Sample how many of the project's containers run at once during the recreate.
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::task::spawn_blocking(move || {
            let mut most = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(engine_running());
                std::thread::sleep(Duration::from_millis(150));
            }
            most
        })
    };
    write_compose(dir.path(), V2);
    let started = Instant::now();
    let up = compose(&api, dir.path(), &["up", "-d", "--scale", "web=4"]);
    let took = started.elapsed();
    let after_backends = wait_backends(&fleet, &proxy, 4).await;
    load.finish_without_failures(&proxy).await;
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();
    assert_eq!(up.code, 0, "compose up (v2): {}\n{}", up.stderr, up.stdout);
    for n in 1..=4 {
        let done = format!("Recreating {PROJECT}_web_{n} ... done");
        assert!(up.stderr.contains(&done), "{done}: {}", up.stderr);
    }
    eprintln!("recreate of 4 containers: {took:?}, at most {most} running at once");

    // One new container per old one, every one on the new image, the old ones gone.
    let after = containers(&api, true);
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.iter().all(|(_, _, image)| image == V2), "{after:?}");
    let old_ids: BTreeSet<&String> = before.iter().map(|(id, _, _)| id).collect();
    assert!(
        after.iter().all(|(id, _, _)| !old_ids.contains(id)),
        "{before:?} {after:?}"
    );
    let names = |list: &[(String, String, String)]| -> BTreeSet<String> {
        list.iter()
            .map(|(_, n, _)| n.rsplit('/').next().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&before), names(&after));
    assert!(
        backends.is_disjoint(&after_backends),
        "nginx reaches only new containers: {backends:?} {after_backends:?}"
    );
    // One at a time, start-first: a successor ran beside the 4 old ones, and never two (a
    // successor starts once the container replaced before it has stopped; all at once is 8).
    assert_eq!(most, 5, "containers running at once");
    let log = fleet.cluster.managers[0].log_text();
    assert_eq!(
        log.matches("stop deferred until its successor serves")
            .count(),
        4,
        "{}",
        fleet.logs()
    );
    assert_eq!(log.matches("handed over to").count(), 4, "{}", fleet.logs());

    // `stop` is answered at once and shows the containers stopped; `start` before a successor
    // came calls the handovers off: the same containers run on, past the 5 s a handover waits
    // for a successor.
    ok(compose(&api, dir.path(), &["stop"]), "compose stop");
    assert!(containers(&api, false).is_empty());
    ok(compose(&api, dir.path(), &["start"]), "compose start");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let ids = |list: Vec<(String, String, String)>| -> BTreeSet<String> {
        list.into_iter().map(|(id, _, _)| id).collect()
    };
    assert_eq!(ids(containers(&api, false)), ids(after.clone()));
    assert_eq!(engine_running(), 4);

    // `down`: stops without a successor go at once, not after the handover's bounds.
    let started = Instant::now();
    ok(compose(&api, dir.path(), &["down"]), "compose down");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "down took {:?}",
        started.elapsed()
    );
    assert!(containers(&api, true).is_empty());
    drop(proxy);
    drop(fleet);
}

/// kill -9 of the leader in the middle of compose's recreate (compose talks to another
/// manager): the next leader carries the handovers on from the store; compose's `up` succeeds
/// with one new container per old one, all on the new image.
#[tokio::test(flavor = "multi_thread")]
async fn compose_recreate_survives_a_leader_kill() {
    let _serial = serial().await;
    images();
    let mut fleet = Fleet::start(3, 2).await;
    let leader = fleet.cluster.wait_leader().await;
    let api = fleet.cluster.managers[(leader + 1) % 3].docker_api.clone();
    let dir = tempfile::tempdir().unwrap();
    write_compose(dir.path(), V1);
    ok(
        compose(&api, dir.path(), &["up", "-d", "--scale", "web=3"]),
        "compose up",
    );
    let before = containers(&api, false);
    assert_eq!(before.len(), 3, "{before:?}");

    write_compose(dir.path(), V2);
    let up = {
        let (api, dir) = (api.clone(), dir.path().to_path_buf());
        tokio::task::spawn_blocking(move || compose(&api, &dir, &["up", "-d", "--scale", "web=3"]))
    };
    // Once the first successor runs, the leader goes.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !containers(&api, false)
        .iter()
        .any(|(_, _, image)| image == V2)
    {
        assert!(Instant::now() < deadline, "no successor started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fleet.cluster.managers[leader].kill();
    fleet.cluster.wait_leader().await;

    let up = up.await.unwrap();
    assert_eq!(up.code, 0, "compose up (v2): {}\n{}", up.stderr, up.stdout);
    let after = containers(&api, true);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|(_, _, image)| image == V2), "{after:?}");
    let old: BTreeSet<&String> = before.iter().map(|(id, _, _)| id).collect();
    assert!(after.iter().all(|(id, _, _)| !old.contains(id)));
    assert_eq!(engine_running(), 3);
    ok(compose(&api, dir.path(), &["down"]), "compose down");
}

/// Without a policy compose's recreate works as compose does it everywhere: each container
/// stopped (out of the proxies first), renamed, replaced and removed.
#[tokio::test(flavor = "multi_thread")]
async fn compose_recreates_without_a_policy_as_compose_does() {
    let _serial = serial().await;
    images();
    let fleet = Fleet::start(1, 1).await;
    let api = fleet.cluster.managers[0].docker_api.clone();
    let dir = tempfile::tempdir().unwrap();
    write_compose_with(dir.path(), V1, &[]);
    ok(
        compose(&api, dir.path(), &["up", "-d", "--scale", "web=2"]),
        "compose up",
    );
    let before = containers(&api, false);
    write_compose_with(dir.path(), V2, &[]);
    ok(
        compose(&api, dir.path(), &["up", "-d", "--scale", "web=2"]),
        "compose up (v2)",
    );
    let after = containers(&api, true);
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(after.iter().all(|(_, _, image)| image == V2), "{after:?}");
    assert!(after.iter().all(|a| !before.iter().any(|b| b.0 == a.0)));
    let log = fleet.cluster.managers[0].log_text();
    assert!(!log.contains("stop deferred"), "{log}");
    ok(compose(&api, dir.path(), &["down"]), "compose down");
}
