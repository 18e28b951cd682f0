//! The watch fan-out phase: W watch streams on one key, spread over a few connections; each round
//! puts a new value and times how long until every watcher has seen it. The same rounds run
//! against shoal (`shoal.v1.Kv/Watch`) and etcd (`etcdserverpb.Watch`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::WatchRequest;
use shoal_tls::Credentials;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::cluster;
use crate::load::{KvDriver, Outcome};

/// How long one round may wait for its last watcher: past it the round is an error.
const ROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// One watch stream on the fan-out key.
pub(crate) enum Watcher {
    Shoal(tonic::Streaming<shoal_proto::v1::WatchResponse>),
    Etcd(etcd_client::WatchStream),
}

impl Watcher {
    /// The values of the next batch of put events; None when the stream ended.
    async fn next(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        match self {
            Watcher::Shoal(s) => Ok(s.message().await?.map(|r| {
                r.events
                    .into_iter()
                    .filter_map(|e| e.kv.map(|kv| kv.value))
                    .collect()
            })),
            Watcher::Etcd(s) => Ok(s.message().await?.map(|r| {
                r.events()
                    .iter()
                    .filter_map(|e| e.kv().map(|kv| kv.value().to_vec()))
                    .collect()
            })),
        }
    }
}

/// Opens `n` watches of `key` on shoal over `conns` connections spread round-robin over `addrs`
/// (mutual TLS presenting `tls`).
pub(crate) async fn shoal_watchers(
    addrs: &[SocketAddr],
    tls: &Credentials,
    conns: usize,
    n: usize,
    key: &[u8],
) -> Result<Vec<Watcher>> {
    let mut channels: Vec<Channel> = Vec::new();
    for i in 0..conns.max(1) {
        let addr = addrs[i % addrs.len()];
        let endpoint = cluster::endpoint(addr)?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true);
        channels.push(
            cluster::connect(endpoint, tls)
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    let mut watchers = Vec::with_capacity(n);
    for i in 0..n {
        let mut kv = KvClient::new(channels[i % channels.len()].clone());
        let stream = kv
            .watch(WatchRequest {
                key: key.to_vec(),
                ..Default::default()
            })
            .await
            .context("opening a shoal watch")?
            .into_inner();
        watchers.push(Watcher::Shoal(stream));
    }
    Ok(watchers)
}

/// Opens `n` watches of `key` on etcd over `conns` clients spread round-robin over `addrs`;
/// each is open once etcd has confirmed its creation.
pub(crate) async fn etcd_watchers(
    addrs: &[SocketAddr],
    conns: usize,
    n: usize,
    key: &[u8],
) -> Result<Vec<Watcher>> {
    let mut clients = Vec::new();
    for i in 0..conns.max(1) {
        clients.push(crate::etcd::connect(addrs[i % addrs.len()]).await?);
    }
    let mut watchers = Vec::with_capacity(n);
    for i in 0..n {
        let len = clients.len();
        let client = &mut clients[i % len];
        let mut stream = client.watch(key.to_vec(), None).await?;
        match stream.message().await? {
            Some(r) if r.created() => {}
            _ => bail!("etcd did not confirm a watch"),
        }
        watchers.push(Watcher::Etcd(stream));
    }
    Ok(watchers)
}

/// Runs `rounds` rounds: put round number `r` to `key` through `driver`, then wait until every
/// watcher has seen it. A round's latency is from the put's send to the last watcher's receipt.
pub(crate) async fn run<D: KvDriver>(
    watchers: Vec<Watcher>,
    driver: &mut D,
    key: &[u8],
    rounds: u64,
) -> Result<Outcome> {
    let n = watchers.len();
    let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(values)) = w.next().await {
                    for v in values {
                        let round = std::str::from_utf8(&v)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok());
                        if let Some(round) = round {
                            if tx.send(round).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut out = Outcome::default();
    let start = Instant::now();
    for round in 1..=rounds {
        out.ops += 1;
        let sent = Instant::now();
        if let Err(e) = driver
            .put(key.to_vec(), round.to_string().into_bytes())
            .await
        {
            out.error(format!("put: {e:#}"));
            continue;
        }
        let mut seen = 0;
        let deadline = sent + ROUND_TIMEOUT;
        while seen < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(r)) if r == round => seen += 1,
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => break,
            }
        }
        if seen == n {
            out.latencies_ns.push(sent.elapsed().as_nanos() as u64);
        } else {
            out.error(format!(
                "round {round}: {seen} of {n} watchers saw the put within {ROUND_TIMEOUT:?}"
            ));
        }
        // Let stragglers of a failed round drain before the next put.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while rx.try_recv().is_ok() {}
    }
    out.seconds = start.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(out)
}
