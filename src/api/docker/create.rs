//! `POST /containers/create`: a Docker create body read into a plain-container service. The
//! scheduler's fields (image, placement, ports, restart, reservations, dependencies) are derived
//! from the body; the body itself, less classic Swarm's placement entries, is what the agent
//! creates; `shoal.update.*` labels are its compose service's update policy (`handover.rs`).
//! Pure: no store, no clock.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::DockerError;
use crate::model::{
    Container, HealthCheck, Placement, PortSpec, Protocol, Reservations, RestartPolicy, Service,
};
use crate::scheduler;

/// Docker's rule for container names.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The service for a create `body` named `name`, with id `id`, created at `now_ms`.
pub(crate) fn container(
    mut body: Value,
    name: String,
    id: String,
    now_ms: u64,
) -> Result<Service, DockerError> {
    let bad = |why: String| DockerError::BadRequest(why);
    if !body.is_object() {
        return Err(bad("the create body must be a JSON object".into()));
    }
    let image = body
        .get("Image")
        .and_then(Value::as_str)
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    if image.is_empty() {
        return Err(bad(
            "Config cannot be empty in order to create a container: no image".into(),
        ));
    }
    if image.contains(char::is_whitespace) {
        return Err(bad(format!("invalid reference format: {image:?}")));
    }
    let labels: BTreeMap<String, String> = match body.get("Labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("Labels: {e}")))?,
    };
    let handover_policy = super::handover::policy(&labels)?;
    let env: Vec<String> = match body.get("Env") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| bad(format!("Env: {e}")))?,
    };
    let (placement, env) = Placement::extract(env, &labels).map_err(|e| bad(e.to_string()))?;
    body["Env"] = Value::from(env.clone());

    if let Some(check) = body.get("Healthcheck") {
        HealthCheck::check_docker(check).map_err(|e| bad(e.to_string()))?;
    }
    let host = body.get("HostConfig").cloned().unwrap_or(Value::Null);
    let ports = port_bindings(&host)?;
    let restart = restart_policy(&host)?;
    let auto_remove = host
        .get("AutoRemove")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if auto_remove {
        // The cluster removes the container once its task ended; the engine must not do it
        // first, or the exit code is lost.
        body["HostConfig"]["AutoRemove"] = Value::Bool(false);
    }
    let strings = |key: &str| -> Result<Vec<String>, DockerError> {
        match host.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| bad(format!("HostConfig.{key}: {e}")))
            }
        }
    };
    let number = |key: &str| host.get(key).and_then(Value::as_u64).unwrap_or(0);
    let cmd = match body.get("Cmd") {
        Some(Value::Array(words)) => words
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    };
    let network_mode = host
        .get("NetworkMode")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(String::from);
    let service = Service {
        id,
        name,
        image,
        cmd,
        env,
        labels,
        ports,
        // Created, not started: `docker start` sets 1.
        replicas: 0,
        restart,
        constraints: placement.constraints,
        affinities: placement.affinities,
        reservations: Reservations {
            nano_cpus: number("NanoCpus"),
            memory_bytes: number("Memory"),
        },
        reschedule_on_node_failure: placement.reschedule_on_node_failure,
        links: strings("Links")?,
        volumes_from: strings("VolumesFrom")?,
        network_mode,
        container: Some(Container {
            config: body,
            start_seq: 0,
            auto_remove,
            created_ms: now_ms,
            handover_policy,
            handover: None,
        }),
        // The body's `Healthcheck` is what the engine runs.
        health: None,
        stop_grace_ms: None,
        version: 0,
        update_policy: Default::default(),
        update: None,
        previous: None,
        service_labels: Default::default(),
        created_ms: now_ms,
    };
    scheduler::validate(&service).map_err(|e| bad(e.to_string()))?;
    Ok(service)
}

/// `HostConfig.PortBindings` (`{"80/tcp": [{"HostIp": "", "HostPort": "8080"}]}`).
fn port_bindings(host: &Value) -> Result<Vec<PortSpec>, DockerError> {
    let Some(Value::Object(bindings)) = host.get("PortBindings") else {
        return Ok(Vec::new());
    };
    let mut ports = Vec::new();
    for (key, list) in bindings {
        let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
        let bad = || DockerError::BadRequest(format!("invalid port {key:?}"));
        let container_port: u16 = port.parse().map_err(|_| bad())?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(bad()),
        };
        let list = list.as_array().cloned().unwrap_or_default();
        if list.is_empty() {
            ports.push(PortSpec {
                container_port,
                protocol,
                host_port: None,
            });
        }
        for b in list {
            let host_port = match b.get("HostPort").and_then(Value::as_str) {
                None | Some("") | Some("0") => None,
                Some(p) => Some(p.parse::<u16>().map_err(|_| {
                    DockerError::BadRequest(format!("invalid host port {p:?} for {key}"))
                })?),
            };
            ports.push(PortSpec {
                container_port,
                protocol,
                host_port,
            });
        }
    }
    Ok(ports)
}

/// `HostConfig.RestartPolicy` (`{"Name": "on-failure", "MaximumRetryCount": 3}`).
fn restart_policy(host: &Value) -> Result<RestartPolicy, DockerError> {
    let policy = host.get("RestartPolicy");
    let name = policy
        .and_then(|p| p.get("Name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let max = policy
        .and_then(|p| p.get("MaximumRetryCount"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    Ok(match name {
        "" | "no" => RestartPolicy::No,
        "always" | "unless-stopped" => RestartPolicy::Always,
        "on-failure" => RestartPolicy::OnFailure {
            max: (max > 0).then(|| u32::try_from(max).unwrap_or(u32::MAX)),
        },
        other => {
            return Err(DockerError::BadRequest(format!(
                "invalid restart policy {other:?}"
            )))
        }
    })
}

/// A Docker-style name for a container created without one: `shoal_<adjective>_<noun>`.
pub(crate) fn random_name() -> String {
    use rand::seq::IndexedRandom;
    const ADJECTIVES: &[&str] = &[
        "brave", "calm", "eager", "fond", "keen", "lucid", "merry", "quiet", "swift", "wise",
    ];
    const NOUNS: &[&str] = &[
        "carp", "cod", "dory", "eel", "hake", "perch", "pike", "shad", "sole", "tuna",
    ];
    let mut rng = rand::rng();
    let a = ADJECTIVES.choose(&mut rng).copied().unwrap_or("calm");
    let n = NOUNS.choose(&mut rng).copied().unwrap_or("carp");
    let suffix: u16 = rand::Rng::random(&mut rng);
    format!("{a}_{n}_{suffix:04x}")
}

/// 64 lowercase hex characters, as Docker's ids.
pub(crate) fn new_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{a:032x}{b:032x}")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_create_body_becomes_a_created_container() {
        let body = json!({
            "Image": "web",
            "Cmd": ["httpd", "-f"],
            "Env": ["A=1", "constraint:storage==ssd", "reschedule:on-node-failure"],
            "Labels": {"interlock.hostname": "test"},
            "HostConfig": {
                "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}], "53/udp": [{"HostPort": "5353"}]},
                "RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": 3},
                "AutoRemove": true,
                "Memory": 1048576
            }
        });
        let s = container(body, "web".into(), new_id(), 5).unwrap();
        assert_eq!(s.replicas, 0);
        assert_eq!(s.env, vec!["A=1"]);
        assert_eq!(s.constraints, vec!["storage==ssd"]);
        assert!(s.reschedule_on_node_failure);
        assert_eq!(s.restart, RestartPolicy::OnFailure { max: Some(3) });
        assert_eq!(s.reservations.memory_bytes, 1_048_576);
        let mut ports: Vec<_> = s
            .ports
            .iter()
            .map(|p| (p.container_port, p.host_port))
            .collect();
        ports.sort();
        assert_eq!(ports, vec![(53, Some(5353)), (80, None)]);
        let c = s.container.unwrap();
        assert!(c.auto_remove);
        assert_eq!(c.config["HostConfig"]["AutoRemove"], false);
        assert_eq!(c.config["Env"], json!(["A=1"]));
        assert_eq!(s.id.len(), 64);
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let err = |b: Value| {
            container(b, "x1".into(), "i".into(), 0)
                .unwrap_err()
                .to_string()
        };
        assert!(err(json!({})).contains("no image"));
        assert!(err(json!([])).contains("JSON object"));
        assert!(err(json!({"Image": "a", "Labels": {"shoal.task": "x"}})).contains("reserved"));
        assert!(
            err(json!({"Image": "a", "Env": ["constraint:storage=ssd"]})).contains("storage=ssd")
        );
        assert!(
            err(json!({"Image": "a", "HostConfig": {"RestartPolicy": {"Name": "sometimes"}}}))
                .contains("sometimes")
        );
        assert!(
            err(json!({"Image": "a", "HostConfig": {"PortBindings": {"x/tcp": []}}}))
                .contains("invalid port")
        );
        assert!(err(json!({"Image": "a", "Healthcheck": {"Interval": -5}}))
            .contains("invalid health check: Healthcheck.Interval -5 is negative"));
        assert!(err(json!({"Image": "a", "Healthcheck": {"Test": ["CMD"]}}))
            .contains("needs a program"));
        assert!(
            valid_name("web_1.a-b")
                && !valid_name("-web")
                && !valid_name("a")
                && !valid_name("a b")
        );
    }
}
