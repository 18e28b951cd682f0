//! `/_ping`, `/version` and `/info`: the cluster as one engine, with classic Swarm's node list
//! in `SystemStatus` (`Nodes: N`, then each node's status, containers, reservations, labels).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::{json_response, DockerError};
use super::{Api, API_VERSION};
use crate::model::{NodeStatus, TaskState};

pub(crate) const SERVER_VERSION: &str = concat!("shoal/", env!("CARGO_PKG_VERSION"));
const MIN_API_VERSION: &str = "1.24";

pub(crate) fn ping(head: bool) -> Response {
    let mut response = if head {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::OK, "OK").into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert("Docker-Experimental", HeaderValue::from_static("false"));
    h.insert("Ostype", HeaderValue::from_static("linux"));
    // Every manager is a swarm manager to the docker CLI, which enables `docker service` and
    // `docker node` only then.
    h.insert("Swarm", HeaderValue::from_static("active/manager"));
    response
}

pub(crate) fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "Platform": {"Name": "shoal"},
            "Components": [{"Name": "Engine", "Version": SERVER_VERSION, "Details": {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux"}}],
            "Version": SERVER_VERSION,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "",
            "GoVersion": "",
            "Os": "linux",
            "Arch": std::env::consts::ARCH,
            "KernelVersion": "",
            "BuildTime": "",
        }),
    )
}

fn bytes(n: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", UNITS[unit])
    }
}

/// Swarm mode's view of the cluster: this manager controls it, every manager is one of its
/// managers, every agent's host one of its nodes (a worker).
async fn swarm(api: &Api, nodes: usize) -> Value {
    let store = &api.objects.store;
    let status = store.status().await;
    let managers: Vec<Value> = status
        .members
        .iter()
        .filter(|m| m.voter)
        .map(|m| json!({"NodeID": m.id.to_string(), "Addr": m.node.grpc}))
        .collect();
    let addr = status
        .members
        .iter()
        .find(|m| m.id == store.id())
        .map(|m| m.node.grpc.clone())
        .unwrap_or_default();
    let ns = |ms: u64| ms.saturating_mul(1_000_000);
    json!({
        "NodeID": "",
        "NodeAddr": addr,
        "LocalNodeState": "active",
        "ControlAvailable": true,
        "Error": "",
        "RemoteManagers": managers,
        "Nodes": nodes,
        "Managers": managers.len(),
        "Cluster": {
            "ID": store.cluster_id(),
            "Version": {"Index": store.revision()},
            "Spec": {
                "Name": "default",
                "Labels": {},
                "Orchestration": {},
                "Raft": {},
                "Dispatcher": {"HeartbeatPeriod": ns(crate::model::DEFAULT_HEARTBEAT_MS)},
                "CAConfig": {},
                "TaskDefaults": {},
                "EncryptionConfig": {"AutoLockManagers": false},
            },
            "TLSInfo": {},
            "RootRotationInProgress": false,
            "DataPathPort": 0,
            "DefaultAddrPool": [],
            "SubnetSize": 0,
        },
    })
}

pub(crate) async fn info(api: &Api) -> Result<Response, DockerError> {
    let view = api.objects.view().await?;
    let entries = view.entries();
    let running = entries.iter().filter(|e| e.running()).count();
    let mut status: Vec<Value> = vec![
        json!([
            "Role",
            if api.objects.store.leader() == Some(api.objects.store.id()) {
                "primary"
            } else {
                "replica"
            }
        ]),
        json!(["Strategy", "spread"]),
        json!([
            "Filters",
            "health, port, containerslots, dependency, affinity, constraint, image, resources"
        ]),
        json!(["Nodes", view.state.node_count().to_string()]),
    ];
    let (mut cpus, mut memory) = (0u64, 0u64);
    for n in view.state.nodes().map(|n| &n.value) {
        cpus += u64::from(n.cpus);
        memory += n.memory_bytes;
        let mine: Vec<_> = view
            .state
            .tasks_of_node(&n.id)
            .map(|t| &t.value)
            .filter(|t| !t.state.is_terminal())
            .collect();
        let (mut rcpu, mut rmem) = (0u64, 0u64);
        for t in &mine {
            if let Some(s) = view.state.service(&t.service_id) {
                rcpu += s.value.reservations.nano_cpus;
                rmem += s.value.reservations.memory_bytes;
            }
        }
        let labels: Vec<String> = n
            .all_labels()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let health = match n.status {
            NodeStatus::Ready => "Healthy",
            NodeStatus::Down => "Unhealthy",
        };
        status.push(json!([format!(" {}", n.name), n.engine_addr]));
        status.push(json!(["  └ ID", n.id]));
        status.push(json!(["  └ Status", health]));
        status.push(json!([
            "  └ Containers",
            format!(
                "{} ({} Running)",
                mine.len(),
                mine.iter()
                    .filter(|t| t.state == TaskState::Running)
                    .count()
            )
        ]));
        status.push(json!([
            "  └ Reserved CPUs",
            format!("{} / {}", rcpu as f64 / 1e9, n.cpus)
        ]));
        status.push(json!([
            "  └ Reserved Memory",
            format!("{} / {}", bytes(rmem), bytes(n.memory_bytes))
        ]));
        status.push(json!(["  └ Labels", labels.join(", ")]));
        status.push(json!(["  └ ServerVersion", n.engine_version]));
    }
    let doc = json!({
        "ID": api.objects.store.cluster_id(),
        "Containers": entries.len(),
        "ContainersRunning": running,
        "ContainersPaused": 0,
        "ContainersStopped": entries.len() - running,
        "Images": 0,
        "Driver": "",
        "SystemStatus": status,
        "Plugins": {"Volume": [], "Network": ["bridge"], "Authorization": null, "Log": []},
        "MemoryLimit": true,
        "SwapLimit": false,
        "CpuCfsPeriod": true,
        "CpuCfsQuota": true,
        "IPv4Forwarding": true,
        "Debug": false,
        "NFd": 0,
        "NGoroutines": 0,
    });
    let more = json!({
        "SystemTime": super::containers::rfc3339_ms(crate::host::now_ms()),
        "LoggingDriver": "",
        "CgroupDriver": "",
        "NEventsListener": 0,
        "KernelVersion": "",
        "OperatingSystem": "shoal cluster",
        "OSType": "linux",
        "Architecture": std::env::consts::ARCH,
        "IndexServerAddress": "",
        "RegistryConfig": null,
        "NCPU": cpus,
        "MemTotal": memory,
        "DockerRootDir": "",
        "Name": crate::host::host_name(),
        "Labels": [],
        "ExperimentalBuild": false,
        "ServerVersion": SERVER_VERSION,
        "Runtimes": {},
        "DefaultRuntime": "",
        "Swarm": swarm(api, view.state.node_count()).await,
        "LiveRestoreEnabled": false,
        "Isolation": "",
        "InitBinary": "",
        "SecurityOptions": [],
        "Warnings": [],
    });
    let mut doc = doc;
    if let (Value::Object(doc), Value::Object(more)) = (&mut doc, more) {
        doc.extend(more);
    }
    Ok(json_response(StatusCode::OK, &doc))
}
