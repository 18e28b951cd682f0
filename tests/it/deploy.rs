//! deploy/: the compose deployment of the seed's architecture, end to end on this machine's engine
//! (3 managers, 2 agents, nginx with `shoal proxy`, from images `deploy/images/build` makes of this
//! build's `shoal`, no registry), walked through as README's Deploy section does; and `--config`
//! files with the real binary. Every container, volume and network is removed at the end, passed
//! or failed.

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use crate::cluster::{free_port, run_cli, serial, CliOutput, SHOAL, WAIT};
use crate::fleet::{docker_inspect, docker_ps, http_request, remove_node_containers, whoami_image};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Not `latest`: an operator's own deployment on this machine keeps its image.
const IMAGE: &str = "shoal/shoal:test";

/// What a command printed and how it exited.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `program ARGS` with `envs`, bounded by 3 minutes.
fn run(program: &str, args: &[&str], envs: &[(String, String)]) -> Out {
    let out = Command::new("timeout")
        .arg("180")
        .arg(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .env_remove("DOCKER_HOST")
        .env("COMPOSE_INTERACTIVE_NO_CLI", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Asserts success; returns trimmed stdout.
#[track_caller]
fn ok(out: Out, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}\n{}", out.stderr, out.stdout);
    out.stdout.trim().to_string()
}

/// Polls `check` every 300 ms until it returns Some, for at most WAIT.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(300)).await;
    }
}

/// One manager's addresses (all on 127.0.0.1, host networking).
struct ManagerPorts {
    grpc: String,
    docker_api: String,
}

/// One `docker-compose -p PROJECT -f deploy/compose.yml` deployment with its own ports; torn down
/// (with the example app's containers and network) when dropped.
struct Deployment {
    project: String,
    /// The compose project of deploy/example (the seed's app), run through the managers.
    app: String,
    env: Vec<(String, String)>,
    managers: Vec<ManagerPorts>,
    proxy: String,
    node_ids: Vec<String>,
    /// manager-1's credentials, copied out of its container for the CLI on this host.
    tls: tempfile::TempDir,
}

impl Deployment {
    fn new() -> Deployment {
        let id = std::process::id();
        let project = format!("shoaldeploy{id}");
        let mut env = vec![
            ("SHOAL_IMAGE".to_string(), IMAGE.to_string()),
            ("SHOAL_NGINX_CONTAINER".into(), format!("{project}-nginx")),
        ];
        let mut managers = Vec::new();
        for i in 1..=4 {
            let (grpc, docker_api, http) = (free_port(), free_port(), free_port());
            env.push((format!("SHOAL_MANAGER_{i}_PORT"), grpc.to_string()));
            env.push((
                format!("SHOAL_MANAGER_{i}_DOCKER_API"),
                docker_api.to_string(),
            ));
            env.push((format!("SHOAL_MANAGER_{i}_HTTP"), http.to_string()));
            managers.push(ManagerPorts {
                grpc: format!("127.0.0.1:{grpc}"),
                docker_api: format!("127.0.0.1:{docker_api}"),
            });
        }
        let joined: Vec<&str> = managers[..3].iter().map(|m| m.grpc.as_str()).collect();
        env.push(("SHOAL_MANAGERS".into(), joined.join(",")));
        for node in 1..=2 {
            let var = format!("SHOAL_NODE_{node}_ENGINE_PORT");
            env.push((var, free_port().to_string()));
        }
        let proxy_port = free_port();
        env.push(("SHOAL_PROXY_PORT".into(), proxy_port.to_string()));
        env.push(("SHOAL_PROXY_HTTPS_PORT".into(), free_port().to_string()));
        Deployment {
            project,
            app: format!("seed{id}"),
            env,
            managers,
            proxy: format!("127.0.0.1:{proxy_port}"),
            node_ids: Vec::new(),
            tls: tempfile::tempdir().unwrap(),
        }
    }

    /// manager-1's `DATA_DIR/tls` on this host (copied once it exists), for `--tls-dir`.
    fn credentials(&self) -> String {
        let dir = self.tls.path();
        if !dir.join("key.pem").exists() {
            let container = self.container_of("manager-1");
            if !container.is_empty() {
                let from = format!("{container}:/var/lib/shoal/tls/.");
                let _ = run("docker", &["cp", &from, dir.to_str().unwrap()], &[]);
            }
        }
        dir.display().to_string()
    }

    /// `docker-compose` on deploy/compose.yml; `--profile extra` first for manager-4.
    fn compose(&self, args: &[&str]) -> Out {
        let file = format!("{ROOT}/deploy/compose.yml");
        let pre = ["-p", &self.project, "-f", &file];
        let all: Vec<&str> = pre.iter().chain(args).copied().collect();
        run("docker-compose", &all, &self.env)
    }

    /// `docker-compose -H` on the seed's app, through the manager at `docker_api`.
    fn app(&self, docker_api: &str, args: &[&str]) -> Out {
        let file = format!("{ROOT}/deploy/example/docker-compose.yml");
        let host = format!("tcp://{docker_api}");
        let pre = ["-H", &host, "-p", &self.app, "-f", &file];
        let all: Vec<&str> = pre.iter().chain(args).copied().collect();
        run("docker-compose", &all, &[])
    }

    /// `docker -H` through the manager at `docker_api`.
    fn docker(&self, docker_api: &str, args: &[&str]) -> Out {
        let host = format!("tcp://{docker_api}");
        let all: Vec<&str> = ["-H", &host].iter().chain(args).copied().collect();
        run("docker", &all, &[])
    }

    /// The CLI with `--host` naming the first three managers.
    async fn cli(&self, args: &[&str]) -> CliOutput {
        let hosts: Vec<&str> = self.managers[..3].iter().map(|m| m.grpc.as_str()).collect();
        let hosts = hosts.join(",");
        let all: Vec<&str> = ["--host", &hosts, "--timeout", "5s"]
            .iter()
            .chain(args)
            .copied()
            .collect();
        let tls = self.credentials();
        run_cli(&all, None, &[("SHOAL_TLS_DIR", &tls)]).await
    }

    async fn json(&self, args: &[&str]) -> Option<Value> {
        let out = self.cli(args).await;
        out.ok()
            .then(|| serde_json::from_str(&out.stdout).ok())
            .flatten()
    }

    /// `cluster status --json` once there is a leader and `voters` healthy voters.
    async fn wait_members(&self, voters: usize) -> Value {
        eventually(&format!("a leader and {voters} healthy voters"), || async {
            let status = self.json(&["cluster", "status", "--json"]).await?;
            let members = status["members"].as_array()?;
            let healthy = members
                .iter()
                .filter(|m| m["voter"] == true && m["healthy"] == true)
                .count();
            let leader = status["leader_id"].as_u64().unwrap_or(0) != 0;
            (leader && healthy == voters && members.len() == voters).then_some(status)
        })
        .await
    }

    async fn nodes(&self) -> Vec<Value> {
        let nodes = self.json(&["node", "ls", "--json"]).await;
        nodes
            .and_then(|n| n.as_array().cloned())
            .unwrap_or_default()
    }

    async fn wait_node(&self, name: &str, status: &str) {
        eventually(&format!("{name} {status}"), || async {
            let nodes = self.nodes().await;
            nodes
                .iter()
                .any(|n| n["name"] == name && n["status"] == status)
                .then_some(())
        })
        .await
    }

    /// The compose service of the manager whose gRPC address is `addr` (`manager-2`).
    fn manager_service(&self, addr: &str) -> String {
        let i = self.managers.iter().position(|m| m.grpc == addr);
        format!("manager-{}", i.expect("a manager of this deployment") + 1)
    }

    fn container_of(&self, service: &str) -> String {
        let args = ["--profile", "extra", "ps", "-q", service];
        ok(self.compose(&args), "compose ps -q")
    }

    /// `NODE/NAME` of the running apache containers, through the manager at `docker_api`.
    fn apache(&self, docker_api: &str) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.app);
        let out = self.docker(
            docker_api,
            &[
                "ps",
                "--filter",
                &filter,
                "--filter",
                "label=com.docker.compose.service=apache",
                "--format",
                "{{.Names}}",
            ],
        );
        let mut names: Vec<String> = out.stdout.lines().map(String::from).collect();
        names.sort();
        names
    }

    /// The (container, node id) pairs that answered 40 requests for test.local through nginx.
    async fn backends(&self) -> BTreeSet<(String, String)> {
        let mut seen = BTreeSet::new();
        for _ in 0..40 {
            let Some(text) = get_test_local(&self.proxy).await else {
                continue;
            };
            if !status_200(&text) {
                continue;
            }
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("?")
                    .trim()
                    .to_string()
            };
            seen.insert((field("container:"), field("node:")));
        }
        seen
    }

    /// Waits until nginx balances test.local over exactly `n` containers (on node id `node` only,
    /// if given).
    async fn wait_backends(&self, n: usize, node: Option<&str>) -> BTreeSet<(String, String)> {
        eventually(&format!("{n} backends behind nginx"), || async {
            let seen = self.backends().await;
            let on_node = node.is_none_or(|node| seen.iter().all(|(_, n)| n == node));
            (seen.len() == n && on_node).then_some(seen)
        })
        .await
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.compose(&["logs", "--no-color", "--tail", "30"]);
            eprintln!("--- compose logs ---\n{}{}", logs.stdout, logs.stderr);
        }
        // The app through any manager still up, then the deployment, then what agents left.
        if let Some(m) = self.managers.first() {
            let _ = self.app(&m.docker_api, &["down", "--timeout", "1"]);
        }
        let down = [
            "--profile",
            "extra",
            "down",
            "-v",
            "--remove-orphans",
            "--timeout",
            "5",
        ];
        let _ = self.compose(&down);
        for id in &self.node_ids {
            remove_node_containers(id);
        }
        let network = format!("label=shoal.network={}_default", self.app);
        let out = run(
            "docker",
            &["network", "ls", "-q", "--filter", &network],
            &[],
        );
        for id in out.stdout.split_whitespace() {
            let _ = run("docker", &["network", "rm", id], &[]);
        }
    }
}

/// GET /index.php with `Host: test.local`, as the seed's `curl http://test.local/index.php`.
async fn get_test_local(addr: &str) -> Option<String> {
    http_request(addr, "/index.php", "test.local").await
}

/// Whether a response's status line says 200 (HTTP/1.0 or 1.1).
fn status_200(response: &str) -> bool {
    response.split(' ').nth(1) == Some("200")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_compose_deployment_runs_the_seed_walkthrough() {
    let _serial = serial().await;
    whoami_image();
    let build = format!("{ROOT}/deploy/images/build");
    let envs = [
        ("SHOAL_BIN".to_string(), SHOAL.to_string()),
        ("SHOAL_IMAGE".to_string(), IMAGE.to_string()),
    ];
    ok(run(&build, &["shoal"], &envs), "deploy/images/build shoal");

    let mut d = Deployment::new();
    ok(d.compose(&["up", "-d"]), "compose up");
    let status = d.wait_members(3).await;
    assert_eq!(status["members"].as_array().unwrap().len(), 3);
    d.wait_node("node-1", "ready").await;
    d.wait_node("node-2", "ready").await;
    let nodes = d.nodes().await;
    d.node_ids = nodes
        .iter()
        .filter_map(|n| n["id"].as_str().map(String::from))
        .collect();
    let node_id = |name: &str| {
        let node = nodes.iter().find(|n| n["name"] == name).unwrap();
        node["id"].as_str().unwrap().to_string()
    };
    let (node1, node2) = (node_id("node-1"), node_id("node-2"));
    // No manager-4 without its profile being asked for.
    assert_eq!(d.container_of("manager-4"), "");

    // The seed's `docker -H tcp://192.168.1.51:8333 info`: both nodes, node-1 with storage=ssd.
    let m2 = d.managers[1].docker_api.clone();
    let info = ok(
        d.docker(&m2, &["info", "--format", "{{json .SystemStatus}}"]),
        "docker info",
    );
    assert!(info.contains("\"Nodes\",\"2\""), "{info}");
    assert!(
        info.contains("node-1") && info.contains("storage=ssd"),
        "{info}"
    );

    // The seed's app through a manager's Docker API, then `scale apache=4`.
    ok(d.app(&m2, &["up", "-d"]), "compose up (the app)");
    ok(d.app(&m2, &["scale", "apache=4"]), "compose scale apache=4");
    let apache = eventually("4 apache running", || async {
        let names = d.apache(&m2);
        (names.len() == 4).then_some(names)
    })
    .await;
    let on: BTreeSet<&str> = apache.iter().filter_map(|n| n.split('/').next()).collect();
    assert_eq!(on.len(), 2, "spread over both nodes: {apache:?}");
    let db = ok(
        d.docker(
            &m2,
            &[
                "ps",
                "--filter",
                "label=com.docker.compose.service=db",
                "--format",
                "{{.Names}}",
            ],
        ),
        "docker ps db",
    );
    assert!(db.starts_with("node-1/"), "db on the ssd node: {db}");
    // curl test.local through nginx: all four answer.
    let backends = d.wait_backends(4, None).await;
    let answered: BTreeSet<&str> = backends.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(answered.len(), 2, "{backends:?}");

    // Kill a container as the seed does (kill -9 of its process): the engine restarts it.
    let engine_apache = docker_ps(&format!("label=com.docker.compose.project={}", d.app), true);
    let victim = engine_apache
        .iter()
        .find(|id| {
            docker_inspect(
                id,
                "{{index .Config.Labels \"com.docker.compose.service\"}}",
            ) == "apache"
        })
        .expect("an apache container in the engine")
        .clone();
    let pid = docker_inspect(&victim, "{{.State.Pid}}");
    ok(run("kill", &["-9", &pid], &[]), "kill -9");
    eventually("the killed container restarted", || async {
        let state = docker_inspect(&victim, "{{.State.Running}} {{.RestartCount}}");
        (state != "true 0" && state.starts_with("true")).then_some(())
    })
    .await;
    d.wait_backends(4, None).await;

    // Kill the leader's container: clients see nothing change.
    let status = d.wait_members(3).await;
    let leader_id = status["leader_id"].as_u64().unwrap();
    let leader_addr = status["leader_addr"].as_str().unwrap().to_string();
    let leader = d.manager_service(&leader_addr);
    ok(
        run("docker", &["kill", &d.container_of(&leader)], &[]),
        "docker kill leader",
    );
    let survivor = d
        .managers
        .iter()
        .take(3)
        .find(|m| m.grpc != leader_addr)
        .unwrap()
        .docker_api
        .clone();
    eventually("a new leader", || async {
        let status = d.json(&["cluster", "status", "--json"]).await?;
        let id = status["leader_id"].as_u64().unwrap_or(0);
        (id != 0 && id != leader_id).then_some(())
    })
    .await;
    let put = d.cli(&["kv", "put", "deploy/after-failover", "yes"]).await;
    assert!(put.ok(), "a write after the leader died: {put:?}");
    assert_eq!(d.apache(&survivor).len(), 4);
    d.wait_backends(4, None).await;
    // Back (restart policy or by hand): it rejoins as a voter.
    ok(d.compose(&["start", &leader]), "compose start");
    d.wait_members(3).await;

    // Stop a node (its agent's container): its apache containers move to node-1.
    ok(d.compose(&["stop", "agent-2"]), "compose stop agent-2");
    d.wait_node("node-2", "down").await;
    eventually("4 apache on node-1", || async {
        let names = d.apache(&survivor);
        (names.len() == 4 && names.iter().all(|n| n.starts_with("node-1/"))).then_some(())
    })
    .await;
    d.wait_backends(4, Some(&node1)).await;
    // The node comes back: its superseded copies are stopped, nothing runs twice.
    ok(d.compose(&["start", "agent-2"]), "compose start agent-2");
    d.wait_node("node-2", "ready").await;
    eventually("node-2's old containers stopped", || async {
        docker_ps(&format!("label=shoal.node={node2}"), true)
            .is_empty()
            .then_some(())
    })
    .await;
    assert_eq!(d.apache(&survivor).len(), 4);

    // `docker-compose restart` of the managers: the data is in the volumes.
    ok(
        d.compose(&["restart", "-t", "5", "manager-1", "manager-2", "manager-3"]),
        "compose restart",
    );
    d.wait_members(3).await;
    let get = d.cli(&["kv", "get", "deploy/after-failover"]).await;
    assert_eq!((get.ok(), get.stdout.trim()), (true, "yes"), "{get:?}");
    d.wait_node("node-1", "ready").await;
    d.wait_node("node-2", "ready").await;
    assert_eq!(d.apache(&survivor).len(), 4);
    d.wait_backends(4, None).await;

    // Add a manager (the `extra` profile), then remove it.
    let extra = ["--profile", "extra", "up", "-d", "manager-4"];
    ok(d.compose(&extra), "compose up manager-4");
    let status = d.wait_members(4).await;
    let m4 = &d.managers[3].grpc;
    let id = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["addr"] == m4.as_str())
        .and_then(|m| m["id"].as_u64())
        .expect("manager-4 is a member");
    let removed = d.cli(&["manager", "remove", &id.to_string()]).await;
    assert!(removed.ok(), "{removed:?}");
    d.wait_members(3).await;
    let stop = ["--profile", "extra", "stop", "manager-4"];
    ok(d.compose(&stop), "compose stop manager-4");

    ok(
        d.app(&survivor, &["down", "--timeout", "1"]),
        "compose down (the app)",
    );
    assert!(d.apache(&survivor).is_empty());
    drop(d);
}

/// A `shoal` process killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `shoal ARGS` with `envs`, in the background.
fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Running {
    let child = Command::new(SHOAL)
        .args(args)
        .env_remove("SHOAL_CONFIG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning shoal");
    Running(child)
}

/// Whether a manager serves `/health` on `http` within 30 s.
async fn serves_health(http: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let health = http_request(http, "/health", http).await;
        if health.is_some_and(|r| status_200(&r)) {
            return true;
        }
        sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_configures_a_manager_and_shoal_variables_override_it() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let config = dir.path().join("shoal.toml");
    std::fs::write(
        &config,
        format!(
            "[manager]\ndata-dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp = \"127.0.0.1:{http}\"\ndocker-api = \"127.0.0.1:{}\"\n\n[agent]\nlabel = [\"storage=ssd\"]\n",
            dir.path().join("m1").display(),
            free_port()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let at = |port: u16| format!("127.0.0.1:{port}");

    // The file alone.
    let m = spawn(&["--config", &config, "manager"], &[]);
    assert!(serves_health(&at(http)).await, "the file's --http");
    let tls = dir.path().join("m1").join("tls");
    let status = run_cli(
        &["--host", &at(grpc), "cluster", "status", "--json"],
        None,
        &[("SHOAL_TLS_DIR", tls.to_str().unwrap())],
    )
    .await;
    assert!(status.ok(), "the file's --listen: {status:?}");
    drop(m);

    // SHOAL_HTTP over the file, SHOAL_CONFIG instead of --config.
    let env_http = free_port();
    let m = spawn(
        &["manager"],
        &[("SHOAL_CONFIG", &config), ("SHOAL_HTTP", &at(env_http))],
    );
    assert!(
        serves_health(&at(env_http)).await,
        "SHOAL_HTTP wins over the file"
    );
    drop(m);

    // The command line over both.
    let cli_http = free_port();
    let m = spawn(
        &["--config", &config, "manager", "--http", &at(cli_http)],
        &[("SHOAL_HTTP", &at(env_http))],
    );
    assert!(
        serves_health(&at(cli_http)).await,
        "--http wins over SHOAL_HTTP"
    );
    drop(m);

    // A key that is no flag: one line, exit 2, nothing started.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[manager]\ndata-dir = \"/x\"\nlisen = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = run_cli(&["--config", bad.to_str().unwrap(), "manager"], None, &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:?}");
    assert!(
        out.stderr.contains("unknown key `lisen` in [manager]"),
        "{out:?}"
    );

    // The shipped example: valid, and it names every flag of the three commands.
    let example = format!("{ROOT}/deploy/shoal.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let out = run_cli(
        &[
            "--config",
            &example,
            "--host",
            "127.0.0.1:1",
            "--timeout",
            "1s",
            "kv",
            "get",
            "k",
        ],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "valid, then no manager: {out:?}");
    for command in ["manager", "agent", "proxy"] {
        let help = run_cli(&[command, "--help"], None, &[]).await;
        for line in help.stdout.lines().map(str::trim_start) {
            // `  --data-dir <DATA_DIR>` or `  -h, --help`
            let line = match line.split_once(", ") {
                Some((short, long)) if short.len() == 2 && short.starts_with('-') => long,
                _ => line,
            };
            let Some(flag) = line.strip_prefix("--") else {
                continue;
            };
            let key = flag.split([' ', '=', '<']).next().unwrap();
            if ["help", "host", "timeout", "tls-dir", "force-new-cluster"].contains(&key) {
                continue;
            }
            let listed = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key} ="))
            });
            assert!(listed, "deploy/shoal.toml lacks [{command}] {key}");
        }
    }
}
