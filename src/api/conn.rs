//! The accept loop both HTTP surfaces of a manager share (the Docker API and the Consul-compatible
//! API): at most `max_connections` connections open per listener, TLS handshakes and hijacked
//! (attach, exec) streams included, one more answered 503 and closed at once; and an idle
//! timeout: a connection that finishes no TLS handshake, or no request's head, within it (from
//! its accept, its handshake, or the end of its last response) is closed. A request in progress
//! is never idle: blocking queries, event and log streams and hijacked streams last as long as
//! they need. So a client that opens sockets and sends nothing can neither run the manager out of
//! descriptors (which RocksDB needs too) nor keep them for ever. Over mutual TLS, a connection
//! whose client certificate gets revoked is closed as soon as this process learns it, the request
//! it is serving included (a hijacked stream has left the connection and is not).
//! It owns connections only; what a request means is each surface's business.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use shoal_tls::net::Acceptor;
use shoal_tls::{Credentials, Role};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Connections open at once on each HTTP listener, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a connection may stay without a request (or a TLS handshake), unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Refusals are logged at most this often (with how many there were).
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What each HTTP listener allows (`--api-max-connections`, `--api-idle-timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// One listener's connection counters, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ConnStats {
    /// Connections open now (handshakes and hijacked streams included).
    pub(crate) fn open(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections taken since the start.
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed at once since the start: the listener was at its limit.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// The counters of a manager's two HTTP surfaces: each listener keeps its own, and the HTTP
/// API's `/metrics` shows both.
#[derive(Debug, Clone, Default)]
pub struct ApiConns {
    pub(crate) docker: Arc<ConnStats>,
    pub(crate) http: Arc<ConnStats>,
}

/// Mutual TLS on a listener: the handshakes, and the credentials whose revocations close a
/// revoked holder's open connections.
#[derive(Clone)]
pub(crate) struct Tls {
    acceptor: Acceptor,
    creds: Credentials,
}

impl Tls {
    /// For the server called `what` (HTTP/1.1), presenting `creds`' certificate and requiring a
    /// client certificate of one of `roles`.
    pub(crate) fn new(creds: &Credentials, roles: &[Role], what: &'static str) -> Tls {
        let config = creds.server_config(Some(roles), &[b"http/1.1"]);
        Tls {
            acceptor: Acceptor::new(config, what),
            creds: creds.clone(),
        }
    }
}

/// One HTTP listener's settings.
pub(crate) struct Server {
    /// Its name in log lines and answers ("Docker API", "HTTP API").
    pub what: &'static str,
    pub limits: ConnLimits,
    pub stats: Arc<ConnStats>,
    /// Mutual TLS; None: plaintext.
    pub tls: Option<Tls>,
}

/// Serves `app` on `listener` until `shutdown` resolves; then accepts nothing more, lets every
/// open connection finish the request it is serving, and returns once all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Server {
        what,
        limits,
        stats,
        tls,
    } = server;
    let tls = tls.map(|t| Tls {
        acceptor: t.acceptor.with_timeout(limits.idle_timeout),
        creds: t.creds,
    });
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait, don't spin.
                    tracing::warn!(server = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refusals.note(what, limits.max_connections, Instant::now());
            refuse(tcp, tls.is_none(), what, limits.max_connections);
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let open = Open::new(permit, stats.clone());
        connections.spawn(connection(
            tcp,
            remote,
            open,
            tls.clone(),
            app.clone(),
            limits.idle_timeout,
            closing.clone(),
        ));
    }
    drop(listener);
    let _ = closing_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One connection from accept to close.
async fn connection(
    tcp: TcpStream,
    remote: SocketAddr,
    open: Open,
    tls: Option<Tls>,
    app: Router,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
) {
    // Small request/response exchanges: without TCP_NODELAY, Nagle adds tens of milliseconds.
    let _ = tcp.set_nodelay(true);
    match tls {
        None => {
            serve_http(
                Counted {
                    io: tcp,
                    _open: open,
                },
                app,
                idle,
                closing,
                std::future::pending(),
            )
            .await
        }
        Some(Tls { acceptor, creds }) => {
            let conn = tokio::select! {
                conn = acceptor.accept(tcp, remote) => conn,
                _ = closing.wait_for(|closing| *closing) => None,
            };
            if let Some(conn) = conn {
                let who = conn.info().identity.clone();
                let revoked = async move {
                    match who {
                        Some(who) => creds.until_revoked(&who).await,
                        None => std::future::pending().await,
                    }
                };
                serve_http(
                    Counted {
                        io: conn,
                        _open: open,
                    },
                    app,
                    idle,
                    closing,
                    revoked,
                )
                .await;
            }
        }
    }
}

/// HTTP/1 on `io` until the client or the idle timeout closes it, the server stops, or
/// `revoked` resolves (the client's certificate was revoked: closed at once). Hyper's
/// header read timeout is the idle timeout: it runs whenever the connection waits for a request's
/// head (from the start, or from the end of the last response) and never while a request is
/// served. An upgraded connection leaves hyper (and this task) with its `Counted` io.
async fn serve_http<T>(
    io: Counted<T>,
    app: Router,
    idle: Duration,
    mut closing: watch::Receiver<bool>,
    revoked: impl Future<Output = ()>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle);
    let conn = builder
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(app))
        .with_upgrades();
    tokio::pin!(conn);
    tokio::pin!(revoked);
    let mut stopping = false;
    loop {
        tokio::select! {
            () = &mut revoked => {
                tracing::info!("closing a connection: its client certificate was revoked");
                return;
            }
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(error = %e, "HTTP connection ended");
                }
                return;
            }
            _ = closing.wait_for(|closing| *closing), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Tells a plaintext client over the limit why, then closes (a TLS client is closed at once: it
/// has not even shaken hands).
fn refuse(tcp: TcpStream, plaintext: bool, what: &str, limit: usize) {
    if !plaintext {
        return;
    }
    // Take what the client already sent off the socket: closing with unread data resets the
    // connection, and the client would never see the answer.
    let mut sink = [0u8; 8192];
    let _ = tcp.try_read(&mut sink);
    let _ = tcp.try_write(&over_limit_answer(what, limit));
}

/// A 503 with a JSON message (Docker's error shape; Consul clients show the body).
fn over_limit_answer(what: &str, limit: usize) -> Vec<u8> {
    let body = serde_json::json!({
        "message": format!(
            "shoal: the {what} has {limit} connections open, its limit (--api-max-connections); try again later"
        )
    })
    .to_string();
    let mut answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body.as_bytes());
    answer
}

/// Logs refusals when they start, then at most every [`LOG_EVERY`] with their count.
#[derive(Debug, Default)]
struct Refusals {
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Refusals {
    fn note(&mut self, what: &str, limit: usize, now: Instant) {
        self.unlogged += 1;
        if self
            .last_log
            .is_some_and(|at| now.saturating_duration_since(at) < LOG_EVERY)
        {
            return;
        }
        tracing::warn!(
            server = what,
            "{} connection(s) refused: {limit} are open, the limit (--api-max-connections)",
            self.unlogged
        );
        self.last_log = Some(now);
        self.unlogged = 0;
    }
}

/// A connection's place under the limit, held as long as its socket is open.
struct Open {
    _permit: OwnedSemaphorePermit,
    stats: Arc<ConnStats>,
}

impl Open {
    fn new(permit: OwnedSemaphorePermit, stats: Arc<ConnStats>) -> Open {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Open {
            _permit: permit,
            stats,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that keeps its place under the limit until it is dropped, wherever it goes (into a
/// hijacked stream too).
struct Counted<T> {
    io: T,
    _open: Open,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
