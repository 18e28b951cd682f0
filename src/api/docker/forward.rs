//! The managers' client to one node's engine endpoint (served by `shoal agent`, see
//! `agent::engine_proxy`): sends a Docker API request about that node's containers over mutual
//! TLS (this manager's certificate; the endpoint must show the worker certificate of that very
//! node, the one the CA issued for its node id, never just any worker's), and hands back the
//! engine's answer as it streams, or its hijacked stream.
//! It never rewrites paths or bodies: its callers do.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use shoal_tls::creds::WrongPeer;
use shoal_tls::net::Connector;
use shoal_tls::{Credentials, Role};
use tokio::net::TcpStream;

use crate::model::Node;

/// Bound on opening the connection to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a whole `request` (status and body), unless set with `within`; `send` streams and
/// has none after connecting.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Most bytes of a node's answer that `request` and `collect` hold in memory: an engine's JSON
/// answers and progress streams are far smaller, and a node cannot make the manager buffer more.
pub(crate) const MAX_ANSWER: usize = 64 << 20;
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

    /// Another node (or anyone holding another worker certificate) answers at the address node
    /// `node` registered: nothing is sent to it.
    #[error("node engine endpoint {addr} refused: it is not node {node}'s ({reason})")]
    WrongNode {
        addr: String,
        node: String,
        reason: String,
    },

    #[error("node engine endpoint {addr} gave no answer within {after:?}")]
    TimedOut { addr: String, after: Duration },

    #[error("node engine endpoint {addr} answered more than {limit} bytes")]
    TooLarge { addr: String, limit: usize },

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
    /// The node's id: the name its worker certificate must carry.
    node: String,
    /// `host:port`, as the node registered it (`Node::engine_addr`).
    addr: String,
    /// Mutual TLS to that node only; None only for tests' plaintext engine doubles.
    tls: Option<Connector>,
    /// Bound on a whole `request`.
    timeout: Duration,
}

impl NodeEngine {
    /// `node`'s endpoint, dialled with this manager's `creds`.
    pub(crate) fn of(node: &Node, creds: Option<&Credentials>) -> Self {
        NodeEngine::new(&node.id, node.engine_addr.clone(), creds)
    }

    /// The endpoint of node `node` at `addr` (`host:port`), dialled with this manager's
    /// `creds`: the handshake succeeds only if the endpoint shows node `node`'s worker
    /// certificate (an address is only what the node registered, and any worker can register
    /// any address).
    pub(crate) fn new(node: &str, addr: impl Into<String>, creds: Option<&Credentials>) -> Self {
        let tls = creds.map(|creds| {
            Connector::new(creds.client_config_for(Role::Worker, node, &[b"http/1.1"]))
        });
        NodeEngine {
            node: node.to_string(),
            addr: addr.into(),
            tls,
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The same endpoint, its `request`s bounded by `timeout` instead of 2 minutes.
    #[cfg(test)]
    pub(crate) fn within(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
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
            Ok(Err(e)) => {
                return Err(match WrongPeer::of(&e) {
                    Some(wrong) => ForwardError::WrongNode {
                        addr: self.addr.clone(),
                        node: self.node.clone(),
                        reason: wrong.to_string(),
                    },
                    None => self.unreachable(e),
                })
            }
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

    /// Sends `method path_and_query` with an optional JSON body and reads the whole answer, at most
    /// [`MAX_ANSWER`] bytes, within 2 minutes (or `within`'s); for answers that are not streams.
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
            Ok::<_, ForwardError>((status, self.read_body(resp.into_body()).await?))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(self.timeout)))
    }

    /// Sends `req` (as `send`) and reads the whole answer, at most [`MAX_ANSWER`] bytes, all
    /// within `within`: for the fan-outs whose answers are progress streams (`pull`, `load`).
    pub(crate) async fn collect(
        &self,
        req: Request<axum::body::Body>,
        within: Duration,
    ) -> Result<(StatusCode, Bytes), ForwardError> {
        let exchange = async {
            let resp = self.send(req).await?;
            let status = resp.status();
            Ok::<_, ForwardError>((status, self.read_body(resp.into_body()).await?))
        };
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(within)))
    }

    async fn read_body(&self, body: Incoming) -> Result<Bytes, ForwardError> {
        match http_body_util::Limited::new(body, MAX_ANSWER)
            .collect()
            .await
        {
            Ok(body) => Ok(body.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ForwardError::TooLarge {
                addr: self.addr.clone(),
                limit: MAX_ANSWER,
            }),
            Err(e) => Err(self.protocol(e)),
        }
    }

    fn timed_out(&self, after: Duration) -> ForwardError {
        ForwardError::TimedOut {
            addr: self.addr.clone(),
            after,
        }
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
