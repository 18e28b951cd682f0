//! Container endpoints. A plain container's life cycle is a change of its service (`replicas`
//! 0/1, `start_seq`) that the leader's loops carry out; the handler then waits for the cluster
//! to get there, so `docker start` returns once the container runs, as with Docker. What only
//! the engine knows (logs, attach, exec, signals, live inspect) is forwarded to the node.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::create;
use super::error::{json_response, DockerError};
use super::forward::NodeEngine;
use super::view::{Entry, View};
use super::{Api, Query};
use crate::host::now_ms;
use crate::model::{keys, Service, Task, TaskState};

/// How long `start` waits for the container to run (placement, image, engine start).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a task may stay unplaced before `start` reports why.
const UNPLACED_GRACE: Duration = Duration::from_secs(6);
/// Beyond `stop`'s own timeout, how long the cluster may take to stop the container.
const STOP_SLACK: Duration = Duration::from_secs(20);
/// `stop` and `restart` without `?t=`: Docker's default grace period.
const DEFAULT_STOP_SECS: u64 = 10;
/// The longest `stop` waits for the cluster, whatever `?t=` says (a negative `t`, Docker's "no
/// limit", included).
const MAX_STOP_WAIT: Duration = Duration::from_secs(24 * 3600);
/// Create bodies are small; anything larger is refused.
pub(crate) const MAX_BODY: usize = 1 << 20;

pub(crate) async fn create(api: &Api, q: &Query, body: &[u8]) -> Result<Response, DockerError> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))?;
    api.policy.check_create(&body)?;
    let name = match q.get("name") {
        Some(n) if !n.is_empty() => {
            let n = n.trim_start_matches('/');
            if !create::valid_name(n) {
                return Err(DockerError::BadRequest(format!(
                    "Invalid container name ({n}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                )));
            }
            n.to_string()
        }
        _ => create::random_name(),
    };
    let service = create::container(body, name.clone(), create::new_id(), now_ms())?;
    let view = api.objects.view().await?;
    check_image(api, &view, &service.image).await?;
    let written = api
        .objects
        .create_named(
            keys::service(&service.id),
            keys::service_name(&name),
            &service.id,
            &service,
        )
        .await?;
    if !written {
        let holder = view
            .entries()
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.id)
            .unwrap_or_default();
        return Err(DockerError::Conflict(format!(
            "Conflict. The container name \"/{name}\" is already in use by container \"{holder}\". You have to remove (or rename) that container to be able to reuse that name."
        )));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"Id": service.id, "Warnings": []}),
    ))
}

/// With no registry, a container whose image no node has can never run: refuse it as Docker
/// refuses a missing image (the docker CLI then tries `pull`, which says why per node).
pub(crate) async fn check_image(api: &Api, view: &View, image: &str) -> Result<(), DockerError> {
    let nodes = view.ready_nodes();
    if image.contains('@') || image.starts_with("sha256:") || nodes.is_empty() {
        return Ok(());
    }
    let want = crate::scheduler::normalize_image(image);
    let present = nodes.iter().any(|n| {
        n.images
            .iter()
            .any(|have| crate::scheduler::normalize_image(have) == want)
    });
    if present {
        return Ok(());
    }
    // Nodes re-list their images every few seconds: ask the engines about one just loaded.
    for node in nodes {
        let engine = NodeEngine::of(node, api.engine_tls.as_ref());
        let path = format!("/images/{}/json", encode(&want));
        if let Ok((status, _)) = engine.request(Method::GET, &path, None).await {
            if status.is_success() {
                return Ok(());
            }
        }
    }
    Err(DockerError::NotFound(format!("No such image: {want}")))
}

pub(crate) async fn list(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let all = q.flag("all");
    let filters = super::filters::Filters::parse(q.get("filters"))?;
    super::view::check_filters(&filters)?;
    let limit: Option<usize> = match q.get("limit") {
        Some(l) => l.parse::<i64>().ok().filter(|l| *l > 0).map(|l| l as usize),
        None => None,
    };
    let view = api.objects.view().await?;
    let now = now_ms();
    let mut out = Vec::new();
    for e in view.entries() {
        if !all && !e.running() && filters.get("status").is_empty() {
            continue;
        }
        if e.matches(&filters)? {
            out.push(e.list_json(now));
        }
    }
    if let Some(limit) = limit {
        out.truncate(limit);
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

pub(crate) async fn inspect(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    let mut doc = synthesized(&e);
    if let Ok((engine, engine_id)) = engine_of(api, &e) {
        match engine
            .request(Method::GET, &format!("/containers/{engine_id}/json"), None)
            .await
        {
            Ok((status, body)) if status.is_success() => {
                if let Ok(Value::Object(live)) = serde_json::from_slice::<Value>(&body) {
                    doc = Value::Object(live);
                    if e.service.stop_answered() && doc["State"]["Running"] == true {
                        // A handover: the client was told it stopped (`handover.rs`).
                        doc["State"]["Running"] = json!(false);
                        doc["State"]["Status"] = json!("exited");
                        doc["State"]["ExitCode"] = json!(0);
                    }
                }
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(container = %e.name, "inspect on the node: {err}"),
        }
    }
    doc["Id"] = json!(e.id);
    doc["Name"] = json!(format!("/{}", e.name));
    doc["Node"] = e.node_json();
    Ok(json_response(StatusCode::OK, &doc))
}

/// What inspect shows while no engine has the container (created, or its node is down).
fn synthesized(e: &Entry<'_>) -> Value {
    let config = e
        .config()
        .cloned()
        .unwrap_or_else(|| json!({"Image": e.service.image}));
    let host = config
        .get("HostConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut cfg = config.clone();
    if let Value::Object(map) = &mut cfg {
        map.remove("HostConfig");
        map.remove("NetworkingConfig");
        map.insert("Labels".into(), json!(e.labels()));
    }
    let networks = config
        .pointer("/NetworkingConfig/EndpointsConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let running = e.running();
    let mut doc = json!({
        "Id": e.id,
        "Created": rfc3339_ms(e.created_ms()),
        "Path": "",
        "Args": [],
        "State": {
            "Status": e.state(),
            "Running": running,
            "Paused": false,
            "Restarting": false,
            "OOMKilled": false,
            "Dead": false,
            "Pid": 0,
            "ExitCode": e.exit_code(),
            "Error": e.task.map(|t| t.message.clone()).unwrap_or_default(),
            "StartedAt": "0001-01-01T00:00:00Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
        },
        "Image": e.service.image,
        "Name": format!("/{}", e.name),
        "RestartCount": 0,
        "HostConfig": host,
        "Config": cfg,
        "Mounts": [],
        "NetworkSettings": {"Networks": networks, "Ports": {}},
    });
    // The health the node last reported, as the engine's `State.Health` would show it.
    if e.health() != "none" {
        doc["State"]["Health"] = json!({"Status": e.health(), "FailingStreak": 0, "Log": []});
    }
    doc
}

pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The plain container `query` designates; a service's task is refused with what to use.
fn plain<'v>(view: &'v View, query: &str) -> Result<Entry<'v>, DockerError> {
    let e = view.resolve(query)?;
    if !e.is_plain() {
        return Err(DockerError::Conflict(format!(
            "container {} is a task of service {}: use `shoal service scale` or `shoal service rm`",
            e.name, e.service.name
        )));
    }
    Ok(e)
}

/// Whether the container runs or is about to: a live task, or a start not yet turned into one.
pub(crate) fn active(service: &Service, tasks: &[&Task]) -> bool {
    let seq = service.start_seq();
    tasks.iter().any(|t| !t.state.is_terminal())
        || (service.replicas > 0 && !tasks.iter().any(|t| t.start_seq >= seq))
}

fn tasks_of<'v>(view: &'v View, service_id: &str) -> Vec<&'v Task> {
    view.state
        .tasks_of_service(service_id)
        .map(|t| &t.value)
        .collect()
}

fn service_of<'v>(view: &'v View, id: &str) -> Option<&'v Service> {
    view.state.service(id).map(|s| &s.value)
}

pub(crate) async fn start(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let e = plain(&view, query)?;
    let id = e.id.clone();
    let handing_over = e
        .service
        .container
        .as_ref()
        .is_some_and(|c| c.handover.is_some());
    if handing_over && e.service.replicas > 0 {
        // Started again before its successor came (`docker-compose stop`, then `start`): the
        // handover is called off; it never stopped.
        api.objects
            .update_service(&id, |s| {
                let c = s.container.as_mut().filter(|c| c.handover.is_some());
                Ok(c.map(|c| c.handover = None).is_some())
            })
            .await?;
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    // Stopping after a handover looks stopped to clients: a start runs it again.
    if active(e.service, &tasks_of(&view, &id)) && !e.service.stop_answered() {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    // The successor of a container handing over (compose's recreate) starts in its turn.
    let turn = match crate::model::compose_service(&e.service.labels) {
        Some(_) => super::handover::wait_turn(api, &id).await?,
        None => None,
    };
    let service = api
        .objects
        .update_service(&id, |s| {
            s.replicas = 1;
            if let Some(c) = s.container.as_mut() {
                c.start_seq += 1;
            }
            Ok(true)
        })
        .await?;
    drop(turn);
    let seq = service.start_seq();
    // The scheduler may first miss an image a node has just loaded (nodes re-list images
    // every few seconds): a placement failure counts once it has lasted this long.
    let mut unplaced_since: Option<std::time::Instant> = None;
    let mut last_reason = String::new();
    let outcome = api
        .objects
        .wait_for(START_TIMEOUT, |v| {
            let task = tasks_of(v, &id)
                .into_iter()
                .filter(|t| t.start_seq >= seq)
                .max_by_key(|t| t.created_ms)?;
            match task.state {
                TaskState::Running | TaskState::Complete => Some(Ok(())),
                // It ran, then exited (`docker run IMAGE false`): started, as far as Docker goes.
                s if s.is_terminal() && task.exit_code.is_some() => Some(Ok(())),
                s if s.is_terminal() => Some(Err(task.message.clone())),
                TaskState::Pending if !task.message.is_empty() => {
                    last_reason.clone_from(&task.message);
                    let since = *unplaced_since.get_or_insert_with(std::time::Instant::now);
                    (since.elapsed() > UNPLACED_GRACE).then(|| Err(task.message.clone()))
                }
                _ => None,
            }
        })
        .await?;
    let why = match outcome {
        Some(Ok(())) => return Ok(StatusCode::NO_CONTENT.into_response()),
        Some(Err(why)) => why,
        None if !last_reason.is_empty() => last_reason,
        None => format!("not running after {} s", START_TIMEOUT.as_secs()),
    };
    // A start that failed leaves the container stopped, as Docker does.
    api.objects
        .update_service(&id, |s| {
            let again = s.replicas != 0 && s.start_seq() == seq;
            s.replicas = 0;
            Ok(again)
        })
        .await?;
    Err(DockerError::Internal(format!(
        "cannot start container {}: {why}",
        e.name
    )))
}

/// How long `stop` and `restart` wait for the cluster to stop the container: `?t=` as Docker
/// reads it (a 64-bit integer; negative: no limit), plus the cluster's slack, at most
/// `MAX_STOP_WAIT`. Anything else is a 400, never an overflow.
fn stop_wait(q: &Query) -> Result<Duration, DockerError> {
    let secs = match q.get("t").filter(|t| !t.is_empty()) {
        None => DEFAULT_STOP_SECS,
        Some(t) => {
            let secs: i64 = t.parse().map_err(|_| {
                DockerError::BadRequest(format!(
                    "invalid value for t: {t:?} is not an integer number of seconds"
                ))
            })?;
            u64::try_from(secs).unwrap_or(u64::MAX)
        }
    };
    Ok(Duration::from_secs(secs)
        .saturating_add(STOP_SLACK)
        .min(MAX_STOP_WAIT))
}

pub(crate) async fn stop(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let wait = stop_wait(q)?;
    let view = api.objects.view().await?;
    let e = plain(&view, query)?;
    let id = e.id.clone();
    if !active(e.service, &tasks_of(&view, &id)) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    // A compose service's container with an update policy hands over to its successor.
    let policy = e
        .service
        .container
        .as_ref()
        .is_some_and(|c| c.handover_policy.is_some());
    if policy && super::handover::defer_stop(api, &id).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    stop_and_wait(api, &id, wait).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Stops the container now (a handover under way included) and waits for it to stop.
async fn stop_and_wait(api: &Api, id: &str, timeout: Duration) -> Result<(), DockerError> {
    api.objects
        .update_service(id, |s| {
            let handing_over = s.container.as_mut().and_then(|c| c.handover.take());
            let changed = s.replicas != 0 || handing_over.is_some();
            s.replicas = 0;
            Ok(changed)
        })
        .await?;
    let stopped = api
        .objects
        .wait_for(timeout, |v| {
            let service = service_of(v, id)?;
            (!active(service, &tasks_of(v, id))).then_some(())
        })
        .await?;
    stopped.ok_or_else(|| {
        DockerError::Internal(format!(
            "container {id} did not stop within {} s",
            timeout.as_secs()
        ))
    })
}

pub(crate) async fn kill(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let signal = q.get("signal").filter(|s| !s.is_empty()).unwrap_or("KILL");
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    if !e.running() {
        return Err(DockerError::Conflict(format!(
            "Container {} is not running",
            e.id
        )));
    }
    let (engine, engine_id) = engine_of(api, &e)?;
    let lethal = matches!(signal, "KILL" | "SIGKILL" | "9");
    if lethal && e.is_plain() {
        // As with Docker, a killed container is not restarted by its policy.
        api.objects
            .update_service(&e.id, |s| {
                let changed = s.replicas != 0;
                s.replicas = 0;
                Ok(changed)
            })
            .await?;
    }
    let path = format!("/containers/{engine_id}/kill?signal={}", encode(signal));
    let (status, body) = engine
        .request(Method::POST, &path, None)
        .await
        .map_err(|err| DockerError::Internal(err.to_string()))?;
    if !status.is_success() && status != StatusCode::CONFLICT {
        return Ok(passthrough(status, body));
    }
    if lethal && e.is_plain() {
        let id = e.id.clone();
        api.objects
            .wait_for(STOP_SLACK, |v| {
                let service = service_of(v, &id)?;
                (!active(service, &tasks_of(v, &id))).then_some(())
            })
            .await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn restart(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let wait = stop_wait(q)?;
    let view = api.objects.view().await?;
    let e = plain(&view, query)?;
    let id = e.id.clone();
    if active(e.service, &tasks_of(&view, &id)) {
        stop_and_wait(api, &id, wait).await?;
    }
    start(api, &id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn remove(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let mut view = api.objects.view().await?;
    // Compose removes a container it stopped (a handover, answered at once) once its successor
    // started: it goes once the successor served and it stopped. Without a successor, the
    // deferred stop is carried out now.
    let handing_over = {
        let e = plain(&view, query)?;
        let policy = e
            .service
            .container
            .as_ref()
            .is_some_and(|c| c.handover_policy.is_some());
        let live = active(e.service, &tasks_of(&view, &e.id));
        (policy && live && !q.flag("force")).then(|| e.id.clone())
    };
    if let Some(id) = handing_over {
        if !super::handover::wait_stopped(api, &id).await? {
            stop_and_wait(api, &id, STOP_SLACK).await?;
        }
        view = api.objects.view().await?;
    }
    let e = plain(&view, query)?;
    if active(e.service, &tasks_of(&view, &e.id)) && !q.flag("force") {
        return Err(DockerError::Conflict(format!(
            "You cannot remove a running container {}. Stop the container before attempting removal or force remove",
            e.id
        )));
    }
    api.objects
        .delete_named(keys::service(&e.id), keys::service_name(&e.name), &e.id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /containers/{id}/rename?name=NEW`: the object's name and its name key, in one txn.
pub(crate) async fn rename(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let name = q
        .get("name")
        .unwrap_or("")
        .trim_start_matches('/')
        .to_string();
    if !create::valid_name(&name) {
        return Err(DockerError::BadRequest(format!(
            "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        )));
    }
    let view = api.objects.view().await?;
    let e = plain(&view, query)?;
    if e.name == name {
        return Err(DockerError::Conflict(format!(
            "Renaming a container with the same name as its current name: {name}"
        )));
    }
    let id = e.id.clone();
    let old = e.name.clone();
    match api.objects.rename_service(&id, &old, &name).await? {
        true => Ok(StatusCode::NO_CONTENT.into_response()),
        false => Err(DockerError::Conflict(format!(
            "Conflict. The container name \"/{name}\" is already in use. You have to remove \
             (or rename) that container to be able to reuse that name."
        ))),
    }
}

pub(crate) async fn wait(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let condition = match q.get("condition").filter(|c| !c.is_empty()) {
        None => "not-running".to_string(),
        Some(c @ ("not-running" | "next-exit" | "removed")) => c.to_string(),
        Some(other) => {
            return Err(DockerError::BadRequest(format!(
                "invalid condition: {other:?} (expected not-running, next-exit or removed)"
            )))
        }
    };
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    if !e.is_plain() {
        let (engine, engine_id) = engine_of(api, &e)?;
        let path = format!(
            "/containers/{engine_id}/wait?condition={}",
            encode(&condition)
        );
        let (status, body) = engine
            .request(Method::POST, &path, None)
            .await
            .map_err(|err| DockerError::Internal(err.to_string()))?;
        return Ok(passthrough(status, body));
    }
    let id = e.id.clone();
    let seq0 = e.service.start_seq();
    let live0 = e
        .task
        .filter(|t| !t.state.is_terminal())
        .map(|t| t.id.clone());
    let mut last_code = e.exit_code();
    let objects = api.objects.clone();
    // Docker answers the headers at once and the body at the exit: the docker CLI waits for
    // the headers before it starts the container (`run` calls `wait` first).
    let outcome = async move {
        let code = objects
            .wait_for(Duration::from_secs(7 * 24 * 3600), |v| {
                let Some(service) = service_of(v, &id) else {
                    return Some(last_code);
                };
                let tasks = tasks_of(v, &id);
                if let Some(t) = tasks
                    .iter()
                    .filter(|t| t.state.is_terminal())
                    .max_by_key(|t| (t.updated_ms, t.created_ms))
                {
                    last_code = t.exit_code.unwrap_or(if t.state == TaskState::Complete {
                        0
                    } else {
                        137
                    });
                }
                match condition.as_str() {
                    "removed" => None,
                    "next-exit" => tasks
                        .iter()
                        .find(|t| {
                            t.state.is_terminal()
                                && (t.start_seq > seq0 || Some(&t.id) == live0.as_ref())
                        })
                        .map(|t| t.exit_code.unwrap_or(last_code)),
                    _ => (!active(service, &tasks)).then_some(last_code),
                }
            })
            .await;
        let doc = match code {
            Ok(code) => json!({"StatusCode": code.unwrap_or(last_code), "Error": null}),
            Err(e) => json!({"StatusCode": -1, "Error": {"Message": e.to_string()}}),
        };
        Ok::<_, std::io::Error>(bytes::Bytes::from(doc.to_string()))
    };
    let body = Body::from_stream(futures::stream::once(outcome));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The node engine that runs `e`, and the container's id there.
pub(crate) fn engine_of(api: &Api, e: &Entry<'_>) -> Result<(NodeEngine, String), DockerError> {
    let engine_id = e.engine_id().ok_or_else(|| {
        DockerError::Conflict(format!(
            "container {} has not been started on a node yet",
            e.name
        ))
    })?;
    let node = e.node.ok_or_else(|| {
        DockerError::Conflict(format!("container {} is not placed on a node", e.name))
    })?;
    if node.status != crate::model::NodeStatus::Ready {
        return Err(DockerError::Internal(format!(
            "node {} is down: container {} cannot be reached",
            node.name, e.name
        )));
    }
    if node.engine_addr.is_empty() {
        return Err(DockerError::Internal(format!(
            "node {} does not serve its engine (an older agent?)",
            node.name
        )));
    }
    Ok((
        NodeEngine::of(node, api.engine_tls.as_ref()),
        engine_id.to_string(),
    ))
}

/// An engine's answer, as it was.
pub(crate) fn passthrough(status: StatusCode, body: bytes::Bytes) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Forwards a container-scoped request (`logs`, `top`, `resize`, `exec`, `attach`...) to the
/// node, with the container's engine id in the path. `suffix` is what follows the id.
pub(crate) async fn forward(
    api: &Api,
    query: &str,
    suffix: &str,
    req: Request<Body>,
) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let e = view.resolve(query)?;
    if e.engine_id().is_none() && suffix == "logs" {
        // Never started: no output yet.
        return Ok(StatusCode::OK.into_response());
    }
    let (engine, engine_id) = engine_of(api, &e)?;
    let path = format!("/containers/{engine_id}/{suffix}");
    super::streams::relay(&engine, &path, req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(raw: &str) -> Result<Duration, DockerError> {
        stop_wait(&Query::parse(Some(raw)))
    }

    #[test]
    fn stop_timeouts_never_overflow_and_bad_ones_are_refused() {
        assert_eq!(t("").unwrap(), Duration::from_secs(10) + STOP_SLACK);
        assert_eq!(t("t=0").unwrap(), STOP_SLACK);
        assert_eq!(t("t=3").unwrap(), Duration::from_secs(3) + STOP_SLACK);
        // Docker's "no limit", and numbers far beyond any clock: the longest wait.
        for huge in ["t=-1", "t=9999999999999", "t=9223372036854775807"] {
            assert_eq!(t(huge).unwrap(), MAX_STOP_WAIT, "{huge}");
        }
        for bad in [
            "t=18446744073709551615",
            "t=99999999999999999999999",
            "t=1.5",
            "t=ten",
            "t=%00",
        ] {
            match t(bad) {
                Err(DockerError::BadRequest(m)) => {
                    assert!(m.contains("invalid value for t"), "{m}")
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
