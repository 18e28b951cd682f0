//! The proxy model from one read of the cluster: each RUNNING task (meant to run, healthy or
//! without a health check, on a READY node) of a service with `interlock.hostname` becomes an upstream server of its host, at its
//! node's address and the host port published for `interlock.port` (else its first published
//! port). During an update, a task still on the previous spec is routed by that spec's labels.
//! Deterministic: the same objects give the same model, whoever computes it.

use std::collections::BTreeMap;

use crate::model::{Node, NodeStatus, ProxyHost, ProxyModel, Service, Task, Upstream};

use super::{labels, safe};

pub fn build(nodes: &[&Node], services: &[&Service], tasks: &[&Task]) -> ProxyModel {
    let nodes: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), *n)).collect();
    let mut services: Vec<&Service> = services.to_vec();
    services.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    let mut by_service: BTreeMap<&str, Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        // A task asked to stop leaves at once, before its agent stops it (the drain delay).
        if t.serves() {
            by_service.entry(t.service_id.as_str()).or_default().push(t);
        }
    }
    let mut hosts: BTreeMap<String, ProxyHost> = BTreeMap::new();
    let mut errors = Vec::new();
    for (service, spec) in services.iter().flat_map(|s| specs(s)) {
        let (template, port) = match labels::host_of(&spec.labels) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                errors.push(format!("service {}: {e}", service.name));
                continue;
            }
        };
        // The first service (by name) of a host sets its options; later ones add servers.
        let host = hosts
            .entry(template.name.clone())
            .or_insert_with(|| template.clone());
        let of_spec = by_service
            .get(service.id.as_str())
            .into_iter()
            .flatten()
            .filter(|t| {
                service.spec_for(t.spec_version).unwrap_or(service).version == spec.version
            });
        for task in of_spec {
            let Some(node) = task
                .node_id
                .as_deref()
                .and_then(|id| nodes.get(id))
                .filter(|n| n.status == NodeStatus::Ready)
            else {
                continue;
            };
            let published = match port {
                Some(p) => task.ports.iter().find(|pp| pp.container_port == p),
                None => task.ports.first(),
            };
            let Some(published) = published else {
                let what = port.map_or("any port".to_string(), |p| format!("port {p}"));
                let e = format!(
                    "service {}: task {} publishes no host port for {what}",
                    service.name, task.id
                );
                if !errors.contains(&e) {
                    errors.push(e);
                }
                continue;
            };
            let ip = match published.host_ip.as_str() {
                "" | "0.0.0.0" | "::" => node_host(&node.addr),
                ip => ip,
            };
            // Registration and status reports are checked, but the config is only ever written
            // from values that cannot change its structure.
            let Some(addr) = safe::upstream_addr(ip, published.host_port) else {
                let e = format!(
                    "service {}: task {} on node {}: {ip:?} port {} is not an IP or DNS name and port",
                    service.name, task.id, node.name, published.host_port
                );
                errors.push(e);
                continue;
            };
            let upstream = Upstream {
                addr,
                task_id: task.id.clone(),
                node: node.name.clone(),
            };
            if let Err(e) = safe::check_upstream(&upstream) {
                errors.push(format!("service {}: {e}", service.name));
                continue;
            }
            host.upstreams.push(upstream);
        }
    }
    let mut hosts: Vec<ProxyHost> = hosts.into_values().collect();
    for host in &mut hosts {
        host.upstreams.sort();
        host.upstreams.dedup_by(|a, b| a.addr == b.addr);
    }
    // One line each, whatever a name in them holds (an operator's template may print them).
    for e in &mut errors {
        e.retain(|c| !c.is_control());
    }
    ProxyModel { hosts, errors }
}

/// A service with each spec its tasks may run: its own, and during an update the previous one,
/// whose labels route the tasks not yet updated (a task whose version is gone runs the current).
fn specs(service: &Service) -> impl Iterator<Item = (&Service, &Service)> {
    std::iter::once(service)
        .chain(service.previous.as_deref())
        .map(move |spec| (service, spec))
}

/// The host of a node address that may carry a port (`10.0.0.1`, `10.0.0.1:7946`,
/// `[fe80::1]:7946`, `node-1:7946`).
fn node_host(addr: &str) -> &str {
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return addr;
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host),
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Health, Protocol, PublishedPort, TaskState};

    fn node(id: &str, status: NodeStatus) -> Node {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("node-{id}"), "addr": format!("127.0.0.{}", id.len() + 1),
            "cpus": 1, "memory_bytes": 1, "status": status,
        }))
        .unwrap()
    }

    fn service(id: &str, name: &str, labels: &[(&str, &str)]) -> Service {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "image": "i", "replicas": 1, "labels": labels,
        }))
        .unwrap()
    }

    fn task(id: &str, service: &str, node: &str, state: TaskState, ports: &[(u16, u16)]) -> Task {
        let mut t = Task::new(id.into(), service.into(), 1, 0);
        t.node_id = Some(node.into());
        t.state = state;
        t.ports = ports
            .iter()
            .map(|&(container_port, host_port)| PublishedPort {
                container_port,
                protocol: Protocol::Tcp,
                host_ip: "127.0.0.9".into(),
                host_port,
            })
            .collect();
        t
    }

    #[test]
    fn running_tasks_on_ready_nodes_are_the_servers() {
        let nodes = [node("a", NodeStatus::Ready), node("bb", NodeStatus::Down)];
        let web = service(
            "s1",
            "web",
            &[
                ("interlock.hostname", "test"),
                ("interlock.domain", "local"),
            ],
        );
        let plain = service("s2", "plain", &[]);
        let tasks = [
            task("t1", "s1", "a", TaskState::Running, &[(80, 32001)]),
            task("t2", "s1", "a", TaskState::Starting, &[]),
            task("t3", "s1", "bb", TaskState::Running, &[(80, 32003)]),
            task("t4", "s1", "a", TaskState::Failed, &[(80, 32004)]),
            task("t5", "s2", "a", TaskState::Running, &[(80, 32005)]),
        ];
        let m = build(
            &nodes.iter().collect::<Vec<_>>(),
            &[&web, &plain],
            &tasks.iter().collect::<Vec<_>>(),
        );
        assert_eq!(m.errors, Vec::<String>::new());
        assert_eq!(m.hosts.len(), 1);
        assert_eq!(m.hosts[0].name, "test.local");
        assert_eq!(
            m.hosts[0].upstreams,
            vec![Upstream {
                addr: "127.0.0.9:32001".into(),
                task_id: "t1".into(),
                node: "node-a".into()
            }]
        );
    }

    #[test]
    fn only_healthy_running_tasks_meant_to_run_are_servers() {
        let nodes = [node("a", NodeStatus::Ready)];
        let web = service("s1", "web", &[("interlock.hostname", "test")]);
        let with = |id: &str, port: u16, health: Option<Health>| {
            let mut t = task(id, "s1", "a", TaskState::Running, &[(80, port)]);
            t.health = health;
            t
        };
        let mut stopping = with("t5", 5, Some(Health::Healthy));
        stopping.desired_state = TaskState::Shutdown;
        let tasks = [
            with("t1", 1, None),
            with("t2", 2, Some(Health::Starting)),
            with("t3", 3, Some(Health::Healthy)),
            with("t4", 4, Some(Health::Unhealthy)),
            stopping,
            task("t6", "s1", "a", TaskState::Starting, &[(80, 6)]),
        ];
        let m = build(
            &nodes.iter().collect::<Vec<_>>(),
            &[&web],
            &tasks.iter().collect::<Vec<_>>(),
        );
        let servers: Vec<&str> = m.hosts[0]
            .upstreams
            .iter()
            .map(|u| u.task_id.as_str())
            .collect();
        assert_eq!(servers, ["t1", "t3"]);
    }

    #[test]
    fn interlock_port_picks_the_published_port_and_bad_labels_are_reported() {
        let nodes = [node("a", NodeStatus::Ready)];
        let api = service(
            "s1",
            "api",
            &[("interlock.hostname", "api"), ("interlock.port", "8080")],
        );
        let bad = service(
            "s2",
            "bad",
            &[("interlock.hostname", "b"), ("interlock.port", "x")],
        );
        let tasks = [task(
            "t1",
            "s1",
            "a",
            TaskState::Running,
            &[(80, 1), (8080, 2)],
        )];
        let m = build(
            &nodes.iter().collect::<Vec<_>>(),
            &[&api, &bad],
            &tasks.iter().collect::<Vec<_>>(),
        );
        assert_eq!(m.hosts[0].upstreams[0].addr, "127.0.0.9:2");
        assert_eq!(m.errors.len(), 1);
        assert!(m.errors[0].starts_with("service bad: label interlock.port=\"x\""));
    }

    #[test]
    fn during_an_update_tasks_on_the_previous_spec_are_routed_by_its_labels() {
        let nodes = [node("a", NodeStatus::Ready)];
        let v1 = service(
            "s1",
            "api",
            &[("interlock.hostname", "api"), ("interlock.port", "80")],
        );
        let mut v2 = service(
            "s1",
            "api",
            &[("interlock.hostname", "api"), ("interlock.port", "8080")],
        );
        v2 = v1.updated_to(v2, 1);
        let old = task("old", "s1", "a", TaskState::Running, &[(80, 1)]);
        let mut new = task("new", "s1", "a", TaskState::Running, &[(8080, 2)]);
        new.spec_version = v2.version;
        let m = build(&nodes.iter().collect::<Vec<_>>(), &[&v2], &[&old, &new]);
        assert_eq!(m.errors, Vec::<String>::new());
        let servers: Vec<(&str, &str)> = m.hosts[0]
            .upstreams
            .iter()
            .map(|u| (u.task_id.as_str(), u.addr.as_str()))
            .collect();
        assert_eq!(servers, [("old", "127.0.0.9:1"), ("new", "127.0.0.9:2")]);
    }
}
