//! `shoal dev`: three managers as child processes, `cluster.json` once they are all voters, a
//! usable `export SHOAL_HOST=` line, and every child gone after SIGTERM; run again, the same
//! cluster comes back with its data.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::time::{sleep, Instant};

use crate::cluster::{run_cli, serial, SHOAL, WAIT};

pub(crate) fn alive(pid: u64) -> bool {
    // Signal 0: does the process exist? A zombie counts as gone for us only once reaped, so
    // also check /proc for its state.
    let exists = kill(Pid::from_raw(pid as i32), None).is_ok();
    let zombie =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
    exists && !zombie
}

/// Starts `shoal dev` and waits for its cluster.json (a new one: not listing `stale_pid`).
async fn start_dev(dir: &str, stale_pid: Option<u64>) -> (tokio::process::Child, Value) {
    start_dev_with(dir, stale_pid, &["--managers", "3"]).await
}

pub(crate) async fn start_dev_with(
    dir: &str,
    stale_pid: Option<u64>,
    args: &[&str],
) -> (tokio::process::Child, Value) {
    let child = tokio::process::Command::new(SHOAL)
        .arg("dev")
        .args(args)
        .args(["--dir", dir])
        .env_remove("SHOAL_HOST")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning shoal dev");
    let path = std::path::Path::new(dir).join("cluster.json");
    let deadline = Instant::now() + WAIT * 2;
    loop {
        if let Ok(text) = std::fs::read_to_string(&path) {
            let doc: Value = serde_json::from_str(&text).expect("cluster.json is JSON");
            if doc["managers"][0]["pid"].as_u64() != stale_pid {
                return (child, doc);
            }
        }
        assert!(Instant::now() < deadline, "shoal dev wrote no cluster.json");
        sleep(Duration::from_millis(200)).await;
    }
}

pub(crate) async fn stop_dev(mut child: tokio::process::Child) -> String {
    kill(Pid::from_raw(child.id().unwrap() as i32), Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("shoal dev stops")
        .unwrap();
    assert!(status.success(), "shoal dev exited with {status}");
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .await
        .unwrap();
    stdout
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_runs_a_local_cluster_and_stops_it() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().join("cluster").to_str().unwrap().to_string();

    let (child, doc) = start_dev(&dir_str, None).await;
    assert!(!doc["token"].as_str().unwrap().is_empty());
    assert_eq!(doc["agents"], serde_json::json!([]));
    assert!(doc["proxy"].is_null());
    let managers = doc["managers"].as_array().unwrap().clone();
    assert_eq!(managers.len(), 3);
    let mut ids: Vec<u64> = managers.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert!(ids.len() == 3 && ids[0] > 0, "distinct ids: {managers:?}");
    for m in &managers {
        for field in ["grpc", "http", "docker_api", "data_dir"] {
            assert!(
                m[field].as_str().is_some_and(|s| !s.is_empty()),
                "{field} in {m}"
            );
        }
        assert!(alive(m["pid"].as_u64().unwrap()), "{m}");
    }
    let hosts: Vec<&str> = managers
        .iter()
        .map(|m| m["grpc"].as_str().unwrap())
        .collect();
    let hosts = hosts.join(",");
    let tls = doc["tls_dir"].as_str().unwrap().to_string();
    assert!(
        std::path::Path::new(&tls).join("cert.pem").exists(),
        "{doc}"
    );

    let out = run_cli(
        &["kv", "put", "dev/k", "v"],
        None,
        &[("SHOAL_HOST", &hosts), ("SHOAL_TLS_DIR", &tls)],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    let out = run_cli(
        &["cluster", "status", "--json"],
        None,
        &[("SHOAL_HOST", &hosts), ("SHOAL_TLS_DIR", &tls)],
    )
    .await;
    let status: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["members"].as_array().unwrap().len(), 3);

    let stdout = stop_dev(child).await;
    assert!(
        stdout.contains(&format!("export SHOAL_HOST={hosts}"))
            && stdout.contains(&format!("export SHOAL_TLS_DIR={tls}")),
        "{stdout}"
    );
    for m in &managers {
        assert!(
            !alive(m["pid"].as_u64().unwrap()),
            "manager still running after shoal dev stopped: {m}"
        );
    }

    // Again in the same dir: the same cluster, same addresses, data intact.
    let (child, again) = start_dev(&dir_str, managers[0]["pid"].as_u64()).await;
    let grpc: Vec<&str> = again["managers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["grpc"].as_str().unwrap())
        .collect();
    assert_eq!(grpc.join(","), hosts);
    let out = run_cli(
        &["kv", "get", "dev/k"],
        None,
        &[("SHOAL_HOST", &hosts), ("SHOAL_TLS_DIR", &tls)],
    )
    .await;
    assert_eq!(out.stdout, "v\n", "{out:?}");
    stop_dev(child).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_with_agents_and_proxy_starts_the_seeds_two_nodes_and_nginx() {
    let _serial = serial().await;
    crate::fleet::whoami_image();
    let dir = tempfile::tempdir().unwrap();
    let dir_str = dir.path().join("cluster").to_str().unwrap().to_string();
    let (child, doc) = start_dev_with(
        &dir_str,
        None,
        &["--managers", "1", "--agents", "2", "--proxy"],
    )
    .await;
    let agents = doc["agents"].as_array().unwrap().clone();
    // Whatever happens below, the agents' containers go with the test.
    let _cleanup: Vec<crate::fleet::NodeContainers> = agents
        .iter()
        .map(|a| crate::fleet::NodeContainers::of_data_dir(a["data_dir"].as_str().unwrap()))
        .collect();
    let names: Vec<&str> = agents.iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["node-1", "node-2"]);
    assert_eq!(agents[0]["addr"], "127.0.0.2");
    let host = doc["managers"][0]["grpc"].as_str().unwrap().to_string();
    let tls = doc["tls_dir"].as_str().unwrap().to_string();

    let out = run_cli(
        &["node", "ls", "--json"],
        None,
        &[("SHOAL_HOST", &host), ("SHOAL_TLS_DIR", &tls)],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    let nodes: Value = serde_json::from_str(&out.stdout).unwrap();
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    for n in nodes {
        assert_eq!(n["status"], "ready", "{n}");
        let ssd = n["labels"]["storage"] == "ssd";
        assert_eq!(
            ssd,
            n["name"] == "node-1",
            "only node-1 is storage=ssd: {n}"
        );
    }

    // nginx answers on the port cluster.json gives: 503 for a host nothing serves.
    let port = doc["proxy"]["port"]
        .as_u64()
        .expect("proxy port in cluster.json");
    let answer = crate::fleet::http_get(&format!("127.0.0.1:{port}")).await;
    assert!(
        answer
            .as_deref()
            .is_some_and(|a| a.starts_with("HTTP/1.1 503")),
        "{answer:?}"
    );

    let mut pids: Vec<u64> = agents.iter().map(|a| a["pid"].as_u64().unwrap()).collect();
    pids.push(doc["proxy"]["pid"].as_u64().unwrap());
    pids.push(doc["proxy"]["nginx_pid"].as_u64().unwrap());
    stop_dev(child).await;
    for pid in pids {
        assert!(!alive(pid), "{pid} outlived shoal dev");
    }
}
