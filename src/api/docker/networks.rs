//! Networks. A network created through the API (a compose project's `<project>_default`) is a
//! cluster object; each node's agent creates a bridge of that name when a container there joins
//! it. Without an overlay, containers on different nodes do not share it: they reach each other
//! through published ports, as the proxy does. Each node's own networks are listed as
//! `<node>/<name>`, as classic Swarm did.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::containers::passthrough;
use super::create::new_id;
use super::error::{json_response, DockerError};
use super::filters::Filters;
use super::forward::NodeEngine;
use super::{Api, Query};
use crate::host::now_ms;
use crate::model::keys;

/// A network as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Network {
    pub id: String,
    pub name: String,
    pub created_ms: u64,
    /// The create body as the client sent it.
    pub config: Value,
}

impl Network {
    fn driver(&self) -> &str {
        self.config
            .get("Driver")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .unwrap_or("bridge")
    }

    fn labels(&self) -> Value {
        match self.config.get("Labels") {
            Some(Value::Object(l)) => Value::Object(l.clone()),
            _ => json!({}),
        }
    }

    fn json(&self) -> Value {
        let get = |k: &str, default: Value| {
            self.config
                .get(k)
                .cloned()
                .filter(|v| !v.is_null())
                .unwrap_or(default)
        };
        json!({
            "Name": self.name,
            "Id": self.id,
            "Created": super::containers::rfc3339_ms(self.created_ms),
            "Scope": "local",
            "Driver": self.driver(),
            "EnableIPv6": get("EnableIPv6", json!(false)),
            "IPAM": get("IPAM", json!({"Driver": "default", "Options": null, "Config": []})),
            "Internal": get("Internal", json!(false)),
            "Attachable": get("Attachable", json!(false)),
            "Ingress": false,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": false,
            "Containers": {},
            "Options": get("Options", json!({})),
            "Labels": self.labels(),
        })
    }

    fn matches(&self, filters: &Filters) -> Result<bool, DockerError> {
        for (key, values) in filters.iter() {
            let ok = match key.as_str() {
                "name" => values.iter().any(|v| self.name.contains(v.as_str())),
                "id" => values.iter().any(|v| self.id.starts_with(v.as_str())),
                "driver" => values.iter().any(|v| v == self.driver()),
                "label" => values.iter().all(|v| {
                    let labels = self.labels();
                    match v.split_once('=') {
                        Some((k, want)) => labels.get(k).and_then(Value::as_str) == Some(want),
                        None => labels.get(v.as_str()).is_some(),
                    }
                }),
                "scope" => values.iter().any(|v| v == "local"),
                "type" => values.iter().any(|v| v == "custom"),
                other => return Err(DockerError::BadRequest(format!("invalid filter '{other}'"))),
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

async fn all(api: &Api) -> Result<Vec<Network>, DockerError> {
    let mut networks: Vec<Network> = api.objects.list(keys::NETWORKS).await?;
    networks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(networks)
}

/// A cluster network by name, id or id prefix.
async fn resolve(api: &Api, query: &str) -> Result<Option<Network>, DockerError> {
    let networks = all(api).await?;
    if let Some(n) = networks.iter().find(|n| n.name == query || n.id == query) {
        return Ok(Some(n.clone()));
    }
    let mut prefixed = networks
        .iter()
        .filter(|n| !query.is_empty() && n.id.starts_with(query));
    match (prefixed.next(), prefixed.next()) {
        (Some(one), None) => Ok(Some(one.clone())),
        _ => Ok(None),
    }
}

pub(crate) async fn list(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let filters = Filters::parse(q.get("filters"))?;
    let mut out = Vec::new();
    for n in all(api).await? {
        if n.matches(&filters)? {
            out.push(n.json());
        }
    }
    if filters.is_empty() {
        // Each node's own networks, as `<node>/<name>`.
        let view = api.objects.view().await?;
        for node in view.ready_nodes() {
            let engine = NodeEngine::of(node, api.engine_tls.as_ref());
            let Ok((status, body)) = engine.request(Method::GET, "/networks", None).await else {
                continue;
            };
            let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) else {
                continue;
            };
            if !status.is_success() {
                continue;
            }
            for mut item in items {
                if item.pointer("/Labels/shoal.network").is_some() {
                    continue;
                }
                let name = item
                    .get("Name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                item["Name"] = json!(format!("{}/{name}", node.name));
                out.push(item);
            }
        }
    }
    Ok(json_response(StatusCode::OK, &Value::Array(out)))
}

pub(crate) async fn inspect(api: &Api, query: &str) -> Result<Response, DockerError> {
    if let Some(n) = resolve(api, query).await? {
        return Ok(json_response(StatusCode::OK, &n.json()));
    }
    // `node-1/bridge`, or a built-in network of the first node.
    let view = api.objects.view().await?;
    let (node, name) = match query.split_once('/') {
        Some((node, name)) => (view.node_by_name(node), name),
        None if matches!(query, "bridge" | "host" | "none") => {
            (view.ready_nodes().first().copied(), query)
        }
        None => (None, query),
    };
    if let Some(node) = node {
        let engine = NodeEngine::of(node, api.engine_tls.as_ref());
        if let Ok((status, body)) = engine
            .request(Method::GET, &format!("/networks/{name}"), None)
            .await
        {
            if status.is_success() {
                return Ok(passthrough(status, body));
            }
        }
    }
    Err(DockerError::NotFound(format!("network {query} not found")))
}

pub(crate) async fn create(api: &Api, body: &[u8]) -> Result<Response, DockerError> {
    let config: Value = serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))?;
    let name = config
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if !super::create::valid_name(&name) {
        return Err(DockerError::BadRequest(format!(
            "invalid network name {name:?}"
        )));
    }
    if matches!(name.as_str(), "bridge" | "host" | "none" | "default") {
        return Err(DockerError::Conflict(format!(
            "{name} is a pre-defined network and cannot be created"
        )));
    }
    match config.get("Driver").and_then(Value::as_str) {
        None | Some("") | Some("bridge") | Some("overlay") => {}
        Some(other) => {
            return Err(DockerError::BadRequest(format!(
                "network driver {other:?} is not supported by shoal (bridge or overlay)"
            )))
        }
    }
    let network = Network {
        id: new_id(),
        name: name.clone(),
        created_ms: now_ms(),
        config,
    };
    let written = api
        .objects
        .create_named(
            keys::network(&network.id),
            keys::network_name(&name),
            &network.id,
            &network,
        )
        .await?;
    if !written {
        return Err(DockerError::Conflict(format!(
            "network with name {name} already exists"
        )));
    }
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"Id": network.id, "Warning": ""}),
    ))
}

pub(crate) async fn remove(api: &Api, query: &str) -> Result<Response, DockerError> {
    let Some(n) = resolve(api, query).await? else {
        return Err(DockerError::NotFound(format!("network {query} not found")));
    };
    api.objects
        .delete_named(keys::network(&n.id), keys::network_name(&n.name), &n.id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /networks/{id}/connect|disconnect`: recorded in a plain container's create body (it
/// takes effect on its next start), and applied on its node when it runs.
pub(crate) async fn connect(
    api: &Api,
    query: &str,
    body: &[u8],
    connect: bool,
) -> Result<Response, DockerError> {
    let req: Value = serde_json::from_slice(body)
        .map_err(|e| DockerError::BadRequest(format!("invalid JSON body: {e}")))?;
    let Some(n) = resolve(api, query).await? else {
        return Err(DockerError::NotFound(format!("network {query} not found")));
    };
    let container = req
        .get("Container")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let view = api.objects.view().await?;
    let e = view.resolve(container)?;
    if !e.is_plain() {
        return Err(DockerError::Conflict(format!(
            "container {} belongs to a service",
            e.name
        )));
    }
    let endpoint = req
        .get("EndpointConfig")
        .cloned()
        .filter(|v| !v.is_null())
        .unwrap_or_else(|| json!({}));
    let name = n.name.clone();
    api.objects
        .update_service(&e.id, |s| {
            let Some(c) = s.container.as_mut() else {
                return Ok(false);
            };
            if !c.config["NetworkingConfig"].is_object() {
                c.config["NetworkingConfig"] = json!({});
            }
            if !c.config["NetworkingConfig"]["EndpointsConfig"].is_object() {
                c.config["NetworkingConfig"]["EndpointsConfig"] = json!({});
            }
            let endpoints = c.config["NetworkingConfig"]["EndpointsConfig"]
                .as_object_mut()
                .expect("made an object above");
            if connect {
                endpoints.insert(name.clone(), endpoint.clone());
            } else {
                endpoints.remove(&name);
            }
            Ok(true)
        })
        .await?;
    if e.running() {
        let (engine, engine_id) = super::containers::engine_of(api, &e)?;
        let verb = if connect { "connect" } else { "disconnect" };
        let mut body = req.clone();
        body["Container"] = json!(engine_id);
        let _ = engine
            .request(
                Method::POST,
                &format!("/networks/{}/{verb}", n.name),
                Some(body),
            )
            .await;
    }
    Ok(StatusCode::OK.into_response())
}
