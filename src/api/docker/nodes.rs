//! Swarm mode's nodes (`docker node ls|inspect|update|ps|rm`): the Docker hosts shoal's agents
//! registered, in Docker's `Node` shape, all workers (shoal's managers run no tasks). An update
//! writes only what an operator owns (availability and operator labels, `Spec.Labels`), as
//! `shoal node update` does; the agent's own labels show as the engine's.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::error::{json_response, DockerError};
use super::filters::Filters;
use super::services::{any_or_none, check_filters, version};
use super::view::View;
use super::{Api, Query};
use crate::model::{keys, Availability, Node, NodeStatus};
use crate::objects::Versioned;

const NODE_FILTERS: &[&str] = &["id", "name", "role", "membership", "label", "node.label"];

pub(crate) async fn list(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let filters = Filters::parse(q.get("filters"))?;
    check_filters(&filters, NODE_FILTERS)?;
    let view = api.objects.view().await?;
    let mut nodes: Vec<&Versioned<Node>> = view.state.nodes().collect();
    nodes.sort_by(|a, b| a.value.name.cmp(&b.value.name));
    let has = |labels: &std::collections::BTreeMap<String, String>, want: &String| match want
        .split_once('=')
    {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(want.as_str()),
    };
    let out: Vec<Value> = nodes
        .into_iter()
        .filter(|v| {
            let n = &v.value;
            any_or_none(filters.get("id"), |id| n.id.starts_with(id.as_str()))
                && any_or_none(filters.get("name"), |name| {
                    n.name.starts_with(name.as_str())
                })
                && any_or_none(filters.get("role"), |r| r == "worker")
                && any_or_none(filters.get("membership"), |m| m == "accepted")
                && filters.get("label").iter().all(|l| has(&n.labels, l))
                && filters
                    .get("node.label")
                    .iter()
                    .all(|l| has(&n.operator_labels, l))
        })
        .map(node_json)
        .collect();
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

pub(crate) async fn inspect(api: &Api, query: &str) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let v = resolve(&view, query)?;
    Ok(json_response(StatusCode::OK, &node_json(v)))
}

/// `POST /nodes/{id}/update?version=N`, the body a `NodeSpec`: availability and labels.
pub(crate) async fn update(
    api: &Api,
    query: &str,
    q: &Query,
    body: &[u8],
) -> Result<Response, DockerError> {
    let version = version(q)?;
    let spec: Value = serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))?;
    let (availability, labels) = read_spec(&spec)?;
    let view = api.objects.view().await?;
    let id = resolve(&view, query)?.value.id.clone();
    let missing = || DockerError::NotFound(format!("node {id} not found"));
    api.objects
        .update_at::<Node>(&keys::node(&id), "node", Some(version), missing, |n| {
            n.availability = availability;
            n.operator_labels = labels.clone();
            Ok(true)
        })
        .await?;
    Ok(json_response(StatusCode::OK, &Value::Null))
}

/// `DELETE /nodes/{id}?force=1`: as `shoal node rm`, its certificate revoked first.
pub(crate) async fn remove(api: &Api, query: &str, q: &Query) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let id = resolve(&view, query)?.value.id.clone();
    let removed = crate::security::state::remove_node(&api.objects.store, &id, q.flag("force"))
        .await
        .map_err(|e| match e {
            crate::security::SecurityError::Conflict(msg) => DockerError::Conflict(msg),
            crate::security::SecurityError::Store(e) => DockerError::Store(e),
            other => DockerError::Internal(other.to_string()),
        })?;
    match removed {
        Some(_) => Ok(json_response(StatusCode::OK, &Value::Null)),
        None => Err(DockerError::NotFound(format!("node {query} not found"))),
    }
}

/// (availability, operator labels) of a `NodeSpec`; a role or availability shoal cannot give
/// a node is a 400.
fn read_spec(
    spec: &Value,
) -> Result<(Availability, std::collections::BTreeMap<String, String>), DockerError> {
    let bad = |m: String| DockerError::BadRequest(m);
    if !spec.is_object() {
        return Err(bad("the node spec must be a JSON object".into()));
    }
    let text = |key: &str| spec.get(key).and_then(Value::as_str).unwrap_or("");
    match text("Role") {
        "" | "worker" => {}
        "manager" => {
            return Err(bad(
                "Role manager: shoal's agents cannot be promoted; managers are started with \
                 shoal manager --join"
                    .into(),
            ))
        }
        other => return Err(bad(format!("Role {other:?}: expected worker"))),
    }
    let availability = match text("Availability") {
        "" | "active" => Availability::Active,
        "drain" => Availability::Drain,
        "pause" => {
            return Err(bad(
                "Availability pause is not supported by shoal: use drain (no new tasks, and \
                 its tasks move elsewhere)"
                    .into(),
            ))
        }
        other => {
            return Err(bad(format!(
                "Availability {other:?}: expected active or drain"
            )))
        }
    };
    let labels = match spec.get("Labels") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("Labels: {e}")))?,
    };
    Ok((availability, labels))
}

/// The node `query` designates: a name, an id or a unique id prefix. A manager is no node.
pub(crate) fn resolve<'v>(view: &'v View, query: &str) -> Result<&'v Versioned<Node>, DockerError> {
    if query == "self" {
        return Err(DockerError::NotFound(
            "this shoal manager is not a node (managers run no tasks): name one of docker node ls"
                .into(),
        ));
    }
    let all: Vec<&Versioned<Node>> = view.state.nodes().collect();
    match crate::objects::resolve(&all, query) {
        Ok(found) => Ok(*found),
        Err(crate::objects::Unresolved::NoSuch { .. }) => {
            Err(DockerError::NotFound(format!("node {query} not found")))
        }
        Err(e @ crate::objects::Unresolved::Ambiguous { .. }) => {
            Err(DockerError::BadRequest(e.to_string()))
        }
    }
}

/// Docker's `Node` object.
fn node_json(v: &Versioned<Node>) -> Value {
    let n = &v.value;
    let ip = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |(h, _)| h);
    let availability = match n.availability {
        Availability::Active => "active",
        Availability::Drain => "drain",
    };
    let state = match n.status {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
    };
    let engine_labels: Map<String, Value> = n
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    json!({
        "ID": n.id,
        "Version": {"Index": v.mod_revision},
        "Spec": {
            "Labels": n.operator_labels,
            "Role": "worker",
            "Availability": availability,
        },
        "Description": {
            "Hostname": n.name,
            "Platform": {"Architecture": std::env::consts::ARCH, "OS": "linux"},
            "Resources": {"NanoCPUs": n.nano_cpus(), "MemoryBytes": n.memory_bytes},
            "Engine": {"EngineVersion": n.engine_version, "Labels": engine_labels, "Plugins": []},
            "TLSInfo": {},
        },
        "Status": {"State": state, "Message": n.message, "Addr": ip},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_spec_sets_availability_and_operator_labels_only() {
        let (a, labels) =
            read_spec(&json!({"Role": "worker", "Availability": "drain", "Labels": {"x": "1"}}))
                .unwrap();
        assert_eq!((a, labels["x"].as_str()), (Availability::Drain, "1"));
        for (spec, want) in [
            (json!({"Role": "manager"}), "cannot be promoted"),
            (json!({"Availability": "pause"}), "use drain"),
            (json!({"Availability": "gone"}), "expected active or drain"),
            (json!({"Labels": ["x"]}), "Labels"),
            (json!([]), "JSON object"),
        ] {
            let err = read_spec(&spec).unwrap_err().to_string();
            assert!(err.contains(want), "{spec}: {err}");
        }
    }
}
