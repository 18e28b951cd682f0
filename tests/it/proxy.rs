//! Interlock rebuilt, end to end: the leader renders the nginx config from RUNNING tasks with
//! Interlock labels, `shoal proxy` applies it to a real nginx (Debian's nginx-light) on a free
//! port, and requests with `Host: test.local` reach the whoami backends, through scaling, killed
//! containers, a killed leader and a broken operator template; a scale down drops no request
//! even with nginx's retries turned off (tasks leave the config before they stop).

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use shoal::model::ProxyModel;
use shoal::proxy::render::{render, ProxyKind, RenderOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, Instant};

use crate::cluster::{free_port, serial, tail, SHOAL};
use crate::fleet::Fleet;

/// nginx and `shoal proxy` next to it, in a temp dir of the cluster's.
pub struct Proxy {
    port: u16,
    pub dir: PathBuf,
    nginx: Option<Child>,
    proxy: Option<Child>,
}

impl Proxy {
    pub async fn start(fleet: &Fleet, name: &str, template: Option<&str>) -> Proxy {
        let dir = fleet.cluster.root().join(name);
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let port = free_port();
        let options = RenderOptions {
            http_port: port,
            https_port: free_port(),
            run_dir: Some(run.display().to_string()),
        };
        let initial = render(ProxyKind::Nginx, &ProxyModel::default(), 0, &options, None).unwrap();
        let config = dir.join("nginx.conf");
        std::fs::write(&config, initial).unwrap();
        let log = |file: &str| std::fs::File::create(dir.join(file)).unwrap();
        let nginx = Command::new("nginx")
            .arg("-c")
            .arg(&config)
            .arg("-p")
            .arg(&dir)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(log("nginx.out"))
            .stderr(log("nginx.err"))
            .process_group(0)
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        let mut args: Vec<String> = [
            "proxy",
            "--join",
            &fleet.cluster.hosts(),
            "--token",
            &fleet.cluster.worker_token,
            "--kind",
            "nginx",
            "--name",
            name,
            "--config",
            config.to_str().unwrap(),
            "--pid-file",
            run.join("nginx.pid").to_str().unwrap(),
            "--listen-port",
            &port.to_string(),
            "--run-dir",
            run.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = template {
            args.extend(["--template".to_string(), t.to_string()]);
        }
        let out = std::fs::File::create(dir.join("proxy.log")).unwrap();
        let proxy = Command::new(SHOAL)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawning shoal proxy");
        Proxy {
            port,
            dir,
            nginx: Some(nginx),
            proxy: Some(proxy),
        }
    }

    /// The built-in template with nginx's retries off: a request sent to a stopped container
    /// fails, so only draining (a task leaves the config, then stops) keeps them all.
    pub async fn without_retries(fleet: &Fleet, name: &str) -> Proxy {
        let template = fleet
            .cluster
            .root()
            .join(format!("{name}-no-retries.conf.j2"));
        let builtin = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src/proxy/templates/nginx.conf.j2"
        ))
        .unwrap();
        let retries = "proxy_next_upstream error timeout http_502 http_503;";
        assert!(builtin.contains(retries), "the template changed: {builtin}");
        std::fs::write(
            &template,
            builtin.replace(retries, "proxy_next_upstream off;"),
        )
        .unwrap();
        let proxy = Proxy::start(fleet, name, Some(template.to_str().unwrap())).await;
        fleet
            .wait_for("the proxy to run the template without retries", || async {
                let live = std::fs::read_to_string(proxy.dir.join("nginx.conf")).ok()?;
                live.contains("proxy_next_upstream off;").then_some(())
            })
            .await;
        proxy
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| tail(&std::fs::read_to_string(self.dir.join(f)).unwrap_or_default());
        format!(
            "---- proxy ----\n{}\n---- nginx ----\n{}\n{}",
            read("proxy.log"),
            read("nginx.err"),
            read("run/error.log")
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for child in [self.proxy.take(), self.nginx.take()].into_iter().flatten() {
            let mut child = child;
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// One `GET /` with `Host: host`; the body of a 200 answer, else None.
pub async fn get(addr: &str, host: &str) -> Option<String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The task id a whoami answer names.
pub fn task_of(body: &str) -> Option<String> {
    body.lines()
        .find_map(|l| l.strip_prefix("task:").or_else(|| l.strip_prefix("task=")))
        .map(|t| t.trim().to_string())
}

/// Requests in a closed loop until stopped: how many, and how many failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    handle: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(addr: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let handle = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                n.fetch_add(1, Ordering::Relaxed);
                if get(&addr, "test.local").await.is_none() {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                sleep(Duration::from_millis(5)).await;
            }
        });
        Load {
            stop,
            sent,
            failed,
            handle,
        }
    }

    /// Stops the load and asserts that it ran and that no request failed.
    pub async fn finish_without_failures(self, proxy: &Proxy) {
        let (sent, failed) = self.finish().await;
        eprintln!("load through the proxy: {sent} requests, {failed} failed");
        assert!(sent > 50, "the load ran: {sent}");
        assert_eq!(
            failed,
            0,
            "{failed} of {sent} requests failed\n{}",
            proxy.logs()
        );
    }

    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.await;
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Waits until `n` requests through the proxy reach exactly `want` distinct tasks.
pub async fn wait_backends(fleet: &Fleet, proxy: &Proxy, want: usize) -> BTreeSet<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = BTreeSet::new();
        let mut ok = true;
        for _ in 0..(want * 10).max(10) {
            match get(&proxy.addr(), "test.local")
                .await
                .as_deref()
                .and_then(task_of)
            {
                Some(task) => {
                    seen.insert(task);
                }
                None => ok = false,
            }
        }
        if ok && seen.len() == want {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "requests reached {} backends (all ok: {ok}), want {want}\n{}\n{}",
            seen.len(),
            proxy.logs(),
            fleet.logs()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

async fn web(fleet: &Fleet, replicas: usize) {
    let interlock = [
        "--label",
        "interlock.hostname=test",
        "--label",
        "interlock.domain=local",
    ];
    fleet.create_whoami("web", replicas, &interlock).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nginx_reaches_every_backend_and_drops_no_request_while_scaling() {
    let _serial = serial().await;
    let fleet = Fleet::start(3, 2).await;
    web(&fleet, 4).await;
    let tasks = fleet.wait_running("web", 4).await;
    let proxy = Proxy::start(&fleet, "px1", None).await;

    // The seed: 40 requests with Host: test.local reach all 4 backends.
    let seen = wait_backends(&fleet, &proxy, 4).await;
    let ids: BTreeSet<String> = tasks
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, ids);
    // Any other host: 503 from the default server.
    assert_eq!(get(&proxy.addr(), "other.local").await, None);

    let config = fleet.ok(&["proxy", "config"]).await;
    assert!(config.contains("upstream test.local"), "{config}");
    let status: Value = fleet.json(&["proxy", "status", "--json"]).await;
    assert_eq!(status[0]["name"], "px1", "{status}");

    // Scale 1 → 8 → 1 under continuous load: not one failed request.
    fleet.ok(&["service", "scale", "web=1"]).await;
    wait_backends(&fleet, &proxy, 1).await;
    let load = Load::start(proxy.addr());
    fleet.ok(&["service", "scale", "web=8"]).await;
    fleet.wait_running("web", 8).await;
    wait_backends(&fleet, &proxy, 8).await;
    fleet.ok(&["service", "scale", "web=1"]).await;
    fleet.wait_running("web", 1).await;
    wait_backends(&fleet, &proxy, 1).await;
    load.finish_without_failures(&proxy).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_backend_leaves_the_upstream_and_a_leader_kill_drops_nothing() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    web(&fleet, 4).await;
    let tasks = fleet.wait_running("web", 4).await;
    let proxy = Proxy::start(&fleet, "px1", None).await;
    wait_backends(&fleet, &proxy, 4).await;

    // Remove one backend's container: its server leaves the config.
    let victim = &tasks[0];
    let addr = format!(
        "{}:{}",
        victim["ports"][0]["host_ip"].as_str().unwrap(),
        victim["ports"][0]["host_port"]
    );
    let container = victim["container_id"].as_str().unwrap();
    let out = Command::new("docker")
        .args(["rm", "-f", container])
        .output()
        .unwrap();
    assert!(out.status.success());
    fleet
        .wait_for("the dead backend to leave the config", || async {
            let config = fleet.ok(&["proxy", "config"]).await;
            (!config.contains(&format!("server {addr} "))).then_some(())
        })
        .await;
    // Its slot is refilled and the new task joins.
    fleet.wait_running("web", 4).await;
    wait_backends(&fleet, &proxy, 4).await;

    // kill -9 the leader under load: traffic keeps flowing, the config converges.
    let load = Load::start(proxy.addr());
    sleep(Duration::from_millis(300)).await;
    let leader = fleet.cluster.wait_leader().await;
    fleet.cluster.managers[leader].kill();
    fleet.cluster.wait_leader().await;
    fleet.ok(&["service", "scale", "web=5"]).await;
    fleet.wait_running("web", 5).await;
    wait_backends(&fleet, &proxy, 5).await;
    load.finish_without_failures(&proxy).await;
    let stored: Value = fleet.json(&["proxy", "config", "--json"]).await;
    fleet
        .wait_for("the proxy to apply the latest generation", || async {
            let status: Value = fleet.json(&["proxy", "status", "--json"]).await;
            (status[0]["applied_generation"] == stored["generation"]).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_template_keeps_the_previous_config_serving() {
    let _serial = serial().await;
    let fleet = Fleet::start(1, 1).await;
    web(&fleet, 2).await;
    fleet.wait_running("web", 2).await;
    let template = fleet.cluster.root().join("mine.conf.j2");
    let builtin = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/proxy/templates/nginx.conf.j2"
    );
    std::fs::copy(builtin, &template).unwrap();
    let proxy = Proxy::start(&fleet, "px1", Some(template.to_str().unwrap())).await;
    wait_backends(&fleet, &proxy, 2).await;
    let live = std::fs::read_to_string(proxy.dir.join("nginx.conf")).unwrap();

    std::fs::write(&template, "http {\n{% for h in hosts %}{{ h.name }\n").unwrap();
    fleet.ok(&["service", "scale", "web=3"]).await;
    fleet.wait_running("web", 3).await;
    let error = fleet
        .wait_for("the template error to be reported", || async {
            let status: Value = fleet.json(&["proxy", "status", "--json"]).await;
            status[0]["error"].as_str().map(String::from)
        })
        .await;
    assert!(error.contains("line 2"), "{error}");
    // nginx still runs the previous config and serves the two backends it knows.
    assert_eq!(
        std::fs::read_to_string(proxy.dir.join("nginx.conf")).unwrap(),
        live
    );
    wait_backends(&fleet, &proxy, 2).await;
    let status = fleet.ok(&["cluster", "status"]).await;
    assert!(
        status.contains("px1"),
        "cluster status shows the failing proxy: {status}"
    );

    // Fixed, the next change applies.
    std::fs::copy(builtin, &template).unwrap();
    fleet.ok(&["service", "scale", "web=4"]).await;
    wait_backends(&fleet, &proxy, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_down_under_load_fails_no_request_without_nginx_retries() {
    let _serial = serial().await;
    let fleet = Fleet::start(1, 2).await;
    web(&fleet, 6).await;
    fleet.wait_running("web", 6).await;
    let proxy = Proxy::without_retries(&fleet, "px1").await;
    wait_backends(&fleet, &proxy, 6).await;

    let load = Load::start(proxy.addr());
    for replicas in [3, 1] {
        fleet
            .ok(&["service", "scale", &format!("web={replicas}")])
            .await;
        fleet.wait_running("web", replicas).await;
        wait_backends(&fleet, &proxy, replicas).await;
    }
    load.finish_without_failures(&proxy).await;
}
