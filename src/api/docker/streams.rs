//! Requests relayed to a node's engine as they are, streams and hijacked connections included
//! (`logs -f`, `attach`, `exec`), plus an attach that begins before the container exists
//! (`docker run` attaches, then starts).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::response::Response;
use serde_json::Value;

use super::containers::engine_of;
use super::error::DockerError;
use super::forward::{splice, NodeEngine};
use super::Api;

/// How long an attach stream may outlive its container's exit (output still in flight).
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Which node's engine each exec instance was created on (exec ids are the engine's).
#[derive(Clone, Default)]
pub(crate) struct Execs(Arc<Mutex<HashMap<String, NodeEngine>>>);

impl Execs {
    fn insert(&self, exec: String, engine: NodeEngine) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.clear();
        }
        map.insert(exec, engine);
    }

    fn get(&self, exec: &str) -> Option<NodeEngine> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(exec).cloned()
    }
}

fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("tcp"))
}

/// Sends `req` to `engine` at `path` (plus the request's query) and answers with the engine's
/// response; a `101` is answered in kind and both connections are spliced.
pub(crate) async fn relay(
    engine: &NodeEngine,
    path: &str,
    mut req: Request<Body>,
) -> Result<Response, DockerError> {
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let client = wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let mut out = Request::builder()
        .method(parts.method)
        .uri(format!("{path}{query}"));
    for (name, value) in &parts.headers {
        if name != header::HOST {
            out = out.header(name, value);
        }
    }
    let out = out
        .body(body)
        .map_err(|e| DockerError::BadRequest(e.to_string()))?;
    let mut resp = engine
        .send(out)
        .await
        .map_err(|e| DockerError::Internal(e.to_string()))?;
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client) = client else {
            return Err(DockerError::Internal(
                "the engine upgraded a connection the client did not ask to upgrade".into(),
            ));
        };
        let mut ours = Response::builder().status(StatusCode::SWITCHING_PROTOCOLS);
        for (name, value) in resp.headers() {
            ours = ours.header(name, value);
        }
        let node = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            if let Err(e) = splice(client, node).await {
                tracing::debug!("hijacked stream ended: {e}");
            }
        });
        return ours
            .body(Body::empty())
            .map_err(|e| DockerError::Internal(e.to_string()));
    }
    Ok(resp.map(Body::new))
}

/// `POST /containers/{id}/attach`. Before the container has run anywhere (`docker run` attaches,
/// then starts), the connection is upgraded at once and joined to the engine's attach, with the
/// output so far replayed, as soon as the container exists.
pub(crate) async fn attach(
    api: &Api,
    query: &str,
    mut req: Request<Body>,
) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    if e.engine_id().is_some() && e.task.is_some_and(|t| !t.state.is_terminal()) {
        let (engine, engine_id) = engine_of(api, &e)?;
        return relay(&engine, &format!("/containers/{engine_id}/attach"), req).await;
    }
    if !e.is_plain() || !wants_upgrade(req.headers()) {
        return Err(DockerError::Conflict(format!(
            "container {} is not running",
            e.name
        )));
    }
    let tty = e
        .config()
        .and_then(|c| c.get("Tty"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = e.id.clone();
    let seq = e.service.start_seq();
    let mut query = req.uri().query().unwrap_or("").to_string();
    if !query.split('&').any(|p| p.starts_with("logs=")) {
        query.push_str(if query.is_empty() {
            "logs=1"
        } else {
            "&logs=1"
        });
    }
    let client = hyper::upgrade::on(&mut req);
    let api = api.clone();
    tokio::spawn(async move {
        // The next start of this container, once its engine has it.
        let found = api
            .objects
            .wait_for(Duration::from_secs(24 * 3600), |v| {
                let task = v
                    .state
                    .tasks_of_service(&id)
                    .map(|t| &t.value)
                    .filter(|t| t.start_seq > seq)
                    .max_by_key(|t| t.created_ms)?;
                let node = &v.state.node(task.node_id.as_deref()?)?.value;
                Some((
                    (node.id.clone(), node.engine_addr.clone()),
                    task.container_id.clone()?,
                    task.id.clone(),
                    task.state.is_terminal(),
                ))
            })
            .await;
        let Ok(Some(((node, addr), engine_id, task_id, ended))) = found else {
            return;
        };
        let engine = NodeEngine::new(&node, addr, api.engine_tls.as_ref());
        let upstream = Request::builder()
            .method(Method::POST)
            .uri(format!("/containers/{engine_id}/attach?{query}"))
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp")
            .body(Body::empty());
        let Ok(upstream) = upstream else { return };
        // Already exited (`docker run IMAGE echo hi`): an engine's attach to a stopped
        // container would wait for its next start, so the output is replayed from its logs.
        if ended {
            return replay_logs(client, &engine, &engine_id, &query).await;
        }
        match engine.send(upstream).await {
            Ok(mut resp) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let node = hyper::upgrade::on(&mut resp);
                // The same holds if it exits just before the engine attached: the stream
                // ends a moment after the task does.
                let ended = async {
                    let _ = api
                        .objects
                        .wait_for(Duration::from_secs(24 * 3600), |v| {
                            let t = v.state.task(&task_id);
                            t.is_none_or(|t| t.value.state.is_terminal()).then_some(())
                        })
                        .await;
                    tokio::time::sleep(EXIT_GRACE).await;
                };
                tokio::select! {
                    r = splice(client, node) => if let Err(e) = r {
                        tracing::debug!("attach stream ended: {e}");
                    },
                    _ = ended => {}
                }
            }
            Ok(resp) => tracing::warn!(status = %resp.status(), "the node refused to attach"),
            Err(e) => tracing::warn!("attaching on the node: {e}"),
        }
    });
    let content_type = if tty {
        "application/vnd.docker.raw-stream"
    } else {
        "application/vnd.docker.multiplexed-stream"
    };
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .map_err(|e| DockerError::Internal(e.to_string()))
}

/// Writes the container's whole output (in the attach stream's framing, which `logs` shares)
/// to the hijacked client connection, then closes it.
async fn replay_logs(
    client: hyper::upgrade::OnUpgrade,
    engine: &NodeEngine,
    engine_id: &str,
    query: &str,
) {
    use http_body_util::BodyExt;
    use tokio::io::AsyncWriteExt;
    let Ok(upgraded) = client.await else { return };
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    let wants = |stream: &str| {
        query
            .split('&')
            .any(|p| p == format!("{stream}=1") || p == format!("{stream}=true"))
    };
    let path = format!(
        "/containers/{engine_id}/logs?stdout={}&stderr={}",
        u8::from(wants("stdout")),
        u8::from(wants("stderr"))
    );
    let req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .body(Body::empty());
    if let Ok(req) = req {
        match engine.send(req).await {
            Ok(resp) if resp.status().is_success() => {
                let mut body = resp.into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(data) = frame.data_ref() {
                        if io.write_all(data).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(resp) => {
                tracing::warn!(status = %resp.status(), "reading the logs of an exited container")
            }
            Err(e) => tracing::warn!("reading the logs of an exited container: {e}"),
        }
    }
    let _ = io.shutdown().await;
}

/// `POST /containers/{id}/exec`: created on the container's node, which is remembered.
pub(crate) async fn exec_create(
    api: &Api,
    query: &str,
    body: &[u8],
) -> Result<Response, DockerError> {
    let spec: Value = serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))?;
    api.policy.check_exec(&spec)?;
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    if !e.running() {
        return Err(DockerError::Conflict(format!(
            "Container {} is not running",
            e.id
        )));
    }
    let (engine, engine_id) = engine_of(api, &e)?;
    let (status, answer) = engine
        .request(
            Method::POST,
            &format!("/containers/{engine_id}/exec"),
            Some(spec),
        )
        .await
        .map_err(|e| DockerError::Internal(e.to_string()))?;
    if let Some(exec) = serde_json::from_slice::<Value>(&answer)
        .ok()
        .and_then(|v| v.get("Id").and_then(Value::as_str).map(String::from))
    {
        api.execs.insert(exec, engine);
    }
    Ok(super::containers::passthrough(status, answer))
}

/// `/exec/{id}/start|json|resize`: relayed to the node the exec was created on (asked of every
/// node when this manager did not create it).
pub(crate) async fn exec(
    api: &Api,
    exec_id: &str,
    suffix: &str,
    req: Request<Body>,
) -> Result<Response, DockerError> {
    let engine = match api.execs.get(exec_id) {
        Some(engine) => engine,
        None => find_exec(api, exec_id).await?,
    };
    relay(&engine, &format!("/exec/{exec_id}/{suffix}"), req).await
}

async fn find_exec(api: &Api, exec_id: &str) -> Result<NodeEngine, DockerError> {
    let view = api.objects.view().await?;
    for node in view.ready_nodes() {
        let engine = NodeEngine::of(node, api.engine_tls.as_ref());
        if let Ok((status, _)) = engine
            .request(Method::GET, &format!("/exec/{exec_id}/json"), None)
            .await
        {
            if status.is_success() {
                api.execs.insert(exec_id.to_string(), engine.clone());
                return Ok(engine);
            }
        }
    }
    Err(DockerError::NotFound(format!(
        "No such exec instance: {exec_id}"
    )))
}
