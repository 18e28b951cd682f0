//! The cluster as Docker clients see it: every plain container and every task of a service is a
//! container, listed as `/<node>/<name>` as classic Swarm did, and found by name, id or id
//! prefix as Docker finds them. Pure functions over one read of the cluster objects.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::error::DockerError;
use super::filters::Filters;
use crate::model::{Health, Node, NodeStatus, Service, Task, TaskState};
use crate::objects::View as Objects;

/// One container as the API shows it.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    /// A plain container's id is its service's (stable across restarts and nodes); a service
    /// task's is its engine container's id once it has one, else the task's id.
    pub id: String,
    /// Without the leading slash or the node.
    pub name: String,
    pub service: &'a Service,
    /// The container's current task: the live one, else the newest.
    pub task: Option<&'a Task>,
    pub node: Option<&'a Node>,
}

/// One view of the cluster's objects, as the API shows them.
pub(crate) struct View {
    pub state: std::sync::Arc<Objects>,
}

impl View {
    pub(crate) fn new(state: std::sync::Arc<Objects>) -> View {
        View { state }
    }

    fn node(&self, id: Option<&str>) -> Option<&Node> {
        self.state.node(id?).map(|n| &n.value)
    }

    /// Every container, plain ones first, each list by name.
    pub(crate) fn entries(&self) -> Vec<Entry<'_>> {
        let mut plain = Vec::new();
        let mut service_tasks = Vec::new();
        for s in self.state.services() {
            let service = &s.value;
            let mine: Vec<&Task> = self
                .state
                .tasks_of_service(&service.id)
                .map(|t| &t.value)
                .collect();
            if service.is_container() {
                let task = current_task(&mine);
                plain.push(Entry {
                    id: service.id.clone(),
                    name: service.name.clone(),
                    service,
                    task,
                    node: self.node(task.and_then(|t| t.node_id.as_deref())),
                });
            } else {
                for task in mine {
                    // Finished tasks without a container left nothing to show.
                    if task.state.is_terminal() && task.container_id.is_none() {
                        continue;
                    }
                    let short = task.id.get(..8).unwrap_or(&task.id);
                    service_tasks.push(Entry {
                        id: task.container_id.clone().unwrap_or_else(|| task.id.clone()),
                        name: format!("{}.{short}", task.name(&service.name)),
                        // During an update a task still on the previous spec shows that spec
                        // (its image, labels, ports), as its container runs it.
                        service: service.spec_for(task.spec_version).unwrap_or(service),
                        task: Some(task),
                        node: self.node(task.node_id.as_deref()),
                    });
                }
            }
        }
        plain.sort_by(|a, b| a.name.cmp(&b.name));
        service_tasks.sort_by(|a, b| a.name.cmp(&b.name));
        plain.extend(service_tasks);
        plain
    }

    /// The container `query` designates: a name (`web`, `/web`, `node-1/web`), an id, or the
    /// only id that starts with it.
    pub(crate) fn resolve(&self, query: &str) -> Result<Entry<'_>, DockerError> {
        let entries = self.entries();
        let bare = query.trim_start_matches('/');
        let name = bare.rsplit('/').next().unwrap_or(bare);
        let by_name = entries.iter().find(|e| {
            e.name == name && (bare == name || bare == format!("{}/{}", node_name(e), e.name))
        });
        if let Some(e) = by_name.or_else(|| entries.iter().find(|e| e.id == query)) {
            return Ok(e.clone());
        }
        let matches: Vec<&Entry> = if query.is_empty() {
            Vec::new()
        } else {
            entries.iter().filter(|e| e.id.starts_with(query)).collect()
        };
        match matches.as_slice() {
            [] => Err(DockerError::no_such_container(query)),
            [one] => Ok((*one).clone()),
            _ => Err(DockerError::NotFound(format!(
                "multiple IDs found with provided prefix: {query}"
            ))),
        }
    }

    pub(crate) fn ready_nodes(&self) -> Vec<&Node> {
        self.state
            .nodes()
            .map(|n| &n.value)
            .filter(|n| n.status == NodeStatus::Ready)
            .collect()
    }

    pub(crate) fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.state
            .nodes()
            .map(|n| &n.value)
            .find(|n| n.name == name || n.id == name)
    }
}

/// A slot's live task, else its newest.
fn current_task<'a>(tasks: &[&'a Task]) -> Option<&'a Task> {
    let live = tasks
        .iter()
        .filter(|t| !t.state.is_terminal())
        .max_by_key(|t| (t.created_ms, t.id.clone()));
    live.or_else(|| {
        tasks
            .iter()
            .max_by_key(|t| (t.updated_ms, t.created_ms, t.id.clone()))
    })
    .copied()
}

fn node_name<'e>(e: &'e Entry<'_>) -> &'e str {
    e.node.map_or("", |n| n.name.as_str())
}

impl Entry<'_> {
    pub(crate) fn is_plain(&self) -> bool {
        self.service.is_container()
    }

    /// Docker's `State` word: created, running, exited.
    pub(crate) fn state(&self) -> &'static str {
        match self.task {
            // Its stop was answered (a handover): stopped, as far as clients go.
            Some(t) if t.state == TaskState::Running && self.service.stop_answered() => "exited",
            Some(t) if t.state == TaskState::Running => "running",
            // A task that never got a container (it could not be placed) left it created.
            Some(t) if t.state.is_terminal() && t.container_id.is_some() => "exited",
            _ => "created",
        }
    }

    /// Docker's `health` filter value: `starting`, `healthy`, `unhealthy`, or `none` (no check,
    /// or not running).
    pub(crate) fn health(&self) -> &'static str {
        match self.task.filter(|t| t.state == TaskState::Running) {
            Some(t) => t.health.map_or("none", Health::as_str),
            None => "none",
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.state() == "running"
    }

    /// The engine container's id, once the task has one.
    pub(crate) fn engine_id(&self) -> Option<&str> {
        self.task.and_then(|t| t.container_id.as_deref())
    }

    pub(crate) fn exit_code(&self) -> i64 {
        let Some(task) = self.task.filter(|t| t.state.is_terminal()) else {
            return 0;
        };
        task.exit_code.unwrap_or(match task.state {
            TaskState::Complete => 0,
            TaskState::Shutdown | TaskState::Orphaned => 137,
            _ => 1,
        })
    }

    /// `/node-1/web` once placed, `/web` before.
    pub(crate) fn names(&self) -> Vec<String> {
        match self.node {
            Some(n) => vec![format!("/{}/{}", n.name, self.name)],
            None => vec![format!("/{}", self.name)],
        }
    }

    pub(crate) fn config(&self) -> Option<&Value> {
        self.service.container.as_ref().map(|c| &c.config)
    }

    pub(crate) fn labels(&self) -> BTreeMap<String, String> {
        self.service.labels.clone()
    }

    pub(crate) fn command(&self) -> String {
        let words = |v: Option<&Value>| -> Vec<String> {
            match v {
                Some(Value::Array(a)) => a
                    .iter()
                    .filter_map(|w| w.as_str())
                    .map(String::from)
                    .collect(),
                Some(Value::String(s)) => vec![s.clone()],
                _ => Vec::new(),
            }
        };
        match self.config() {
            Some(c) => {
                let mut all = words(c.get("Entrypoint"));
                all.extend(words(c.get("Cmd")));
                all.join(" ")
            }
            None => self.service.cmd.join(" "),
        }
    }

    pub(crate) fn created_ms(&self) -> u64 {
        match (&self.service.container, self.task) {
            (Some(c), _) => c.created_ms,
            (None, Some(t)) => t.created_ms,
            (None, None) => 0,
        }
    }

    /// Docker's `Status` column: `Up 5 seconds`, `Exited (0) 3 seconds ago`, `Created`.
    pub(crate) fn status_text(&self, now_ms: u64) -> String {
        let since = |ms: u64| human_duration(now_ms.saturating_sub(ms));
        match (self.state(), self.task) {
            ("running", Some(t)) => {
                let up = format!("Up {}", since(t.updated_ms));
                match t.health {
                    None => up,
                    Some(Health::Starting) => format!("{up} (health: starting)"),
                    Some(h) => format!("{up} ({})", h.as_str()),
                }
            }
            ("exited", Some(t)) => {
                format!("Exited ({}) {} ago", self.exit_code(), since(t.updated_ms))
            }
            _ => "Created".to_string(),
        }
    }

    pub(crate) fn ports_json(&self) -> Vec<Value> {
        let Some(task) = self.task.filter(|t| t.state == TaskState::Running) else {
            return Vec::new();
        };
        task.ports
            .iter()
            .map(|p| {
                json!({
                    "IP": p.host_ip,
                    "PrivatePort": p.container_port,
                    "PublicPort": p.host_port,
                    "Type": p.protocol.to_string(),
                })
            })
            .collect()
    }

    /// The classic Swarm `Node` object of `inspect`.
    pub(crate) fn node_json(&self) -> Value {
        match self.node {
            Some(n) => node_json(n),
            None => Value::Null,
        }
    }

    /// One item of `GET /containers/json`.
    pub(crate) fn list_json(&self, now_ms: u64) -> Value {
        let network_mode = self
            .config()
            .and_then(|c| c.pointer("/HostConfig/NetworkMode"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        json!({
            "Id": self.id,
            "Names": self.names(),
            "Image": self.service.image,
            "ImageID": "",
            "Command": self.command(),
            "Created": self.created_ms() / 1000,
            "Ports": self.ports_json(),
            "Labels": self.labels(),
            "State": self.state(),
            "Status": self.status_text(now_ms),
            "HostConfig": {"NetworkMode": network_mode},
            "NetworkSettings": {"Networks": {}},
            "Mounts": [],
        })
    }

    /// Whether the entry passes `GET /containers/json`'s filters.
    pub(crate) fn matches(&self, filters: &Filters) -> Result<bool, DockerError> {
        for (key, values) in filters.iter() {
            let ok = match key.as_str() {
                "id" => values.iter().any(|v| self.id.starts_with(v.as_str())),
                "name" => {
                    let names = self.names();
                    let mut ok = false;
                    for v in values {
                        let re = regex::Regex::new(v).map_err(|e| {
                            DockerError::BadRequest(format!("invalid name filter {v:?}: {e}"))
                        })?;
                        ok |= names.iter().any(|n| re.is_match(n));
                    }
                    ok
                }
                "label" => values.iter().all(|v| {
                    let labels = self.labels();
                    match v.split_once('=') {
                        Some((k, want)) => labels.get(k).is_some_and(|have| have == want),
                        None => labels.contains_key(v.as_str()),
                    }
                }),
                "status" => {
                    for v in values {
                        if !STATUSES.contains(&v.as_str()) {
                            return Err(DockerError::BadRequest(format!(
                                "invalid filter 'status={v}'"
                            )));
                        }
                    }
                    values.iter().any(|v| v == self.state())
                }
                "health" => {
                    for v in values {
                        if !HEALTHS.contains(&v.as_str()) {
                            return Err(DockerError::BadRequest(format!(
                                "invalid filter 'health={v}'"
                            )));
                        }
                    }
                    values.iter().any(|v| v == self.health())
                }
                "node" => values
                    .iter()
                    .any(|v| self.node.is_some_and(|n| &n.name == v || &n.id == v)),
                "exited" => {
                    let mut ok = false;
                    for v in values {
                        let code: i64 = v.parse().map_err(|_| {
                            DockerError::BadRequest(format!("invalid filter 'exited={v}'"))
                        })?;
                        ok |= self.state() == "exited" && self.exit_code() == code;
                    }
                    ok
                }
                "ancestor" => values.iter().any(|v| {
                    let image = &self.service.image;
                    image == v || image.split(':').next() == Some(v.as_str())
                }),
                other => {
                    return Err(DockerError::BadRequest(format!(
                        "invalid filter '{other}' (shoal supports id, name, label, status, health, node, exited, ancestor)"
                    )))
                }
            };
            if !ok {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The filters `GET /containers/json` understands.
const FILTERS: &[&str] = &[
    "id", "name", "label", "status", "health", "node", "exited", "ancestor",
];

/// Refuses unknown filter names (even when there is nothing to filter).
pub(crate) fn check_filters(filters: &Filters) -> Result<(), DockerError> {
    match filters.iter().find(|(k, _)| !FILTERS.contains(&k.as_str())) {
        Some((other, _)) => Err(DockerError::BadRequest(format!(
            "invalid filter '{other}' (shoal supports id, name, label, status, health, node, exited, ancestor)"
        ))),
        None => Ok(()),
    }
}

/// Docker's `health` filter values.
const HEALTHS: &[&str] = &["starting", "healthy", "unhealthy", "none"];

const STATUSES: &[&str] = &[
    "created",
    "restarting",
    "running",
    "removing",
    "paused",
    "exited",
    "dead",
];

pub(crate) fn node_json(n: &Node) -> Value {
    let ip = n.addr.rsplit_once(':').map_or(n.addr.as_str(), |(h, _)| h);
    json!({
        "ID": n.id,
        "IP": ip,
        "Addr": n.engine_addr,
        "Name": n.name,
        "Cpus": n.cpus,
        "Memory": n.memory_bytes,
        "Labels": n.all_labels(),
    })
}

/// Docker's rough durations: `Less than a second`, `5 seconds`, `About a minute`, `3 hours`.
pub(crate) fn human_duration(ms: u64) -> String {
    let s = ms / 1000;
    let plural = |n: u64, unit: &str| {
        if n == 1 {
            format!("1 {unit}")
        } else {
            format!("{n} {unit}s")
        }
    };
    match s {
        0 => "Less than a second".into(),
        1..=59 => plural(s, "second"),
        60..=119 => "About a minute".into(),
        120..=3599 => plural(s / 60, "minute"),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => plural(s / 3600, "hour"),
        _ => plural(s / 86_400, "day"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_containers_status_and_filter_show_its_health() {
        let service: Service = serde_json::from_value(json!({
            "id": "s", "name": "web", "image": "i", "replicas": 1,
        }))
        .unwrap();
        let mut task = Task::new("t".into(), "s".into(), 1, 0);
        task.state = TaskState::Running;
        task.health = Some(Health::Healthy);
        let entry = |task: &Task| {
            let e = Entry {
                id: "c".into(),
                name: "web".into(),
                service: &service,
                task: Some(task),
                node: None,
            };
            let filters = Filters::parse(Some(r#"{"health":["healthy"]}"#)).unwrap();
            let matched = e.matches(&filters).unwrap();
            (e.status_text(5_000), e.health(), matched)
        };
        assert_eq!(
            entry(&task),
            ("Up 5 seconds (healthy)".into(), "healthy", true)
        );
        task.health = Some(Health::Starting);
        assert_eq!(
            entry(&task),
            ("Up 5 seconds (health: starting)".into(), "starting", false)
        );
        task.health = None;
        assert_eq!(entry(&task), ("Up 5 seconds".into(), "none", false));
    }

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(300), "Less than a second");
        assert_eq!(human_duration(1_000), "1 second");
        assert_eq!(human_duration(42_000), "42 seconds");
        assert_eq!(human_duration(90_000), "About a minute");
        assert_eq!(human_duration(600_000), "10 minutes");
        assert_eq!(human_duration(3 * 3_600_000), "3 hours");
    }
}
