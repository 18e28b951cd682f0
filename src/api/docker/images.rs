//! Image endpoints, fanned out to every READY node: `docker images` merges what the nodes have,
//! `docker load` sends the archive to each (so images reach the cluster without a registry) and
//! `docker pull` asks each node, reporting each node's error by name.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::containers::{encode, passthrough};
use super::error::{json_response, DockerError};
use super::filters::Filters;
use super::forward::NodeEngine;
use super::{Api, Query};
use crate::model::Node;

/// `docker load` archives up to this size are buffered and sent to every node.
pub(crate) const MAX_LOAD: usize = 2 << 30;
/// Bound on one node's `pull` or `load` (the nodes run at once): a node that has not finished by
/// then is reported by name as timed out, and the others' answers are not held back longer.
const FAN_OUT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

async fn nodes(api: &Api, only: &[String]) -> Result<Vec<Node>, DockerError> {
    let view = api.objects.view().await?;
    let nodes: Vec<Node> = view
        .ready_nodes()
        .into_iter()
        .filter(|n| only.is_empty() || only.iter().any(|o| *o == n.name || *o == n.id))
        .cloned()
        .collect();
    if nodes.is_empty() {
        return Err(DockerError::Internal("no node is READY".into()));
    }
    Ok(nodes)
}

fn engine(api: &Api, node: &Node) -> NodeEngine {
    NodeEngine::of(node, api.engine_tls.as_ref())
}

pub(crate) async fn list(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let mut filters = Filters::parse(q.get("filters"))?;
    let only = filters.take("node");
    let mut path = String::from("/images/json");
    if !filters.is_empty() {
        path.push_str(&format!("?filters={}", encode(&filters.to_json())));
    }
    let mut merged: BTreeMap<String, Value> = BTreeMap::new();
    let nodes = nodes(api, &only).await?;
    // All nodes at once: one slow node costs its own timeout, not the sum.
    let answers = futures::future::join_all(
        nodes
            .iter()
            .map(|node| async { engine(api, node).request(Method::GET, &path, None).await }),
    )
    .await;
    for (node, answer) in nodes.iter().zip(answers) {
        let (status, body) = match answer {
            Ok(answer) => answer,
            Err(e) => {
                tracing::warn!(node = %node.name, "listing images: {e}");
                continue;
            }
        };
        if !status.is_success() {
            return Ok(passthrough(status, body));
        }
        let Ok(Value::Array(images)) = serde_json::from_slice::<Value>(&body) else {
            continue;
        };
        for image in images {
            let id = image
                .get("Id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            match merged.get_mut(&id) {
                None => {
                    merged.insert(id, image);
                }
                Some(have) => {
                    // The same image on several nodes: one row, every tag.
                    let mut tags: Vec<Value> =
                        have["RepoTags"].as_array().cloned().unwrap_or_default();
                    for t in image["RepoTags"].as_array().cloned().unwrap_or_default() {
                        if !tags.contains(&t) {
                            tags.push(t);
                        }
                    }
                    have["RepoTags"] = Value::Array(tags);
                }
            }
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &Value::Array(merged.into_values().collect()),
    ))
}

pub(crate) async fn inspect(api: &Api, name: &str) -> Result<Response, DockerError> {
    for node in nodes(api, &[]).await? {
        let path = format!("/images/{name}/json");
        if let Ok((status, body)) = engine(api, &node).request(Method::GET, &path, None).await {
            if status.is_success() {
                return Ok(passthrough(status, body));
            }
        }
    }
    Err(DockerError::NotFound(format!("No such image: {name}")))
}

pub(crate) async fn remove(api: &Api, name: &str, q: &Query) -> Result<Response, DockerError> {
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    let force = if q.flag("force") { "?force=1" } else { "" };
    let path = format!("/images/{name}{force}");
    let nodes = nodes(api, &[]).await?;
    let answers = futures::future::join_all(
        nodes
            .iter()
            .map(|node| async { engine(api, node).request(Method::DELETE, &path, None).await }),
    )
    .await;
    for (node, answer) in nodes.iter().zip(answers) {
        match answer {
            Ok((status, body)) if status.is_success() => {
                if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) {
                    deleted.extend(items);
                }
            }
            Ok((StatusCode::NOT_FOUND, _)) => {}
            Ok((status, body)) => errors.push((status, node.name.clone(), message(&body))),
            Err(e) => errors.push((
                StatusCode::INTERNAL_SERVER_ERROR,
                node.name.clone(),
                e.to_string(),
            )),
        }
    }
    if let Some((status, node, why)) = errors.into_iter().next() {
        let err = format!("{node}: {why}");
        return Err(if status == StatusCode::CONFLICT {
            DockerError::Conflict(err)
        } else {
            DockerError::Internal(err)
        });
    }
    if deleted.is_empty() {
        return Err(DockerError::NotFound(format!("No such image: {name}")));
    }
    Ok(json_response(StatusCode::OK, &Value::Array(deleted)))
}

fn message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

/// The JSON messages of an engine's progress stream, each prefixed with the node; an error
/// message becomes Docker's `error`/`errorDetail` naming the node.
fn prefixed(node: &str, body: &[u8], out: &mut Vec<Value>, errors: &mut Vec<Value>) {
    let text = String::from_utf8_lossy(body);
    let mut any = false;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        any = true;
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            out.push(json!({"stream": format!("{node}: {line}\n")}));
            continue;
        };
        if let Some(err) = msg.get("error").and_then(Value::as_str) {
            errors.push(error(node, err));
        } else if let Some(stream) = msg.get("stream").and_then(Value::as_str) {
            out.push(json!({"stream": format!("{node}: {stream}")}));
        } else if let Some(status) = msg.get("status").and_then(Value::as_str) {
            let id = msg.get("id").and_then(Value::as_str).unwrap_or("");
            let line = if id.is_empty() {
                format!("{node}: {status}")
            } else {
                format!("{node}: {id}: {status}")
            };
            out.push(json!({"status": line}));
        }
    }
    if !any {
        out.push(json!({"stream": format!("{node}: done\n")}));
    }
}

fn error(node: &str, why: &str) -> Value {
    let message = format!("{node}: {why}");
    json!({"errorDetail": {"message": message}, "error": message})
}

fn stream_of(mut out: Vec<Value>, errors: Vec<Value>) -> Response {
    out.extend(errors);
    let body: String = out.iter().map(|v| format!("{v}\n")).collect();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// `POST /images/load`: the archive goes to every READY node.
pub(crate) async fn load(api: &Api, body: Bytes) -> Result<Response, DockerError> {
    fan_out(api, |b| {
        b.uri("/images/load")
            .header(axum::http::header::CONTENT_TYPE, "application/x-tar")
            .body(Body::from(body.clone()))
    })
    .await
}

/// `POST /images/create?fromImage=..&tag=..`: each READY node pulls.
pub(crate) async fn pull(
    api: &Api,
    q: &Query,
    auth: Option<&str>,
) -> Result<Response, DockerError> {
    let Some(image) = q.get("fromImage").filter(|i| !i.is_empty()) else {
        return Err(DockerError::NotImplemented(
            "POST /images/create without fromImage (import) is not implemented by shoal".into(),
        ));
    };
    let mut path = format!("/images/create?fromImage={}", encode(image));
    if let Some(tag) = q.get("tag").filter(|t| !t.is_empty()) {
        path.push_str(&format!("&tag={}", encode(tag)));
    }
    fan_out(api, |b| {
        let b = b.uri(&path);
        match auth {
            Some(auth) => b.header("X-Registry-Auth", auth),
            None => b,
        }
        .body(Body::empty())
    })
    .await
}

/// POSTs the request `build` makes to every READY node, all at once, and merges their progress
/// streams, each message prefixed with its node, errors last: a node that fails, answers too
/// much or takes longer than [`FAN_OUT_TIMEOUT`] is an error naming it.
async fn fan_out(
    api: &Api,
    build: impl Fn(axum::http::request::Builder) -> Result<Request<Body>, axum::http::Error>,
) -> Result<Response, DockerError> {
    let nodes = nodes(api, &[]).await?;
    let engines: Vec<NodeEngine> = nodes.iter().map(|node| engine(api, node)).collect();
    let mut requests = Vec::new();
    for engine in &engines {
        let req = build(Request::builder().method(Method::POST))
            .map_err(|e| DockerError::Internal(e.to_string()))?;
        requests.push(engine.collect(req, FAN_OUT_TIMEOUT));
    }
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    Ok(merge(&names, futures::future::join_all(requests).await))
}

/// The answers of the nodes called `names` to a fan-out as one progress stream (see `fan_out`).
fn merge(
    names: &[&str],
    answers: Vec<Result<(StatusCode, Bytes), super::forward::ForwardError>>,
) -> Response {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (name, answer) in names.iter().copied().zip(answers) {
        match answer {
            Ok((status, bytes)) => {
                if status.is_success() {
                    prefixed(name, &bytes, &mut out, &mut errors);
                } else {
                    errors.push(error(name, &message(&bytes)));
                }
            }
            Err(e) => errors.push(error(name, &e.to_string())),
        }
    }
    stream_of(out, errors)
}
