//! A connection flood and idle connections against one manager's HTTP API, started with a small
//! `--api-max-connections` and a short `--api-idle-timeout`: the sockets over the limit are
//! answered 503 at once, the idle ones are closed after the timeout (not before), and all the
//! while the manager keeps serving its peers and the CLI; once the idle sockets are gone, fresh
//! clients are served again.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::cluster::{free_port, run_cli, serial, Cluster};
use crate::consul::http;

const LIMIT: usize = 32;
const IDLE: Duration = Duration::from_secs(4);

/// What the server did with a socket its client never wrote to.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Answered (a 503 is the only answer to silence) and closed.
    Answered(String),
    /// Closed without a word.
    Closed,
    /// Still open.
    Open,
}

async fn fate(tcp: &mut TcpStream, within: Duration) -> Fate {
    let mut answer = Vec::new();
    match timeout(within, tcp.read_to_end(&mut answer)).await {
        Err(_) => Fate::Open,
        Ok(_) if answer.is_empty() => Fate::Closed,
        Ok(_) => Fate::Answered(String::from_utf8_lossy(&answer).into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_and_idle_sockets_leave_the_manager_serving_peers_and_clients() {
    let _serial = serial().await;
    let addr = format!("127.0.0.1:{}", free_port());
    let idle = format!("{}s", IDLE.as_secs());
    let limit = LIMIT.to_string();
    let mut cluster = Cluster::start_with(
        3,
        &[
            "--http",
            &addr,
            "--api-max-connections",
            &limit,
            "--api-idle-timeout",
            &idle,
        ],
    )
    .await;
    let m1 = cluster.managers[0].grpc.clone();

    // Twice the limit of sockets that never send a byte.
    let mut sockets = Vec::new();
    for _ in 0..2 * LIMIT {
        sockets.push(TcpStream::connect(&addr).await.unwrap());
    }
    let flooded = Instant::now();
    let fates = futures::future::join_all(
        sockets
            .iter_mut()
            .map(|tcp| fate(tcp, Duration::from_secs(2))),
    )
    .await;
    let refused: Vec<&String> = fates
        .iter()
        .filter_map(|f| match f {
            Fate::Answered(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(
        refused.len(),
        LIMIT,
        "the sockets over the limit are answered at once: {fates:?}"
    );
    for answer in &refused {
        assert!(
            answer.starts_with("HTTP/1.1 503 ") && answer.contains("--api-max-connections"),
            "{answer}"
        );
    }
    assert_eq!(
        fates.iter().filter(|f| **f == Fate::Open).count(),
        LIMIT,
        "{fates:?}"
    );

    // With its HTTP API full, the manager still serves its peers and the CLI: a write through
    // it commits, and every manager applies it.
    let out = run_cli(
        &["--host", &m1, "kv", "put", "flood/k", "v"],
        None,
        &[("SHOAL_TLS_DIR", cluster.admin_tls.to_str().unwrap())],
    )
    .await;
    assert!(out.ok(), "a write through the flooded manager: {out:?}");
    let index = cluster.commit_index().await;
    for i in 0..3 {
        cluster.wait_applied(i, index).await;
    }
    let out = cluster.cli(&["kv", "get", "flood/k"]).await;
    assert!(out.ok() && out.stdout.contains('v'), "{out:?}");

    // The held sockets are closed after the idle timeout, not before.
    let mut open: Vec<TcpStream> = sockets
        .into_iter()
        .zip(&fates)
        .filter(|(_, f)| **f == Fate::Open)
        .map(|(tcp, _)| tcp)
        .collect();
    let closed = futures::future::join_all(
        open.iter_mut()
            .map(|tcp| fate(tcp, IDLE + Duration::from_secs(10))),
    )
    .await;
    let took = flooded.elapsed();
    assert!(
        closed.iter().all(|f| *f == Fate::Closed),
        "idle sockets still open or answered: {closed:?}"
    );
    assert!(
        took >= IDLE - Duration::from_millis(500),
        "idle sockets closed after {took:?}, before the {IDLE:?} timeout"
    );

    // A fresh client is served within a bounded time, and /metrics counts the refusals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        match http(&addr, "GET", "/v1/status/leader", b"").await {
            Ok(reply) if reply.status == 200 => break reply,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer to a fresh client: {other:?}"
                );
                sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(leader.text().starts_with('"'), "{}", leader.text());
    let metrics = http(&addr, "GET", "/metrics", b"").await.unwrap().text();
    let refused_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_api_connections_refused_total{api=\"http\"} "))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no refusal counter in /metrics:\n{metrics}"));
    assert!(refused_total >= LIMIT, "{metrics}");
    let open_now = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_api_connections_open{api=\"http\"} "))
        .and_then(|n| n.parse::<usize>().ok());
    // The /metrics request itself, and perhaps the one before it, closing.
    assert!(open_now.is_some_and(|n| (1..=2).contains(&n)), "{metrics}");
}
