//! Where cluster objects live in the key space. Every writer and reader goes through these
//! helpers so the layout is written down once.

pub const NODES: &str = "/shoal/nodes/";
pub const SERVICES: &str = "/shoal/services/";
pub const TASKS: &str = "/shoal/tasks/";
/// `/shoal/service-names/<name>` holds a service's id: creating a service puts both keys in one
/// txn conditioned on the name key not existing, so names are unique.
pub const SERVICE_NAMES: &str = "/shoal/service-names/";
/// The leader's rendered proxy config (`ProxyConfig`).
pub const PROXY_CONFIG: &str = "/shoal/proxy/config";
/// `/shoal/proxy/status/<name>`: what each `shoal proxy` applied (`ProxyStatus`), on its lease.
pub const PROXY_STATUS: &str = "/shoal/proxy/status/";
/// The term of the leader whose control loops may write; every control-loop txn compares it, so
/// a deposed leader's loops can no longer write once its successor has written its own term.
pub const LEADER_TERM: &str = "/shoal/leader/term";

/// Networks created through the Docker API (`/shoal/networks/<id>`), unique by name through
/// `/shoal/network-names/<name>` as services are.
pub const NETWORKS: &str = "/shoal/networks/";
pub const NETWORK_NAMES: &str = "/shoal/network-names/";

/// The Consul API's ACL tokens (`AclToken`), keyed by the SHA-256 of their secret, in hex: the
/// API finds a caller's token with one read, and the secret itself is stored nowhere.
pub const ACL_TOKENS: &str = "/shoal/acl/tokens/";

pub fn acl_token(secret_sha256: &str) -> String {
    format!("{ACL_TOKENS}{secret_sha256}")
}

pub fn network(id: &str) -> String {
    format!("{NETWORKS}{id}")
}

pub fn network_name(name: &str) -> String {
    format!("{NETWORK_NAMES}{name}")
}

pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}

pub fn service(id: &str) -> String {
    format!("{SERVICES}{id}")
}

pub fn task(id: &str) -> String {
    format!("{TASKS}{id}")
}

pub fn service_name(name: &str) -> String {
    format!("{SERVICE_NAMES}{name}")
}

/// The id in a key under `prefix` (one of the constants above); None for other keys and for
/// keys nested deeper than one level.
pub fn id_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_to_ids() {
        assert_eq!(node("n1"), "/shoal/nodes/n1");
        assert_eq!(service("s1"), "/shoal/services/s1");
        assert_eq!(task("t1"), "/shoal/tasks/t1");
        assert_eq!(id_of(TASKS, &task("t1")), Some("t1"));
        assert_eq!(id_of(TASKS, &node("t1")), None);
        assert_eq!(id_of(NODES, "/shoal/nodes/"), None);
        assert_eq!(id_of(NODES, "/shoal/nodes/a/b"), None);
    }
}
