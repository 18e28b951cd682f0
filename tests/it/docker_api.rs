//! The Docker Engine API on every manager, driven by the real docker CLI and docker-compose
//! against 3 managers and 2 agents on the machine's engine: containers as cluster objects,
//! attached runs and exit codes, logs, exec, events, images, networks, compose's seed scenario,
//! classic Swarm's `reschedule:on-node-failure`, and a leader killed under the clients.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

use crate::cluster::{serial, WAIT};
use crate::fleet::{remove_node_containers, Fleet, WHOAMI};

/// What a client command printed and how it exited.
pub(crate) struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `docker -H tcp://HOST ARGS` (stdin from `input`), with a timeout.
pub(crate) fn docker(host: &str, args: &[&str], input: Option<&str>) -> Out {
    client("docker", &["-H", &format!("tcp://{host}")], args, input)
}

fn compose(host: &str, dir: &std::path::Path, args: &[&str]) -> Out {
    let file = dir.join("docker-compose.yml");
    client(
        "docker-compose",
        &[
            "-H",
            &format!("tcp://{host}"),
            "-p",
            "seed",
            "-f",
            file.to_str().unwrap(),
        ],
        args,
        None,
    )
}

pub(crate) fn client(program: &str, pre: &[&str], args: &[&str], input: Option<&str>) -> Out {
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(program)
        .args(pre)
        .args(args)
        .env_remove("DOCKER_HOST")
        .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    if let Some(text) = input {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts success; returns trimmed stdout.
#[track_caller]
pub(crate) fn ok(out: Out, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}\n{}", out.stderr, out.stdout);
    out.stdout.trim().to_string()
}

/// Polls `check` until it returns Some, for at most WAIT.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(300)).await;
    }
}

/// One raw HTTP/1.0 request; (status code, content type, body).
pub async fn raw(host: &str, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(String::from)
        })
        .unwrap_or_default();
    (code, ctype, body.to_string())
}

/// Removes the engine networks agents created for cluster networks.
fn remove_shoal_networks() {
    let out = Command::new("docker")
        .args(["network", "ls", "-q", "--filter", "label=shoal.network"])
        .output()
        .unwrap();
    for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("docker").args(["network", "rm", id]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_cli_drives_the_cluster_through_any_manager() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    let leader = fleet.cluster.leader().await;
    let follower = (leader + 1) % 3;
    let lead = fleet.cluster.managers[leader].docker_api.clone();
    let other = fleet.cluster.managers[follower].docker_api.clone();

    // Protocol: ping, version, errors as JSON with Docker's codes.
    for host in [&lead, &other] {
        let (code, _, body) = raw(host, "GET", "/_ping", "").await;
        assert_eq!((code, body.as_str()), (200, "OK"));
        let version = ok(
            docker(host, &["version", "--format", "{{.Server.Version}}"], None),
            "version",
        );
        assert!(version.starts_with("shoal/"), "{version}");
        let info = ok(
            docker(host, &["info", "--format", "{{json .SystemStatus}}"], None),
            "info",
        );
        assert!(
            info.contains("\"Nodes\",\"2\"")
                && info.contains("node-1")
                && info.contains("storage=ssd"),
            "{info}"
        );
    }
    let (code, ctype, body) = raw(&other, "GET", "/v1.44/nothing/here", "").await;
    assert_eq!((code, ctype.as_str()), (404, "application/json"), "{body}");
    let (code, _, body) = raw(&other, "POST", "/v1.44/volumes/create", "{}").await;
    assert!(
        code == 501 && body.contains("/volumes/create"),
        "{code} {body}"
    );
    let (code, _, body) = raw(&other, "POST", "/v1.44/containers/create", "{not json").await;
    assert!(code == 400 && body.contains("\"message\""), "{code} {body}");
    let (code, _, body) = raw(
        &other,
        "GET",
        "/containers/json?filters=%7B%22bogus%22%3A%5B%22x%22%5D%7D",
        "",
    )
    .await;
    assert!(code == 400 && body.contains("bogus"), "{code} {body}");

    // run -d with classic Swarm's constraint, a label, a port, a restart policy, a name.
    let id = ok(
        docker(
            &lead,
            &[
                "run",
                "-d",
                "--name",
                "web1",
                "-e",
                "constraint:storage==ssd",
                "--label",
                "app=web",
                "-p",
                "80",
                "--restart",
                "always",
                WHOAMI,
            ],
            None,
        ),
        "run -d",
    );
    assert_eq!(id.len(), 64, "{id}");
    for host in [&lead, &other] {
        let ps = ok(
            docker(host, &["ps", "--format", "{{.Names}} {{.Status}}"], None),
            "ps",
        );
        assert!(ps.lines().any(|l| l.starts_with("node-1/web1 Up")), "{ps}");
        let by_label = ok(
            docker(host, &["ps", "-q", "--filter", "label=app=web"], None),
            "ps label",
        );
        assert_eq!(by_label, id[..12]);
        let by_node = ok(
            docker(host, &["ps", "-q", "--filter", "node=node-2"], None),
            "ps node",
        );
        assert_eq!(by_node, "");
        let by_name = ok(
            docker(
                host,
                &[
                    "ps",
                    "-q",
                    "--filter",
                    "name=web1",
                    "--filter",
                    "status=running",
                ],
                None,
            ),
            "ps name",
        );
        assert_eq!(by_name, id[..12]);
        let node = ok(
            docker(
                host,
                &[
                    "inspect",
                    "--format",
                    "{{.Node.Name}} {{.State.Running}} {{.Name}}",
                    &id[..8],
                ],
                None,
            ),
            "inspect",
        );
        assert_eq!(node, "node-1 true /web1");
    }
    let port = ok(docker(&other, &["port", "web1", "80/tcp"], None), "port");
    let addr = port.lines().next().unwrap().to_string();
    let answer = crate::fleet::http_get_within(&addr, Duration::from_secs(10))
        .await
        .unwrap_or_default();
    assert!(
        answer.contains("200") && answer.contains("node: "),
        "{addr}: {answer}"
    );
    let logs = docker(
        &other,
        &["logs", "--tail", "5", "--timestamps", "web1"],
        None,
    );
    assert!(logs.stderr.contains("whoami: listening"), "{}", logs.stderr);
    let echoed = ok(
        docker(
            &other,
            &["exec", "-i", "web1", "cat"],
            Some("through the cluster\n"),
        ),
        "exec",
    );
    assert_eq!(echoed, "through the cluster");

    // Events, streamed as they happen, with the node's attributes.
    let mut events = tokio::process::Command::new("docker")
        .args([
            "-H",
            &format!("tcp://{other}"),
            "events",
            "--format",
            "{{json .}}",
            "--filter",
            "event=start",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(events.stdout.take().unwrap()).lines();
    sleep(Duration::from_millis(500)).await;

    // Attached runs: output, then the exit code through wait.
    let run = docker(
        &lead,
        &["run", "--name", "once", WHOAMI, "echo", "hello", "shoal"],
        None,
    );
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, "hello shoal"),
        "{}",
        run.stderr
    );
    let run = docker(
        &other,
        &["run", "--name", "failing", WHOAMI, "exit", "3"],
        None,
    );
    assert_eq!(run.code, 3, "{} {}", run.stdout, run.stderr);
    let gone = docker(&lead, &["run", "--rm", WHOAMI, "echo", "bye"], None);
    assert_eq!(
        (gone.code, gone.stdout.trim()),
        (0, "bye"),
        "{}",
        gone.stderr
    );
    let event = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        event.contains("\"start\"") && event.contains("node.name"),
        "{event}"
    );
    drop(events);
    let exited = ok(
        docker(
            &other,
            &[
                "ps",
                "-a",
                "--filter",
                "status=exited",
                "--format",
                "{{.Names}} {{.Status}}",
            ],
            None,
        ),
        "ps -a",
    );
    assert!(
        exited.contains("/once Exited (0)") && exited.contains("/failing Exited (3)"),
        "{exited}"
    );
    let all = ok(
        docker(&lead, &["ps", "-a", "--format", "{{.Names}}"], None),
        "ps -a",
    );
    assert_eq!(all.lines().count(), 3, "--rm removed its container: {all}");

    // Life cycle: kill (not restarted), start, restart, stop, rm.
    ok(
        docker(&other, &["kill", "-s", "KILL", "web1"], None),
        "kill",
    );
    let state = ok(
        docker(
            &lead,
            &["inspect", "--format", "{{.State.Status}}", "web1"],
            None,
        ),
        "inspect",
    );
    assert_eq!(state, "exited");
    sleep(Duration::from_secs(2)).await;
    let state = ok(
        docker(
            &lead,
            &["inspect", "--format", "{{.State.Status}}", "web1"],
            None,
        ),
        "inspect",
    );
    assert_eq!(state, "exited", "a killed container stays down");
    ok(docker(&other, &["start", "web1"], None), "start");
    ok(docker(&other, &["restart", "web1"], None), "restart");
    let state = ok(
        docker(
            &lead,
            &["inspect", "--format", "{{.State.Status}} {{.Id}}", "web1"],
            None,
        ),
        "inspect",
    );
    assert_eq!(state, format!("running {id}"), "same id after restarts");
    let refused = docker(&other, &["rm", "web1"], None);
    assert!(
        refused.code != 0 && refused.stderr.contains("running container"),
        "{}",
        refused.stderr
    );
    ok(docker(&other, &["stop", "web1"], None), "stop");
    ok(docker(&lead, &["rm", "web1", "once"], None), "rm");
    ok(docker(&lead, &["rm", "-f", "failing"], None), "rm -f");
    let left = ok(docker(&other, &["ps", "-aq"], None), "ps");
    assert_eq!(left, "");
    let missing = docker(&other, &["inspect", "web1"], None);
    assert!(
        missing.code != 0 && missing.stderr.contains("No such"),
        "{}",
        missing.stderr
    );

    // Bad input: a malformed constraint, a name in use.
    let bad = docker(
        &lead,
        &["run", "-d", "-e", "constraint:storage=ssd", WHOAMI],
        None,
    );
    assert!(
        bad.code != 0 && bad.stderr.contains("storage=ssd"),
        "{}",
        bad.stderr
    );
    ok(
        docker(&lead, &["create", "--name", "taken", WHOAMI], None),
        "create",
    );
    let dup = docker(&other, &["create", "--name", "taken", WHOAMI], None);
    assert!(
        dup.code != 0 && dup.stderr.contains("already in use"),
        "{}",
        dup.stderr
    );
    ok(docker(&other, &["rm", "taken"], None), "rm created");
    let nowhere = docker(
        &lead,
        &["run", "-d", "-e", "constraint:storage==tape", WHOAMI],
        None,
    );
    assert!(
        nowhere.code != 0 && nowhere.stderr.contains("storage==tape"),
        "{}",
        nowhere.stderr
    );

    // Images, networks: per node, and load fans out.
    let images = ok(
        docker(
            &other,
            &["images", "--format", "{{.Repository}}:{{.Tag}}"],
            None,
        ),
        "images",
    );
    assert!(images.lines().any(|l| l == WHOAMI), "{images}");
    let saved = Command::new("docker")
        .args(["save", WHOAMI])
        .output()
        .unwrap()
        .stdout;
    let mut load = Command::new("docker")
        .args(["-H", &format!("tcp://{other}"), "load"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    load.stdin.take().unwrap().write_all(&saved).unwrap();
    let loaded = load.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&loaded.stdout);
    assert!(
        loaded.status.success() && text.contains("node-1: ") && text.contains("node-2: "),
        "{text}"
    );
    let pull = docker(&lead, &["pull", "shoal/not-in-any-registry:1"], None);
    assert!(
        pull.code != 0 && pull.stderr.contains("node-"),
        "{}",
        pull.stderr
    );
    let networks = ok(
        docker(&other, &["network", "ls", "--format", "{{.Name}}"], None),
        "network ls",
    );
    assert!(networks.lines().any(|l| l == "node-1/bridge"), "{networks}");

    // kill -9 the leader: another manager still lists, starts and removes containers.
    ok(
        docker(&other, &["run", "-d", "--name", "before", WHOAMI], None),
        "run before",
    );
    fleet.cluster.managers[leader].kill();
    let ps = eventually("ps after the leader died", || {
        let out = docker(&other, &["ps", "--format", "{{.Names}}"], None);
        (out.code == 0).then_some(out.stdout)
    })
    .await;
    assert!(ps.contains("/before"), "{ps}");
    ok(
        docker(&other, &["run", "-d", "--name", "after", WHOAMI], None),
        "run after failover",
    );
    ok(
        docker(&other, &["rm", "-f", "before", "after"], None),
        "rm after failover",
    );
    let left = ok(
        docker(
            &other,
            &["ps", "-a", "--format", "{{.Names}} {{.Status}}"],
            None,
        ),
        "ps",
    );
    // What is left is the container whose start could not be placed: created, as with Docker.
    assert_eq!(left.lines().count(), 1, "{left}");
    assert!(left.ends_with(" Created"), "{left}");
    drop(fleet);
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_the_seed_scenario_and_containers_reschedule_when_asked() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    let leader = fleet.cluster.leader().await;
    let lead = fleet.cluster.managers[leader].docker_api.clone();
    let other = fleet.cluster.managers[(leader + 1) % 3].docker_api.clone();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        format!(
            r#"version: "2"
services:
  apache:
    image: {WHOAMI}
    restart: always
    ports:
      - "80"
    labels:
      - "interlock.hostname=test"
      - "interlock.domain=local"
  db:
    image: {WHOAMI}
    restart: always
    container_name: seed_db
    environment:
      - "constraint:storage==ssd"
"#
        ),
    )
    .unwrap();
    ok(compose(&lead, dir.path(), &["up", "-d"]), "compose up");
    ok(
        compose(&other, dir.path(), &["scale", "apache=4"]),
        "compose scale",
    );
    let names = ok(
        docker(
            &other,
            &[
                "ps",
                "--filter",
                "label=com.docker.compose.service=apache",
                "--format",
                "{{.Names}}",
            ],
            None,
        ),
        "ps",
    );
    let nodes: std::collections::BTreeSet<&str> =
        names.lines().filter_map(|n| n.split('/').next()).collect();
    assert_eq!(names.lines().count(), 4, "{names}");
    assert_eq!(nodes.len(), 2, "apache spread over both nodes: {names}");
    let db = ok(
        docker(
            &lead,
            &["ps", "--filter", "name=seed_db", "--format", "{{.Names}}"],
            None,
        ),
        "ps db",
    );
    assert_eq!(db, "node-1/seed_db");
    // Compose sees exactly its 5 containers, through a follower too (no duplicates).
    for host in [&lead, &other] {
        let ps = ok(compose(host, dir.path(), &["ps"]), "compose ps");
        assert_eq!(ps.lines().filter(|l| l.contains(" Up ")).count(), 5, "{ps}");
    }
    let logs = compose(&other, dir.path(), &["logs", "--no-color", "apache"]);
    assert!(
        logs.code == 0 && logs.stdout.contains("whoami: listening"),
        "{} {}",
        logs.stdout,
        logs.stderr
    );
    // Up again with nothing changed: nothing is recreated.
    let again = compose(&lead, dir.path(), &["up", "-d"]);
    assert!(
        again.code == 0 && !again.stderr.contains("Recreating"),
        "{}",
        again.stderr
    );
    ok(compose(&other, dir.path(), &["down"]), "compose down");
    let left = ok(
        docker(
            &lead,
            &[
                "ps",
                "-aq",
                "--filter",
                "label=com.docker.compose.project=seed",
            ],
            None,
        ),
        "ps",
    );
    assert_eq!(left, "");

    // Classic Swarm: a container moves off a DOWN node only with reschedule:on-node-failure.
    ok(
        docker(
            &lead,
            &[
                "run",
                "-d",
                "--name",
                "moves",
                "-e",
                "constraint:node==~node-2",
                "-e",
                "reschedule:on-node-failure",
                WHOAMI,
            ],
            None,
        ),
        "run",
    );
    ok(
        docker(
            &lead,
            &[
                "run",
                "-d",
                "--name",
                "stays",
                "-e",
                "constraint:node==~node-2",
                WHOAMI,
            ],
            None,
        ),
        "run",
    );
    let on_node = |name: &str| {
        ok(
            docker(
                &other,
                &["inspect", "--format", "{{.Node.Name}}", name],
                None,
            ),
            "inspect",
        )
    };
    assert_eq!(
        (on_node("moves"), on_node("stays")),
        ("node-2".to_string(), "node-2".to_string())
    );
    let node2 = fleet
        .nodes()
        .await
        .into_iter()
        .find(|n| n["name"] == "node-2")
        .unwrap();
    fleet.agents[1].kill();
    remove_node_containers(node2["id"].as_str().unwrap());
    eventually("moves to run on node-1", || {
        let out = docker(
            &other,
            &[
                "inspect",
                "--format",
                "{{.Node.Name}} {{.State.Status}}",
                "moves",
            ],
            None,
        );
        (out.stdout.trim() == "node-1 running").then_some(())
    })
    .await;
    assert_eq!(
        on_node("stays"),
        "node-2",
        "without the policy it stays with its node"
    );
    ok(docker(&other, &["rm", "-f", "moves", "stays"], None), "rm");
    drop(fleet);
    remove_shoal_networks();
}
