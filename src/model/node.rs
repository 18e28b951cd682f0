//! A Docker host as registered by its `shoal agent`, with the status the dispatcher observes and
//! the availability an operator sets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Written by the dispatcher, only on transitions (heartbeats stay in the leader's memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Down,
}

impl NodeStatus {
    /// As the JSON and the CLI spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// Set by the operator (`shoal node update`): a drained node takes no new tasks and gives its
/// tasks away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    #[default]
    Active,
    Drain,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    /// The address the agent advertises (its own loopback IP when several share one machine).
    pub addr: String,
    /// `host:port` of the agent's engine endpoint (`shoal agent --engine-listen`): the node's Docker
    /// engine, served to managers that send the join token; empty for agents that predate it.
    #[serde(default)]
    pub engine_addr: String,
    /// The agent's labels (`shoal agent --label storage=ssd`), replaced at each registration.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Labels set by an operator (`shoal node update --label-add`); they survive registrations
    /// and win over the agent's. No agent can set them: `node.labels.K` constraints see only
    /// these (`Node::placement_label`).
    #[serde(default)]
    pub operator_labels: BTreeMap<String, String>,
    pub cpus: u32,
    pub memory_bytes: u64,
    #[serde(default)]
    pub engine_version: String,
    /// Image references present on the engine (`repo:tag`).
    #[serde(default)]
    pub images: Vec<String>,
    pub status: NodeStatus,
    #[serde(default)]
    pub availability: Availability,
    /// The agent's heartbeat period; 3 missed periods make the node DOWN.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Why the node has its status ("no heartbeat for 1.5 s").
    #[serde(default)]
    pub message: String,
}

/// A placement key naming an operator's label only (`node.labels.storage`).
pub const OPERATOR_LABEL_PREFIX: &str = "node.labels.";
/// A placement key naming an agent's label only (`engine.labels.storage`).
pub const ENGINE_LABEL_PREFIX: &str = "engine.labels.";

/// `shoal agent --heartbeat` default.
pub const DEFAULT_HEARTBEAT_MS: u64 = 500;

fn default_heartbeat_ms() -> u64 {
    DEFAULT_HEARTBEAT_MS
}

impl Node {
    /// Whether the scheduler may place new tasks here.
    pub fn is_schedulable(&self) -> bool {
        self.status == NodeStatus::Ready && self.availability == Availability::Active
    }

    /// A label's value as constraints see it: the operator's, else the agent's.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.operator_labels
            .get(key)
            .or_else(|| self.labels.get(key))
            .map(String::as_str)
    }

    /// A placement expression's label, as swarm mode names them: `node.labels.K` is the
    /// operator's label only (set with `shoal node update --label-add`, which no agent can
    /// claim), `engine.labels.K` the agent's only (its `--label`, self-reported), and a bare `K`
    /// (classic Swarm's `constraint:K==V`) either, the operator's winning.
    pub fn placement_label(&self, key: &str) -> Option<&str> {
        if let Some(k) = key.strip_prefix(OPERATOR_LABEL_PREFIX) {
            return self.operator_labels.get(k).map(String::as_str);
        }
        if let Some(k) = key.strip_prefix(ENGINE_LABEL_PREFIX) {
            return self.labels.get(k).map(String::as_str);
        }
        self.label(key)
    }

    /// Every label, the operator's winning over the agent's.
    pub fn all_labels(&self) -> BTreeMap<String, String> {
        let mut all = self.labels.clone();
        all.extend(self.operator_labels.clone());
        all
    }

    /// CPU capacity in the unit of reservations (1e9 per CPU, as Docker's NanoCPUs).
    pub fn nano_cpus(&self) -> u64 {
        u64::from(self.cpus) * 1_000_000_000
    }
}

/// Whether `id` can be a node id (what a worker certificate names and the dispatcher accepts):
/// 1 to 64 ASCII letters, digits or '-'.
pub fn is_node_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_uses_stable_snake_case_names() {
        let node = Node {
            id: "n1".into(),
            name: "node-1".into(),
            addr: "127.0.0.2:7000".into(),
            engine_addr: "127.0.0.2:40001".into(),
            labels: BTreeMap::from([("storage".into(), "ssd".into())]),
            operator_labels: BTreeMap::from([("storage".into(), "hdd".into())]),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: "27.0.1".into(),
            images: vec!["shoal/whoami:latest".into()],
            status: NodeStatus::Ready,
            availability: Availability::Drain,
            heartbeat_ms: 500,
            message: String::new(),
        };
        let json = serde_json::to_value(&node).unwrap();
        assert_eq!(json["status"], "ready");
        assert_eq!(json["availability"], "drain");
        assert_eq!(json["memory_bytes"], 1u64 << 30);
        assert_eq!(json["labels"]["storage"], "ssd");
        let back: Node = serde_json::from_value(json).unwrap();
        assert_eq!(back, node);
        assert!(!back.is_schedulable());
        assert_eq!(back.nano_cpus(), 2_000_000_000);
        assert_eq!(back.label("storage"), Some("hdd"), "operator labels win");
        assert_eq!(back.all_labels()["storage"], "hdd");
        assert_eq!(back.label("zone"), None);
        // Swarm mode's names tell who set a label.
        assert_eq!(back.placement_label("node.labels.storage"), Some("hdd"));
        assert_eq!(back.placement_label("engine.labels.storage"), Some("ssd"));
        assert_eq!(back.placement_label("storage"), Some("hdd"));
    }
}
