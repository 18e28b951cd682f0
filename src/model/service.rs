//! A service: the desired state the orchestrator keeps (image, replicas, restart policy) and the
//! placement rules the scheduler applies to each of its tasks.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::container::Container;
use super::error::ModelError;
use super::health::HealthCheck;
use super::port::{PortSpec, Protocol};
use super::update::{UpdatePolicy, UpdateState, UpdateStatus};

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
    /// The version of what its tasks run: a new one at each `service update` that changes it
    /// (a scale does not). Each task records the version it was created from.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u64,
    /// `--update-*`: how an update replaces its tasks.
    #[serde(default, skip_serializing_if = "UpdatePolicy::is_default")]
    pub update_policy: UpdatePolicy,
    /// Where its latest update stands (None: never updated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateStatus>,
    /// The spec before the latest update, with its version: what the tasks not yet updated
    /// still run, and what `service rollback` returns to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Service>>,
    /// Swarm mode's service labels (`docker service create --label`): on the service only,
    /// never on its containers (those are `labels`); changing them replaces no task.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_labels: BTreeMap<String, String>,
    /// Milliseconds since the epoch when it was created, from the creating client's or
    /// manager's clock (0: created before it was recorded).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created_ms: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Docker's container-name syntax, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: service names end up in keys
/// and in container names (`web.3`).
pub fn check_service_name(name: &str) -> Result<(), ModelError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err(ModelError::Invalid {
            what: "service name",
            value: name.to_string(),
            reason: "expected letters, digits, '_', '.' and '-', starting with a letter or a digit"
                .into(),
        })
    }
}

/// An image reference: not empty, no white space.
pub fn check_image(image: &str) -> Result<(), ModelError> {
    if image.trim().is_empty() || image.contains(char::is_whitespace) {
        return Err(ModelError::Invalid {
            what: "image",
            value: image.to_string(),
            reason: "expected an image reference such as nginx:latest".into(),
        });
    }
    Ok(())
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

    /// Whether a client's `stop` of this container was answered while it may still run: a
    /// container with a handover policy handing over, or stopping after that. The Docker API
    /// shows it stopped (the client was told so); the cluster still drains it.
    pub fn stop_answered(&self) -> bool {
        self.container.as_ref().is_some_and(|c| {
            c.handover_policy.is_some() && (c.handover.is_some() || self.replicas == 0)
        })
    }

    /// Whether this plain container is the one compose created in place of `old`, a container
    /// handing over (`Container::handover`): another container of the same compose project,
    /// service and number, not handing over itself.
    pub fn succeeds(&self, old: &Service) -> bool {
        let label = |s: &Service, key: &str| s.labels.get(key).cloned();
        let same = |key: &str| label(self, key).is_some() && label(self, key) == label(old, key);
        self.id != old.id
            && self
                .container
                .as_ref()
                .is_some_and(|c| c.handover.is_none())
            && old.is_container()
            && [
                super::COMPOSE_PROJECT,
                super::COMPOSE_SERVICE,
                super::COMPOSE_NUMBER,
            ]
            .into_iter()
            .all(same)
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

    /// The spec a task created from `version` runs: this one, or the previous one while the
    /// service keeps it (None: replaced twice since).
    pub fn spec_for(&self, version: u64) -> Option<&Service> {
        if version == self.version {
            return Some(self);
        }
        self.previous.as_deref().filter(|p| p.version == version)
    }

    /// Whether `other` runs its tasks as this does: everything but the replica count, the
    /// update policy and the update's bookkeeping is the same.
    pub fn same_spec(&self, other: &Service) -> bool {
        self.bare_spec() == other.bare_spec()
    }

    fn bare_spec(&self) -> Service {
        Service {
            replicas: 0,
            version: 0,
            update_policy: UpdatePolicy::default(),
            update: None,
            previous: None,
            service_labels: BTreeMap::new(),
            created_ms: 0,
            ..self.clone()
        }
    }

    /// This service edited into `next` (a replica count, a policy, a new spec): a new spec, or
    /// `force`, starts an update at `now_ms` (0: the leader stamps it); anything else is
    /// written as is.
    pub fn edited(&self, next: Service, force: bool, now_ms: u64) -> Service {
        match force || !next.same_spec(self) {
            true => self.updated_to(next, now_ms),
            false => next,
        }
    }

    /// This spec as a later one's `previous`.
    fn as_previous(&self) -> Service {
        Service {
            update: None,
            previous: None,
            ..self.clone()
        }
    }

    /// This service moved to `next`'s spec (`next` is this service edited): a new version, this
    /// spec kept as the previous one, and an update started at `now_ms`.
    pub fn updated_to(&self, next: Service, now_ms: u64) -> Service {
        let newest = self.previous.as_ref().map_or(0, |p| p.version);
        Service {
            version: self.version.max(newest) + 1,
            previous: Some(Box::new(self.as_previous())),
            update: Some(UpdateStatus {
                state: UpdateState::Updating,
                started_ms: now_ms,
                completed_ms: None,
                message: String::new(),
            }),
            ..next
        }
    }

    /// This service back on its previous spec and version, with its current replica count and
    /// update policy, the current spec becoming the previous one; None if it has none.
    pub fn rolled_back(&self, now_ms: u64, message: String) -> Option<Service> {
        let previous = self.previous.as_deref()?;
        Some(Service {
            replicas: self.replicas,
            update_policy: self.update_policy,
            previous: Some(Box::new(self.as_previous())),
            update: Some(UpdateStatus {
                state: UpdateState::RollbackStarted,
                started_ms: now_ms,
                completed_ms: None,
                message,
            }),
            ..previous.clone()
        })
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
            version: 0,
            update_policy: UpdatePolicy::default(),
            update: None,
            previous: None,
            service_labels: BTreeMap::new(),
            created_ms: 0,
        }
    }

    #[test]
    fn an_update_keeps_the_spec_it_replaces_and_a_rollback_swaps_them() {
        let v0 = web();
        let mut edited = v0.clone();
        edited.image = "shoal/whoami:v2".into();
        assert!(!edited.same_spec(&v0));
        let v1 = v0.updated_to(edited, 100);
        assert_eq!(v1.version, 1);
        assert_eq!(v1.update.as_ref().unwrap().state, UpdateState::Updating);
        assert_eq!(v1.spec_for(1).unwrap().image, "shoal/whoami:v2");
        assert_eq!(v1.spec_for(0).unwrap().image, "shoal/whoami:latest");
        assert!(v1.spec_for(7).is_none());
        // A scale is not a new spec.
        let mut scaled = v1.clone();
        scaled.replicas = 9;
        assert!(scaled.same_spec(&v1));

        let back = scaled.rolled_back(200, "manual".into()).unwrap();
        assert_eq!(
            (back.version, back.image.as_str()),
            (0, "shoal/whoami:latest")
        );
        assert_eq!(back.replicas, 9, "a rollback keeps the replica count");
        assert_eq!(
            back.update.as_ref().unwrap().state,
            UpdateState::RollbackStarted
        );
        assert_eq!(back.spec_for(1).unwrap().image, "shoal/whoami:v2");
        assert!(back.previous.as_ref().unwrap().previous.is_none());
        // The next update gets a version never used before.
        let mut edited = back.clone();
        edited.image = "shoal/whoami:v3".into();
        let v2 = back.updated_to(edited, 300);
        assert_eq!(v2.version, 2);
        assert_eq!(v2.spec_for(0).unwrap().image, "shoal/whoami:latest");
        assert!(web().rolled_back(1, String::new()).is_none());
    }

    #[test]
    fn an_edit_is_an_update_only_for_a_new_spec_or_when_forced() {
        let v0 = web();
        let mut scaled = v0.clone();
        scaled.replicas = 7;
        scaled.service_labels.insert("team".into(), "a".into());
        let written = v0.edited(scaled.clone(), false, 0);
        assert_eq!(
            written, scaled,
            "a scale and service labels replace no task"
        );
        let forced = v0.edited(scaled, true, 5);
        assert_eq!((forced.version, forced.replicas), (1, 7));
        let mut edited = v0.clone();
        edited.labels.insert("b".into(), "2".into());
        assert_eq!(v0.edited(edited, false, 0).version, 1);
    }

    #[test]
    fn names_and_images_are_checked() {
        assert!(check_service_name("web_1.a-b").is_ok());
        for bad in ["", "-web", "a/b", "a b"] {
            let err = check_service_name(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("invalid service name {bad:?}")),
                "{err}"
            );
        }
        assert!(check_image("nginx:latest").is_ok());
        assert!(check_image("two words").is_err() && check_image(" ").is_err());
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
