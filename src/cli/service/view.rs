//! How `shoal service ls` and `ps` show services and tasks: the rows of their tables and of their
//! JSON, running counts, published ports and task addresses.

use std::collections::HashMap;

use serde::Serialize;

use crate::cli::table;
use crate::model::{Node, PortSpec, Service, Task, TaskState};

/// Tasks RUNNING and meant to run, per service id.
fn running(tasks: &[Task]) -> HashMap<&str, u64> {
    let mut counts = HashMap::new();
    for t in tasks {
        if t.state == TaskState::Running && t.desired_state == TaskState::Running {
            *counts.entry(t.service_id.as_str()).or_insert(0) += 1;
        }
    }
    counts
}

fn by_name(mut services: Vec<Service>) -> Vec<Service> {
    services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    services
}

/// A service as `ls --json` shows it: its fields, in order, then `running`.
#[derive(Serialize)]
pub(super) struct ServiceRow {
    #[serde(flatten)]
    service: Service,
    running: u64,
}

/// A task as `ps --json` shows it: its fields, in order, then `node_name` (null if unassigned).
#[derive(Serialize)]
pub(super) struct TaskRow {
    #[serde(flatten)]
    task: Task,
    node_name: Option<String>,
}

pub(super) fn ls_json(services: Vec<Service>, tasks: &[Task]) -> Vec<ServiceRow> {
    let counts = running(tasks);
    by_name(services)
        .into_iter()
        .map(|service| ServiceRow {
            running: counts.get(service.id.as_str()).copied().unwrap_or(0),
            service,
        })
        .collect()
}

pub(super) fn ls_table(services: Vec<Service>, tasks: &[Task]) -> String {
    let counts = running(tasks);
    let rows: Vec<Vec<String>> = by_name(services)
        .into_iter()
        .map(|s| {
            let n = counts.get(s.id.as_str()).copied().unwrap_or(0);
            vec![
                s.id.clone(),
                s.name.clone(),
                s.image.clone(),
                format!("{n}/{}", s.replicas),
                ports(&s.ports),
            ]
        })
        .collect();
    table::render(&["ID", "NAME", "IMAGE", "REPLICAS", "PORTS"], &rows)
}

/// `80/tcp,8080->80/udp`: what each task publishes (no host port: the engine picks one).
fn ports(specs: &[PortSpec]) -> String {
    let parts: Vec<String> = specs
        .iter()
        .map(|p| match p.host_port {
            Some(host) => format!("{host}->{}/{}", p.container_port, p.protocol),
            None => format!("{}/{}", p.container_port, p.protocol),
        })
        .collect();
    parts.join(",")
}

/// The service's tasks by slot, newest first within a slot.
pub(super) fn tasks_of(tasks: Vec<Task>, service_id: &str) -> Vec<Task> {
    let mut mine: Vec<Task> = tasks
        .into_iter()
        .filter(|t| t.service_id == service_id)
        .collect();
    mine.sort_by(|a, b| {
        a.slot
            .cmp(&b.slot)
            .then(b.created_ms.cmp(&a.created_ms))
            .then(a.id.cmp(&b.id))
    });
    mine
}

fn node_of<'a>(task: &Task, nodes: &'a [Node]) -> Option<&'a Node> {
    let id = task.node_id.as_deref()?;
    nodes.iter().find(|n| n.id == id)
}

pub(super) fn ps_json(tasks: Vec<Task>, nodes: &[Node]) -> Vec<TaskRow> {
    tasks
        .into_iter()
        .map(|task| TaskRow {
            node_name: node_of(&task, nodes).map(|n| n.name.clone()),
            task,
        })
        .collect()
}

pub(super) fn ps_table(tasks: &[Task], nodes: &[Node]) -> String {
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let node = node_of(t, nodes);
            let node_name = match (node, &t.node_id) {
                (Some(n), _) => n.name.clone(),
                (None, Some(id)) => id.clone(),
                (None, None) => String::new(),
            };
            let container = t
                .container_id
                .as_deref()
                .map(|c| c.chars().take(12).collect())
                .unwrap_or_default();
            vec![
                t.id.clone(),
                t.slot.to_string(),
                node_name,
                t.desired_state.to_string(),
                state_text(t),
                container,
                addresses(t, node),
                t.message.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "TASK",
            "SLOT",
            "NODE",
            "DESIRED",
            "STATE",
            "CONTAINER",
            "ADDRESS",
            "MESSAGE",
        ],
        &rows,
    )
}

/// The task's state, with its container's health while it runs: `RUNNING (healthy)`.
fn state_text(task: &Task) -> String {
    match task.health {
        Some(h) if task.state == TaskState::Running => format!("{} ({})", task.state, h.as_str()),
        _ => task.state.to_string(),
    }
}

/// `IP:PORT,...` of the task's published ports, the IP being its node's advertised one.
fn addresses(task: &Task, node: Option<&Node>) -> String {
    let node_ip = node.map(|n| host_of(&n.addr));
    let parts: Vec<String> = task
        .ports
        .iter()
        .map(|p| {
            let ip = match &node_ip {
                Some(ip) if !ip.is_empty() => ip.as_str(),
                _ => p.host_ip.as_str(),
            };
            if ip.contains(':') {
                format!("[{ip}]:{}", p.host_port)
            } else {
                format!("{ip}:{}", p.host_port)
            }
        })
        .collect();
    parts.join(",")
}

/// The IP of an advertised address, which may carry a port (`127.0.0.2:7000`, `[::1]:7000`).
fn host_of(addr: &str) -> String {
    if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
        return sock.ip().to_string();
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return ip.to_string();
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host.to_string(),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{NodeStatus, Protocol, PublishedPort};

    fn service(id: &str, name: &str, replicas: u64) -> Service {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "shoal/whoami:latest", "replicas": replicas,
            "ports": [{"container_port": 80}, {"container_port": 53, "protocol": "udp", "host_port": 5353}],
        }))
        .unwrap()
    }

    fn task(id: &str, service: &str, slot: u64, created: u64, state: TaskState) -> Task {
        let mut t = Task::new(id.into(), service.into(), slot, created);
        t.state = state;
        t
    }

    fn node(id: &str, name: &str, addr: &str) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            addr: addr.into(),
            engine_addr: String::new(),
            labels: BTreeMap::new(),
            operator_labels: BTreeMap::new(),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: "27.0.1".into(),
            images: vec![],
            status: NodeStatus::Ready,
            availability: Default::default(),
            heartbeat_ms: 500,
            message: String::new(),
        }
    }
    #[test]
    fn ls_counts_running_tasks_meant_to_run() {
        let services = vec![service("s2", "web", 4), service("s1", "db", 1)];
        let mut stopping = task("t3", "s2", 3, 1, TaskState::Running);
        stopping.desired_state = TaskState::Shutdown;
        let tasks = vec![
            task("t1", "s2", 1, 1, TaskState::Running),
            task("t2", "s2", 2, 1, TaskState::Running),
            stopping,
            task("t4", "s2", 4, 1, TaskState::Pending),
        ];
        let text = ls_table(services.clone(), &tasks);
        assert_eq!(
            text,
            "ID  NAME  IMAGE                REPLICAS  PORTS\n\
             s1  db    shoal/whoami:latest  0/1       80/tcp,5353->53/udp\n\
             s2  web   shoal/whoami:latest  2/4       80/tcp,5353->53/udp"
        );
        let rows = ls_json(services, &tasks);
        let text = serde_json::to_string(&rows[0]).unwrap();
        assert!(text.starts_with(r#"{"id":"s1","name":"db","#), "{text}");
        assert!(text.ends_with(r#","running":0}"#), "{text}");
        let json = serde_json::to_value(rows).unwrap();
        assert_eq!(json[1]["name"], "web");
        assert_eq!(json[1]["running"], 2);
        assert_eq!(json[1]["replicas"], 4);
        assert_eq!(json[0]["running"], 0);
    }

    #[test]
    fn ps_sorts_by_slot_then_newest_and_shows_addresses() {
        let nodes = vec![
            node("n1", "node-1", "127.0.0.2"),
            node("n2", "node-2", "127.0.0.3:7000"),
        ];
        let mut old = task("t-old", "s1", 1, 10, TaskState::Failed);
        old.node_id = Some("n2".into());
        old.message = "exit code 1".into();
        let mut new = task("t-new", "s1", 1, 20, TaskState::Running);
        new.node_id = Some("n1".into());
        new.container_id = Some("0123456789abcdef0123".into());
        new.ports = vec![
            PublishedPort {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: "0.0.0.0".into(),
                host_port: 32768,
            },
            PublishedPort {
                container_port: 53,
                protocol: Protocol::Udp,
                host_ip: "0.0.0.0".into(),
                host_port: 5353,
            },
        ];
        let mut gone = task("t-gone", "s1", 2, 5, TaskState::Assigned);
        gone.node_id = Some("n9".into());
        gone.health = Some(crate::model::Health::Unhealthy);
        let pending = task("t-p", "s1", 3, 30, TaskState::Pending);
        let other = task("t-x", "s2", 1, 1, TaskState::Running);
        let tasks = tasks_of(vec![old, gone, pending, new, other], "s1");
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["t-new", "t-old", "t-gone", "t-p"]);

        let text = ps_table(&tasks, &nodes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "TASK    SLOT  NODE    DESIRED  STATE     CONTAINER     ADDRESS                         MESSAGE"
        );
        assert_eq!(
            lines[1],
            "t-new   1     node-1  RUNNING  RUNNING   0123456789ab  127.0.0.2:32768,127.0.0.2:5353  -"
        );
        assert_eq!(
            lines[2],
            "t-old   1     node-2  RUNNING  FAILED    -             -                               exit code 1"
        );
        assert!(
            lines[3].starts_with("t-gone  2     n9      RUNNING  ASSIGNED"),
            "{text}"
        );
        assert!(
            lines[4].starts_with("t-p     3     -       RUNNING  PENDING "),
            "{text}"
        );

        let json = serde_json::to_value(ps_json(tasks, &nodes)).unwrap();
        assert_eq!(json[0]["node_name"], "node-1");
        assert_eq!(json[0]["ports"][0]["host_port"], 32768);
        assert!(json[2]["node_name"].is_null());
        assert_eq!(json[1]["state"], "failed");
    }

    #[test]
    fn a_running_task_shows_its_health() {
        use crate::model::Health;
        let mut t = task("t", "s", 1, 1, TaskState::Running);
        assert_eq!(state_text(&t), "RUNNING");
        t.health = Some(Health::Healthy);
        assert_eq!(state_text(&t), "RUNNING (healthy)");
        t.health = Some(Health::Starting);
        assert_eq!(state_text(&t), "RUNNING (starting)");
        t.state = TaskState::Shutdown;
        t.health = Some(Health::Unhealthy);
        assert_eq!(state_text(&t), "SHUTDOWN", "the message says why it ended");
    }

    #[test]
    fn advertised_hosts_lose_their_port() {
        assert_eq!(host_of("127.0.0.2"), "127.0.0.2");
        assert_eq!(host_of("127.0.0.2:7000"), "127.0.0.2");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("docker-1:2375"), "docker-1");
        assert_eq!(host_of("docker-1"), "docker-1");
        let mut t = task("t", "s", 1, 1, TaskState::Running);
        t.ports.push(PublishedPort {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: "10.0.0.1".into(),
            host_port: 8080,
        });
        assert_eq!(
            addresses(&t, None),
            "10.0.0.1:8080",
            "no node: the engine's IP"
        );
        assert_eq!(addresses(&t, Some(&node("n", "n", "::1"))), "[::1]:8080");
    }
}
