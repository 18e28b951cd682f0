//! The managers' client to one node's engine endpoint (served by `shoal agent`, see
//! `agent::engine_proxy`): sends a Docker API request about that node's containers over mutual
//! TLS (this manager's certificate; the node must show a worker certificate), and hands back the engine's answer as it streams, or its hijacked stream.
//! It never rewrites paths or bodies: its callers do.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use shoal_tls::net::Connector;
use tokio::net::TcpStream;

/// Bound on opening the connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole `request` (status and body); `send` streams and has none after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-connection headers of the caller's request that must not reach the node.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Why a request could not be forwarded to a node (an answer with an error status is not one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ForwardError {
    #[error("node engine endpoint {addr} is unreachable: {reason}")]
    Unreachable { addr: String, reason: String },

    #[error("node engine endpoint {addr} gave no answer within {after:?}")]
    TimedOut { addr: String, after: Duration },

    #[error("node engine endpoint {addr}: {reason}")]
    Protocol { addr: String, reason: String },

    #[error("request for node engine endpoint {addr} is invalid: {reason}")]
    BadRequest { addr: String, reason: String },
}

/// A connection to a node: TLS in the product, plain TCP to tests' doubles.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// One node's engine endpoint: every request opens its own connection.
#[derive(Debug, Clone)]
pub(crate) struct NodeEngine {
    /// `host:port`, as the node registered it (`Node::engine_addr`).
    addr: String,
    /// Mutual TLS to the node; None only for tests' plaintext engine doubles.
    tls: Option<Connector>,
}

impl NodeEngine {
    /// The endpoint at `addr` (`host:port`), dialled through `tls`.
    pub(crate) fn new(addr: impl Into<String>, tls: Option<Connector>) -> Self {
        NodeEngine {
            addr: addr.into(),
            tls,
        }
    }

    /// Sends `req` (path and query already rewritten by the caller, e.g.
    /// `/containers/<engine id>/logs?follow=1`; without a `/vX.Y` prefix the engine uses its own API
    /// version) and returns the engine's response, its body streaming. A request carrying
    /// `Upgrade` (attach, exec start) may be answered 101: the response then carries the node's
    /// side of the upgrade (`hyper::upgrade::on`, see `splice`). Only connecting is timed.
    pub(crate) async fn send(
        &self,
        req: Request<axum::body::Body>,
    ) -> Result<Response<Incoming>, ForwardError> {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        parts.uri = Uri::try_from(path).map_err(|e| self.bad_request(e))?;
        let headers = &mut parts.headers;
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
        if headers.contains_key(header::UPGRADE) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        } else {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let host = HeaderValue::from_str(&self.addr).map_err(|e| self.bad_request(e))?;
        headers.insert(header::HOST, host);

        let connect = async {
            let stream: Box<dyn Io> = match &self.tls {
                Some(tls) => Box::new(tls.connect(&self.addr).await?),
                None => {
                    let tcp = TcpStream::connect(&self.addr).await?;
                    // Interactive streams (exec -it) send single keystrokes.
                    let _ = tcp.set_nodelay(true);
                    Box::new(tcp)
                }
            };
            Ok::<_, std::io::Error>(stream)
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.unreachable(e)),
            Err(_) => {
                return Err(self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))
            }
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        let addr = self.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(node_engine = %addr, "connection: {e}");
            }
        });
        sender
            .send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| self.protocol(e))
    }

    /// Sends `method path_and_query` with an optional JSON body and reads the whole answer, within
    /// 2 minutes; for answers that are not streams.
    pub(crate) async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, Bytes), ForwardError> {
        let mut req = Request::builder().method(method).uri(path_and_query);
        let body = match body {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                axum::body::Body::from(json.to_string())
            }
            None => axum::body::Body::empty(),
        };
        let req = req.body(body).map_err(|e| self.bad_request(e))?;
        let exchange = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.protocol(e))?;
            Ok::<_, ForwardError>((status, body.to_bytes()))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(ForwardError::TimedOut {
                    addr: self.addr.clone(),
                    after: REQUEST_TIMEOUT,
                })
            })
    }

    fn unreachable(&self, reason: impl ToString) -> ForwardError {
        ForwardError::Unreachable {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn protocol(&self, reason: impl ToString) -> ForwardError {
        ForwardError::Protocol {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }

    fn bad_request(&self, reason: impl ToString) -> ForwardError {
        ForwardError::BadRequest {
            addr: self.addr.clone(),
            reason: reason.to_string(),
        }
    }
}

/// Serves a hijacked client connection: once the 101 has gone to the client and come from the node,
/// copies bytes both ways; an EOF on one side shuts the other side's write half (stdin EOF reaches
/// `docker exec -i`). Returns when both directions are done.
pub(crate) async fn splice(client: OnUpgrade, node: OnUpgrade) -> std::io::Result<()> {
    let (client, node) = tokio::try_join!(client, node).map_err(std::io::Error::other)?;
    let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
    tokio::io::copy_bidirectional(&mut client, &mut node).await?;
    Ok(())
}

#[cfg(test)]
#[path = "forward_tests.rs"]
mod tests;
