//! Metrics end to end: a real Prometheus (Debian's `prometheus`, its binary run by the test, not
//! its service) scrapes two managers and an agent of a running cluster (a service, nginx with
//! `shoal proxy`) over mutual TLS, with `deploy/prometheus/prometheus.yml` itself (only its
//! certificate and target directory moved); PromQL over its HTTP API finds every family; every
//! metric the Grafana dashboard (`deploy/grafana/shoal.json`) graphs is in the live scrape; and
//! the endpoint refuses a visitor without an operator's certificate.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use crate::cluster::{free_port, serial, tail, Manager, WAIT};
use crate::fleet::{agent_addr, http_request, Fleet};
use crate::http_tls::curl;
use crate::proxy::Proxy;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Where the deploy config expects the certificates and target lists.
const DEPLOY_DIR: &str = "/etc/prometheus/shoal/";

/// A Prometheus server in its own process group, killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Prometheus {
    fn start(config: &Path, dir: &Path) -> Prometheus {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("prometheus (apt-get install --no-install-recommends prometheus)");
        Prometheus { child, addr, log }
    }

    /// GET `path` of its HTTP API as JSON (None: no answer yet).
    async fn api(&self, path: &str) -> Option<Value> {
        let text = http_request(&self.addr, path, "localhost").await?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }

    /// The series an instant PromQL query returns.
    async fn query(&self, promql: &str) -> Vec<Value> {
        let q = percent_encoding::utf8_percent_encode(promql, percent_encoding::NON_ALPHANUMERIC);
        match self.api(&format!("/api/v1/query?query={q}")).await {
            Some(v) if v["status"] == "success" => {
                v["data"]["result"].as_array().cloned().unwrap_or_default()
            }
            _ => Vec::new(),
        }
    }

    fn logs(&self) -> String {
        tail(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

fn cert_args(dir: &Path, with_cert: bool) -> Vec<String> {
    let file = |f: &str| dir.join(f).display().to_string();
    let mut args = vec!["--cacert".to_string(), file("ca.pem")];
    if with_cert {
        args.extend([
            "--cert".into(),
            file("cert.pem"),
            "--key".into(),
            file("key.pem"),
        ]);
    }
    args
}

/// Every family the issue lists, as a PromQL query that must return a series, with what the
/// value must satisfy.
/// A PromQL query and the test its value must pass.
type Check = (&'static str, fn(f64) -> bool);

fn families() -> Vec<Check> {
    let any: fn(f64) -> bool = |_| true;
    let positive: fn(f64) -> bool = |v| v > 0.0;
    vec![
        // Raft
        ("max(shoal_raft_term)", positive),
        ("sum(shoal_is_leader)", |v| v == 1.0),
        ("max(shoal_leader_id)", positive),
        ("max(shoal_raft_commit_index)", positive),
        ("max(shoal_raft_applied_index)", positive),
        ("max(shoal_raft_apply_lag)", any),
        ("sum(shoal_raft_leader_changes_total)", positive),
        ("sum(shoal_raft_proposals_total)", positive),
        ("sum(shoal_raft_append_duration_seconds_count)", positive),
        ("sum(shoal_raft_append_duration_seconds_bucket)", positive),
        ("sum(shoal_raft_fsync_duration_seconds_count)", positive),
        ("sum(shoal_raft_snapshots_total)", any),
        ("sum(shoal_raft_snapshot_duration_seconds_count)", any),
        ("max(shoal_raft_snapshot_size_bytes)", any),
        // The store
        ("max(shoal_store_keys)", positive),
        ("max(shoal_store_db_size_bytes)", positive),
        ("max(shoal_store_quota_used_ratio)", |v| v > 0.0 && v < 1.0),
        ("sum(shoal_store_watches)", positive),
        ("max(shoal_store_leases)", positive),
        // The control loops
        ("max(shoal_scheduler_pending_tasks)", any),
        ("sum(shoal_tasks)", positive),
        ("sum(shoal_scheduler_placements_total)", positive),
        (
            "sum(shoal_scheduler_placement_latency_seconds_count)",
            positive,
        ),
        (
            "sum(shoal_control_pass_duration_seconds_count{loop=\"scheduler\"})",
            positive,
        ),
        ("sum(shoal_control_commit_conflicts_total)", any),
        // The dispatcher
        ("sum(shoal_dispatcher_sessions)", |v| v == 1.0),
        ("sum(shoal_dispatcher_heartbeats_missed_total)", any),
        ("sum(shoal_dispatcher_status_batches_total)", positive),
        // The APIs
        (
            "sum(shoal_api_requests_total{api=\"docker\",route=\"/_ping\",code=\"200\"})",
            positive,
        ),
        (
            "sum(shoal_api_requests_total{api=\"http\",route=\"/v1/kv\"})",
            positive,
        ),
        (
            "sum(shoal_api_request_duration_seconds_count{api=\"docker\"})",
            positive,
        ),
        // The proxy
        ("max(shoal_proxy_config_generation)", positive),
        ("max(shoal_proxy_generation{proxy=\"edge\"})", positive),
        ("sum(shoal_proxy_reloads_total{proxy=\"edge\"})", positive),
        ("sum(shoal_proxy_reload_failures_total)", any),
        ("max(shoal_proxy_config_age_seconds{proxy=\"edge\"})", |v| {
            v >= 0.0
        }),
        // TLS
        (
            "min(shoal_tls_cert_expiry_timestamp_seconds{role=\"manager\"}) - time()",
            positive,
        ),
        (
            "min(shoal_tls_cert_expiry_timestamp_seconds{role=\"root\"}) - time()",
            positive,
        ),
        (
            "min(shoal_tls_cert_expiry_timestamp_seconds{role=\"worker\"}) - time()",
            positive,
        ),
        // The agent
        ("sum(shoal_agent_sessions_total)", positive),
        ("sum(shoal_agent_session_connected)", |v| v == 1.0),
        ("sum(shoal_agent_tasks{state=\"running\"})", |v| v == 1.0),
        ("sum(shoal_agent_engine_errors_total)", any),
        // Both jobs are up
        ("sum(up{job=\"shoal-managers\"})", |v| v == 2.0),
        ("sum(up{job=\"shoal-agents\"})", |v| v == 1.0),
    ]
}

/// Every `shoal_*` metric name the dashboard's queries use.
fn dashboard_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(format!("{ROOT}/deploy/grafana/shoal.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let re = regex::Regex::new(r"shoal_[a-z_]+").unwrap();
    let mut names: Vec<String> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .flat_map(|t| {
            let expr = t["expr"].as_str().unwrap_or("").to_string();
            re.find_iter(&expr)
                .map(|m| m.as_str().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(
        names.len() >= 15,
        "the dashboard graphs too little: {names:?}"
    );
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_family_of_a_running_cluster() {
    let _serial = serial().await;
    let m1_metrics = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let mut fleet =
        Fleet::start_with(1, 0, &["--metrics-addr", &m1_metrics, "--http", &http]).await;
    let m2_metrics = format!("127.0.0.1:{}", free_port());
    let mut m2 = Manager::new(fleet.cluster.root(), "m2");
    let (join, token) = (fleet.cluster.hosts(), fleet.cluster.token.clone());
    m2.spawn(&[
        "--join",
        &join,
        "--token",
        &token,
        "--metrics-addr",
        &m2_metrics,
    ]);
    fleet.cluster.managers.push(m2);
    fleet.cluster.wait_voters(2).await;
    let agent_metrics = format!("{}:{}", agent_addr(0), free_port());
    fleet.add_agent_with("node-1", vec![], &["--metrics-addr", &agent_metrics]);
    fleet.wait_nodes_ready(1).await;
    fleet.create_whoami("web", 1, &[]).await;
    fleet.wait_running("web", 1).await;
    let _proxy = Proxy::start(&fleet, "edge", None).await;
    // One request on each HTTP API.
    let docker_api = fleet.cluster.managers[0].docker_api.clone();
    let ping = http_request(&docker_api, "/_ping", "localhost").await;
    assert!(
        ping.as_deref().is_some_and(|r| r.contains(" 200 OK")),
        "{ping:?}"
    );
    let kv = http_request(&http, "/v1/kv/metrics-test", "localhost").await;
    assert!(kv.is_some(), "the HTTP API answers");

    // The endpoint: an operator's certificate reads it, nobody else does.
    let admin = fleet.cluster.admin_tls.clone();
    let url = format!("https://{m1_metrics}/metrics");
    let with = |dir: &Path, cert: bool| {
        let mut args = cert_args(dir, cert);
        args.push(url.clone());
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (code, body) = with(&admin, true);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# TYPE shoal_raft_term gauge"), "{body}");
    let (code, _) = with(&admin, false);
    assert_eq!(code, 0, "no client certificate: refused at the handshake");
    let worker = fleet.cluster.root().join("node-1").join("tls");
    let (code, _) = with(&worker, true);
    assert_eq!(code, 0, "a worker certificate: refused at the handshake");
    let (code, _) = curl(&[&format!("http://{m1_metrics}/metrics")]);
    assert_ne!(code, 200, "plaintext HTTP is never served");
    let (code, body) = {
        let mut args = cert_args(&admin, true);
        args.push(format!("https://{agent_metrics}/metrics"));
        curl(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("shoal_agent_sessions_total 1"), "{body}");
    // The Consul port's /metrics is the same page.
    let consul = http_request(&http, "/metrics", "localhost").await.unwrap();
    assert!(consul.contains("# TYPE shoal_raft_append_duration_seconds histogram"));

    // Prometheus with deploy/prometheus/prometheus.yml, its directory moved here.
    let dir = fleet.cluster.root().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::copy(admin.join(f), dir.join(f)).unwrap();
    }
    let targets = |addrs: &[&str]| serde_json::json!([{ "targets": addrs }]).to_string();
    std::fs::write(
        dir.join("managers.json"),
        targets(&[&m1_metrics, &m2_metrics]),
    )
    .unwrap();
    std::fs::write(dir.join("agents.json"), targets(&[&agent_metrics])).unwrap();
    let deploy =
        std::fs::read_to_string(format!("{ROOT}/deploy/prometheus/prometheus.yml")).unwrap();
    assert!(deploy.contains(DEPLOY_DIR));
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        deploy.replace(DEPLOY_DIR, &format!("{}/", dir.display())),
    )
    .unwrap();
    let check = Command::new("promtool")
        .args(["check", "config"])
        .arg(&config)
        .output()
        .expect("promtool (in the prometheus package)");
    assert!(
        check.status.success(),
        "promtool check config: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let prom = Prometheus::start(&config, &dir);

    let deadline = Instant::now() + WAIT;
    let mut missing: Vec<String> = families().iter().map(|(q, _)| q.to_string()).collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for (q, ok) in families() {
            if !missing.iter().any(|m| m == q) {
                continue;
            }
            let result = prom.query(q).await;
            let value = result
                .first()
                .and_then(|r| r["value"][1].as_str())
                .and_then(|v| v.parse::<f64>().ok());
            if !value.is_some_and(ok) {
                still.push(format!("{q} = {value:?}"));
            }
        }
        missing = still
            .iter()
            .map(|s| s.split(" = ").next().unwrap().to_string())
            .collect();
        if missing.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let targets = prom.api("/api/v1/targets").await;
            panic!(
                "PromQL never found: {still:#?}\ntargets: {targets:#?}\nprometheus: {}\n{}",
                prom.logs(),
                fleet.logs()
            );
        }
        sleep(Duration::from_secs(1)).await;
    }

    // Every metric of the dashboard is in the live scrape.
    let names = prom
        .api("/api/v1/label/__name__/values")
        .await
        .expect("metric names");
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for name in dashboard_metrics() {
        assert!(
            names.contains(&name.as_str()),
            "the dashboard graphs {name}, which no target exposes"
        );
    }
}
