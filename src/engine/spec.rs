//! What shoal asks Docker to run: a `ContainerSpec` and its translation into Docker's create body.
//! The only place that decides which labels and environment every shoal container carries.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use bollard::models::{ContainerCreateBody, HealthConfig, HostConfig, PortBinding};

use super::error::RuntimeError;
use super::restart;
use crate::model::{HealthCheck, PortSpec, RestartPolicy};

pub(crate) const TASK_LABEL: &str = "shoal.task";
pub(crate) const SERVICE_LABEL: &str = "shoal.service";
pub(crate) const NODE_LABEL: &str = "shoal.node";
/// On the networks an agent creates for cluster containers (`<project>_default`...).
pub(crate) const NETWORK_LABEL: &str = "shoal.network";

/// The task a container runs for. Written on the container as labels (so an agent can reconcile after a
/// restart) and into its environment as `SHOAL_TASK`, `SHOAL_SERVICE`, `SHOAL_NODE`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    pub task: String,
    pub service: String,
    pub node: String,
}

impl Owner {
    /// The owner recorded on a container, if it carries all three labels.
    pub(crate) fn from_labels(labels: &BTreeMap<String, String>) -> Option<Owner> {
        Some(Owner {
            task: labels.get(TASK_LABEL)?.clone(),
            service: labels.get(SERVICE_LABEL)?.clone(),
            node: labels.get(NODE_LABEL)?.clone(),
        })
    }
}

impl Owner {
    /// (label, environment variable, value) for each of the owner's three ids.
    fn pairs(&self) -> [(&'static str, &'static str, &str); 3] {
        [
            (TASK_LABEL, "SHOAL_TASK", &self.task),
            (SERVICE_LABEL, "SHOAL_SERVICE", &self.service),
            (NODE_LABEL, "SHOAL_NODE", &self.node),
        ]
    }
}

/// Whether `name` is a network the client defined (not Docker's built-in modes).
fn is_user_network(name: &str) -> bool {
    !matches!(name, "" | "default" | "bridge" | "host" | "none") && !name.starts_with("container:")
}

/// One container to create and start. `cmd` empty keeps the image's default command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub owner: Owner,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// Published ports, as a service has them (no host port: an ephemeral one), bound to
    /// `host_ip`.
    pub ports: Vec<PortSpec>,
    pub restart: RestartPolicy,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// The health check, over the image's own (None: the image's, if any).
    pub health: Option<HealthCheck>,
    /// A plain container's Docker create body, as its client sent it: the container is created
    /// from it (command, volumes, networks, restart policy...) with shoal's labels and
    /// environment added and its published ports bound to the node's address; `cmd`, `ports`,
    /// `restart` and the limits above are then ignored.
    pub base: Option<serde_json::Value>,
    /// A network alias on every user-defined network (the container's cluster name, so that
    /// other containers resolve it as with Docker).
    pub alias: Option<String>,
    /// Where the published ports are bound: the node's address (agents sharing one engine each
    /// pass their own 127.0.0.x); None: every address. Of `base`'s ports, only those its client
    /// left unbound.
    pub host_ip: Option<IpAddr>,
}

impl ContainerSpec {
    pub fn new(name: impl Into<String>, image: impl Into<String>, owner: Owner) -> ContainerSpec {
        ContainerSpec {
            name: name.into(),
            image: image.into(),
            owner,
            cmd: Vec::new(),
            env: Vec::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            restart: RestartPolicy::No,
            memory_bytes: None,
            nano_cpus: None,
            health: None,
            base: None,
            alias: None,
            host_ip: None,
        }
    }

    /// Docker's create body. Rejects what Docker would misread: reserved `shoal.` labels, malformed
    /// environment names, empty names.
    pub(crate) fn to_create_body(&self) -> Result<ContainerCreateBody, RuntimeError> {
        self.validate()?;
        if let Some(base) = &self.base {
            return self.body_from_base(base);
        }
        let owner = self.owner.pairs();
        let mut labels: HashMap<String, String> = self.labels.clone().into_iter().collect();
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for (label, var, value) in owner {
            labels.insert(label.to_string(), value.to_string());
            env.push(format!("{var}={value}"));
        }
        let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &self.ports {
            // No host port (or 0) lets Docker pick a free one.
            let binding = PortBinding {
                host_ip: self.host_ip.map(|ip| ip.to_string()),
                host_port: p.host_port.filter(|&n| n != 0).map(|n| n.to_string()),
            };
            let key = format!("{}/{}", p.container_port, p.protocol);
            bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_default()
                .push(binding);
        }
        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: (!self.cmd.is_empty()).then(|| self.cmd.clone()),
            env: Some(env),
            labels: Some(labels),
            exposed_ports: Some(bindings.keys().cloned().collect()),
            healthcheck: self.health.as_ref().map(health_config),
            host_config: Some(HostConfig {
                port_bindings: Some(bindings),
                restart_policy: Some(restart::to_docker(self.restart)),
                memory: self.memory_bytes,
                nano_cpus: self.nano_cpus,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// The client's create body with shoal's labels and environment, ports bound to the node's
    /// address where the client left the address open, and the alias on user networks.
    fn body_from_base(
        &self,
        base: &serde_json::Value,
    ) -> Result<ContainerCreateBody, RuntimeError> {
        let mut body: ContainerCreateBody = serde_json::from_value(base.clone()).map_err(|e| {
            RuntimeError::InvalidSpec(format!("container {}: create body: {e}", self.name))
        })?;
        body.image = Some(self.image.clone());
        let labels = body.labels.get_or_insert_default();
        let env = body.env.get_or_insert_default();
        for (key, value) in &self.labels {
            labels.insert(key.clone(), value.clone());
        }
        for (label, var, value) in self.owner.pairs() {
            labels.insert(label.to_string(), value.to_string());
            env.push(format!("{var}={value}"));
        }
        let host = body.host_config.get_or_insert_default();
        if let (Some(ip), Some(bindings)) = (self.host_ip, host.port_bindings.as_mut()) {
            for binding in bindings.values_mut().flatten().flatten() {
                if binding.host_ip.as_deref().is_none_or(str::is_empty) {
                    binding.host_ip = Some(ip.to_string());
                }
            }
        }
        if let (Some(alias), Some(networks)) = (
            &self.alias,
            body.networking_config
                .as_mut()
                .and_then(|n| n.endpoints_config.as_mut()),
        ) {
            for (name, endpoint) in networks.iter_mut() {
                let aliases = endpoint.aliases.get_or_insert_default();
                if is_user_network(name) && !aliases.contains(alias) {
                    aliases.push(alias.clone());
                }
            }
        }
        Ok(body)
    }

    /// User-defined networks the container joins: they must exist on the engine first.
    pub(crate) fn user_networks(body: &ContainerCreateBody) -> Vec<String> {
        let mode = body
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone());
        let endpoints = body
            .networking_config
            .as_ref()
            .and_then(|n| n.endpoints_config.as_ref())
            .map(|e| e.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        let mut names: Vec<String> = mode
            .into_iter()
            .chain(endpoints)
            .filter(|n| is_user_network(n))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        if let Some(Err(e)) = self.health.as_ref().map(HealthCheck::validate) {
            return Err(RuntimeError::InvalidSpec(format!(
                "container {}: {e}",
                self.name
            )));
        }
        let invalid = |what: String| {
            Err(RuntimeError::InvalidSpec(format!(
                "container {}: {what}",
                self.name
            )))
        };
        if self.name.is_empty() || self.image.is_empty() {
            return invalid("a container needs a name and an image".to_string());
        }
        if let Some(label) = self
            .labels
            .keys()
            .find(|k| k.starts_with("shoal.") && !crate::model::UPDATE_LABELS.contains(&k.as_str()))
        {
            return invalid(format!("label {label} is reserved for shoal"));
        }
        if let Some((key, _)) = self
            .env
            .iter()
            .find(|(k, _)| k.is_empty() || k.contains('='))
        {
            return invalid(format!(
                "environment variable name {key:?} is empty or contains '='"
            ));
        }
        Ok(())
    }
}

/// Docker's `HealthConfig`: zero fields keep the image's setting.
fn health_config(check: &HealthCheck) -> HealthConfig {
    let ns = |ms: u64| i64::try_from(ms.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    HealthConfig {
        test: (!check.test.is_empty()).then(|| check.test.clone()),
        interval: Some(ns(check.interval_ms)),
        timeout: Some(ns(check.timeout_ms)),
        start_period: Some(ns(check.start_period_ms)),
        retries: Some(i64::from(check.retries)),
        start_interval: None,
    }
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
