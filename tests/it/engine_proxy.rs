//! The agent's engine endpoint end to end: a real `shoal agent` registers it with its node,
//! refuses plaintext clients and certificates that are not a manager's, forwards a manager's
//! requests to the real Docker engine, and splices a hijacked `docker exec -i` stream both ways,
//! stdin EOF included.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cluster::serial;
use crate::fleet::{remove_node_containers, Fleet, WHOAMI};

/// Bound on one exchange with the endpoint.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Containers the test creates itself, labelled with a node id no agent has, removed on drop.
struct TestContainers(String);

impl Drop for TestContainers {
    fn drop(&mut self) {
        remove_node_containers(&self.0);
    }
}

/// Dials the endpoint over mutual TLS presenting the credentials in `tls_dir`.
async fn dial(
    addr: &str,
    tls_dir: &std::path::Path,
) -> std::io::Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> {
    let creds = shoal_tls::Credentials::load_dir(tls_dir).expect("credentials");
    shoal_tls::net::Connector::new(creds.client_config(&[shoal_tls::Role::Worker], &[b"http/1.1"]))
        .connect(addr)
        .await
}

/// One request on a fresh connection as `tls_dir`'s holder; the response's upgrade stays
/// reachable.
async fn send(
    addr: &str,
    tls_dir: &std::path::Path,
    req: Request<Full<Bytes>>,
) -> Response<Incoming> {
    let exchange = async {
        let stream = dial(addr, tls_dir)
            .await
            .expect("connect to the engine endpoint");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        sender.send_request(req).await.unwrap()
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("endpoint answers")
}

fn request(method: Method, path: &str, body: Option<Value>) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "engine");
    let body = match body {
        Some(json) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    req.body(Full::new(body)).unwrap()
}

/// Status and whole body.
async fn call(
    addr: &str,
    tls_dir: &std::path::Path,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Bytes) {
    let resp = send(addr, tls_dir, req).await;
    let status = resp.status();
    let body = tokio::time::timeout(TIMEOUT, resp.into_body().collect())
        .await
        .expect("whole body")
        .unwrap()
        .to_bytes();
    (status, body)
}

/// The payloads of a multiplexed (non-TTY) stream: 8-byte frame headers, then data.
fn demux(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while raw.len() >= 8 {
        let len = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let end = (8 + len).min(raw.len());
        out.extend_from_slice(&raw[8..end]);
        raw = &raw[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_engine_endpoint_admits_only_managers_and_splices_exec_streams() {
    let _serial = serial().await;
    let fleet = Fleet::start(1, 1).await;
    let manager = fleet.cluster.managers[0].tls_dir();
    let manager = manager.as_path();
    let nodes = fleet.nodes().await;
    let addr = nodes[0]["engine_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        addr.starts_with(&format!("{}:", fleet.agents[0].addr)),
        "engine_addr {addr:?} is on the advertised IP\n{nodes:?}"
    );

    // Plaintext: a 400 telling the client to use TLS, nothing forwarded.
    let mut plain = TcpStream::connect(&addr).await.unwrap();
    plain
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: engine\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_string(&mut answer)).await;
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("TLS"),
        "{answer:?}"
    );
    // An operator's client certificate is the cluster's, but not a manager's: refused at the
    // handshake.
    let refused = dial(&addr, &fleet.cluster.admin_tls).await;
    let refused = match refused {
        Err(e) => e.to_string(),
        Ok(mut stream) => {
            // TLS 1.3: the server's refusal arrives with the first read.
            let _ = stream
                .write_all(b"GET /_ping HTTP/1.1\r\nHost: e\r\n\r\n")
                .await;
            let mut buf = Vec::new();
            match tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut buf)).await {
                Ok(Err(e)) => e.to_string(),
                other => panic!("a client certificate got through: {other:?} {buf:?}"),
            }
        }
    };
    assert!(!refused.is_empty());

    let (status, body) = call(&addr, manager, request(Method::GET, "/_ping", None)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"OK"[..]));
    let (status, body) = call(&addr, manager, request(Method::GET, "/version", None)).await;
    assert_eq!(status, StatusCode::OK);
    let version: Value = serde_json::from_slice(&body).unwrap();
    assert!(version["ApiVersion"].is_string(), "{version}");

    // A container of the test's own, reached through the endpoint.
    let owner = TestContainers(format!("it-engine-{}", std::process::id()));
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--label",
            &format!("shoal.node={}", owner.0),
            WHOAMI,
        ])
        .output()
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = String::from_utf8_lossy(&out.stdout).trim().to_string();

    let exec =
        json!({"AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Cmd": ["cat"]});
    let path = format!("/containers/{container}/exec");
    let (status, body) = call(&addr, manager, request(Method::POST, &path, Some(exec))).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let exec: Value = serde_json::from_slice(&body).unwrap();
    let exec_id = exec["Id"].as_str().unwrap();

    let start = json!({"Detach": false, "Tty": false});
    let path = format!("/exec/{exec_id}/start");
    let mut req = request(Method::POST, &path, Some(start));
    req.headers_mut()
        .insert(header::CONNECTION, "Upgrade".parse().unwrap());
    req.headers_mut()
        .insert(header::UPGRADE, "tcp".parse().unwrap());
    let mut resp = send(&addr, manager, req).await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = tokio::time::timeout(TIMEOUT, hyper::upgrade::on(&mut resp))
        .await
        .expect("upgrade")
        .unwrap();
    let mut stream = TokioIo::new(upgraded);
    stream
        .write_all(b"hello through the agent\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut raw))
        .await
        .expect("cat ends at stdin EOF, and the stream with it")
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&demux(&raw)),
        "hello through the agent\n"
    );

    let path = format!("/exec/{exec_id}/json");
    let inspect = fleet
        .wait_for("the exec to end", || async {
            let (status, body) = call(&addr, manager, request(Method::GET, &path, None)).await;
            let inspect: Value = serde_json::from_slice(&body).ok()?;
            (status == StatusCode::OK && inspect["Running"] == false).then_some(inspect)
        })
        .await;
    assert_eq!(inspect["ExitCode"], 0, "{inspect}");
}

/// A manager's certificate after `manager remove`: refused by the agent's engine endpoint too
/// (agents learn revocations from `Ca.Info`), so a removed manager is no longer root on nodes.
#[tokio::test(flavor = "multi_thread")]
async fn a_removed_managers_certificate_no_longer_opens_the_engine_endpoint() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 1).await;
    let leader = fleet.cluster.wait_leader().await;
    let gone = (leader + 1) % 3;
    let gone_tls = fleet.cluster.managers[gone].tls_dir();
    let nodes = fleet.nodes().await;
    let addr = nodes[0]["engine_addr"].as_str().unwrap().to_string();
    // Before: that manager's certificate gets in.
    let (status, _) = call(&addr, &gone_tls, request(Method::GET, "/_ping", None)).await;
    assert_eq!(status, StatusCode::OK);

    let id = fleet.cluster.managers[gone].id.to_string();
    let out = fleet.cluster.cli(&["manager", "remove", &id]).await;
    assert!(out.ok(), "{out:?}");
    fleet.cluster.managers[gone].kill();

    // After: refused at the handshake once the agent has polled (every 2 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let refused = match dial(&addr, &gone_tls).await {
            Err(_) => true,
            Ok(mut stream) => {
                // TLS 1.3: the server's refusal arrives with the first read.
                let _ = stream
                    .write_all(b"GET /_ping HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                let read = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut buf)).await;
                read.is_ok() && !buf.starts_with(b"HTTP/1.1 200")
            }
        };
        if refused {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a removed manager's certificate still opens the engine endpoint\n{}",
            fleet.agents[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A member's certificate still does.
    let kept = fleet.cluster.managers[leader].tls_dir();
    let (status, _) = call(&addr, &kept, request(Method::GET, "/_ping", None)).await;
    assert_eq!(status, StatusCode::OK);
}
