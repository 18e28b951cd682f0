//! The agent's engine endpoint end to end: a real `shoal agent` registers it with its node, refuses
//! requests without the join token, forwards the others to the real Docker engine, and splices a
//! hijacked `docker exec -i` stream both ways, stdin EOF included.

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

/// One request on a fresh connection; the response's upgrade stays reachable.
async fn send(addr: &str, req: Request<Full<Bytes>>) -> Response<Incoming> {
    let exchange = async {
        let stream = TcpStream::connect(addr)
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

fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "engine");
    if let Some(token) = token {
        req = req.header(shoal_raft::TOKEN_HEADER, token);
    }
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
async fn call(addr: &str, req: Request<Full<Bytes>>) -> (StatusCode, Bytes) {
    let resp = send(addr, req).await;
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
async fn the_engine_endpoint_needs_the_token_and_splices_exec_streams() {
    let _serial = serial().await;
    let fleet = Fleet::start(1, 1).await;
    let token = fleet.cluster.token.clone();
    let nodes = fleet.nodes().await;
    let addr = nodes[0]["engine_addr"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        addr.starts_with(&format!("{}:", fleet.agents[0].addr)),
        "engine_addr {addr:?} is on the advertised IP\n{nodes:?}"
    );

    // No token, a wrong token: 401 with a Docker-style JSON message.
    for given in [
        None,
        Some("SHOAL1-0000000000000000-00000000000000000000000000000000"),
    ] {
        let (status, body) = call(&addr, request(Method::GET, "/_ping", given, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {given:?}");
        let body: Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }

    let (status, body) = call(&addr, request(Method::GET, "/_ping", Some(&token), None)).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"OK"[..]));
    let (status, body) = call(&addr, request(Method::GET, "/version", Some(&token), None)).await;
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
    let (status, body) = call(
        &addr,
        request(Method::POST, &path, Some(&token), Some(exec)),
    )
    .await;
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
    let mut req = request(Method::POST, &path, Some(&token), Some(start));
    req.headers_mut()
        .insert(header::CONNECTION, "Upgrade".parse().unwrap());
    req.headers_mut()
        .insert(header::UPGRADE, "tcp".parse().unwrap());
    let mut resp = send(&addr, req).await;
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
            let (status, body) = call(&addr, request(Method::GET, &path, Some(&token), None)).await;
            let inspect: Value = serde_json::from_slice(&body).ok()?;
            (status == StatusCode::OK && inspect["Running"] == false).then_some(inspect)
        })
        .await;
    assert_eq!(inspect["ExitCode"], 0, "{inspect}");
}
