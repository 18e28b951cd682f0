//! The Consul-compatible HTTP API's transport, with curl as the client: mutual TLS beyond
//! loopback (the cluster's client certificate), plaintext there only with `--insecure-http`
//! (warned), and on plaintext loopback no web page's or foreign host's request.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{free_port, serial, Cluster, WAIT};
use crate::consul::http;

/// `curl -s` with `args`; (HTTP status or 0 when no HTTP answer came, body).
pub(crate) fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("running curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn tls_args(dir: &Path) -> Vec<String> {
    let file = |f: &str| dir.join(f).display().to_string();
    vec![
        "--cacert".into(),
        file("ca.pem"),
        "--cert".into(),
        file("cert.pem"),
        "--key".into(),
        file("key.pem"),
    ]
}

/// Polls `check` until it is true, for at most WAIT.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "never {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_http_api_is_mutual_tls_beyond_loopback_unless_insecure_http() {
    let _serial = serial().await;
    let port = free_port();
    let wide = format!("0.0.0.0:{port}");
    let mut c = Cluster::start_with(1, &["--http", &wide]).await;
    let local = format!("127.0.0.1:{port}");
    let url = |path: &str| format!("https://{local}{path}");
    let tls = tls_args(&c.admin_tls);
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();

    // Beyond loopback: TLS with a cluster certificate, as a Consul client configured with
    // ca_file, cert_file and key_file talks to it.
    let (key_url, raw_url) = (url("/v1/kv/tls/k"), url("/v1/kv/tls/k?raw"));
    let put: Vec<&str> = [
        &tls[..],
        &["-X", "PUT", "--data", "v1", key_url.as_str()][..],
    ]
    .concat();
    eventually("a TLS write", || curl(&put) == (200, "true".into())).await;
    let get: Vec<&str> = [&tls[..], &[raw_url.as_str()][..]].concat();
    assert_eq!(curl(&get), (200, "v1".into()));
    // No client certificate: no answer. Plaintext: a 400 saying what the port needs.
    let ca_only: Vec<&str> = [&tls[..2], &[raw_url.as_str()][..]].concat();
    assert_eq!(curl(&ca_only).0, 0, "a client certificate is required");
    let plain = http(&local, "GET", "/v1/kv/tls/k", b"").await.unwrap();
    assert_eq!(plain.status, 400);
    assert!(plain.text().contains("requires TLS"), "{}", plain.text());

    // --insecure-http: plaintext beyond loopback, with a warning at start.
    c.managers[0].stop().await;
    c.managers[0].spawn(&["--http", &wide, "--insecure-http"]);
    c.wait_leader().await;
    let plain = format!("http://{local}/v1/kv/tls/k?raw");
    eventually("a plaintext read", || curl(&[&plain]) == (200, "v1".into())).await;
    assert!(
        c.managers[0]
            .log_text()
            .contains(&format!("WARNING: the HTTP API on {wide} accepts anyone")),
        "warned"
    );

    // Loopback, plaintext (the default): web pages and foreign hosts are refused.
    c.managers[0].stop().await;
    c.managers[0].spawn(&["--http", &local]);
    c.wait_leader().await;
    eventually("a loopback read", || curl(&[&plain]) == (200, "v1".into())).await;
    let write = format!("http://{local}/v1/kv/tls/k");
    for header in ["Origin: https://evil.example", "Host: evil.example"] {
        let (status, body) = curl(&["-X", "PUT", "--data", "evil", "-H", header, &write]);
        assert_eq!(status, 403, "{header}: {body}");
    }
    assert_eq!(curl(&[&plain]), (200, "v1".into()), "nothing written");
}
