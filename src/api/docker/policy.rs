//! The operator's policy on what a container created through the Docker API may do to its node:
//! by default no privileged containers, no host namespaces, no devices, no added capabilities,
//! no security options that lift confinement, and no bind mounts outside the allowed host paths
//! (none unless the operator names some). Each rule is loosened by a manager flag
//! (`--docker-allow RULE`, `--docker-allow-bind PATH`); a refusal names the rule and the flag.
//! It reads create and exec bodies only; it never changes them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

/// What the operator may allow, one name per rule (`--docker-allow NAME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DockerAllow {
    /// `--privileged` (create and exec).
    Privileged,
    /// The host's pid, ipc, uts, network, user or cgroup namespace (`--pid host`, ...).
    HostNamespaces,
    /// Host devices: `--device`, `--device-cgroup-rule`, `--gpus`.
    Devices,
    /// `--cap-add`.
    CapAdd,
    /// `--security-opt` other than `no-new-privileges`, and unmasked or writable system paths.
    SecurityOpt,
}

impl DockerAllow {
    pub const ALL: [DockerAllow; 5] = [
        DockerAllow::Privileged,
        DockerAllow::HostNamespaces,
        DockerAllow::Devices,
        DockerAllow::CapAdd,
        DockerAllow::SecurityOpt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DockerAllow::Privileged => "privileged",
            DockerAllow::HostNamespaces => "host-namespaces",
            DockerAllow::Devices => "devices",
            DockerAllow::CapAdd => "cap-add",
            DockerAllow::SecurityOpt => "security-opt",
        }
    }
}

impl fmt::Display for DockerAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DockerAllow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        DockerAllow::ALL
            .into_iter()
            .find(|a| a.name() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = DockerAllow::ALL.iter().map(|a| a.name()).collect();
                format!("unknown rule {s:?}: expected one of {}", names.join(", "))
            })
    }
}

/// The policy one manager enforces on its Docker API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerPolicy {
    allow: BTreeSet<DockerAllow>,
    /// Normalised absolute host paths under which bind mounts are allowed.
    bind_prefixes: Vec<String>,
}

/// A request the policy refuses: the rule, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shoal policy: {0}")]
pub struct Denied(String);

impl DockerPolicy {
    /// A policy allowing `allow` and bind mounts under `bind_prefixes` (absolute paths; `/`
    /// allows every bind mount).
    pub fn new(
        allow: impl IntoIterator<Item = DockerAllow>,
        bind_prefixes: &[String],
    ) -> Result<DockerPolicy, String> {
        let mut prefixes = Vec::new();
        for p in bind_prefixes {
            let normal = normalise(p).ok_or_else(|| {
                format!("--docker-allow-bind {p:?}: expected an absolute host path")
            })?;
            prefixes.push(normal);
        }
        prefixes.sort();
        prefixes.dedup();
        Ok(DockerPolicy {
            allow: allow.into_iter().collect(),
            bind_prefixes: prefixes,
        })
    }

    /// What it allows, for the log line at start.
    pub fn describe(&self) -> String {
        let allow: Vec<&str> = self.allow.iter().map(|a| a.name()).collect();
        format!(
            "allows [{}], bind mounts under [{}]",
            allow.join(", "),
            self.bind_prefixes.join(", ")
        )
    }

    fn allows(&self, rule: DockerAllow) -> bool {
        self.allow.contains(&rule)
    }

    fn deny(rule: DockerAllow, what: &str) -> Denied {
        Denied(format!(
            "{what} not allowed (start the manager with --docker-allow {rule})"
        ))
    }

    /// Checks a `POST /containers/create` body.
    pub(crate) fn check_create(&self, body: &Value) -> Result<(), Denied> {
        let host = body.get("HostConfig").unwrap_or(&Value::Null);
        if !self.allows(DockerAllow::Privileged) && truthy(host.get("Privileged")) {
            return Err(Self::deny(
                DockerAllow::Privileged,
                "privileged containers are",
            ));
        }
        if !self.allows(DockerAllow::HostNamespaces) {
            for key in [
                "NetworkMode",
                "PidMode",
                "IpcMode",
                "UTSMode",
                "UsernsMode",
                "CgroupnsMode",
            ] {
                let mode = host.get(key).and_then(Value::as_str).unwrap_or("");
                if mode.trim().eq_ignore_ascii_case("host") {
                    return Err(Self::deny(
                        DockerAllow::HostNamespaces,
                        &format!("the host's namespaces ({key} host) are"),
                    ));
                }
            }
        }
        if !self.allows(DockerAllow::Devices) {
            for key in ["Devices", "DeviceCgroupRules", "DeviceRequests"] {
                if non_empty(host.get(key)) {
                    return Err(Self::deny(
                        DockerAllow::Devices,
                        &format!("host devices ({key}) are"),
                    ));
                }
            }
        }
        if !self.allows(DockerAllow::CapAdd) && non_empty(host.get("CapAdd")) {
            return Err(Self::deny(
                DockerAllow::CapAdd,
                "added capabilities (CapAdd) are",
            ));
        }
        if !self.allows(DockerAllow::SecurityOpt) {
            self.check_security(host)?;
        }
        self.check_binds(host)
    }

    /// Checks a swarm-mode service's `TaskTemplate.ContainerSpec` as the create body of the
    /// containers it would run: its mounts, added capabilities and privileges.
    pub(crate) fn check_service(&self, container_spec: &Value) -> Result<(), Denied> {
        let get = |key: &str| container_spec.get(key).cloned().unwrap_or(Value::Null);
        let privileges = get("Privileges");
        let mut security = Vec::new();
        let mode = |pointer: &str| {
            privileges
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        if mode("/Seccomp/Mode") == "unconfined" {
            security.push("seccomp=unconfined".to_string());
        }
        if mode("/AppArmor/Mode") == "disabled" {
            security.push("apparmor=unconfined".to_string());
        }
        if truthy(privileges.pointer("/SELinuxContext/Disable")) {
            security.push("label=disable".to_string());
        }
        let body = serde_json::json!({"HostConfig": {
            "Mounts": get("Mounts"),
            "CapAdd": get("CapabilityAdd"),
            "SecurityOpt": security,
        }});
        self.check_create(&body)
    }

    /// Checks a `POST /containers/{id}/exec` body.
    pub(crate) fn check_exec(&self, body: &Value) -> Result<(), Denied> {
        if !self.allows(DockerAllow::Privileged) && truthy(body.get("Privileged")) {
            return Err(Self::deny(
                DockerAllow::Privileged,
                "privileged exec processes are",
            ));
        }
        Ok(())
    }

    fn check_security(&self, host: &Value) -> Result<(), Denied> {
        let opts = host
            .get("SecurityOpt")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for opt in opts {
            let text = opt.as_str().unwrap_or_default();
            // `no-new-privileges` only ever confines more; everything else may confine less.
            if !text.trim().starts_with("no-new-privileges") {
                return Err(Self::deny(
                    DockerAllow::SecurityOpt,
                    &format!("security option {text:?} is"),
                ));
            }
        }
        for key in ["MaskedPaths", "ReadonlyPaths"] {
            if host.get(key).is_some_and(|v| !v.is_null()) {
                return Err(Self::deny(
                    DockerAllow::SecurityOpt,
                    &format!("setting {key} is"),
                ));
            }
        }
        Ok(())
    }

    fn check_binds(&self, host: &Value) -> Result<(), Denied> {
        let binds = host
            .get("Binds")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for bind in binds {
            let text = bind.as_str().unwrap_or_default();
            let source = text.split(':').next().unwrap_or_default();
            // Anything else is a named volume.
            if source.starts_with('/') {
                self.check_source(source)?;
            }
        }
        let mounts = host
            .get("Mounts")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for mount in mounts {
            let kind = mount.get("Type").and_then(Value::as_str).unwrap_or("");
            let source = mount.get("Source").and_then(Value::as_str).unwrap_or("");
            if kind.eq_ignore_ascii_case("bind") {
                self.check_source(source)?;
            }
            // A local volume created with `o=bind,device=PATH` is a bind mount of PATH.
            let device = mount
                .pointer("/VolumeOptions/DriverConfig/Options/device")
                .and_then(Value::as_str)
                .unwrap_or("");
            if device.starts_with('/') {
                self.check_source(device)?;
            }
        }
        Ok(())
    }

    fn check_source(&self, source: &str) -> Result<(), Denied> {
        let allowed = normalise(source).is_some_and(|path| {
            self.bind_prefixes.iter().any(|p| {
                p == "/"
                    || path == *p
                    || path
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
            })
        });
        if allowed {
            return Ok(());
        }
        Err(Denied(format!(
            "bind mounts of {source:?} are not allowed (start the manager with --docker-allow-bind PATH naming a host path that contains it)"
        )))
    }
}

/// An absolute path with `.`, `..` and repeated slashes resolved (lexically: `..` at the root
/// stays there), without a trailing slash; None for a relative path.
fn normalise(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    Some(format!("/{}", parts.join("/")))
}

/// `true`, or anything but `false`, `null`, 0 and "" (a client may send `"Privileged": 1`).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty() && s != "false" && s != "0",
        Some(_) => true,
    }
}

/// A list or object with something in it (or any other non-null value).
fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::String(s)) => !s.is_empty(),
        Some(_) => true,
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
