//! Swarm mode's `ServiceSpec` (the body of `POST /services/create` and
//! `/services/{id}/update`) read into a shoal service, and a service rendered back as one, so
//! that what `docker service inspect` shows, sent back by `docker service update`, is the same
//! service. What a spec may say but shoal cannot honour is a 400 naming the field; what the
//! spec cannot say (classic Swarm affinities, links, drain delays) is kept from the service it
//! updates. Pure: no store, no clock.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::error::DockerError;
use crate::model::{
    check_image, check_service_name, HealthCheck, PortSpec, Protocol, Reservations, RestartPolicy,
    Service, UpdateOrder, UpdatePolicy, ENGINE_LABEL_PREFIX, MAX_POLICY_MS, OPERATOR_LABEL_PREFIX,
};

type Object = Map<String, Value>;

/// A spec read: the service it describes, and whether it forces every task to be replaced
/// (`docker service update --force` moves `TaskTemplate.ForceUpdate` on).
#[derive(Debug)]
pub(crate) struct Read {
    pub service: Service,
    pub force: bool,
}

/// An empty service with id `id`: what a create's spec is read onto.
pub(crate) fn blank(id: String, created_ms: u64) -> Service {
    Service {
        id,
        name: String::new(),
        image: String::new(),
        cmd: Vec::new(),
        env: Vec::new(),
        labels: BTreeMap::new(),
        ports: Vec::new(),
        replicas: 1,
        restart: RestartPolicy::Always,
        constraints: Vec::new(),
        affinities: Vec::new(),
        reservations: Reservations::default(),
        reschedule_on_node_failure: false,
        links: Vec::new(),
        volumes_from: Vec::new(),
        network_mode: None,
        container: None,
        health: None,
        stop_grace_ms: None,
        version: 0,
        update_policy: UpdatePolicy::default(),
        update: None,
        previous: None,
        service_labels: BTreeMap::new(),
        created_ms,
    }
}

/// Reads `spec` onto `base` (`blank` for a create, the current service for an update): every
/// field a spec expresses is replaced, the others kept. The result is validated as the shoal
/// CLI validates its services.
pub(crate) fn read(spec: &Value, base: &Service) -> Result<Read, DockerError> {
    let top = object(Some(spec), "the service spec")?
        .ok_or_else(|| bad("the service spec must be a JSON object".into()))?;
    let mut s = base.clone();

    let name: String = field(top, "Name", "")?.unwrap_or_default();
    if !base.name.is_empty() && !name.is_empty() && name != base.name {
        return Err(bad(format!(
            "Name: renaming services is not supported (service {} named {name:?})",
            base.name
        )));
    }
    if !name.is_empty() {
        check_service_name(&name).map_err(model)?;
        s.name = name;
    }
    s.service_labels = field(top, "Labels", "")?.unwrap_or_default();
    refuse_set(top, "", &["Networks"])?;
    s.replicas = replicas(top)?;

    let tt = object(top.get("TaskTemplate"), "TaskTemplate")?;
    let empty = Object::new();
    let tt = tt.unwrap_or(&empty);
    refuse_set(
        tt,
        "TaskTemplate",
        &[
            "PluginSpec",
            "NetworkAttachmentSpec",
            "Networks",
            "LogDriver",
        ],
    )?;
    if let Some(runtime) = field::<String>(tt, "Runtime", "TaskTemplate")? {
        if !runtime.is_empty() && runtime != "container" {
            return Err(unsupported("TaskTemplate.Runtime", &runtime));
        }
    }
    let force = field::<u64>(tt, "ForceUpdate", "TaskTemplate")?.unwrap_or(0) > 0;
    container_spec(tt, &mut s)?;
    resources(tt, &mut s)?;
    s.restart = restart_policy(tt)?;
    s.constraints = placement(tt)?;

    s.update_policy = match object(top.get("UpdateConfig"), "UpdateConfig")? {
        Some(map) => policy(map, "UpdateConfig")?,
        None => UpdatePolicy::default(),
    };
    if let Some(map) = object(top.get("RollbackConfig"), "RollbackConfig")? {
        let rollback = policy(map, "RollbackConfig")?;
        // Shoal rolls back with the update policy: a RollbackConfig is accepted when it is
        // that policy, new or as it was (what `inspect` showed, sent back unchanged).
        if rollback != s.update_policy && rollback != base.update_policy {
            return Err(bad(
                "RollbackConfig: shoal rolls back with the update policy; give the same \
                 values as UpdateConfig (--rollback-* flags apart from --update-* are not \
                 supported)"
                    .into(),
            ));
        }
    }
    // Docker has no rebalance policy: a spec sent through the Docker API keeps shoal's.
    s.update_policy.rebalance = base.update_policy.rebalance;
    s.ports = ports(top)?;

    crate::scheduler::validate(&s).map_err(|e| bad(e.to_string()))?;
    crate::proxy::labels::host_of(&s.labels).map_err(|e| bad(format!("invalid {e}")))?;
    Ok(Read { service: s, force })
}

fn container_spec(tt: &Object, s: &mut Service) -> Result<(), DockerError> {
    const AT: &str = "TaskTemplate.ContainerSpec";
    let cs = object(tt.get("ContainerSpec"), AT)?.ok_or_else(|| {
        bad(format!(
            "{AT} is required: shoal services run containers (an image is needed)"
        ))
    })?;
    let image: String = field(cs, "Image", AT)?.unwrap_or_default();
    if image.trim().is_empty() {
        return Err(bad(format!("{AT}.Image is required: the image to run")));
    }
    check_image(&image).map_err(model)?;
    s.image = image;
    s.labels = field(cs, "Labels", AT)?.unwrap_or_default();
    if let Some(key) = s.labels.keys().find(|k| k.starts_with("shoal.")) {
        return Err(bad(format!("{AT}.Labels: {key} is reserved for shoal")));
    }
    let command: Vec<String> = field(cs, "Command", AT)?.unwrap_or_default();
    if !command.is_empty() {
        return Err(bad(format!(
            "{AT}.Command (--entrypoint) is not supported by shoal services yet: \
             give the arguments after the image instead"
        )));
    }
    s.cmd = field(cs, "Args", AT)?.unwrap_or_default();
    s.env = field(cs, "Env", AT)?.unwrap_or_default();
    if let Some(entry) = s.env.iter().find(|e| e.is_empty() || e.starts_with('=')) {
        return Err(bad(format!(
            "{AT}.Env: invalid environment variable {entry:?}: expected KEY=VALUE"
        )));
    }
    s.health = match cs.get("Healthcheck") {
        None | Some(Value::Null) => None,
        Some(v) => Some(health(v)?),
    };
    refuse_set(
        cs,
        AT,
        &[
            "Hostname",
            "Dir",
            "User",
            "Groups",
            "Privileges",
            "TTY",
            "OpenStdin",
            "ReadOnly",
            "Mounts",
            "StopSignal",
            "StopGracePeriod",
            "DNSConfig",
            "Hosts",
            "Secrets",
            "Configs",
            "Init",
            "Sysctls",
            "CapabilityAdd",
            "CapabilityDrop",
            "Ulimits",
            "OomScoreAdj",
        ],
    )?;
    if let Some(isolation) = field::<String>(cs, "Isolation", AT)? {
        if !matches!(isolation.as_str(), "" | "default") {
            return Err(unsupported(&format!("{AT}.Isolation"), &isolation));
        }
    }
    Ok(())
}

/// Docker's `HealthConfig` (durations in ns), checked as the engine checks it.
fn health(v: &Value) -> Result<HealthCheck, DockerError> {
    const AT: &str = "TaskTemplate.ContainerSpec.Healthcheck";
    HealthCheck::check_docker(v).map_err(model)?;
    let ms = |key: &str| {
        v.get(key)
            .and_then(Value::as_u64)
            .map_or(0, |ns| ns / 1_000_000)
    };
    if ms("StartInterval") > 0 {
        return Err(unsupported(&format!("{AT}.StartInterval"), "set"));
    }
    let check = HealthCheck {
        test: match v.get("Test") {
            Some(t @ Value::Array(_)) => serde_json::from_value(t.clone()).unwrap_or_default(),
            _ => Vec::new(),
        },
        interval_ms: ms("Interval"),
        timeout_ms: ms("Timeout"),
        start_period_ms: ms("StartPeriod"),
        retries: v
            .get("Retries")
            .and_then(Value::as_u64)
            .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
    };
    check.validate().map_err(model)?;
    Ok(check)
}

fn resources(tt: &Object, s: &mut Service) -> Result<(), DockerError> {
    const AT: &str = "TaskTemplate.Resources";
    let Some(res) = object(tt.get("Resources"), AT)? else {
        s.reservations = Reservations::default();
        return Ok(());
    };
    if let Some(limits) = object(res.get("Limits"), &format!("{AT}.Limits"))? {
        if let Some((key, _)) = limits.iter().find(|(_, v)| is_set(v)) {
            return Err(bad(format!(
                "{AT}.Limits.{key} (--limit-*) is not supported by shoal services yet: \
                 reserve with --reserve-cpu and --reserve-memory"
            )));
        }
    }
    let at = format!("{AT}.Reservations");
    let empty = Object::new();
    let reservations = object(res.get("Reservations"), &at)?.unwrap_or(&empty);
    refuse_set(reservations, &at, &["GenericResources"])?;
    s.reservations = Reservations {
        nano_cpus: field(reservations, "NanoCPUs", &at)?.unwrap_or(0),
        memory_bytes: field(reservations, "MemoryBytes", &at)?.unwrap_or(0),
    };
    Ok(())
}

/// Docker's `RestartPolicy`: `any` (the default), `on-failure` (with `MaxAttempts`), `none`.
fn restart_policy(tt: &Object) -> Result<RestartPolicy, DockerError> {
    const AT: &str = "TaskTemplate.RestartPolicy";
    let Some(policy) = object(tt.get("RestartPolicy"), AT)? else {
        return Ok(RestartPolicy::Always);
    };
    // `Delay` is accepted and left to shoal's own restart backoff.
    refuse_set(policy, AT, &["Window"])?;
    let condition: String = field(policy, "Condition", AT)?.unwrap_or_default();
    let max: u64 = field(policy, "MaxAttempts", AT)?.unwrap_or(0);
    match condition.as_str() {
        "" | "any" if max == 0 => Ok(RestartPolicy::Always),
        "" | "any" => Err(bad(format!(
            "{AT}.MaxAttempts: shoal limits restarts only with the on-failure condition"
        ))),
        "on-failure" => Ok(RestartPolicy::OnFailure {
            max: (max > 0).then(|| u32::try_from(max).unwrap_or(u32::MAX)),
        }),
        "none" => Ok(RestartPolicy::No),
        other => Err(bad(format!(
            "{AT}.Condition {other:?}: expected any, on-failure or none"
        ))),
    }
}

fn placement(tt: &Object) -> Result<Vec<String>, DockerError> {
    const AT: &str = "TaskTemplate.Placement";
    let Some(placement) = object(tt.get("Placement"), AT)? else {
        return Ok(Vec::new());
    };
    if placement.get("Preferences").is_some_and(is_set) {
        return Err(bad(format!(
            "{AT}.Preferences (--placement-pref) is not supported by shoal yet: tasks are \
             spread over the nodes that satisfy the constraints"
        )));
    }
    refuse_set(placement, AT, &["MaxReplicas"])?;
    let constraints: Vec<String> = field(placement, "Constraints", AT)?.unwrap_or_default();
    let mut out = Vec::new();
    for c in &constraints {
        out.extend(constraint_to_shoal(c)?);
    }
    Ok(out)
}

fn replicas(top: &Object) -> Result<u64, DockerError> {
    let Some(mode) = object(top.get("Mode"), "Mode")? else {
        return Ok(1);
    };
    for other in ["Global", "ReplicatedJob", "GlobalJob"] {
        if mode.get(other).is_some_and(|v| !v.is_null()) {
            return Err(bad(format!(
                "Mode.{other} is not supported by shoal yet: only replicated services \
                 (--mode replicated --replicas N)"
            )));
        }
    }
    match object(mode.get("Replicated"), "Mode.Replicated")? {
        Some(r) => Ok(field(r, "Replicas", "Mode.Replicated")?.unwrap_or(1)),
        None => Ok(1),
    }
}

/// `UpdateConfig` or `RollbackConfig` (durations in ns) as an update policy.
fn policy(map: &Object, at: &str) -> Result<UpdatePolicy, DockerError> {
    let duration = |key: &str| -> Result<u64, DockerError> {
        let ns: i64 = field(map, key, at)?.unwrap_or(0);
        let ms =
            u64::try_from(ns).map_err(|_| bad(format!("{at}.{key} {ns} is negative")))? / 1_000_000;
        if ms > MAX_POLICY_MS {
            return Err(bad(format!("{at}.{key}: expected at most 24h")));
        }
        Ok(ms)
    };
    let ratio: f64 = field(map, "MaxFailureRatio", at)?.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&ratio) {
        return Err(bad(format!(
            "{at}.MaxFailureRatio {ratio}: expected a fraction from 0 to 1"
        )));
    }
    let action: String = field(map, "FailureAction", at)?.unwrap_or_default();
    let order: String = field(map, "Order", at)?.unwrap_or_default();
    Ok(UpdatePolicy {
        parallelism: field(map, "Parallelism", at)?.unwrap_or(0),
        delay_ms: duration("Delay")?,
        order: match order.as_str() {
            "" => UpdateOrder::default(),
            o => o.parse().map_err(|e| bad(format!("{at}.Order: {e}")))?,
        },
        failure_action: match action.as_str() {
            "" => Default::default(),
            a => a
                .parse()
                .map_err(|e| bad(format!("{at}.FailureAction: {e}")))?,
        },
        monitor_ms: duration("Monitor")?,
        max_failure_permille: (ratio * 1_000.0).round() as u16,
        rebalance: false,
    })
}

/// `EndpointSpec.Ports`: each published on the nodes that run a task (Docker's host mode;
/// shoal has no routing mesh, so `ingress` is served the same way).
fn ports(top: &Object) -> Result<Vec<PortSpec>, DockerError> {
    const AT: &str = "EndpointSpec";
    let Some(endpoint) = object(top.get("EndpointSpec"), AT)? else {
        return Ok(Vec::new());
    };
    let mode: String = field(endpoint, "Mode", AT)?.unwrap_or_default();
    if !matches!(mode.as_str(), "" | "vip" | "dnsrr") {
        return Err(bad(format!("{AT}.Mode {mode:?}: expected vip or dnsrr")));
    }
    let list: Vec<Value> = field(endpoint, "Ports", AT)?.unwrap_or_default();
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = format!("{AT}.Ports[{i}]");
        let p = object(Some(p), &at)?.ok_or_else(|| bad(format!("{at}: expected an object")))?;
        let number = |key: &str| -> Result<Option<u16>, DockerError> {
            let n: u64 = field(p, key, &at)?.unwrap_or(0);
            match n {
                0 => Ok(None),
                1..=65535 => Ok(Some(n as u16)),
                _ => Err(bad(format!(
                    "{at}.{key} {n}: expected a port from 1 to 65535"
                ))),
            }
        };
        let container_port =
            number("TargetPort")?.ok_or_else(|| bad(format!("{at}.TargetPort is required")))?;
        let protocol: String = field(p, "Protocol", &at)?.unwrap_or_default();
        let protocol = match protocol.as_str() {
            "" | "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => return Err(unsupported(&format!("{at}.Protocol"), other)),
        };
        let mode: String = field(p, "PublishMode", &at)?.unwrap_or_default();
        if !matches!(mode.as_str(), "" | "ingress" | "host") {
            return Err(bad(format!(
                "{at}.PublishMode {mode:?}: expected ingress or host"
            )));
        }
        out.push(PortSpec {
            container_port,
            protocol,
            host_port: number("PublishedPort")?,
        });
    }
    Ok(out)
}

/// A swarm-mode constraint as the scheduler's expression; None for one every shoal node
/// satisfies (`node.role==worker`: managers run no tasks). `node.labels.K` (the operator's
/// labels) and `engine.labels.K` (the agent's) keep their names: the scheduler tells them apart,
/// so an agent cannot claim an operator's label. A bare `K` is classic Swarm's (either label).
pub(crate) fn constraint_to_shoal(c: &str) -> Result<Option<String>, DockerError> {
    let refuse = |why: &str| bad(format!("invalid constraint {c:?}: {why}"));
    let at = [c.find("=="), c.find("!=")].into_iter().flatten().min();
    let Some(at) = at else {
        return Err(refuse("expected KEY==VALUE or KEY!=VALUE"));
    };
    let key = c[..at].trim();
    let op = &c[at..at + 2];
    let value = c[at + 2..].trim();
    if value.is_empty() {
        return Err(refuse("no value"));
    }
    let label = key
        .strip_prefix(OPERATOR_LABEL_PREFIX)
        .or_else(|| key.strip_prefix(ENGINE_LABEL_PREFIX));
    match (key, label) {
        ("node.hostname" | "node.id", _) => Ok(Some(format!("node{op}{value}"))),
        (_, Some(label)) if !label.is_empty() => Ok(Some(format!("{key}{op}{value}"))),
        ("node.role", _) => match (op, value) {
            ("==", "worker") | ("!=", "manager") => Ok(None),
            _ => Err(refuse(
                "shoal's managers run no tasks: only node.role==worker can be satisfied",
            )),
        },
        ("node", _) => Ok(Some(format!("node{op}{value}"))),
        (bare, None) if !bare.is_empty() && !bare.contains('.') => {
            Ok(Some(format!("{bare}{op}{value}")))
        }
        _ => Err(refuse(
            "shoal places by node.hostname, node.id, node.labels.KEY, engine.labels.KEY \
             and node.role",
        )),
    }
}

/// A scheduler expression as swarm mode writes it: `node==X` is `node.hostname==X`; label keys
/// keep their names (`node.labels.K`, `engine.labels.K`, classic Swarm's bare `K`), so that a
/// spec read back is the service it came from.
pub(crate) fn constraint_to_docker(c: &str) -> String {
    let at = [c.find("=="), c.find("!=")].into_iter().flatten().min();
    let Some(at) = at else {
        return c.to_string();
    };
    let (key, rest) = (c[..at].trim(), &c[at..]);
    match key {
        "node" => format!("node.hostname{rest}"),
        _ => c.to_string(),
    }
}

/// The `ServiceSpec` of `s`: reading it back gives `s` again (`read`).
pub(crate) fn render(s: &Service) -> Value {
    let mut container = json!({
        "Image": s.image,
        "Labels": s.labels,
        "Isolation": "default",
    });
    if !s.cmd.is_empty() {
        container["Args"] = json!(s.cmd);
    }
    if !s.env.is_empty() {
        container["Env"] = json!(s.env);
    }
    if let Some(h) = &s.health {
        let mut check = Map::new();
        if !h.test.is_empty() {
            check.insert("Test".into(), json!(h.test));
        }
        for (key, ms) in [
            ("Interval", h.interval_ms),
            ("Timeout", h.timeout_ms),
            ("StartPeriod", h.start_period_ms),
        ] {
            if ms > 0 {
                check.insert(key.into(), json!(ms.saturating_mul(1_000_000)));
            }
        }
        if h.retries > 0 {
            check.insert("Retries".into(), json!(h.retries));
        }
        container["Healthcheck"] = Value::Object(check);
    }
    let (condition, max) = match s.restart {
        RestartPolicy::Always => ("any", 0),
        RestartPolicy::OnFailure { max } => ("on-failure", max.unwrap_or(0)),
        RestartPolicy::No => ("none", 0),
    };
    let policy = render_policy(&s.update_policy);
    let ports: Vec<Value> = s.ports.iter().map(render_port).collect();
    json!({
        "Name": s.name,
        "Labels": s.service_labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {
                "Limits": {},
                "Reservations": {
                    "NanoCPUs": s.reservations.nano_cpus,
                    "MemoryBytes": s.reservations.memory_bytes,
                },
            },
            "RestartPolicy": {"Condition": condition, "MaxAttempts": max},
            "Placement": {
                "Constraints": s.constraints.iter().map(|c| constraint_to_docker(c)).collect::<Vec<_>>(),
            },
            "ForceUpdate": 0,
            "Runtime": "container",
        },
        "Mode": {"Replicated": {"Replicas": s.replicas}},
        "UpdateConfig": policy,
        "RollbackConfig": policy,
        "EndpointSpec": {"Mode": "vip", "Ports": ports},
    })
}

fn render_policy(p: &UpdatePolicy) -> Value {
    json!({
        "Parallelism": p.parallelism,
        "Delay": p.delay_ms.saturating_mul(1_000_000),
        "FailureAction": p.failure_action,
        "Monitor": p.monitor_ms.saturating_mul(1_000_000),
        "MaxFailureRatio": f64::from(p.max_failure_permille) / 1_000.0,
        "Order": p.order,
    })
}

pub(crate) fn render_port(p: &PortSpec) -> Value {
    let mut port = json!({
        "Protocol": p.protocol.to_string(),
        "TargetPort": p.container_port,
        "PublishMode": "host",
    });
    if let Some(host) = p.host_port {
        port["PublishedPort"] = json!(host);
    }
    port
}

fn bad(message: String) -> DockerError {
    DockerError::BadRequest(message)
}

fn model(e: crate::model::ModelError) -> DockerError {
    bad(e.to_string())
}

fn unsupported(path: &str, value: &str) -> DockerError {
    bad(format!(
        "{path} {value:?} is not supported by shoal services yet"
    ))
}

fn join(path: &str, key: &str) -> String {
    match path {
        "" => key.to_string(),
        p => format!("{p}.{key}"),
    }
}

/// The object at `path`; None when absent or null.
fn object<'a>(v: Option<&'a Value>, path: &str) -> Result<Option<&'a Object>, DockerError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(bad(format!("{path}: expected a JSON object, got {other}"))),
    }
}

/// `map[key]` as a `T`; None when absent or null.
fn field<T: DeserializeOwned>(
    map: &Object,
    key: &str,
    path: &str,
) -> Result<Option<T>, DockerError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| bad(format!("{}: {e}", join(path, key)))),
    }
}

/// Refuses any of `keys` that is set to more than its zero value.
fn refuse_set(map: &Object, path: &str, keys: &[&str]) -> Result<(), DockerError> {
    match keys.iter().find(|k| map.get(**k).is_some_and(is_set)) {
        Some(key) => Err(bad(format!(
            "{} is not supported by shoal services yet",
            join(path, key)
        ))),
        None => Ok(()),
    }
}

/// Whether a value says anything: not null, false, 0, "", or a list or object of nothing.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => o.values().any(is_set),
    }
}

#[cfg(test)]
#[path = "service_spec_tests.rs"]
mod tests;
