//! The agent's engine endpoint: serves this node's Docker engine to the managers, so that a manager
//! can forward a request about one of the node's containers (logs, attach, exec, kill, images, ...)
//! to the node that has it. Only managers of the cluster get in (mutual TLS, a manager
//! certificate required at the handshake); a request is then forwarded unchanged, the engine's answer streams back as it comes, and hijacked streams (attach, exec start)
//! are spliced both ways. It never interprets a request: the managers decide what to send.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::task::JoinSet;
use tokio_stream::StreamExt;

use super::error::AgentError;
use super::throttle::Throttle;

/// The local engine's socket when `--docker` is not given.
const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Bound on reaching the engine (a unix socket answers at once; a tcp:// engine may be away).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1); hyper frames each
/// body again on its own side.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type Body = BoxBody<Bytes, hyper::Error>;

/// Where the engine listens.
#[derive(Debug)]
enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

impl Upstream {
    /// `unix:///path`, a bare socket path, `tcp://host:port` or `http://host:port`; None: the local
    /// socket (the URLs `engine::DockerRuntime::connect` takes).
    fn parse(url: Option<&str>) -> Result<Upstream, AgentError> {
        let Some(url) = url else {
            return Ok(Upstream::Unix(DEFAULT_SOCKET.into()));
        };
        let bad = |reason: &str| AgentError::BadDockerUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url.starts_with('/') {
            return Ok(Upstream::Unix(url.into()));
        }
        if let Some(path) = url.strip_prefix("unix://") {
            return match path.starts_with('/') {
                true => Ok(Upstream::Unix(path.into())),
                false => Err(bad("expected unix:///absolute/path")),
            };
        }
        let host = url
            .strip_prefix("tcp://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| bad("expected unix:///path or tcp://host:port"))?;
        let host = host.trim_end_matches('/');
        match host.rsplit_once(':') {
            Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Upstream::Tcp(host.to_string()))
            }
            _ => Err(bad("expected tcp://host:port")),
        }
    }

    /// The Host header the engine gets (Go's HTTP/1.1 server refuses a request without one).
    fn host(&self) -> &str {
        match self {
            Upstream::Unix(_) => "docker",
            Upstream::Tcp(host) => host,
        }
    }
}

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Upstream::Unix(path) => write!(f, "unix://{}", path.display()),
            Upstream::Tcp(host) => write!(f, "tcp://{host}"),
        }
    }
}

/// The bound endpoint, ready to serve.
pub(crate) struct EngineEndpoint {
    listener: TcpListener,
    upstream: Arc<Upstream>,
    /// None only for tests' plaintext doubles of a manager.
    tls: Option<Credentials>,
}

/// Binds `listen` for the engine at `docker` (None: the local socket); with `tls`, only managers
/// of the cluster may connect.
pub(crate) async fn bind(
    listen: SocketAddr,
    docker: Option<&str>,
    tls: Option<Credentials>,
) -> Result<EngineEndpoint, AgentError> {
    let upstream = Upstream::parse(docker)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AgentError::EngineListen {
            addr: listen,
            source,
        })?;
    Ok(EngineEndpoint {
        listener,
        upstream: Arc::new(upstream),
        tls,
    })
}

impl EngineEndpoint {
    /// The address it listens on (the real port when bound to port 0).
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until dropped (aborting it closes every connection but spliced streams,
    /// which end with either side).
    pub(crate) async fn run(self) {
        if let Some(creds) = &self.tls {
            let config = creds.server_config(Some(&[Role::Manager]), &[b"http/1.1"]);
            let mut incoming = shoal_tls::net::incoming(self.listener, config, "engine endpoint");
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    conn = incoming.next() => match conn {
                        Some(Ok(conn)) => {
                            conns.spawn(serve(conn, self.upstream.clone()));
                        }
                        Some(Err(e)) => tracing::warn!("engine endpoint: {e}"),
                        None => return,
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        }
        let mut conns = JoinSet::new();
        let mut throttle = Throttle::default();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        conns.spawn(serve(stream, self.upstream.clone()));
                    }
                    // Out of descriptors, or a connection reset before accept: back off, keep serving.
                    Err(e) => {
                        let line = format!("engine endpoint: accept: {e}");
                        if throttle.should_log(&line) {
                            tracing::warn!("{line}");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

async fn serve<S>(stream: S, upstream: Arc<Upstream>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, upstream.clone()));
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!("engine endpoint connection: {e}");
    }
}

async fn handle(
    mut req: Request<Incoming>,
    upstream: Arc<Upstream>,
) -> Result<Response<Body>, Infallible> {
    let upgrade = wants_upgrade(req.headers());
    let client = upgrade.then(|| hyper::upgrade::on(&mut req));
    let headers = req.headers_mut();
    strip_hop_by_hop(headers);
    if let Ok(host) = HeaderValue::from_str(upstream.host()) {
        headers.insert(header::HOST, host);
    }
    let connection = if upgrade { "Upgrade" } else { "close" };
    headers.insert(header::CONNECTION, HeaderValue::from_static(connection));
    if upgrade {
        headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
    }
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut resp = match forward(&upstream, req).await {
        Ok(resp) => resp,
        Err(reason) => {
            let message = format!("cannot reach the Docker engine at {upstream}: {reason}");
            tracing::warn!(%method, %path, "{message}");
            return Ok(docker_error(StatusCode::BAD_GATEWAY, &message));
        }
    };
    tracing::debug!(%method, %path, status = %resp.status(), "forwarded to the engine");
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client else {
            let message = "the Docker engine switched protocols unasked";
            return Ok(docker_error(StatusCode::BAD_GATEWAY, message));
        };
        let engine = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let Err(e) = splice(client, engine).await {
                tracing::debug!(%path, "hijacked stream ended: {e}");
            }
        });
        // The 101 keeps its Connection/Upgrade headers: hyper hands the connection over after it.
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, empty()));
    }
    strip_hop_by_hop(resp.headers_mut());
    Ok(resp.map(|body| body.boxed()))
}

/// Sends `req` to the engine on a connection of its own; the response body streams from it. Only
/// connecting is timed: some answers come late by design (`wait`, `stop?t=30`).
async fn forward(
    upstream: &Upstream,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, String> {
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, async {
        match upstream {
            Upstream::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            Upstream::Tcp(host) => TcpStream::connect(host).await.map(Stream::Tcp),
        }
    })
    .await;
    let sent = match connected {
        Ok(Ok(Stream::Unix(stream))) => send_over(stream, req).await,
        Ok(Ok(Stream::Tcp(stream))) => send_over(stream, req).await,
        Ok(Err(e)) => Err(e),
        Err(_) => return Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    };
    sent.map_err(|e| e.to_string())
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

async fn send_over<S>(stream: S, req: Request<Incoming>) -> std::io::Result<Response<Incoming>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("engine connection: {e}");
        }
    });
    sender
        .send_request(req)
        .await
        .map_err(std::io::Error::other)
}

/// Copies a hijacked stream both ways until both directions end; an EOF on one side shuts the
/// other side's write half, so `docker exec -i` sees its stdin close.
async fn splice(client: OnUpgrade, engine: OnUpgrade) -> std::io::Result<()> {
    let (client, engine) = tokio::try_join!(client, engine).map_err(std::io::Error::other)?;
    let (mut client, mut engine) = (TokioIo::new(client), TokioIo::new(engine));
    tokio::io::copy_bidirectional(&mut client, &mut engine).await?;
    Ok(())
}

/// Docker's clients ask for a hijacked stream with `Connection: Upgrade` and `Upgrade: tcp`.
fn wants_upgrade(headers: &HeaderMap) -> bool {
    let connection_upgrade = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    connection_upgrade && headers.contains_key(header::UPGRADE)
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed
        .iter()
        .chain(&HOP_BY_HOP.map(HeaderName::from_static))
    {
        headers.remove(name);
    }
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}

/// An answer in the Docker API's error shape.
fn docker_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_urls_parse_as_the_runtime_takes_them() {
        let unix = |u: Option<&str>| match Upstream::parse(u).unwrap() {
            Upstream::Unix(p) => p.display().to_string(),
            other => panic!("{other:?}"),
        };
        assert_eq!(unix(None), DEFAULT_SOCKET);
        assert_eq!(unix(Some("/run/d.sock")), "/run/d.sock");
        assert_eq!(unix(Some("unix:///run/d.sock")), "/run/d.sock");
        let tcp = Upstream::parse(Some("tcp://10.0.0.1:2375")).unwrap();
        assert_eq!(tcp.to_string(), "tcp://10.0.0.1:2375");
        assert_eq!(tcp.host(), "10.0.0.1:2375");
        for bad in ["unix://rel", "tcp://host", "ssh://h:22", "tcp://:1"] {
            assert!(Upstream::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["content-type"]);

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        assert!(wants_upgrade(&h));
    }
}
