//! A Consul-compatible HTTP API over the store, served by every manager on `--http`: the KV
//! (`/v1/kv`), sessions and locks, `/v1/txn`, the status, agent and catalog endpoints clients
//! probe, plus `/health` and `/metrics`. Writes go through the leader (the store routes them);
//! this module keeps no state besides what it writes to the store.
//!
//! # Choices and differences from Consul
//! - **Key space.** A Consul key `a/b` is the store key `a/b`. Nothing is hidden from root
//!   listings: session records (`/shoal/consul/sessions/<id>`) and cluster objects (`/shoal/`)
//!   show up in `GET /v1/kv/?recurse` as they do in `shoal kv ls` (Consul clients do not break
//!   on extra keys; a recursive root delete removes them as it would any key).
//! - **Indexes** are store revisions: `CreateIndex`/`ModifyIndex` are a key's create and mod
//!   revisions, `LockIndex` its lock count. `X-Consul-Index` is a single key's `ModifyIndex`,
//!   else the revision read. Blocking queries (`?index=N&wait=D`, default 5m, capped at 10m)
//!   watch the key or prefix from N+1 and answer at the first change, or at the wait with
//!   index N. `X-Consul-LastContact` is always 0.
//! - **Consistency.** The default and `?consistent` are linearizable reads; `?stale` reads
//!   the local replica.
//! - **Values** up to 512 KiB (Consul's default `kv_max_value_size`, not the store's 1 MiB),
//!   so that what works here works against Consul; larger ones answer 413.
//! - **Sessions** are store leases. TTL must be within 10s..24h as in Consul (400 otherwise);
//!   a session without a TTL is a 30-day lease (the store's longest), ended by destroy. A
//!   session ends exactly at its TTL (Consul allows up to twice it) and a leader failover
//!   restarts its full TTL. Health checks are not attached: `Checks` are accepted and
//!   ignored. `LockDelay` is recorded but not enforced. A session id is the lease id in a
//!   UUID's shape (lease 10 is `00000000-0000-000a-0000-000000000000`). Behaviour `delete`
//!   attaches the locked key to the lease; a later plain PUT (no `?acquire`) of that key
//!   detaches it, so the key is then only unlocked, not deleted, when the session ends.
//! - **Transactions** (`/v1/txn`, KV verbs only, at most 64): checks run before the writes
//!   rather than in order, so a check on a key written earlier in the same transaction sees
//!   the value before it. All or nothing; a failed check answers 409 with `Errors`.
//! - **Bad input.** Unknown query parameters answer 400 (Consul ignores them) so that a typo
//!   such as `?recurce` on a DELETE never deletes something else; parameters common to all of
//!   Consul's endpoints (`dc`, `token`, `ns`, ...) are accepted, and `dc` must be `dc1`.
//!   Malformed session ids answer 400; an unknown session in `?acquire` 500 (as Consul).
//! - **Catalog.** `/v1/catalog/nodes` lists the managers; agents join it in a later issue.
//!   `/v1/status/leader` and `/peers` give managers' HTTP addresses (gRPC for one without).
//! - **Health.** `/health` answers 200 while the manager knows a leader, else 503.
//! - **ACL tokens** (`acl.rs`): KV, session and transaction requests are checked against the
//!   rules of the request's token (`X-Consul-Token`, `Authorization: Bearer`, `?token=`),
//!   created with `shoal acl token create`; without a token, against the manager's
//!   `--http-acl-default-policy` (`allow` by default, Consul's `acl.default_policy`). Recursive
//!   reads leave out the keys the token may not read (`X-Consul-Results-Filtered-By-ACLs`).
//!   Tokens have key-prefix rules and a session level; Consul's policies, roles and the
//!   `/v1/acl/` endpoints are not served.
//! - **Transport.** Plaintext on loopback; beyond loopback mutual TLS with the cluster's
//!   certificates (a client or manager certificate), unless the manager runs with
//!   `--insecure-http` (warned at every start); `--http-tls` asks for TLS on loopback too.
//!   Requests with a foreign `Origin` (a web page), and on plaintext loopback with a foreign
//!   `Host` (DNS rebinding), answer 403. Connections go through `api::conn`: at most
//!   `--api-max-connections` open (one more gets a 503), closed when idle for
//!   `--api-idle-timeout` (never while a blocking query waits).

mod acl;
mod blocking;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod kv;
mod query;
mod session;
mod status;
mod txn;

use std::future::Future;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::Method;
use axum::http::StatusCode;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::Router;
use serde::Serialize;
use shoal_raft::Store;
use shoal_tls::{Credentials, Role};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::conn::{self, ConnLimits};
use crate::metrics::manager::ManagerMetrics;

use self::acl::Acl;
use self::error::ApiError;
use self::query::decode;
use crate::model::Access;

/// What every handler gets: the store, and a signal that the manager is stopping (blocking
/// queries end early so that a graceful shutdown never waits minutes for them).
#[derive(Clone)]
pub(crate) struct Api {
    store: Store,
    stopping: watch::Receiver<bool>,
    /// A plaintext loopback listener: requests must be addressed to this machine.
    check_host: bool,
    /// The manager's metrics page, for `/metrics`.
    metrics: ManagerMetrics,
    /// What a request without an ACL token may do.
    acl_default: Access,
}

/// Serves the API on `listener` until `shutdown` resolves: over mutual TLS with `tls` (clients
/// need a client or manager certificate of the cluster), plaintext without; with `limits` on
/// its connections, counted in `metrics.conns.http`; requests without an ACL token may do what
/// `acl_default` allows.
pub async fn serve(
    listener: TcpListener,
    store: Store,
    tls: Option<Credentials>,
    limits: ConnLimits,
    metrics: ManagerMetrics,
    acl_default: Access,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stopping) = watch::channel(false);
    let addr = listener.local_addr()?;
    let check_host = tls.is_none() && addr.ip().is_loopback();
    let stats = metrics.conns.http.clone();
    let app = Router::new().fallback(dispatch).with_state(Api {
        store,
        stopping,
        check_host,
        metrics,
        acl_default,
    });
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let tls = tls.map(|creds| conn::Tls::new(&creds, &[Role::Client, Role::Manager], "HTTP API"));
    let server = conn::Server {
        what: "HTTP API",
        limits,
        stats,
        tls,
    };
    conn::serve(listener, app, server, shutdown).await
}

async fn dispatch(
    State(api): State<Api>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A web page's request (or a DNS-rebinding page's) never reaches a handler.
    if let Err(e) = crate::api::guard::check_headers(&headers, api.check_host) {
        return ApiError::Refused(e).into_response();
    }
    let path = uri.path();
    let raw_query = uri.query();
    let started = std::time::Instant::now();
    let response = route(&api, &method, path, raw_query, &headers, body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let route = crate::metrics::routes::consul(path);
    let code = response.status().as_str().to_string();
    crate::metrics::families::API_REQUESTS.inc(&["http", route, &code]);
    crate::metrics::families::API_SECONDS.observe_duration(&["http", route], started.elapsed());
    response
}

async fn route(
    api: &Api,
    method: &Method,
    path: &str,
    q: Option<&str>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if let Some(key) =
        path.strip_prefix("/v1/kv/")
            .or(if path == "/v1/kv" { Some("") } else { None })
    {
        let acl = Acl::resolve(api, headers, q).await?;
        return kv::handle(api, &acl, method, &decode(key, false)?, q, body).await;
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        let acl = Acl::resolve(api, headers, q).await?;
        let (verb, arg) = rest.split_once('/').unwrap_or((rest, ""));
        return session::handle(api, &acl, method, verb, &decode(arg, false)?, q, body).await;
    }
    let get = |m: &Method| allow(m, &[Method::GET]);
    match path {
        "/v1/txn" => {
            allow(method, &[Method::PUT])?;
            let acl = Acl::resolve(api, headers, q).await?;
            txn::handle(api, &acl, q, body).await
        }
        "/v1/status/leader" => {
            get(method)?;
            status::leader(api, q).await
        }
        "/v1/status/peers" => {
            get(method)?;
            status::peers(api, q).await
        }
        "/v1/agent/self" => {
            get(method)?;
            status::agent_self(api, q).await
        }
        "/v1/catalog/nodes" => {
            get(method)?;
            status::catalog_nodes(api, q).await
        }
        "/v1/catalog/datacenters" => {
            get(method)?;
            Ok(json(StatusCode::OK, &[query::DATACENTER]))
        }
        "/health" => {
            get(method)?;
            status::health(api).await
        }
        "/metrics" => {
            get(method)?;
            Ok(crate::metrics::serve::page(api.metrics.render().await))
        }
        _ => Err(ApiError::NotFound(format!(
            "{path} is not an endpoint of shoal's Consul-compatible API"
        ))),
    }
}

fn allow(method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(ApiError::MethodNotAllowed(method.to_string()))
    }
}

/// A JSON response.
fn json<T: Serialize + ?Sized>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("API responses serialize");
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

impl Api {
    /// Adds Consul's query metadata headers. Indexes are store revisions; Consul never answers
    /// index 0 (clients treat it as "no blocking"), so neither does shoal.
    fn with_meta(&self, mut resp: Response, index: u64) -> Response {
        let h = resp.headers_mut();
        h.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
        let known = if self.store.leader().is_some() {
            "true"
        } else {
            "false"
        };
        h.insert("X-Consul-KnownLeader", HeaderValue::from_static(known));
        h.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
        resp
    }
}
