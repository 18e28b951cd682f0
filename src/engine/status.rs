//! What Docker says about the engine and a container, reduced to what the agent reports: state with
//! exit code and OOM kill, health, owner labels, published host ports.

use std::collections::BTreeMap;

use bollard::models::{
    ContainerInspectResponse, ContainerStateStatusEnum, HealthStatusEnum, PortMap,
};

use super::spec::Owner;
use crate::model::{Health, Protocol, PublishedPort};

/// The engine an agent registers its node with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineInfo {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// `repo:tag` of every tagged image present, sorted.
    pub images: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited { exit_code: i64, oom_killed: bool },
    Dead,
}

impl ContainerState {
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            ContainerState::Running | ContainerState::Restarting | ContainerState::Paused
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    /// The image as the container was created with it (`shoal/whoami:latest`), not its digest.
    pub image: String,
    /// None when the container lacks one of the `shoal.task`/`shoal.service`/`shoal.node` labels.
    pub owner: Option<Owner>,
    pub labels: BTreeMap<String, String>,
    pub state: ContainerState,
    /// Docker's own complaint, e.g. why the process could not be started.
    pub error: Option<String>,
    pub restart_count: i64,
    /// The ports Docker published, as Docker bound them (an ephemeral host port resolved).
    pub ports: Vec<PublishedPort>,
    /// `State.Health.Status`; None when the container has no health check.
    pub health: Option<Health>,
    /// What the last failed health probe printed (or its exit code), for the task's message.
    pub health_output: Option<String>,
}

impl ContainerInfo {
    pub(crate) fn from_inspect(c: ContainerInspectResponse) -> ContainerInfo {
        let config = c.config.unwrap_or_default();
        let labels: BTreeMap<String, String> =
            config.labels.unwrap_or_default().into_iter().collect();
        let state = c.state.unwrap_or_default();
        let probe = state.health.clone().unwrap_or_default();
        let health = match probe.status {
            Some(HealthStatusEnum::STARTING) => Some(Health::Starting),
            Some(HealthStatusEnum::HEALTHY) => Some(Health::Healthy),
            Some(HealthStatusEnum::UNHEALTHY) => Some(Health::Unhealthy),
            _ => None,
        };
        let health_output = probe
            .log
            .unwrap_or_default()
            .into_iter()
            .rev()
            .find(|r| r.exit_code.is_some_and(|c| c != 0))
            .map(|r| {
                let out = r.output.unwrap_or_default();
                let out: String = out.split_whitespace().collect::<Vec<_>>().join(" ");
                match out.is_empty() {
                    true => format!("health check exit code {}", r.exit_code.unwrap_or(-1)),
                    false => out.chars().take(200).collect(),
                }
            });
        let exit_code = state.exit_code.unwrap_or_default();
        let oom_killed = state.oom_killed.unwrap_or_default();
        let status = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => ContainerState::Created,
            Some(ContainerStateStatusEnum::RUNNING) => ContainerState::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerState::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerState::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => ContainerState::Removing,
            Some(ContainerStateStatusEnum::DEAD) => ContainerState::Dead,
            // Newer engines' "stopping" still runs; an unknown state reads as what the flag says.
            Some(ContainerStateStatusEnum::STOPPING) => ContainerState::Running,
            Some(ContainerStateStatusEnum::EXITED) => ContainerState::Exited {
                exit_code,
                oom_killed,
            },
            _ if state.running == Some(true) => ContainerState::Running,
            _ => ContainerState::Exited {
                exit_code,
                oom_killed,
            },
        };
        ContainerInfo {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            owner: Owner::from_labels(&labels),
            labels,
            state: status,
            error: state.error.filter(|e| !e.is_empty()),
            restart_count: c.restart_count.unwrap_or_default(),
            ports: published(c.network_settings.and_then(|n| n.ports).unwrap_or_default()),
            health,
            health_output,
        }
    }

    /// The host port bound to `container_port`/tcp, if it is published.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.container_port == container_port && p.protocol == Protocol::Tcp)
            .map(|p| p.host_port)
    }
}

/// Docker lists a binding per address family (`0.0.0.0` and `::`) for one port; keep each port once,
/// preferring IPv4. Protocols shoal does not publish (sctp) are left out.
fn published(ports: PortMap) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = Vec::new();
    for (key, bindings) in ports {
        let (port, protocol) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let protocol = match protocol {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => continue,
        };
        let Ok(container_port) = port.parse() else {
            continue;
        };
        for b in bindings.unwrap_or_default() {
            let Some(host_port) = b.host_port.and_then(|p| p.parse().ok()) else {
                continue;
            };
            let host_ip = b.host_ip.unwrap_or_default();
            out.push(PublishedPort {
                container_port,
                protocol,
                host_ip,
                host_port,
            });
        }
    }
    out.sort_by_key(|p| {
        (
            p.container_port,
            p.protocol,
            p.host_port,
            p.host_ip.contains(':'),
        )
    });
    out.dedup_by_key(|p| (p.container_port, p.protocol, p.host_port));
    out
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
