//! Mutual TLS on the wire: an accept loop that hands tonic (or hyper) only finished handshakes,
//! each carrying who the peer is, and a connector tonic channels dial through.
//!
//! Handshakes run one task each with a deadline, so a slow or silent peer holds up nobody. A
//! refused peer is logged once per address and reason, not once per attempt.

use std::collections::HashSet;
use std::future::Future;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::creds::WrongPeer;
use crate::pki::PeerIdentity;
use crate::Credentials;
use crate::Role;

/// How long a peer has to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of an accepted connection: tonic puts it in every request's
/// extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub remote: SocketAddr,
    /// None: the peer presented no certificate (only anonymous calls are open to it).
    pub identity: Option<Arc<PeerIdentity>>,
}

/// Who sent a request on a connection accepted by [`incoming`], if they hold one of `roles` and
/// are not revoked now (a revocation also closes the door to connections made before it).
/// Errors are the gRPC status to answer with.
pub fn authorize(
    creds: &Credentials,
    extensions: &tonic::Extensions,
    roles: &[Role],
) -> Result<Arc<PeerIdentity>, tonic::Status> {
    let wanted = || {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(" or ")
    };
    let Some(info) = extensions.get::<PeerInfo>() else {
        return Err(tonic::Status::unauthenticated(
            "not a TLS connection: shoal requires mutual TLS",
        ));
    };
    let Some(id) = &info.identity else {
        return Err(tonic::Status::unauthenticated(format!(
            "no client certificate: this call needs a {} certificate of the cluster",
            wanted()
        )));
    };
    if !roles.contains(&id.role) {
        return Err(tonic::Status::permission_denied(format!(
            "a {} certificate ({}) cannot make this call: it needs {}",
            id.role,
            id.name,
            wanted()
        )));
    }
    if creds.is_revoked(id) {
        return Err(tonic::Status::permission_denied(format!(
            "certificate of {} {} is revoked (removed from the cluster)",
            id.role, id.name
        )));
    }
    Ok(id.clone())
}

/// A server-side connection whose handshake is done.
pub struct TlsConn {
    stream: tokio_rustls::server::TlsStream<TcpStream>,
    info: PeerInfo,
}

impl TlsConn {
    pub fn info(&self) -> &PeerInfo {
        &self.info
    }
}

impl Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Remembers which (address, reason) pairs were already logged.
#[derive(Default)]
struct LogOnce {
    seen: Mutex<HashSet<(IpAddr, String)>>,
}

impl LogOnce {
    fn first(&self, ip: IpAddr, reason: &str) -> bool {
        let mut seen = self.seen.lock().expect("log-once lock");
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert((ip, reason.to_string()))
    }
}

/// Accepts TLS connections on `listener` for the server called `what` (in log lines). The
/// stream ends when the listener fails; dropping it stops the accept loop.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    what: &'static str,
) -> ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = Acceptor::new(config, what);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait, don't spin.
                    tracing::warn!(server = what, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = acceptor.accept(tcp, remote).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Finishes the TLS handshakes of one server's accepted connections (for servers that run their
/// own accept loop): each within a deadline, refusals logged once per peer and reason.
#[derive(Clone)]
pub struct Acceptor {
    acceptor: tokio_rustls::TlsAcceptor,
    what: &'static str,
    log: Arc<LogOnce>,
    timeout: Duration,
}

impl Acceptor {
    /// For the server called `what` (in log lines), with a 10 s handshake deadline.
    pub fn new(config: Arc<rustls::ServerConfig>, what: &'static str) -> Acceptor {
        Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(config),
            what,
            log: Arc::new(LogOnce::default()),
            timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// The handshake deadline, at most the default 10 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Acceptor {
        self.timeout = timeout.min(HANDSHAKE_TIMEOUT);
        self
    }

    /// The connection once its handshake is done; None (logged) if it failed or timed out.
    pub async fn accept(&self, tcp: TcpStream, remote: SocketAddr) -> Option<TlsConn> {
        let what = self.what;
        match tokio::time::timeout(self.timeout, handshake(self.acceptor.clone(), tcp, remote))
            .await
        {
            Ok(Ok(conn)) => Some(conn),
            Ok(Err(reason)) => {
                if self.log.first(remote.ip(), &reason) {
                    tracing::warn!(server = what, peer = %remote, "connection refused: {reason} (further refusals of this peer for this reason are not logged)");
                }
                None
            }
            Err(_) => {
                if self.log.first(remote.ip(), "handshake timeout") {
                    tracing::warn!(server = what, peer = %remote, "connection refused: no TLS handshake within {:?}", self.timeout);
                }
                None
            }
        }
    }
}

/// What a plaintext HTTP/1 client is told before the connection closes (as Go's servers do).
const PLAINTEXT_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nThis port requires TLS with a client certificate issued by the cluster (shoal cluster client-cert DIR; docker --tlsverify).\n";

async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    mut tcp: TcpStream,
    remote: SocketAddr,
) -> Result<TlsConn, String> {
    // A TLS connection starts with a handshake record (0x16); anything else is plaintext.
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Err("closed before the handshake".into()),
        Ok(_) if first[0] != 0x16 => {
            let mut head = [0u8; 4];
            let n = tcp.peek(&mut head).await.unwrap_or(0);
            let text = &head[..n];
            if text.starts_with(b"PRI ") {
                return Err("plaintext (non-TLS) gRPC client: this port requires TLS".into());
            }
            if n >= 3 && text[..3].iter().all(|b| b.is_ascii_uppercase()) {
                // Take the request off the socket first: closing with unread data resets it,
                // and the client would never see the answer.
                let mut sink = [0u8; 8192];
                let _ = tcp.try_read(&mut sink);
                let _ = tcp.write_all(PLAINTEXT_ANSWER).await;
                let _ = tcp.shutdown().await;
            }
            return Err("plaintext (non-TLS) client: this port requires TLS".into());
        }
        Ok(_) => {}
        Err(e) => return Err(format!("reading the handshake: {e}")),
    }
    let stream = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let identity = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|der| PeerIdentity::from_der(der).ok())
        .map(Arc::new);
    Ok(TlsConn {
        stream,
        info: PeerInfo { remote, identity },
    })
}

/// Dials TLS for tonic channels (`Endpoint::connect_with_connector[_lazy]` with an `http://`
/// URI: tonic speaks HTTP/2 over the stream this returns).
#[derive(Clone)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Connector {
        Connector { config }
    }

    /// Connects to `addr` (`host:port`) and finishes the handshake.
    pub async fn connect(
        &self,
        addr: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let host = match addr.rsplit_once(':') {
            Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.to_string())
            .unwrap_or_else(|_| ServerName::try_from("shoal").expect("a valid DNS name"));
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| match WrongPeer::of(&e) {
                // Kept typed, so a caller can tell "not the node I meant" from "unreachable".
                Some(wrong) => std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    NotThePeer {
                        addr: addr.to_string(),
                        wrong: wrong.clone(),
                    },
                ),
                None => std::io::Error::new(e.kind(), format!("TLS handshake with {addr}: {e}")),
            })
    }
}

/// A handshake refused because the server is another holder than the one the connector was
/// made for (`Credentials::client_config_for`).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {addr}: {wrong}")]
struct NotThePeer {
    addr: String,
    #[source]
    wrong: WrongPeer,
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().map(|a| a.to_string()).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("no host in {uri}"),
                )
            })?;
            Ok(TokioIo::new(this.connect(&authority).await?))
        })
    }
}

/// `http://addr` for a tonic endpoint dialled through a [`Connector`] (which does the TLS).
pub fn endpoint_uri(addr: &str) -> String {
    let bare = addr
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    format!("http://{bare}")
}
