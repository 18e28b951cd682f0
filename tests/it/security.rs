//! Mutual TLS end to end, with real processes: joins by token for every role, refusals of
//! plaintext and of another cluster's certificates, token rotation, a root CA rotation while
//! writes go on, renewal of short-lived certificates, a removed agent shut out, the docker
//! CLI with `--tlsverify`; a node's name kept from newcomers, a manager's address kept out of
//! workers' certificates, tokens from a file or the environment, and private data dirs.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use shoal::security::join;
use shoal_tls::Role;

use crate::cluster::{free_port, put, run_cli, serial, tail, Cluster, WAIT};
use crate::fleet::Fleet;

fn identity(tls_dir: &Path) -> shoal_tls::PeerIdentity {
    let pem = std::fs::read_to_string(tls_dir.join("cert.pem")).expect("cert.pem");
    shoal_tls::PeerIdentity::from_pem(&pem).expect("a node certificate")
}

async fn ca_info(c: &Cluster, tls_dir: &Path) -> Value {
    let out = run_cli(
        &["--host", &c.hosts(), "cluster", "ca", "--json"],
        None,
        &[("SHOAL_TLS_DIR", tls_dir.to_str().unwrap())],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    serde_json::from_str(&out.stdout).unwrap()
}

async fn wait_until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_joins_with_its_token_and_gets_a_certificate() {
    let _serial = serial().await;
    let fleet = Fleet::start(3, 1).await;
    let c = &fleet.cluster;
    let cluster_id = identity(&c.managers[0].tls_dir()).cluster_id;
    for m in &c.managers {
        let id = identity(&m.tls_dir());
        assert_eq!(id.role, shoal_tls::Role::Manager, "{}", m.name);
        assert_eq!(id.cluster_id, cluster_id);
    }
    let agent = identity(&fleet.agents[0].data_dir.join("tls"));
    assert_eq!(agent.role, shoal_tls::Role::Worker);
    let node_id = std::fs::read_to_string(fleet.agents[0].data_dir.join("node_id")).unwrap();
    assert_eq!(
        agent.name,
        node_id.trim(),
        "a worker certificate names its node"
    );
    assert_eq!(identity(&c.admin_tls).role, shoal_tls::Role::Client);

    // The tokens pin the root: SHOAL2-<cluster>-<sha256 of the root>-<secret>.
    let info = ca_info(c, &c.admin_tls).await;
    let digest = info["roots_sha256"][0].as_str().unwrap();
    for token in [&c.token, &c.worker_token] {
        assert!(
            token.starts_with(&format!("SHOAL2-{cluster_id}-{digest}-")),
            "{token}"
        );
    }
    assert_ne!(c.token, c.worker_token);

    // A worker token cannot make a manager.
    let mut m = crate::cluster::Manager::new(c.root(), "m-worker-token");
    m.spawn(&["--join", &c.managers[0].grpc, "--token", &c.worker_token]);
    let status = m.wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        m.log_text().contains("cannot join as manager"),
        "{}",
        tail(&m.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn plaintext_clients_and_another_clusters_certificates_are_refused() {
    let _serial = serial().await;
    let mut a = Cluster::start(1).await;
    let b = Cluster::start(1).await;
    a.wait_leader().await;

    // No credentials: refused, and told how to get in.
    let out = run_cli(&["--host", &a.hosts(), "kv", "get", "k"], None, &[]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.lines().count() == 1 && out.stderr.contains("--tls-dir"),
        "{out:?}"
    );
    // B's operator certificate against A: refused.
    let out = run_cli(
        &["--host", &a.hosts(), "kv", "get", "k"],
        None,
        &[("SHOAL_TLS_DIR", b.admin_tls.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    // A raw plaintext gRPC client: refused at the connection.
    let mut raw = shoal_proto::v1::kv_client::KvClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", a.managers[0].grpc))
            .unwrap()
            .connect_lazy(),
    );
    assert!(put(&mut raw, "plain", "x").await.is_err());
    // The manager logged each refusal (once per peer and reason) and still serves.
    let log = a.managers[0].log_text();
    assert!(log.contains("plaintext (non-TLS)"), "{}", tail(&log));
    assert!(
        log.contains("connection refused: TLS handshake failed"),
        "{}",
        tail(&log)
    );
    let mut kv = a.managers[0].kv();
    put(&mut kv, "still", "serving")
        .await
        .expect("A still serves its own");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_token_joins_nothing_and_nodes_that_used_it_keep_working() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(1, 1).await;
    let old = fleet.cluster.worker_token.clone();
    let out = fleet
        .cluster
        .cli(&["cluster", "token", "worker", "--rotate"])
        .await;
    assert!(out.ok(), "{out:?}");
    let new = out.stdout.trim().to_string();
    assert_ne!(new, old);
    // The manager token is untouched.
    let out = fleet.cluster.cli(&["cluster", "token", "manager"]).await;
    assert_eq!(out.stdout.trim(), fleet.cluster.token);

    // A new agent with the old token: refused for good.
    let i = fleet.add_agent("late-old", vec![]);
    fleet.agents[i].kill();
    let _ = std::fs::remove_dir_all(fleet.agents[i].data_dir.join("tls"));
    let hosts = fleet.cluster.hosts();
    fleet.agents[i].spawn(&hosts, &old, &[]);
    let status = fleet.agents[i].wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(
        fleet.agents[i].log_text().contains("join token refused"),
        "{}",
        fleet.agents[i].log_text()
    );
    // With the new one: a node.
    fleet.cluster.worker_token = new;
    fleet.add_agent("late-new", vec![]);
    // node-1 (joined with the old token) and late-new are READY; late-old never registered.
    fleet.wait_nodes_ready(2).await;
    let names: Vec<String> = fleet
        .nodes()
        .await
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!names.contains(&"late-old".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_rotation_under_writes_fails_no_write_and_every_node_follows() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 1).await;
    // Operators' client certificates do not outlive the old root; managers' own do (renewed).
    fleet.cluster.admin_tls = fleet.cluster.managers[0].tls_dir();
    let c = &fleet.cluster;
    let m1 = c.managers[0].tls_dir();
    let before = ca_info(c, &m1).await;
    let old_issuer = identity(&m1).issuer;

    // Writes through every manager, each on fresh connections now and then, all the while.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (w, m) in c.managers.iter().enumerate() {
        let (addr, dir, stop) = (m.grpc.clone(), m.tls_dir(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut done = 0u32;
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // A new channel every 10 writes: new handshakes with the roots of the moment.
                let mut kv =
                    shoal_proto::v1::kv_client::KvClient::new(crate::cluster::channel(&addr, &dir));
                for _ in 0..10 {
                    let key = format!("rot/{w}/{done}");
                    if let Err(e) = put(&mut kv, &key, "v").await {
                        failed.push(format!("{key}: {e}"));
                    }
                    done += 1;
                }
                sleep(Duration::from_millis(20)).await;
            }
            (done, failed)
        }));
    }

    let out = c.cli(&["cluster", "ca", "--rotate"]).await;
    assert!(out.ok(), "{out:?}");
    let gen = before["generation"].as_u64().unwrap();
    // trusting -> reissuing -> stable: three generations on, one root again.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        let info = ca_info(c, &m1).await;
        if info["phase"] == "stable" && info["generation"].as_u64() >= Some(gen + 3) {
            break info;
        }
        assert!(Instant::now() < deadline, "rotation did not finish: {info}");
        sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(after["roots_sha256"].as_array().unwrap().len(), 1);
    assert_ne!(after["roots_sha256"], before["roots_sha256"]);
    // Every manager and the agent renewed onto the new root.
    let new_issuer = identity(&m1).issuer;
    assert_ne!(new_issuer, old_issuer);
    for m in &c.managers {
        assert_eq!(identity(&m.tls_dir()).issuer, new_issuer, "{}", m.name);
    }
    let agent_dir = fleet.agents[0].data_dir.join("tls");
    wait_until("the agent to renew onto the new root", || {
        let dir = agent_dir.clone();
        let issuer = new_issuer.clone();
        async move { identity(&dir).issuer == issuer }
    })
    .await;
    sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in writers {
        let (done, failed) = w.await.unwrap();
        assert!(
            failed.is_empty(),
            "writes failed during the rotation: {failed:?}"
        );
        total += done;
    }
    assert!(total > 30, "only {total} writes");
    // The node is still READY, and the new join tokens pin the new root.
    fleet.wait_nodes_ready(1).await;
    let out = run_cli(
        &["--host", &c.hosts(), "cluster", "token", "worker"],
        None,
        &[("SHOAL_TLS_DIR", m1.to_str().unwrap())],
    )
    .await;
    let digest = after["roots_sha256"][0].as_str().unwrap();
    assert!(out.stdout.contains(digest), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn short_lived_certificates_renew_by_themselves() {
    let _serial = serial().await;
    let mut fleet = Fleet::start_with(1, 1, &["--cert-lifetime", "20s"]).await;
    // An operator's client certificate is a file that lives 20 s too; the manager's own
    // credentials on disk are renewed.
    fleet.cluster.admin_tls = fleet.cluster.managers[0].tls_dir();
    let c = &fleet.cluster;
    let m1 = c.managers[0].tls_dir();
    let agent_dir = fleet.agents[0].data_dir.join("tls");
    let (manager_first, agent_first) = (identity(&m1), identity(&agent_dir));
    let life = agent_first
        .not_after
        .duration_since(agent_first.not_before)
        .unwrap();
    assert!(life <= Duration::from_secs(25), "lifetime {life:?}");
    // Past the first certificates' expiry: both renewed, the node still READY, writes work.
    let deadline = agent_first.not_after.max(manager_first.not_after) + Duration::from_secs(2);
    while std::time::SystemTime::now() < deadline {
        sleep(Duration::from_millis(500)).await;
    }
    assert_ne!(identity(&m1).serial, manager_first.serial);
    assert_ne!(identity(&agent_dir).serial, agent_first.serial);
    fleet.wait_nodes_ready(1).await;
    let mut kv = c.managers[0].kv();
    put(&mut kv, "after-expiry", "ok")
        .await
        .expect("a write after the first expiry");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removed_agent_can_no_longer_connect() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(1, 1).await;
    let node = fleet.nodes().await[0]["id"].as_str().unwrap().to_string();
    // A READY node needs --force.
    let out = fleet.cluster.cli(&["node", "rm", &node]).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.contains("--force"), "{out:?}");
    let out = fleet.cluster.cli(&["node", "rm", "--force", &node]).await;
    assert!(out.ok(), "{out:?}");
    // Its agent is refused at its next call and stops with one clear line.
    let status = fleet.agents[0].wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    let log = fleet.agents[0].log_text();
    assert!(
        log.contains("revoked") || log.contains("removed"),
        "{}",
        tail(&log)
    );
    // Started again with its certificate: refused again; the node stays gone.
    fleet.restart_agent(0);
    let status = fleet.agents[0].wait_exit(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| !s.success()), "{status:?}");
    assert!(fleet.nodes().await.is_empty());
}

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .env_remove("DOCKER_HOST")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .output()
        .expect("docker CLI")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_cli_gets_in_with_tlsverify_and_not_without() {
    let _serial = serial().await;
    let root = tempfile::tempdir().unwrap();
    let mut m = crate::cluster::Manager::new(root.path(), "m1");
    m.spawn(&["--docker-tls"]);
    let _token = m.wait_token().await;
    let certs = root.path().join("docker-certs");
    let out = run_cli(
        &[
            "--host",
            &m.grpc,
            "--tls-dir",
            m.tls_dir().to_str().unwrap(),
            "cluster",
            "client-cert",
            certs.to_str().unwrap(),
        ],
        None,
        &[],
    )
    .await;
    assert!(out.ok(), "{out:?}");
    let host = format!("tcp://{}", m.docker_api);
    let file = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.pem"), file("cert.pem"), file("key.pem"));
    let tls = [
        "--tlsverify",
        "--tlscacert",
        &ca,
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
        "-H",
        &host,
    ];
    let mut args = tls.to_vec();
    args.extend(["version", "--format", "{{.Server.APIVersion}}"]);
    let out = docker(&args);
    assert!(
        out.status.success(),
        "docker --tlsverify: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&m.log_text())
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.44");
    // Without certificates: refused.
    let out = docker(&["-H", &host, "version", "--format", "{{.Server.APIVersion}}"]);
    assert!(!out.status.success(), "plaintext docker got in");
    // TLS, but no client certificate: refused.
    let out = docker(&["--tls", "--tlscacert", &ca, "-H", &host, "ps"]);
    assert!(
        !out.status.success(),
        "docker without a client certificate got in"
    );

    // Beyond loopback the API is TLS without being asked; --insecure-docker-api warns.
    let port = free_port();
    let mut wide = crate::cluster::Manager::new(root.path(), "m-wide");
    wide.docker_api = format!("0.0.0.0:{port}");
    wide.spawn(&["--insecure-docker-api"]);
    let _ = wide.wait_token().await;
    assert!(wide.log_text().contains("WARNING"), "{}", wide.log_text());
}

/// A `shoal agent` this file starts itself (the harness's agents always pass `--token`), in its
/// own process group, killed with it when dropped; its output in `log`.
struct Started {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Started {
    /// `shoal agent --data-dir ROOT/DIR --join HOSTS --name NAME --advertise-addr ADDR` plus
    /// `args`, with `envs` (and no SHOAL_TOKEN of the test's own environment).
    fn agent(
        root: &Path,
        dir: &str,
        name: &str,
        hosts: &str,
        addr: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Started {
        use std::os::unix::process::CommandExt;
        let log = root.join(format!("{dir}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let data_dir = root.join(dir);
        let child = std::process::Command::new(crate::cluster::SHOAL)
            .args(["agent", "--data-dir", data_dir.to_str().unwrap()])
            .args(["--join", hosts, "--name", name, "--advertise-addr", addr])
            .args(args)
            .env_remove("SHOAL_TOKEN")
            .env_remove("SHOAL_TOKEN_FILE")
            .envs(envs.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawning shoal agent");
        Started { child, log }
    }

    /// Its exit status, if it exits within 30 s.
    async fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        let _ = killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

/// Asserts that an agent stopped by itself, non-zero, with exactly one `error:` line that
/// contains `what`.
async fn refused_with(agent: &mut Started, what: &str) {
    let status = agent.wait_exit().await;
    let log = agent.log_text();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}: {}",
        tail(&log)
    );
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{}", tail(&log));
    assert!(errors[0].contains(what), "{}", errors[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_name_stays_its_nodes_until_the_node_is_removed() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(1, 1).await;
    let root = fleet.cluster.root().to_path_buf();
    let hosts = fleet.cluster.hosts();
    let token = fleet.cluster.worker_token.clone();
    let node1 = fleet.nodes().await[0]["id"].as_str().unwrap().to_string();
    let taken = format!("node name node-1 is taken by node {node1}");

    // A newcomer (a data dir of its own) calling itself node-1 while node-1 is ready: refused.
    let args = ["--token", token.as_str()];
    let mut newcomer = Started::agent(&root, "new1", "node-1", &hosts, "127.0.0.20", &args, &[]);
    refused_with(&mut newcomer, &format!("{taken} (ready)")).await;

    // Down is not gone: node-1's name (and the placements made by it) stay node-1's.
    fleet.agents[0].kill();
    fleet
        .wait_for("node-1 down", || async {
            let nodes = fleet.nodes().await;
            (nodes[0]["status"] == "down").then_some(())
        })
        .await;
    let mut newcomer = Started::agent(&root, "new2", "node-1", &hosts, "127.0.0.20", &args, &[]);
    refused_with(&mut newcomer, &format!("{taken} (down)")).await;

    // The node itself, restarted with its certificate, is node-1 again.
    fleet.restart_agent(0);
    fleet.wait_nodes_ready(1).await;
    assert_eq!(fleet.nodes().await[0]["id"], node1.as_str());

    // Once the node is removed, the name is free.
    let out = fleet.cluster.cli(&["node", "rm", "--force", &node1]).await;
    assert!(out.ok(), "{out:?}");
    let _successor = Started::agent(&root, "new3", "node-1", &hosts, "127.0.0.21", &args, &[]);
    fleet
        .wait_for("a new node-1", || async {
            let nodes = fleet.nodes().await;
            nodes
                .iter()
                .any(|n| {
                    n["name"] == "node-1" && n["status"] == "ready" && n["id"] != node1.as_str()
                })
                .then_some(())
        })
        .await;
}

/// An IPv4 address of this machine beyond loopback (the Docker bridge's at least).
fn outside_ip() -> Option<String> {
    let out = std::process::Command::new("hostname")
        .arg("-I")
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|s| s.parse::<std::net::Ipv4Addr>().ok())
        .find(|ip| !ip.is_loopback())
        .map(|ip| ip.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cannot_carry_a_managers_address() {
    let _serial = serial().await;
    let Some(ip) = outside_ip() else {
        panic!("this test needs an IPv4 address beyond loopback (hostname -I)");
    };
    // The manager's certificate names `ip` (its metrics listener is there).
    let metrics = format!("{ip}:0");
    let c = Cluster::start_with(1, &["--metrics-addr", &metrics]).await;
    let hosts: Vec<String> = c.managers.iter().map(|m| m.grpc.clone()).collect();
    let ask = |name: String, sans: Vec<String>| {
        let (hosts, token) = (hosts.clone(), c.worker_token.clone());
        async move { join::join(&hosts, &token, Role::Worker, &name, &sans).await }
    };
    // Asked from 127.0.0.1, not from `ip`: refused (once the manager has recorded its names).
    let mut attempt = 0;
    wait_until("a manager's address refused", || {
        attempt += 1;
        let try_it = ask(format!("claims{attempt}"), vec![ip.clone()]);
        let refusal = format!("cannot name {ip}");
        async move {
            match try_it.await {
                Err(e) => {
                    assert!(e.to_string().contains(&refusal), "{e}");
                    true
                }
                Ok(_) => false,
            }
        }
    })
    .await;
    // A loopback address (a manager's too) and an address of no manager stay the node's own.
    let ok = ask(
        "ownaddrs".into(),
        vec!["127.0.0.1".into(), "127.0.0.30".into()],
    )
    .await;
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
    // Nor a manager's host name, ever.
    let e = ask("hostname".into(), vec!["localhost".into()]).await;
    assert!(e
        .err()
        .is_some_and(|e| e.to_string().contains("IP addresses only")));
}

/// Every file and directory under `dir` that its group or others may read, write or enter.
fn shared_entries(dir: &Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // RocksDB removed it meanwhile
        };
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!(
                "{:o} {}",
                meta.permissions().mode() & 0o7777,
                path.display()
            ));
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                todo.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_come_from_a_file_or_the_environment_and_data_dirs_are_private() {
    let _serial = serial().await;
    let out_dir = tempfile::tempdir().unwrap();
    let token_file = out_dir.path().join("worker-token");
    let path = token_file.to_str().unwrap();
    let c = Cluster::start_with(1, &["--write-worker-token", path]).await;
    let root = c.root().to_path_buf();
    let hosts = c.hosts();
    // The manager keeps the worker token there too (what compose hands to agents and proxies).
    wait_until("the worker token file", || async { token_file.exists() }).await;
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        c.worker_token
    );
    assert_eq!(shared_entries(&token_file), Vec::<String>::new());

    // One agent reads the token from that file, one from the environment: no token in argv.
    let by_file = Started::agent(
        &root,
        "by-file",
        "by-file",
        &hosts,
        "127.0.0.22",
        &["--token-file", path],
        &[],
    );
    let by_env = Started::agent(
        &root,
        "by-env",
        "by-env",
        &hosts,
        "127.0.0.23",
        &[],
        &[("SHOAL_TOKEN", &c.worker_token)],
    );
    wait_until("both agents' nodes ready", || async {
        let out = c.cli(&["node", "ls", "--json"]).await;
        let nodes: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
        let ready = |name: &str| {
            nodes.as_array().is_some_and(|n| {
                n.iter()
                    .any(|n| n["name"] == name && n["status"] == "ready")
            })
        };
        ready("by-file") && ready("by-env")
    })
    .await;
    for agent in [&by_file, &by_env] {
        let argv = std::fs::read(format!("/proc/{}/cmdline", agent.child.id())).unwrap();
        let argv = String::from_utf8_lossy(&argv);
        assert!(
            !argv.contains(&c.worker_token),
            "the token shows in ps: {argv}"
        );
    }

    // Nothing the processes wrote is anyone else's to read: the manager's RocksDB, log,
    // snapshots, keys and tokens, the agents' node ids and keys.
    let mut kv = c.managers[0].kv();
    for i in 0..50 {
        put(&mut kv, &format!("private/{i}"), "x").await.unwrap();
    }
    for dir in [
        c.managers[0].data_dir.clone(),
        root.join("by-file"),
        root.join("by-env"),
    ] {
        assert!(dir
            .join(if dir.ends_with("m1") {
                "tls/kek"
            } else {
                "node_id"
            })
            .exists());
        assert_eq!(
            shared_entries(&dir),
            Vec::<String>::new(),
            "{}",
            dir.display()
        );
    }
}
