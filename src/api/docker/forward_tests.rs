//! The forwarder against a fake node endpoint on loopback (plaintext: TLS to real endpoints is
//! covered by the integration tests): headers sent, errors named, and a hijacked stream spliced
//! through a manager-like front with its half-close.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// Serves `handler` on a loopback port until the test ends.
async fn serve<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Response<axum::body::Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(handler(req).await) }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

/// A node endpoint: answers `/_ping`, echoes a hijacked `/echo` until EOF.
async fn fake_node(mut req: Request<Incoming>) -> Response<axum::body::Body> {
    let text = |status: StatusCode, body: &str| {
        let mut resp = Response::new(axum::body::Body::from(body.to_string()));
        *resp.status_mut() = status;
        resp
    };
    let h = req.headers();
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/_ping" => {
            let seen = format!("{:?} {:?}", h.get(header::HOST), h.get(header::CONNECTION));
            text(StatusCode::OK, &format!("OK {seen}"))
        }
        "/echo" => {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = Vec::new();
                io.read_to_end(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
                io.shutdown().await.unwrap();
            });
            let mut resp = text(StatusCode::SWITCHING_PROTOCOLS, "");
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("tcp"));
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "{}"),
    }
}

#[tokio::test]
async fn requests_carry_a_host_and_close_their_connection() {
    let node = serve(fake_node).await.to_string();
    let (status, body) = NodeEngine::new("n1", &node, None)
        .request(Method::GET, "/_ping", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(body, format!("OK Some({node:?}) Some(\"close\")"));
}

#[tokio::test]
async fn an_unreachable_node_is_one_line_naming_its_address() {
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let err = NodeEngine::new("n1", &addr, None)
        .request(Method::GET, "/_ping", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::Unreachable { .. }), "{err:?}");
    let line = err.to_string();
    assert!(line.contains(&addr) && !line.contains('\n'), "{line}");
}

#[tokio::test]
async fn a_hijacked_stream_is_spliced_both_ways_with_half_close() {
    let node = serve(fake_node).await.to_string();
    // The manager's side: forward the upgrade, answer the client's, splice the two.
    let front = serve(move |mut req: Request<Incoming>| {
        let node = node.clone();
        async move {
            let client = hyper::upgrade::on(&mut req);
            let forwarded = Request::builder()
                .method(Method::POST)
                .uri("/echo")
                .header(header::UPGRADE, "tcp")
                .body(axum::body::Body::empty())
                .unwrap();
            let mut resp = NodeEngine::new("n1", node, None)
                .send(forwarded)
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
            let upgraded = hyper::upgrade::on(&mut resp);
            tokio::spawn(splice(client, upgraded));
            let (parts, _) = resp.into_parts();
            Response::from_parts(parts, axum::body::Body::empty())
        }
    })
    .await;

    let mut stream = TcpStream::connect(front).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(
            stream.read(&mut byte).await.unwrap(),
            1,
            "closed in the head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"hello through the node").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut echoed));
    read.await.expect("EOF after the echo").unwrap();
    assert_eq!(echoed, b"hello through the node");
}

/// A certificate of `role`/`name` of one cluster's root `ca`.
fn creds_of(ca: &shoal_tls::pki::RootCa, role: Role, name: &str) -> Credentials {
    let (key, csr) = shoal_tls::pki::signing_request().unwrap();
    let issue = shoal_tls::pki::Issue {
        cluster_id: "00000000000000cc".into(),
        role,
        name: name.into(),
        sans: vec!["127.0.0.1".into()],
        lifetime: Duration::from_secs(3600),
    };
    let cert = ca.issue(&csr, &issue).unwrap();
    Credentials::with_cert(&ca.cert_pem, &cert, &key).unwrap()
}

/// `fake_node` over mutual TLS as the agent's endpoint serves it: `creds`' certificate, manager
/// clients only.
async fn serve_tls(creds: &Credentials) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = shoal_tls::net::Acceptor::new(
        creds.server_config(Some(&[Role::Manager]), &[b"http/1.1"]),
        "test engine endpoint",
    );
    tokio::spawn(async move {
        while let Ok((tcp, remote)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Some(conn) = acceptor.accept(tcp, remote).await else {
                    return;
                };
                let service =
                    service_fn(|req| async move { Ok::<_, Infallible>(fake_node(req).await) });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    addr
}

/// The bug this guards: a worker that registers (or answers at) another node's engine address
/// must not receive that node's requests. The manager pins the node it means: n2's worker
/// certificate where n1 is meant is refused before any request leaves, naming both.
#[tokio::test]
async fn another_nodes_certificate_at_the_address_is_refused() {
    let ca = shoal_tls::pki::RootCa::generate("00000000000000cc", 1).unwrap();
    let manager = creds_of(&ca, Role::Manager, "manager-1");
    let n2 = creds_of(&ca, Role::Worker, "n2");
    let addr = serve_tls(&n2).await.to_string();

    let err = NodeEngine::new("n1", &addr, Some(&manager))
        .request(Method::GET, "/_ping", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::WrongNode { .. }), "{err:?}");
    let line = err.to_string();
    assert!(
        line.contains(&addr)
            && line.contains("not node n1's")
            && line.contains("certificate of worker n2"),
        "{line}"
    );

    // The node it is: its requests go through.
    let (status, _) = NodeEngine::new("n2", &addr, Some(&manager))
        .request(Method::GET, "/_ping", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let node = Node {
        id: "n2".into(),
        engine_addr: addr.clone(),
        ..crate::scheduler::testutil::node(2, &[])
    };
    let (status, _) = NodeEngine::of(&node, Some(&manager))
        .request(Method::GET, "/_ping", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A node that takes the request and never answers costs its caller the timeout it chose, then
/// an error naming the node's address.
#[tokio::test]
async fn a_node_that_never_answers_times_out_naming_its_address() {
    let node = serve(|_req: Request<Incoming>| async {
        std::future::pending::<()>().await;
        unreachable!()
    })
    .await
    .to_string();
    let started = tokio::time::Instant::now();
    let err = NodeEngine::new("n1", &node, None)
        .within(Duration::from_millis(300))
        .request(Method::GET, "/images/json", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::TimedOut { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains(&node), "{err}");

    let req = Request::post("/images/create?fromImage=x")
        .body(axum::body::Body::empty())
        .unwrap();
    let err = NodeEngine::new("n1", &node, None)
        .collect(req, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::TimedOut { .. }), "{err:?}");
}

/// A node cannot make the manager buffer more than `MAX_ANSWER` of its answer.
#[tokio::test]
async fn an_answer_beyond_the_cap_is_refused() {
    let node = serve(|_req: Request<Incoming>| async {
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let chunks = (0..(MAX_ANSWER >> 20) + 2)
            .map(move |_| Ok::<_, Infallible>(hyper::body::Frame::data(chunk.clone())));
        let body = http_body_util::StreamBody::new(futures::stream::iter(chunks));
        Response::new(axum::body::Body::new(body))
    })
    .await
    .to_string();
    let err = NodeEngine::new("n1", &node, None)
        .request(Method::GET, "/images/json", None)
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains(&node), "{err}");
}
