//! Fixtures for the scheduler's unit tests: nodes `n1`, `n2`, … named `node-1`, … with 2 CPUs
//! and 4 GiB, services with one replica and no placement rules.

use std::collections::BTreeMap;

use crate::model::{Node, NodeStatus, Service, Task, TaskState};

use super::filter::Filter;
use super::view::{NodeInfo, Placed, Request};

pub(crate) fn node(n: u32, labels: &[(&str, &str)]) -> Node {
    Node {
        id: format!("n{n}"),
        name: format!("node-{n}"),
        addr: format!("127.0.0.{}:7000", n + 1),
        engine_addr: String::new(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cpus: 2,
        memory_bytes: 4 << 30,
        engine_version: "27.0.0".into(),
        // Every fixture service's image: the image filter passes unless a test removes one.
        images: [
            "api", "app", "big", "data", "db", "gone", "ok", "sidecar", "small", "tiny", "web",
        ]
        .iter()
        .map(|name| format!("{name}:latest"))
        .collect(),
        status: NodeStatus::Ready,
        availability: Default::default(),
        operator_labels: BTreeMap::new(),
        heartbeat_ms: 500,
        message: String::new(),
    }
}

pub(crate) fn service(name: &str) -> Service {
    Service {
        id: format!("svc-{name}"),
        name: name.into(),
        image: format!("{name}:latest"),
        cmd: vec![],
        env: vec![],
        labels: BTreeMap::new(),
        ports: vec![],
        replicas: 1,
        restart: Default::default(),
        constraints: vec![],
        affinities: vec![],
        reservations: Default::default(),
        reschedule_on_node_failure: false,
        links: vec![],
        volumes_from: vec![],
        network_mode: None,
        container: None,
        health: None,
        stop_grace_ms: None,
        version: 0,
        update_policy: Default::default(),
        update: None,
        previous: None,
        service_labels: Default::default(),
        created_ms: 0,
    }
}

/// Task `<service>.<slot>` of `svc`: PENDING without a node, else RUNNING on `node`.
pub(crate) fn task(svc: &Service, slot: u64, node: Option<&str>) -> Task {
    let mut t = Task::new(format!("{}.{slot}", svc.name), svc.id.clone(), slot, 0);
    t.state = if node.is_some() {
        TaskState::Running
    } else {
        TaskState::Pending
    };
    t.node_id = node.map(String::from);
    t
}

pub(crate) fn placed(svc: &Service, slot: u64) -> Placed<'_> {
    Placed::new(&task(svc, slot, Some("n1")), Some(svc))
}

pub(crate) fn request(svc: &Service) -> Request {
    Request::new(&task(svc, 1, None), svc).unwrap()
}

/// `node` with `tasks` counted as placed on it.
pub(crate) fn info<'a>(node: &'a Node, tasks: Vec<Placed<'a>>) -> NodeInfo<'a> {
    let mut info = NodeInfo::new(node);
    for t in &tasks {
        info.add(t);
    }
    info
}

pub(crate) fn broken(filter: &dyn Filter, req: &Request, node: &NodeInfo) -> Vec<String> {
    let mut broken = Vec::new();
    filter.check(req, node, &mut broken);
    broken
}
