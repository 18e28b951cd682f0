//! Swarm mode's services and tasks (`docker service create|ls|ps|inspect|scale|update|
//! rollback|rm`): shoal's services, plain containers excepted, in Docker's `Service` and
//! `Task` shapes. A service's `Version.Index` is its record's mod revision: an update names
//! the one it read and is refused (409) if the service changed since. Writes only change the
//! service record, as `shoal service` does; the leader's loops do the rest, rolling updates
//! included.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::containers::rfc3339_ms;
use super::error::{json_response, DockerError};
use super::filters::Filters;
use super::service_spec::{self, Read};
use super::view::View;
use super::{Api, Query};
use crate::host::now_ms;
use crate::model::{keys, NodeStatus, Service, Task, TaskState};
use crate::objects::Versioned;

/// The filters `GET /services` understands.
const SERVICE_FILTERS: &[&str] = &["id", "name", "label", "mode"];
/// The filters `GET /tasks` understands (`_up-to-date` is the docker CLI's own).
const TASK_FILTERS: &[&str] = &[
    "id",
    "name",
    "label",
    "service",
    "node",
    "desired-state",
    "_up-to-date",
];

pub(crate) async fn list(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let filters = Filters::parse(q.get("filters"))?;
    check_filters(&filters, SERVICE_FILTERS)?;
    let with_status = q.flag("status");
    let view = api.objects.view().await?;
    let mut out = Vec::new();
    for v in services(&view) {
        let s = &v.value;
        let labels = |want: &String| match want.split_once('=') {
            Some((k, val)) => s.service_labels.get(k) == Some(&val.to_string()),
            None => s.service_labels.contains_key(want.as_str()),
        };
        let keep = any_or_none(filters.get("id"), |id| s.id.starts_with(id.as_str()))
            && any_or_none(filters.get("name"), |n| s.name.starts_with(n.as_str()))
            && filters.get("label").iter().all(labels)
            && any_or_none(filters.get("mode"), |m| m == "replicated");
        if keep {
            let status = with_status.then(|| running(&view, s));
            out.push(service_json(v, status));
        }
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

pub(crate) async fn inspect(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let v = resolve(&view, query)?;
    Ok(json_response(StatusCode::OK, &service_json(v, None)))
}

pub(crate) async fn create(api: &Api, body: &[u8]) -> Result<Response, DockerError> {
    let spec = parse(body)?;
    check_policy(api, &spec)?;
    let id = super::create::new_id()[..25].to_string();
    let Read { mut service, .. } = service_spec::read(&spec, &service_spec::blank(id, now_ms()))?;
    if service.name.is_empty() {
        service.name = super::create::random_name();
    }
    let view = api.objects.view().await?;
    check_image(api, &view, &service.image).await?;
    let written = api
        .objects
        .create_named(
            keys::service(&service.id),
            keys::service_name(&service.name),
            &service.id,
            &service,
        )
        .await?;
    if !written {
        return Err(DockerError::Conflict(format!(
            "name conflicts with an existing object: {} is the name of a service or container",
            service.name
        )));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"ID": service.id, "Warnings": []}),
    ))
}

/// `POST /services/{id}/update?version=N[&rollback=previous]`: the body is the whole new spec
/// (`docker service update|scale` send back what `inspect` showed, edited).
pub(crate) async fn update(
    api: &Api,
    query: &str,
    q: &Query,
    body: &[u8],
) -> Result<Response, DockerError> {
    let version = version(q)?;
    let rollback = match q.get("rollback") {
        None | Some("") => false,
        Some("previous") => true,
        Some(other) => {
            return Err(DockerError::BadRequest(format!(
                "invalid rollback {other:?}: expected previous"
            )))
        }
    };
    let spec = parse(body)?;
    let view = api.objects.view().await?;
    let current = resolve(&view, query)?.value.clone();
    if !rollback {
        check_policy(api, &spec)?;
        let next = service_spec::read(&spec, &current)?.service;
        if next.image != current.image {
            check_image(api, &view, &next.image).await?;
        }
    }
    let (id, name) = (current.id.clone(), current.name.clone());
    let missing = || DockerError::NotFound(format!("service {name} not found"));
    api.objects
        .update_at::<Service>(
            &keys::service(&id),
            "service",
            Some(version),
            missing,
            |s| {
                *s = match rollback {
                    true => s
                        .rolled_back(0, "rollback requested".into())
                        .ok_or_else(|| {
                            DockerError::BadRequest(format!(
                                "service {} has no previous spec to roll back to",
                                s.name
                            ))
                        })?,
                    false => {
                        let Read { service, force } = service_spec::read(&spec, s)?;
                        s.edited(service, force, 0)
                    }
                };
                Ok(true)
            },
        )
        .await?;
    Ok(json_response(StatusCode::OK, &json!({"Warnings": []})))
}

pub(crate) async fn remove(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let s = &resolve(&view, query)?.value;
    let removed = api
        .objects
        .delete_named(keys::service(&s.id), keys::service_name(&s.name), &s.id)
        .await?;
    if !removed {
        return Err(DockerError::NotFound(format!("service {query} not found")));
    }
    Ok(json_response(StatusCode::OK, &Value::Null))
}

pub(crate) async fn tasks(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let filters = Filters::parse(q.get("filters"))?;
    check_filters(&filters, TASK_FILTERS)?;
    let view = api.objects.view().await?;
    let service_ids = filters
        .get("service")
        .iter()
        .map(|s| resolve(&view, s).map(|v| v.value.id.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let node_ids = filters
        .get("node")
        .iter()
        .map(|n| super::nodes::resolve(&view, n).map(|v| v.value.id.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    for d in filters.get("desired-state") {
        if !matches!(d.as_str(), "running" | "shutdown" | "accepted") {
            return Err(DockerError::BadRequest(format!(
                "invalid filter 'desired-state={d}': expected running, shutdown or accepted"
            )));
        }
    }
    let up_to_date = filters.get("_up-to-date").iter().any(|v| v == "true");
    let mut out = Vec::new();
    for v in services(&view) {
        let s = &v.value;
        if !service_ids.is_empty() && !service_ids.contains(&s.id) {
            continue;
        }
        for t in view.state.tasks_of_service(&s.id) {
            let task = &t.value;
            let desired = state_name(task.desired_state);
            let keep = any_or_none(&node_ids, |n| task.node_id.as_ref() == Some(n))
                && any_or_none(filters.get("id"), |id| task.id.starts_with(id.as_str()))
                && any_or_none(filters.get("name"), |n| {
                    task.name(&s.name).starts_with(n.as_str())
                })
                && any_or_none(filters.get("desired-state"), |d| *d == desired)
                && filters
                    .get("label")
                    .iter()
                    .all(|l| match l.split_once('=') {
                        Some((k, val)) => s.labels.get(k) == Some(&val.to_string()),
                        None => s.labels.contains_key(l.as_str()),
                    })
                && (!up_to_date || task.spec_version == s.version);
            if keep {
                out.push(task_json(t, s));
            }
        }
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

pub(crate) async fn task(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let mut found = Vec::new();
    for v in services(&view) {
        for t in view.state.tasks_of_service(&v.value.id) {
            if t.value.id == query {
                return Ok(json_response(StatusCode::OK, &task_json(t, &v.value)));
            }
            if !query.is_empty() && t.value.id.starts_with(query) {
                found.push((t, &v.value));
            }
        }
    }
    match found.as_slice() {
        [(t, s)] => Ok(json_response(StatusCode::OK, &task_json(t, s))),
        [] => Err(DockerError::NotFound(format!("task {query} not found"))),
        _ => Err(DockerError::BadRequest(format!(
            "task {query} is ambiguous ({} matches found)",
            found.len()
        ))),
    }
}

/// The service `query` designates (a name, an id or a unique id prefix), plain containers
/// excepted.
pub(crate) fn resolve<'v>(
    view: &'v View,
    query: &str,
) -> Result<&'v Versioned<Service>, DockerError> {
    let all: Vec<&Versioned<Service>> = services(view).collect();
    match crate::objects::resolve(&all, query) {
        Ok(found) => Ok(*found),
        Err(crate::objects::Unresolved::NoSuch { .. }) => {
            Err(DockerError::NotFound(format!("service {query} not found")))
        }
        Err(e @ crate::objects::Unresolved::Ambiguous { .. }) => {
            Err(DockerError::BadRequest(e.to_string()))
        }
    }
}

/// Every service that is not a plain container.
fn services(view: &View) -> impl Iterator<Item = &Versioned<Service>> {
    view.state.services().filter(|v| !v.value.is_container())
}

/// (running, desired): tasks RUNNING and meant to run on a node not DOWN, and the replicas.
fn running(view: &View, s: &Service) -> (u64, u64) {
    let up = view
        .state
        .tasks_of_service(&s.id)
        .map(|t| &t.value)
        .filter(|t| t.state == TaskState::Running && t.desired_state == TaskState::Running)
        .filter(|t| {
            t.node_id
                .as_deref()
                .and_then(|n| view.state.node(n))
                .is_some_and(|n| n.value.status != NodeStatus::Down)
        })
        .count();
    (up as u64, s.replicas)
}

/// Docker's `Service` object.
fn service_json(v: &Versioned<Service>, status: Option<(u64, u64)>) -> Value {
    let s = &v.value;
    let updated = s.update.as_ref().map_or(s.created_ms, |u| {
        u.completed_ms.unwrap_or(u.started_ms).max(s.created_ms)
    });
    let ports: Vec<Value> = s.ports.iter().map(service_spec::render_port).collect();
    let mut doc = json!({
        "ID": s.id,
        "Version": {"Index": v.mod_revision},
        "CreatedAt": rfc3339_ms(s.created_ms),
        "UpdatedAt": rfc3339_ms(updated),
        "Spec": service_spec::render(s),
        "Endpoint": {"Spec": {"Mode": "vip", "Ports": ports}, "Ports": ports},
    });
    if let Some(previous) = &s.previous {
        doc["PreviousSpec"] = service_spec::render(previous);
    }
    if let Some(u) = &s.update {
        let mut status = json!({"State": u.state.as_str(), "Message": u.message});
        if u.started_ms > 0 {
            status["StartedAt"] = json!(rfc3339_ms(u.started_ms));
        }
        if let Some(done) = u.completed_ms {
            status["CompletedAt"] = json!(rfc3339_ms(done));
        }
        doc["UpdateStatus"] = status;
    }
    if let Some((running, desired)) = status {
        doc["ServiceStatus"] = json!({
            "RunningTasks": running,
            "DesiredTasks": desired,
            "CompletedTasks": 0,
        });
    }
    doc
}

/// Docker's `Task` object; its `Spec` is the task template of the spec version it runs.
fn task_json(v: &Versioned<Task>, s: &Service) -> Value {
    let t = &v.value;
    let spec = s.spec_for(t.spec_version).unwrap_or(s);
    let failed = matches!(
        t.state,
        TaskState::Pending | TaskState::Failed | TaskState::Rejected
    );
    let ports: Vec<Value> = t
        .ports
        .iter()
        .map(|p| {
            json!({
                "Protocol": p.protocol.to_string(),
                "TargetPort": p.container_port,
                "PublishedPort": p.host_port,
                "PublishMode": "host",
            })
        })
        .collect();
    json!({
        "ID": t.id,
        "Version": {"Index": v.mod_revision},
        "CreatedAt": rfc3339_ms(t.created_ms),
        "UpdatedAt": rfc3339_ms(t.updated_ms),
        "Labels": {},
        "Spec": service_spec::render(spec)["TaskTemplate"].clone(),
        "ServiceID": t.service_id,
        "Slot": t.slot,
        "NodeID": t.node_id.clone().unwrap_or_default(),
        "Status": {
            "Timestamp": rfc3339_ms(t.updated_ms),
            "State": state_name(t.state),
            "Message": t.message,
            "Err": if failed { t.message.as_str() } else { "" },
            "ContainerStatus": {
                "ContainerID": t.container_id.clone().unwrap_or_default(),
                "ExitCode": t.exit_code.unwrap_or(0),
            },
            "PortStatus": {"Ports": ports},
        },
        "DesiredState": state_name(t.desired_state),
        "NetworksAttachments": [],
    })
}

/// Docker's lowercase task state (`running`, `shutdown`...).
fn state_name(state: TaskState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

/// A service's image must be on some node: shoal has no registry of its own.
async fn check_image(api: &Api, view: &View, image: &str) -> Result<(), DockerError> {
    super::containers::check_image(api, view, image)
        .await
        .map_err(|e| match e {
            DockerError::NotFound(msg) => DockerError::BadRequest(format!(
                "{msg}: no node has it (load it with docker load or pull it through shoal first)"
            )),
            other => other,
        })
}

/// The operator's policy on what containers may do, applied to the containers the service
/// would run (403 as for `docker run`).
fn check_policy(api: &Api, spec: &Value) -> Result<(), DockerError> {
    let container = spec
        .pointer("/TaskTemplate/ContainerSpec")
        .unwrap_or(&Value::Null);
    Ok(api.policy.check_service(container)?)
}

fn parse(body: &[u8]) -> Result<Value, DockerError> {
    serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The `version` an update names (Docker requires it).
pub(crate) fn version(q: &Query) -> Result<u64, DockerError> {
    let raw = q.get("version").unwrap_or("");
    raw.parse().map_err(|_| {
        DockerError::BadRequest(format!(
            "invalid version {raw:?}: expected the Version.Index an inspect returned"
        ))
    })
}

pub(crate) fn check_filters(filters: &Filters, known: &[&str]) -> Result<(), DockerError> {
    match filters.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((other, _)) => Err(DockerError::BadRequest(format!(
            "invalid filter '{other}' (shoal supports {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

/// True when `values` is empty (no such filter), else whether any passes.
pub(crate) fn any_or_none<T>(values: &[T], pass: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(pass)
}
