//! The Docker Engine API, served by every manager on `--docker-api`, so that the docker CLI,
//! docker-compose and Docker SDKs drive the whole cluster as if it were one engine, as classic
//! Swarm's manager did.
//!
//! # How it maps
//! - **Containers are cluster objects.** `POST /containers/create` writes a plain-container
//!   service (`model::Container`: the create body, one slot, `replicas` 0); `start` sets it to
//!   1 and the leader's scheduler places it with the same filters and strategies as services;
//!   `stop` sets 0; `rm` removes the object. The handlers then wait for the cluster to get
//!   there, so the calls return when Docker's would. A follower answers exactly as the leader:
//!   reads are linearizable and writes go through the leader.
//! - **Ids and names.** A plain container's id is its object's (64 hex characters, stable
//!   across restarts and nodes); `docker ps` shows it as `/<node>/<name>`. Names, ids and id
//!   prefixes resolve as with Docker. Tasks of services are listed too (their engine id).
//! - **What only the engine knows** (logs, attach, exec, signals, live inspect, images) is
//!   relayed to the agent's engine endpoint of the node that runs the container
//!   (`forward.rs`); hijacked streams are spliced through.
//! - **Health.** A create body's `Healthcheck` is checked as the engine would check it (a 400
//!   naming the field) and run by the engine; `ps` shows `Up ... (healthy)` and filters on
//!   `health=`, inspect shows `State.Health`. The proxies route only to healthy containers; an
//!   unhealthy one keeps running, as with Docker. Stopping one that the proxy routes to
//!   (`interlock.hostname`) waits for its drain delay (3 s): it leaves the config first.
//! - **Compose's recreate** of a service with `shoal.update.*` labels hands each container over
//!   to its successor, a few at a time (`handover.rs`); `rename` is served for it.
//! - **Versions.** Any `/vX.Y` prefix and unversioned paths are accepted; 1.44 is advertised.
//! - **Errors** are `{"message": ...}` with Docker's status codes; endpoints of Docker's API
//!   that shoal does not serve answer 501 naming the endpoint; unknown paths 404.
//! - **Swarm mode.** Every manager is a swarm manager to the docker CLI (`Swarm: active/manager`
//!   on `/_ping`, a `Swarm` section in `/info`): `/services` and `/tasks` serve shoal's services
//!   (`services.rs`, `service_spec.rs`), `/nodes` its agents' hosts (`nodes.rs`). A spec field
//!   shoal cannot honour is a 400 naming it.
//! - **Policy.** Create and exec bodies go through the operator's policy (`policy.rs`: no
//!   privileged containers, host namespaces, devices, added capabilities or binds outside
//!   the allowed paths unless allowed), and so do services' container specs; requests
//!   through `guard.rs` (browsers' `Origin`, foreign `Host` on plaintext loopback, JSON content
//!   type). Both refuse with 403/400.
//! - **Connections** go through `api::conn`: at most `--api-max-connections` open (one more
//!   gets a 503), closed when idle for `--api-idle-timeout` (never while a request, such as
//!   `docker events`, is served; hijacked streams leave the timeout but keep their place).
//!
//! # Differences from Docker
//! - `docker stop` then `docker start` runs a new engine container (the filesystem of the old
//!   one is not kept); its id in the API does not change.
//! - Networks are cluster objects created as a bridge on each node that needs them; without an
//!   overlay, containers on different nodes do not share a network.
//! - Volumes, builds, commits, secrets, configs, `/swarm` and plugins are not served (501);
//!   services are replicated only, their ports published on each task's node (no routing mesh).

mod containers;
mod create;
mod error;
mod events;
mod filters;
pub(crate) mod forward;
#[cfg(test)]
mod fuzz_tests;
mod guard;
mod handover;
mod images;
mod networks;
mod nodes;
mod objects;
mod policy;
mod service_spec;
mod services;
mod streams;
mod system;
mod view;

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tokio::net::TcpListener;

use crate::api::conn::{self, ConnLimits, ConnStats};

use self::error::DockerError;
use self::objects::Objects;
use self::streams::Execs;

pub use self::policy::{DockerAllow, DockerPolicy};

/// The API version shoal advertises.
pub const API_VERSION: &str = "1.44";

#[derive(Clone)]
pub(crate) struct Api {
    objects: Objects,
    /// How to reach the agents' engine endpoints: this manager's credentials, each connection
    /// pinned to the node meant (`forward::NodeEngine`).
    engine_tls: Option<Credentials>,
    execs: Execs,
    /// What containers created here may do to their node.
    policy: std::sync::Arc<DockerPolicy>,
    /// A plaintext loopback listener: requests must be addressed to this machine (`guard`).
    check_host: bool,
}

/// Serves the Docker API on `listener` until `shutdown` resolves: over mutual TLS with `tls`
/// (clients need a client or manager certificate of the cluster, as `docker --tlsverify`
/// presents it), plaintext without; with `limits` on its connections, counted in `stats`. Node
/// engines are always reached with the store's credentials. Container creates and execs go
/// through `policy`.
pub async fn serve(
    listener: TcpListener,
    index: crate::objects::Objects,
    tls: Option<Credentials>,
    policy: DockerPolicy,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = index.store().clone();
    let engine_tls = store.tls().cloned();
    let check_host = tls.is_none() && listener.local_addr()?.ip().is_loopback();
    let api = Api {
        engine_tls,
        objects: Objects { store, index },
        execs: Execs::default(),
        policy: std::sync::Arc::new(policy),
        check_host,
    };
    let app = Router::new().fallback(dispatch).with_state(api);
    let tls = tls.map(|creds| conn::Tls::new(&creds, &[Role::Client, Role::Manager], "Docker API"));
    let server = conn::Server {
        what: "Docker API",
        limits,
        stats,
        tls,
    };
    conn::serve(listener, app, server, shutdown).await
}

/// A request's decoded query parameters.
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: Option<&str>) -> Query {
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        Query(
            raw.unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (decode(k), decode(v)),
                    None => (decode(p), String::new()),
                })
                .collect(),
        )
    }

    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Docker's booleans: `1`, `true`, `True`.
    pub(crate) fn flag(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|v| matches!(v, "1" | "true" | "True" | "TRUE"))
    }
}

/// `/v1.44/containers/json` → `/containers/json`.
fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v") {
        if let Some((version, tail)) = rest.split_once('/') {
            if !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return path.split_at(path.len() - tail.len() - 1).1;
            }
        }
    }
    path
}

async fn dispatch(State(api): State<Api>, req: Request) -> Response {
    let method = req.method().clone();
    let path = strip_version(req.uri().path()).to_string();
    let started = std::time::Instant::now();
    tracing::debug!(%method, %path, "docker API request");
    let mut response = match route(&api, req).await {
        Ok(r) => r,
        Err(e) => {
            if !matches!(e, DockerError::NotFound(_)) {
                tracing::debug!(%method, %path, "docker API: {e}");
            }
            e.into_response()
        }
    };
    let route = crate::metrics::routes::docker(&path);
    let code = response.status().as_str().to_string();
    crate::metrics::families::API_REQUESTS.inc(&["docker", route, &code]);
    crate::metrics::families::API_SECONDS.observe_duration(&["docker", route], started.elapsed());
    if method != Method::GET && method != Method::HEAD {
        let status = response.status().as_u16();
        let ms = started.elapsed().as_millis();
        tracing::info!(%method, %path, status, ms, "docker API");
    }
    let h = response.headers_mut();
    h.insert("Api-Version", HeaderValue::from_static(API_VERSION));
    h.insert(
        header::SERVER,
        HeaderValue::from_static(system::SERVER_VERSION),
    );
    response
}

/// A body dockerd reads as JSON: `Content-Type: application/json` required (`guard`).
async fn json_body(req: Request, limit: usize) -> Result<Bytes, DockerError> {
    guard::check_json(req.headers())?;
    body(req, limit).await
}

async fn body(req: Request, limit: usize) -> Result<Bytes, DockerError> {
    let limited = http_body_util::Limited::new(req.into_body(), limit);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(DockerError::TooLarge(
            format!("request body larger than {limit} bytes"),
        )),
        Err(e) => Err(DockerError::BadRequest(format!("reading the body: {e}"))),
    }
}

/// Parts of Docker's API shoal knows of but does not serve.
const UNSERVED: &[&str] = &[
    "volumes",
    "build",
    "commit",
    "swarm",
    "services",
    "tasks",
    "secrets",
    "configs",
    "nodes",
    "plugins",
    "session",
    "auth",
    "distribution",
    "system",
    "grpc",
    "containers",
    "images",
    "networks",
    "exec",
];

async fn route(api: &Api, req: Request) -> Result<Response, DockerError> {
    guard::check_headers(req.headers(), api.check_host)?;
    let method = req.method().clone();
    let path = strip_version(req.uri().path()).to_string();
    let q = Query::parse(req.uri().query());
    let segs: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        })
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    use Method as M;
    match (&method, segs.as_slice()) {
        (&M::GET, ["_ping"]) => Ok(system::ping(false)),
        (&M::HEAD, ["_ping"]) => Ok(system::ping(true)),
        (&M::GET, ["version"]) => Ok(system::version()),
        (&M::GET, ["info"]) => system::info(api).await,
        (&M::GET, ["events"]) => events::events(api, &q).await,

        (&M::GET, ["containers", "json"]) => containers::list(api, &q).await,
        (&M::POST, ["containers", "create"]) => {
            let b = json_body(req, containers::MAX_BODY).await?;
            containers::create(api, &q, &b).await
        }
        (&M::GET, ["containers", id, "json"]) => containers::inspect(api, id).await,
        (&M::POST, ["containers", id, "start"]) => containers::start(api, id).await,
        (&M::POST, ["containers", id, "stop"]) => containers::stop(api, id, &q).await,
        (&M::POST, ["containers", id, "kill"]) => containers::kill(api, id, &q).await,
        (&M::POST, ["containers", id, "restart"]) => containers::restart(api, id, &q).await,
        (&M::POST, ["containers", id, "wait"]) => containers::wait(api, id, &q).await,
        (&M::POST, ["containers", id, "rename"]) => containers::rename(api, id, &q).await,
        (&M::DELETE, ["containers", id]) => containers::remove(api, id, &q).await,
        (&M::POST, ["containers", id, "attach"]) => {
            let id = id.to_string();
            streams::attach(api, &id, req).await
        }
        (&M::POST, ["containers", id, "exec"]) => {
            let id = id.to_string();
            let b = json_body(req, containers::MAX_BODY).await?;
            streams::exec_create(api, &id, &b).await
        }
        (
            &M::GET,
            ["containers", id, suffix @ ("logs" | "top" | "stats" | "changes" | "export")],
        )
        | (&M::POST, ["containers", id, suffix @ ("resize" | "pause" | "unpause")]) => {
            let (id, suffix) = (id.to_string(), suffix.to_string());
            containers::forward(api, &id, &suffix, req).await
        }
        (&M::POST, ["exec", id, suffix @ ("start" | "resize")])
        | (&M::GET, ["exec", id, suffix @ "json"]) => {
            if *suffix == "start" {
                guard::check_json(req.headers())?;
            }
            let (id, suffix) = (id.to_string(), suffix.to_string());
            streams::exec(api, &id, &suffix, req).await
        }

        (&M::GET, ["images", "json"]) => images::list(api, &q).await,
        (&M::POST, ["images", "load"]) => {
            let b = body(req, images::MAX_LOAD).await?;
            images::load(api, b).await
        }
        (&M::POST, ["images", "create"]) => {
            let auth = req
                .headers()
                .get("X-Registry-Auth")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            images::pull(api, &q, auth.as_deref()).await
        }
        (&M::GET, ["images", name @ .., "json"]) if !name.is_empty() => {
            images::inspect(api, &name.join("/")).await
        }
        (&M::DELETE, ["images", name @ ..]) if !name.is_empty() => {
            images::remove(api, &name.join("/"), &q).await
        }

        (&M::GET, ["networks"]) => networks::list(api, &q).await,
        (&M::POST, ["networks", "create"]) => {
            let b = json_body(req, containers::MAX_BODY).await?;
            networks::create(api, &b).await
        }
        (&M::GET, ["networks", name @ ..]) if !name.is_empty() => {
            networks::inspect(api, &name.join("/")).await
        }
        (&M::DELETE, ["networks", id]) => networks::remove(api, id).await,
        (&M::POST, ["networks", id, verb @ ("connect" | "disconnect")]) => {
            let (id, connect) = (id.to_string(), *verb == "connect");
            let b = json_body(req, containers::MAX_BODY).await?;
            networks::connect(api, &id, &b, connect).await
        }

        (&M::GET, ["services"]) => services::list(api, &q).await,
        (&M::POST, ["services", "create"]) => {
            let b = json_body(req, containers::MAX_BODY).await?;
            services::create(api, &b).await
        }
        (&M::GET, ["services", id]) => services::inspect(api, id).await,
        (&M::DELETE, ["services", id]) => services::remove(api, id).await,
        (&M::POST, ["services", id, "update"]) => {
            let id = id.to_string();
            let b = json_body(req, containers::MAX_BODY).await?;
            services::update(api, &id, &q, &b).await
        }
        (&M::GET, [kind @ ("services" | "tasks"), _, "logs"]) => {
            Err(DockerError::NotImplemented(format!(
                "docker {} logs is not served by shoal yet: read each container's logs with \
                 docker logs (docker service ps NAME lists them)",
                kind.trim_end_matches('s')
            )))
        }
        (&M::GET, ["tasks"]) => services::tasks(api, &q).await,
        (&M::GET, ["tasks", id]) => services::task(api, id).await,
        (&M::GET, ["nodes"]) => nodes::list(api, &q).await,
        (&M::GET, ["nodes", id]) => nodes::inspect(api, id).await,
        (&M::DELETE, ["nodes", id]) => nodes::remove(api, id, &q).await,
        (&M::POST, ["nodes", id, "update"]) => {
            let id = id.to_string();
            let b = json_body(req, containers::MAX_BODY).await?;
            nodes::update(api, &id, &q, &b).await
        }

        // No volumes or plugins are managed: empty lists and "no such" answers are the truth
        // (`docker inspect NAME` asks every object type in turn).
        (&M::GET, ["volumes"]) => Ok(error::json_response(
            axum::http::StatusCode::OK,
            &serde_json::json!({"Volumes": [], "Warnings": null}),
        )),
        (&M::GET, ["volumes", name]) => {
            Err(DockerError::NotFound(format!("get {name}: no such volume")))
        }
        // Nor secrets or configs yet (`docker inspect NAME` asks for them of a swarm manager).
        (&M::GET, ["secrets" | "configs"]) => Ok(error::json_response(
            axum::http::StatusCode::OK,
            &serde_json::json!([]),
        )),
        (&M::GET, [kind @ ("secrets" | "configs"), name]) => Err(DockerError::NotFound(format!(
            "{} {name} not found",
            kind.trim_end_matches('s')
        ))),
        (&M::GET, ["plugins", name @ .., "json"]) if !name.is_empty() => Err(
            DockerError::NotFound(format!("plugin \"{}\" not found", name.join("/"))),
        ),
        (_, [first, ..]) if UNSERVED.contains(first) => Err(DockerError::NotImplemented(format!(
            "{method} {path} is not implemented by shoal"
        ))),
        _ => Err(DockerError::NotFound("page not found".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_stripped_and_queries_decoded() {
        assert_eq!(strip_version("/v1.44/containers/json"), "/containers/json");
        assert_eq!(strip_version("/v1.12/_ping"), "/_ping");
        assert_eq!(strip_version("/containers/json"), "/containers/json");
        assert_eq!(strip_version("/volumes"), "/volumes");
        let q = Query::parse(Some(
            "all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D&x=a+b",
        ));
        assert!(q.flag("all"));
        assert_eq!(q.get("filters"), Some(r#"{"label":["a=b"]}"#));
        assert_eq!(q.get("x"), Some("a b"));
        assert!(!q.flag("missing"));
    }
}
