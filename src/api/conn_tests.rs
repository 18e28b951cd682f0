//! The accept loop over real sockets on loopback: the limit, the idle timeout, requests in
//! progress left alone, and a stop that waits for them.

use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::timeout;

use super::*;

struct Running {
    addr: SocketAddr,
    stats: Arc<ConnStats>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// `/` answers at once, `/slow` after 800 ms.
async fn start(max_connections: usize, idle_timeout: Duration) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "ok" })).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            "slow"
        }),
    );
    let stats = Arc::new(ConnStats::default());
    let server = Server {
        what: "test API",
        limits: ConnLimits {
            max_connections,
            idle_timeout,
        },
        stats: stats.clone(),
        tls: None,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(serve(listener, app, server, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(stop),
        served,
    }
}

/// Sends a GET of `path` on `tcp` and reads one whole answer (the handlers' bodies are short
/// and sent with a length).
async fn get_on(tcp: &mut TcpStream, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return text.into_owned();
            }
        }
    }
}

/// Whether the server closes `tcp` within `within` (EOF or a reset, whatever it says first).
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let drained = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    timeout(within, drained).await.is_ok()
}

#[tokio::test]
async fn one_connection_over_the_limit_gets_a_503_with_a_json_message() {
    let server = start(2, Duration::from_secs(30)).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats.open(), 2);

    let mut over = TcpStream::connect(server.addr).await.unwrap();
    let mut answer = String::new();
    timeout(Duration::from_secs(2), over.read_to_string(&mut answer))
        .await
        .expect("answered at once")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("test API has 2 connections open")
            && message.contains("--api-max-connections"),
        "{message}"
    );
    assert_eq!(server.stats.refused(), 1);
    assert_eq!(server.stats.accepted(), 2);

    // A place freed is a place for the next client.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = TcpStream::connect(server.addr).await.unwrap();
    assert!(get_on(&mut next, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_timeout() {
    let server = start(16, Duration::from_millis(300)).await;
    // Nothing sent at all; half a request's head; a finished request, then nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let mut served = TcpStream::connect(server.addr).await.unwrap();
    assert!(get_on(&mut served, "/").await.ends_with("ok"));
    for (what, tcp) in [
        ("silent", &mut silent),
        ("partial", &mut partial),
        ("served", &mut served),
    ] {
        assert!(
            closed_within(tcp, Duration::from_secs(3)).await,
            "{what} connection still open"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats.open(), 0);
}

#[tokio::test]
async fn a_request_in_progress_is_never_idle_and_the_connection_is_kept_alive() {
    let server = start(16, Duration::from_millis(200)).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The answer takes four idle timeouts; then the same connection serves another request.
    assert!(get_on(&mut tcp, "/slow").await.ends_with("slow"));
    assert!(get_on(&mut tcp, "/").await.ends_with("ok"));
    assert!(closed_within(&mut tcp, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn a_stop_lets_requests_in_progress_finish_and_closes_idle_connections() {
    let mut server = start(16, Duration::from_secs(30)).await;
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    let slow = tokio::spawn(async move { get_on(&mut busy, "/slow").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.stop.take().unwrap().send(()).unwrap();
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await);
    assert!(slow.await.unwrap().ends_with("slow"));
    timeout(Duration::from_secs(3), server.served)
        .await
        .expect("serve returns once every connection is closed")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[test]
fn the_answer_over_the_limit_is_one_valid_http_response() {
    let answer = String::from_utf8(over_limit_answer("Docker API", 1024)).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(length, body.len());
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        json["message"],
        "shoal: the Docker API has 1024 connections open, its limit (--api-max-connections); try again later"
    );
}
