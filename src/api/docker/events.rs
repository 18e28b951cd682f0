//! `GET /events`: the cluster's container and node events as they are committed, in Docker's
//! shape, each with the node's attributes (`node.name`, `node.id`, `node.addr`, `node.ip`) as
//! classic Swarm added them. Derived from the store's watch, so every manager streams the same.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use shoal_raft::EventKind;
use tokio_stream::StreamExt;

use super::error::DockerError;
use super::filters::Filters;
use super::{Api, Query};
use crate::host::now_ms;
use crate::model::{keys, Node, NodeStatus, Service, Task, TaskState};

const FILTERS: &[&str] = &["type", "event", "container", "image", "label", "node"];

/// What the stream remembers to tell one change from the next.
#[derive(Default)]
struct Known {
    services: HashMap<String, Service>,
    tasks: HashMap<String, Task>,
    nodes: HashMap<String, Node>,
}

pub(crate) async fn events(api: &Api, q: &Query) -> Result<Response, DockerError> {
    let filters = Filters::parse(q.get("filters"))?;
    for (key, _) in filters.iter() {
        if !FILTERS.contains(&key.as_str()) {
            return Err(DockerError::BadRequest(format!("invalid filter '{key}'")));
        }
    }
    let until_ms = match q.get("until").filter(|u| !u.is_empty()) {
        Some(u) => Some(
            u.parse::<f64>()
                .map(|s| (s * 1000.0) as u64)
                .map_err(|_| DockerError::BadRequest(format!("invalid until {u:?}")))?,
        ),
        None => None,
    };
    let view = api.objects.view().await?;
    let mut known = Known::default();
    for s in view.state.services() {
        known.services.insert(s.value.id.clone(), s.value.clone());
    }
    for t in view.state.tasks() {
        known.tasks.insert(t.value.id.clone(), t.value.clone());
    }
    for n in view.state.nodes() {
        known.nodes.insert(n.value.id.clone(), n.value.clone());
    }
    let mut changes =
        api.objects
            .store
            .watch(b"/shoal/".to_vec(), true, view.state.revision() + 1)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::spawn(async move {
        // An empty line at once: clients see the stream open.
        let stopping = async |until: Option<u64>| match until {
            Some(u) => tokio::time::sleep(Duration::from_millis(u.saturating_sub(now_ms()))).await,
            None => std::future::pending().await,
        };
        loop {
            let batch = tokio::select! {
                b = changes.next() => b,
                _ = stopping(until_ms) => return,
                _ = tx.closed() => return,
            };
            let Some(Ok(batch)) = batch else { return };
            for event in batch.events {
                let Ok(key) = std::str::from_utf8(&event.kv.key) else {
                    continue;
                };
                let put = event.kind == EventKind::Put;
                for message in known.apply(key, put, &event.kv.value) {
                    if matches(&message, &filters)
                        && tx
                            .send(Ok(Bytes::from(format!("{message}\n"))))
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

impl Known {
    /// The Docker events one committed change makes.
    fn apply(&mut self, key: &str, put: bool, value: &[u8]) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some(id) = keys::id_of(keys::SERVICES, key) {
            if !put {
                if let Some(s) = self.services.remove(id) {
                    if s.is_container() {
                        out.push(self.container_event(&s, None, "destroy", &[]));
                    }
                }
            } else if let Ok(s) = serde_json::from_slice::<Service>(value) {
                if s.is_container() && !self.services.contains_key(id) {
                    out.push(self.container_event(&s, None, "create", &[]));
                }
                self.services.insert(id.to_string(), s);
            }
        } else if let Some(id) = keys::id_of(keys::TASKS, key) {
            if !put {
                self.tasks.remove(id);
                return out;
            }
            let Ok(task) = serde_json::from_slice::<Task>(value) else {
                return out;
            };
            let before = self.tasks.insert(id.to_string(), task.clone());
            let was = before.as_ref().map(|t| t.state);
            let Some(service) = self.services.get(&task.service_id).cloned() else {
                return out;
            };
            if was != Some(task.state) {
                match task.state {
                    TaskState::Running => {
                        if !service.is_container() {
                            out.push(self.container_event(&service, Some(&task), "create", &[]));
                        }
                        out.push(self.container_event(&service, Some(&task), "start", &[]));
                    }
                    s if s.is_terminal() && was == Some(TaskState::Running) => {
                        let code = task.exit_code.unwrap_or(0).to_string();
                        out.push(self.container_event(
                            &service,
                            Some(&task),
                            "die",
                            &[("exitCode", code)],
                        ));
                        if task.desired_state == TaskState::Shutdown {
                            out.push(self.container_event(&service, Some(&task), "stop", &[]));
                        }
                    }
                    _ => {}
                }
            }
        } else if let Some(id) = keys::id_of(keys::NODES, key) {
            let Ok(node) = serde_json::from_slice::<Node>(value).map_err(|_| ()) else {
                self.nodes.remove(id);
                return out;
            };
            let was = self
                .nodes
                .insert(id.to_string(), node.clone())
                .map(|n| n.status);
            if was != Some(node.status) {
                let action = match node.status {
                    NodeStatus::Ready => "engine_connect",
                    NodeStatus::Down => "engine_disconnect",
                };
                out.push(event(
                    "node",
                    action,
                    &node.id,
                    node_attributes(Some(&node)),
                ));
            }
        }
        out
    }

    fn container_event(
        &self,
        s: &Service,
        task: Option<&Task>,
        action: &str,
        extra: &[(&str, String)],
    ) -> Value {
        let node = task
            .and_then(|t| t.node_id.as_ref())
            .and_then(|id| self.nodes.get(id));
        let id = if s.is_container() {
            s.id.clone()
        } else {
            task.and_then(|t| t.container_id.clone().or(Some(t.id.clone())))
                .unwrap_or_default()
        };
        let name = match (s.is_container(), task) {
            (false, Some(t)) => format!("{}.{}", t.name(&s.name), t.id.get(..8).unwrap_or(&t.id)),
            _ => s.name.clone(),
        };
        let mut attributes = node_attributes(node);
        for (k, v) in &s.labels {
            attributes.insert(k.clone(), json!(v));
        }
        attributes.insert("image".into(), json!(s.image));
        attributes.insert("name".into(), json!(name));
        for (k, v) in extra {
            attributes.insert((*k).to_string(), json!(v));
        }
        let mut e = event("container", action, &id, attributes);
        e["status"] = json!(action);
        e["id"] = json!(id);
        e["from"] = json!(s.image);
        e
    }
}

fn node_attributes(node: Option<&Node>) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    if let Some(n) = node {
        let ip = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |(h, _)| h);
        m.insert("node.name".into(), json!(n.name));
        m.insert("node.id".into(), json!(n.id));
        m.insert("node.addr".into(), json!(n.engine_addr));
        m.insert("node.ip".into(), json!(ip));
    }
    m
}

fn event(kind: &str, action: &str, id: &str, attributes: serde_json::Map<String, Value>) -> Value {
    let ms = now_ms();
    json!({
        "Type": kind,
        "Action": action,
        "Actor": {"ID": id, "Attributes": attributes},
        "scope": "swarm",
        "time": ms / 1000,
        "timeNano": u128::from(ms) * 1_000_000,
    })
}

fn matches(e: &Value, filters: &Filters) -> bool {
    let attr = |k: &str| {
        e.pointer(&format!("/Actor/Attributes/{}", k.replace('/', "~1")))
            .and_then(Value::as_str)
            .map(String::from)
    };
    filters.iter().all(|(key, values)| {
        values.iter().any(|v| match key.as_str() {
            "type" => e["Type"] == json!(v),
            "event" => e["Action"] == json!(v),
            "container" => {
                e["Type"] == "container"
                    && (e["Actor"]["ID"]
                        .as_str()
                        .is_some_and(|id| id.starts_with(v.as_str()))
                        || attr("name").as_deref() == Some(v.as_str()))
            }
            "image" => attr("image").as_deref() == Some(v.as_str()),
            "node" => {
                attr("node.name").as_deref() == Some(v.as_str())
                    || attr("node.id").as_deref() == Some(v.as_str())
            }
            "label" => match v.split_once('=') {
                Some((k, want)) => attr(k).as_deref() == Some(want),
                None => attr(v).is_some(),
            },
            _ => false,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_life_makes_create_start_die_destroy() {
        let mut known = Known::default();
        let node = json!({"id": "n1", "name": "node-1", "addr": "127.0.0.2:0", "cpus": 1, "memory_bytes": 1, "status": "ready"});
        known.apply("/shoal/nodes/n1", true, node.to_string().as_bytes());
        let service = json!({"id": "c1", "name": "web", "image": "img", "replicas": 1,
            "labels": {"a": "b"}, "container": {"config": {"Image": "img"}}});
        let e = known.apply("/shoal/services/c1", true, service.to_string().as_bytes());
        assert_eq!(e[0]["Action"], "create");
        let mut task = Task::new("t1".into(), "c1".into(), 1, 1);
        task.node_id = Some("n1".into());
        task.state = TaskState::Running;
        let e = known.apply("/shoal/tasks/t1", true, &serde_json::to_vec(&task).unwrap());
        assert_eq!(e[0]["Action"], "start");
        assert_eq!(e[0]["id"], "c1");
        assert_eq!(e[0]["Actor"]["Attributes"]["node.name"], "node-1");
        assert_eq!(e[0]["Actor"]["Attributes"]["a"], "b");
        let f = Filters::parse(Some(
            r#"{"event":["start"],"label":["a=b"],"node":["node-1"]}"#,
        ))
        .unwrap();
        assert!(matches(&e[0], &f));
        let f = Filters::parse(Some(r#"{"node":["node-2"]}"#)).unwrap();
        assert!(!matches(&e[0], &f));
        task.state = TaskState::Failed;
        task.exit_code = Some(3);
        let e = known.apply("/shoal/tasks/t1", true, &serde_json::to_vec(&task).unwrap());
        assert_eq!(
            (
                e[0]["Action"].as_str(),
                e[0]["Actor"]["Attributes"]["exitCode"].as_str()
            ),
            (Some("die"), Some("3"))
        );
        let e = known.apply("/shoal/services/c1", false, b"");
        assert_eq!(e[0]["Action"], "destroy");
    }
}
