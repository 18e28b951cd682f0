//! Several hosts on one machine (`shoal::dev::hosts`, `shoal dev --hosts N`): network namespaces
//! with their own Docker engine. Images fan out from the local engine, a service's tasks run on
//! both host engines, containers reach out of their host, and nothing is left after a stop, nor
//! after a sweep of a killed `shoal dev`. Needs root (the machine's tests run as root).

use std::process::Command;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use shoal::dev::hosts::{sweep_stale, Hosts, DATA_ROOT, RUN_ROOT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

use crate::cluster::{run_cli, serial, WAIT};
use crate::dev::{alive, start_dev_with, stop_dev};
use crate::fleet::{whoami_image, WHOAMI};

fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker ARGS` against the engine at `docker_host`.
fn docker(docker_host: &str, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", docker_host)
        .output()
        .expect("running docker")
}

/// Every trace of a run whose names start with `prefix`, as `what: name` lines; empty when none.
fn traces(prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in sh("ip", &["netns", "list"]).lines() {
        if line.starts_with(prefix) {
            found.push(format!("netns: {line}"));
        }
    }
    for line in sh("ip", &["-o", "link", "show"]).lines() {
        if line.contains(prefix) {
            found.push(format!("link: {line}"));
        }
    }
    for table in ["filter", "nat"] {
        for line in sh("iptables", &["-t", table, "-S"]).lines() {
            if line.contains(prefix) {
                found.push(format!("iptables {table}: {line}"));
            }
        }
    }
    for root in [RUN_ROOT, DATA_ROOT] {
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) {
                found.push(format!("dir: {}", entry.path().display()));
            }
        }
    }
    for line in std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
    {
        if line.contains(prefix) {
            found.push(format!("mount: {line}"));
        }
    }
    found
}

/// An HTTP server on every address of the root namespace answering 200 to anything; its port.
async fn answer_200() -> u16 {
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_get_images_reach_out_and_leave_nothing_behind() {
    whoami_image();
    let image = WHOAMI.to_string();
    let logs = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let hosts = Hosts::create(2, logs.path()).await.expect("two hosts");
    println!("2 hosts answering after {:?}", started.elapsed());
    let prefix = hosts.prefix().to_string();
    let (bridge, gateway) = hosts.bridge();
    assert!(bridge.starts_with(&prefix));
    let pids: Vec<u32> = hosts
        .hosts()
        .iter()
        .filter_map(|h| h.dockerd_pid())
        .collect();
    assert_eq!(pids.len(), 2);

    // Each engine is its own: its own bridge address, inside its own namespace.
    let [h1, h2] = hosts.hosts() else {
        panic!("two hosts")
    };
    assert_ne!(h1.ip, h2.ip);
    assert_ne!(h1.socket, h2.socket);
    for h in [h1, h2] {
        let info = docker(
            &h.docker_host(),
            &["info", "--format", "{{.Name}} {{.Driver}}"],
        );
        assert!(
            info.status.success(),
            "{}",
            String::from_utf8_lossy(&info.stderr)
        );
        let routes = sh("ip", &["-n", &h.ns, "-4", "route"]);
        assert!(
            routes.contains(&format!("default via {gateway}")),
            "{routes}"
        );
        assert!(
            routes.contains("docker0"),
            "the engine's bridge is in the namespace: {routes}"
        );
    }

    // The image reaches both engines, and only where it is missing.
    let main = shoal::dev::hosts::main_engine().unwrap();
    let loaded = hosts
        .load_images(&main, std::slice::from_ref(&image))
        .await
        .unwrap();
    assert!(
        loaded.iter().all(|l| l.images == [image.clone()]),
        "{loaded:?}"
    );
    let again = hosts
        .load_images(&main, std::slice::from_ref(&image))
        .await
        .unwrap();
    assert!(again.iter().all(|l| l.images.is_empty()), "{again:?}");
    let missing = hosts
        .load_images(&main, &["shoal/no-such-image:1".to_string()])
        .await;
    assert!(missing.is_err());

    // A container in host 2 reaches a server outside its host (in the root namespace, through
    // the host's NAT and the hosts' bridge), and host 1's published port answers from here.
    let port = answer_200().await;
    let target = format!("{gateway}:{port}");
    let out = docker(
        &h2.docker_host(),
        &["run", "--rm", WHOAMI, "check", &target],
    );
    assert!(
        out.status.success(),
        "{target}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = docker(
        &h1.docker_host(),
        &["run", "-d", "-p", &format!("{}:8080:80", h1.ip), WHOAMI],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let addr = format!("{}:8080", h1.ip);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(answer) = crate::fleet::http_get(&addr).await {
            assert!(answer.contains("container:"), "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        sleep(Duration::from_millis(100)).await;
    }

    // Dropped with a container still running: everything goes.
    let stopping = Instant::now();
    tokio::task::spawn_blocking(move || drop(hosts))
        .await
        .unwrap();
    println!("2 hosts removed in {:?}", stopping.elapsed());
    assert_eq!(traces(&prefix), Vec::<String>::new());
    for pid in pids {
        assert!(!alive(u64::from(pid)), "dockerd {pid} still runs");
    }
}

/// Stops a `shoal dev` that a failed assertion left running (SIGTERM, so that it removes its
/// hosts; waits up to 30 s). A no-op once the test stopped it itself.
struct StopOnDrop(i32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if kill(Pid::from_raw(self.0), Signal::SIGTERM).is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while alive(self.0 as u64) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The agents of `shoal dev --hosts 2`: READY nodes labelled by host.
async fn wait_host_nodes(envs: &[(&str, &str)]) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_cli(&["node", "ls", "--json"], None, envs).await;
        if let Ok(Value::Array(nodes)) = serde_json::from_str::<Value>(&out.stdout) {
            if nodes.iter().filter(|n| n["status"] == "ready").count() == 2 {
                return nodes;
            }
        }
        assert!(Instant::now() < deadline, "host nodes not ready: {out:?}");
        sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_hosts_run_a_service_on_both_engines_and_stop_clean() {
    let _serial = serial().await;
    whoami_image();
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().join("cluster").to_str().unwrap().to_string();
    let started = Instant::now();
    let (child, doc) = start_dev_with(&dir_str, None, &["--managers", "1", "--hosts", "2"]).await;
    let _stop = StopOnDrop(child.id().unwrap() as i32);
    println!("shoal dev --hosts 2 ready after {:?}", started.elapsed());
    let hosts = doc["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 2, "{doc}");
    let netns = hosts[0]["netns"].as_str().unwrap().to_string();
    let prefix = netns.trim_end_matches("-h1").to_string();
    let grpc = doc["managers"][0]["grpc"].as_str().unwrap().to_string();
    let tls = doc["tls_dir"].as_str().unwrap().to_string();
    let envs = [
        ("SHOAL_HOST", grpc.as_str()),
        ("SHOAL_TLS_DIR", tls.as_str()),
    ];

    let nodes = wait_host_nodes(&envs).await;
    let mut names: Vec<&str> = nodes.iter().filter_map(|n| n["name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["host-1", "host-2"], "{nodes:?}");
    let h2 = nodes.iter().find(|n| n["name"] == "host-2").unwrap();
    assert_eq!(h2["labels"]["host"], "h2", "{h2}");
    assert_eq!(h2["addr"], hosts[1]["addr"], "{h2}");

    // One task first: its image reaches both hosts from the local engine, and once both nodes
    // report it, 4 tasks spread over both engines.
    let create = [
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "1",
        "-p",
        "80",
        WHOAMI,
    ];
    let out = run_cli(&create, None, &envs).await;
    assert!(out.ok(), "{out:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let out = run_cli(&["node", "ls", "--json"], None, &envs).await;
        let nodes: Vec<Value> = serde_json::from_str(&out.stdout).unwrap_or_default();
        let with_image = nodes
            .iter()
            .filter(|n| {
                n["images"]
                    .as_array()
                    .is_some_and(|i| i.iter().any(|i| i == WHOAMI))
            })
            .count();
        if with_image == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "image on both nodes: {nodes:?}");
        sleep(Duration::from_millis(300)).await;
    }
    let out = run_cli(&["service", "scale", "web=4"], None, &envs).await;
    assert!(out.ok(), "{out:?}");
    let deadline = Instant::now() + WAIT;
    let per_host = loop {
        let counts: Vec<usize> = hosts
            .iter()
            .map(|h| {
                let out = docker(
                    h["docker_host"].as_str().unwrap(),
                    &["ps", "-q", "--filter", "label=shoal.service"],
                );
                String::from_utf8_lossy(&out.stdout).lines().count()
            })
            .collect();
        if counts.iter().sum::<usize>() == 4 && counts.iter().all(|c| *c > 0) {
            break counts;
        }
        assert!(
            Instant::now() < deadline,
            "4 tasks on both hosts, have {counts:?}"
        );
        sleep(Duration::from_millis(300)).await;
    };
    println!(
        "4 tasks running as {per_host:?} after {:?}",
        started.elapsed()
    );
    let out = run_cli(&["service", "ps", "web", "--json"], None, &envs).await;
    let tasks: Vec<Value> = serde_json::from_str(&out.stdout).unwrap();
    let running: Vec<&Value> = tasks.iter().filter(|t| t["state"] == "running").collect();
    assert_eq!(running.len(), 4, "{tasks:?}");

    let dockerds: Vec<u64> = hosts
        .iter()
        .map(|h| h["dockerd_pid"].as_u64().unwrap())
        .collect();
    let stdout = stop_dev(child).await;
    assert!(
        stdout.contains(&format!(
            "DOCKER_HOST={}",
            hosts[1]["docker_host"].as_str().unwrap()
        )),
        "{stdout}"
    );
    assert_eq!(traces(&prefix), Vec::<String>::new());
    for pid in dockerds {
        assert!(!alive(pid), "dockerd {pid} still runs");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sweep_removes_what_a_killed_dev_left() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().join("cluster").to_str().unwrap().to_string();
    let (mut child, doc) =
        start_dev_with(&dir_str, None, &["--managers", "1", "--hosts", "1"]).await;
    let netns = doc["hosts"][0]["netns"].as_str().unwrap().to_string();
    let prefix = netns.trim_end_matches("-h1").to_string();
    let dockerd = doc["hosts"][0]["dockerd_pid"].as_u64().unwrap();

    // kill -9: no cleanup runs. Its managers and agents (own process groups) are ended here.
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    child.wait().await.unwrap();
    for proc in doc["managers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(doc["agents"].as_array().unwrap())
    {
        let _ = kill(
            Pid::from_raw(proc["pid"].as_i64().unwrap() as i32),
            Signal::SIGKILL,
        );
    }
    let left = traces(&prefix);
    for what in [
        "netns:",
        "link:",
        "iptables filter:",
        "iptables nat:",
        "dir:",
    ] {
        assert!(
            left.iter().any(|l| l.starts_with(what)),
            "{what} in {left:?}"
        );
    }
    assert!(alive(dockerd), "the engine outlives a killed shoal dev");

    let swept = tokio::task::spawn_blocking(sweep_stale).await.unwrap();
    assert!(swept.namespaces.contains(&netns), "{swept:?}");
    assert!(swept.processes > 0 && swept.rules >= 3, "{swept:?}");
    assert_eq!(traces(&prefix), Vec::<String>::new());
    assert!(!alive(dockerd), "dockerd {dockerd} still runs");
}
