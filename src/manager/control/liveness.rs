//! Node liveness: heartbeats live in the leader's memory (`Heartbeats`), never in Raft; only a
//! node's transitions READY ↔ DOWN are written. A node is DOWN after 3 heartbeat periods
//! without one. A new leader starts every READY node's clock afresh (one grace period), so a
//! leader change alone never makes a node DOWN.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use crate::model::NodeStatus;

use crate::objects::{Expect, View, Write};

use super::Plan;

/// Heartbeat periods a node may miss before it is DOWN.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The last heartbeat of each node, as this leader has seen them.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Heartbeats {
    /// A new leader's table: every READY node counts as just heard from.
    pub fn starting(state: &View, now: Instant) -> Heartbeats {
        let seen = state
            .nodes()
            .filter(|n| n.value.status == NodeStatus::Ready)
            .map(|n| (n.value.id.clone(), now))
            .collect();
        Heartbeats {
            seen: Arc::new(Mutex::new(seen)),
        }
    }

    /// Records a heartbeat; false if this leader does not know the node (it must register).
    pub fn beat(&self, node: &str, now: Instant) -> bool {
        match self.lock().get_mut(node) {
            Some(at) => {
                *at = now;
                true
            }
            None => false,
        }
    }

    /// Records a registration.
    pub fn registered(&self, node: &str, now: Instant) {
        self.lock().insert(node.to_string(), now);
    }

    fn last(&self, node: &str) -> Option<Instant> {
        self.lock().get(node).copied()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks DOWN the READY nodes whose heartbeats stopped, and READY again the DOWN ones heard
/// from since; wakes up in time for the next node that could go DOWN.
pub fn plan(state: &View, heartbeats: &Heartbeats, now: Instant, now_ms: u64) -> Plan {
    let mut writes = Vec::new();
    let mut next: Option<Instant> = None;
    for n in state.nodes() {
        let node = &n.value;
        let limit = Duration::from_millis(node.heartbeat_ms.max(1)) * MISSED_HEARTBEATS;
        let Some(last) = heartbeats.last(&node.id) else {
            continue;
        };
        let silent = now.saturating_duration_since(last);
        let (status, message) = if silent >= limit {
            (
                NodeStatus::Down,
                format!("no heartbeat for {} ms", silent.as_millis()),
            )
        } else {
            let due = last + limit;
            next = Some(next.map_or(due, |n| n.min(due)));
            (NodeStatus::Ready, String::new())
        };
        if status != node.status {
            let mut node = node.clone();
            node.status = status;
            node.message = message;
            writes.push(Write::Node {
                node,
                expect: Expect::ModRevision(n.mod_revision),
            });
        }
    }
    let wake_at_ms = next.map(|at| now_ms + at.saturating_duration_since(now).as_millis() as u64);
    Plan { writes, wake_at_ms }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::Node;
    use crate::objects::Versioned;

    fn node(id: &str, status: NodeStatus) -> Versioned<Node> {
        Versioned {
            value: Node {
                id: id.into(),
                name: id.into(),
                addr: "127.0.0.2".into(),
                engine_addr: String::new(),
                labels: BTreeMap::new(),
                operator_labels: BTreeMap::new(),
                cpus: 1,
                memory_bytes: 1,
                engine_version: String::new(),
                images: vec![],
                status,
                availability: Default::default(),
                heartbeat_ms: 500,
                message: String::new(),
            },
            mod_revision: 3,
        }
    }

    fn statuses(plan: &Plan) -> Vec<(String, NodeStatus)> {
        plan.writes
            .iter()
            .map(|w| match w {
                Write::Node { node, .. } => (node.id.clone(), node.status),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn three_missed_periods_make_a_node_down_and_a_heartbeat_brings_it_back() {
        let mut state = View::build(
            0,
            vec![node("a", NodeStatus::Ready), node("b", NodeStatus::Ready)],
            vec![],
            vec![],
            None,
        );
        let start = Instant::now();
        let hb = Heartbeats::starting(&state, start);
        let p = plan(&state, &hb, start + Duration::from_millis(1400), 0);
        assert!(p.writes.is_empty(), "a new leader gives a grace period");
        assert_eq!(p.wake_at_ms, Some(100));

        assert!(hb.beat("a", start + Duration::from_millis(1000)));
        let p = plan(&state, &hb, start + Duration::from_millis(1500), 0);
        assert_eq!(statuses(&p), vec![("b".into(), NodeStatus::Down)]);
        let Write::Node { node, expect } = &p.writes[0] else {
            panic!()
        };
        assert_eq!(node.message, "no heartbeat for 1500 ms");
        assert_eq!(*expect, Expect::ModRevision(3));

        let mut down = state.node("b").unwrap().clone();
        down.value.status = NodeStatus::Down;
        state.put_node(down);
        hb.beat("b", start + Duration::from_millis(1600));
        let p = plan(&state, &hb, start + Duration::from_millis(1700), 0);
        assert_eq!(statuses(&p), vec![("b".into(), NodeStatus::Ready)]);
    }

    #[tokio::test(start_paused = true)]
    async fn down_nodes_are_unknown_to_a_new_leader_until_they_register() {
        let state = View::build(0, vec![node("a", NodeStatus::Down)], vec![], vec![], None);
        let now = Instant::now();
        let hb = Heartbeats::starting(&state, now);
        assert!(!hb.beat("a", now), "a DOWN node must register again");
        assert!(plan(&state, &hb, now + Duration::from_secs(10), 0)
            .writes
            .is_empty());
    }
}
