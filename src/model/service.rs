//! A service: the desired state the orchestrator keeps (image, replicas, restart policy) and the
//! placement rules the scheduler applies to each of its tasks.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::container::Container;
use super::error::ModelError;
use super::health::HealthCheck;
use super::port::{PortSpec, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "snake_case")]
pub enum RestartPolicy {
    #[default]
    Always,
    /// Restart after a non-zero exit, at most `max` times (None: without limit).
    OnFailure {
        max: Option<u32>,
    },
    No,
}

impl FromStr for RestartPolicy {
    type Err = ModelError;

    /// Docker's spelling: `always`, `on-failure`, `on-failure:3`, `no`.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::RestartPolicy(s.to_string());
        match s.split_once(':') {
            None if s == "always" => Ok(Self::Always),
            None if s == "no" => Ok(Self::No),
            None if s == "on-failure" => Ok(Self::OnFailure { max: None }),
            Some(("on-failure", max)) => Ok(Self::OnFailure {
                max: Some(max.parse().map_err(|_| bad())?),
            }),
            _ => Err(bad()),
        }
    }
}

/// What each task reserves on its node; the scheduler never overcommits reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reservations {
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `K=V` entries, without the classic Swarm `constraint:`/`affinity:` ones (see `Placement`).
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ports: Vec<PortSpec>,
    pub replicas: u64,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Classic Swarm expressions (`storage==ssd`, `node!=node-2`, soft `==~`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Classic Swarm affinities to other tasks (`container==web`, `image==redis`, `label==~x`).
    #[serde(default)]
    pub affinities: Vec<String>,
    #[serde(default)]
    pub reservations: Reservations,
    /// Classic Swarm's `reschedule:on-node-failure` for plain containers; services always are.
    #[serde(default)]
    pub reschedule_on_node_failure: bool,
    /// Tasks that must share the node: `--link NAME[:ALIAS]`.
    #[serde(default)]
    pub links: Vec<String>,
    /// `--volumes-from NAME[:ro|rw]`.
    #[serde(default)]
    pub volumes_from: Vec<String>,
    /// `--net`; `container:NAME` makes NAME a dependency.
    #[serde(default)]
    pub network_mode: Option<String>,
    /// Set for a plain container created through the Docker API (`docker run`, compose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// `--health-*`: the check its containers run (None: the image's own `HEALTHCHECK`, if
    /// any). A plain container's is in its create body instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// `--stop-grace`: how long a task that may be in a proxy config keeps running after it
    /// was asked to stop, so that the proxies drop it first (None: `DEFAULT_STOP_GRACE_MS` for
    /// a service the proxy routes to, 0 for others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_ms: Option<u64>,
}

/// The drain delay of a routed service's tasks unless `--stop-grace` says otherwise: long
/// enough for the leader to write the config and every proxy to validate and reload it.
pub const DEFAULT_STOP_GRACE_MS: u64 = 3_000;

impl Service {
    /// Whether this is a plain container rather than a replicated service.
    pub fn is_container(&self) -> bool {
        self.container.is_some()
    }

    /// Whether the orchestrator replaces its tasks when their node goes DOWN: services always,
    /// plain containers only with classic Swarm's `reschedule:on-node-failure`.
    pub fn reschedules(&self) -> bool {
        !self.is_container() || self.reschedule_on_node_failure
    }

    /// The `start_seq` new tasks get (0 for services).
    pub fn start_seq(&self) -> u64 {
        self.container.as_ref().map_or(0, |c| c.start_seq)
    }

    /// Names of the containers each task of this service must be co-located with.
    pub fn dependencies(&self) -> Vec<&str> {
        let links = self.links.iter().map(|l| l.split(':').next().unwrap_or(l));
        let volumes = self
            .volumes_from
            .iter()
            .map(|v| v.split(':').next().unwrap_or(v));
        let net = self
            .network_mode
            .iter()
            .filter_map(|n| n.strip_prefix("container:"));
        links
            .chain(volumes)
            .chain(net)
            .filter(|n| !n.is_empty())
            .collect()
    }

    /// Host ports each task needs for itself (ephemeral ones excluded).
    pub fn host_ports(&self) -> impl Iterator<Item = (u16, Protocol)> + '_ {
        self.ports
            .iter()
            .filter_map(|p| p.host_port.map(|h| (h, p.protocol)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web() -> Service {
        Service {
            id: "s1".into(),
            name: "web".into(),
            image: "shoal/whoami:latest".into(),
            cmd: vec![],
            env: vec!["A=1".into()],
            labels: BTreeMap::from([("interlock.hostname".into(), "test".into())]),
            ports: vec![PortSpec {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_port: Some(8080),
            }],
            replicas: 4,
            restart: RestartPolicy::OnFailure { max: Some(3) },
            constraints: vec!["storage==ssd".into()],
            affinities: vec![],
            reservations: Reservations::default(),
            reschedule_on_node_failure: false,
            links: vec!["db:database".into()],
            volumes_from: vec!["data:ro".into()],
            network_mode: Some("container:vpn".into()),
            container: None,
            health: None,
            stop_grace_ms: Some(1_500),
        }
    }

    #[test]
    fn json_round_trip() {
        let svc = web();
        let json = serde_json::to_value(&svc).unwrap();
        assert_eq!(json["restart"]["policy"], "on_failure");
        assert_eq!(json["restart"]["max"], 3);
        assert_eq!(json["ports"][0]["protocol"], "tcp");
        let back: Service = serde_json::from_value(json).unwrap();
        assert_eq!(back, svc);
        let minimal: Service =
            serde_json::from_str(r#"{"id":"s","name":"n","image":"i","replicas":1}"#).unwrap();
        assert_eq!(minimal.restart, RestartPolicy::Always);
    }

    #[test]
    fn restart_policy_parses_docker_spelling() {
        assert_eq!("always".parse(), Ok(RestartPolicy::Always));
        assert_eq!("no".parse(), Ok(RestartPolicy::No));
        assert_eq!(
            "on-failure:5".parse(),
            Ok(RestartPolicy::OnFailure { max: Some(5) })
        );
        let err = "sometimes".parse::<RestartPolicy>().unwrap_err();
        assert!(err.to_string().contains("\"sometimes\""), "{err}");
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn dependencies_and_host_ports() {
        let svc = web();
        assert_eq!(svc.dependencies(), vec!["db", "data", "vpn"]);
        assert_eq!(
            svc.host_ports().collect::<Vec<_>>(),
            vec![(8080, Protocol::Tcp)]
        );
    }
}
