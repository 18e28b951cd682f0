//! Node liveness: heartbeats live in the leader's memory (`Heartbeats`), never in Raft; only a
//! node's transitions READY ↔ DOWN are written. A node is DOWN after 3 heartbeat periods
//! without one. A new leader starts every READY node's clock afresh (one grace period), so a
//! leader change alone never makes a node DOWN. The period is the one the node asked for,
//! lengthened in large clusters so that all nodes together send at most
//! [`MAX_BEATS_PER_SECOND`] (Nomad's `max_heartbeats_per_second`): heartbeats must not eat the
//! leader that judges them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::{Duration, Instant};

use crate::model::NodeStatus;

use crate::objects::{Expect, View, Write};

use super::Plan;

/// Heartbeat periods a node may miss before it is DOWN.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Most heartbeats per second the leader asks of all its nodes together: 2,000 nodes keep the
/// default 500 ms, 10,000 beat every 5 s (and are DOWN after 15 s of silence).
pub const MAX_BEATS_PER_SECOND: u64 = 2_000;

/// The period the leader asks of a node that asked for `asked_ms`, among `nodes` nodes.
pub fn period_ms(asked_ms: u64, nodes: usize) -> u64 {
    asked_ms.max((nodes as u64).saturating_mul(1000) / MAX_BEATS_PER_SECOND)
}

/// A node's last heartbeat, and the period it was told to keep then.
#[derive(Debug, Clone, Copy)]
struct Beat {
    at: Instant,
    told_ms: u64,
}

/// The last heartbeat of each node, as this leader has seen them.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats {
    seen: Arc<Mutex<HashMap<String, Beat>>>,
}

impl Heartbeats {
    /// A new leader's table: every READY node counts as just heard from.
    pub fn starting(state: &View, now: Instant) -> Heartbeats {
        let count = state.node_count();
        let seen = state
            .nodes()
            .filter(|n| n.value.status == NodeStatus::Ready)
            .map(|n| {
                let told_ms = period_ms(n.value.heartbeat_ms, count);
                (n.value.id.clone(), Beat { at: now, told_ms })
            })
            .collect();
        Heartbeats {
            seen: Arc::new(Mutex::new(seen)),
        }
    }

    /// Records a heartbeat answered with a period of `told_ms`; false if this leader does not
    /// know the node (it must register).
    pub fn beat(&self, node: &str, now: Instant, told_ms: u64) -> bool {
        match self.lock().get_mut(node) {
            Some(beat) => {
                *beat = Beat { at: now, told_ms };
                true
            }
            None => false,
        }
    }

    /// Records a registration by a node that keeps `asked_ms` until its first heartbeat's answer.
    pub fn registered(&self, node: &str, now: Instant, asked_ms: u64) {
        let beat = Beat {
            at: now,
            told_ms: asked_ms,
        };
        self.lock().insert(node.to_string(), beat);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Beat>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks DOWN the READY nodes whose heartbeats stopped, and READY again the DOWN ones heard
/// from since; wakes up in time for the next node that could go DOWN.
pub fn plan(state: &View, heartbeats: &Heartbeats, now: Instant, now_ms: u64) -> Plan {
    let mut writes = Vec::new();
    let mut next: Option<Instant> = None;
    let count = state.node_count();
    let seen = heartbeats.lock();
    for n in state.nodes() {
        let node = &n.value;
        let Some(&Beat { at: last, told_ms }) = seen.get(&node.id) else {
            // A READY node this leader has no beat of yet: its registration is applied but the
            // dispatcher records the beat just after. Look again within a period; without it,
            // nothing would wake this plan if the node died at once in a quiet cluster, and it
            // would stay READY for good.
            if node.status == NodeStatus::Ready {
                let due = now + Duration::from_millis(period_ms(node.heartbeat_ms, count).max(1));
                next = Some(next.map_or(due, |n| n.min(due)));
            }
            continue;
        };
        // A node keeps the period of its last answer until its next heartbeat: never judge it
        // by a shorter one.
        let period = period_ms(node.heartbeat_ms, count).max(told_ms);
        let limit = Duration::from_millis(period.max(1)) * MISSED_HEARTBEATS;
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
            if status == NodeStatus::Down {
                crate::metrics::families::HEARTBEATS_MISSED.inc(&[]);
            }
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

        assert!(hb.beat("a", start + Duration::from_millis(1000), 500));
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
        hb.beat("b", start + Duration::from_millis(1600), 500);
        let p = plan(&state, &hb, start + Duration::from_millis(1700), 0);
        assert_eq!(statuses(&p), vec![("b".into(), NodeStatus::Ready)]);
    }

    #[tokio::test(start_paused = true)]
    async fn down_nodes_are_unknown_to_a_new_leader_until_they_register() {
        let state = View::build(0, vec![node("a", NodeStatus::Down)], vec![], vec![], None);
        let now = Instant::now();
        let hb = Heartbeats::starting(&state, now);
        assert!(!hb.beat("a", now, 500), "a DOWN node must register again");
        assert!(plan(&state, &hb, now + Duration::from_secs(10), 0)
            .writes
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_registered_before_its_beat_is_recorded_is_looked_at_again() {
        // The registration's write woke the plan before the dispatcher recorded the beat.
        let state = View::build(0, vec![node("a", NodeStatus::Ready)], vec![], vec![], None);
        let now = Instant::now();
        let hb = Heartbeats::default();
        let p = plan(&state, &hb, now, 1_000);
        assert!(p.writes.is_empty());
        assert_eq!(p.wake_at_ms, Some(1_500), "within one period");
        // Then the beat is there, and a node that died at once goes DOWN.
        hb.registered("a", now, 500);
        let p = plan(&state, &hb, now + Duration::from_millis(1_500), 2_500);
        assert_eq!(statuses(&p), vec![("a".into(), NodeStatus::Down)]);
    }

    #[test]
    fn large_clusters_beat_less_often() {
        assert_eq!(period_ms(500, 3), 500);
        assert_eq!(period_ms(500, 1_000), 500);
        assert_eq!(period_ms(2_000, 1_000), 2_000, "a node may ask for longer");
        assert_eq!(period_ms(500, 5_000), 2_500);
        assert_eq!(period_ms(500, 10_000), 5_000);
        assert_eq!(period_ms(500, usize::MAX), u64::MAX / MAX_BEATS_PER_SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_node_is_judged_by_the_longest_period_it_may_be_keeping() {
        let nodes: Vec<_> = (0..5_000)
            .map(|i| node(&format!("n{i:04}"), NodeStatus::Ready))
            .collect();
        let state = View::build(0, nodes, vec![], vec![], None);
        let start = Instant::now();
        let hb = Heartbeats::starting(&state, start);
        // 5,000 nodes beat every 2.5 s: 7 s of silence is not yet 3 periods.
        let p = plan(&state, &hb, start + Duration::from_millis(7_000), 0);
        assert!(p.writes.is_empty(), "{:?}", statuses(&p));
        assert_eq!(p.wake_at_ms, Some(500));
        let p = plan(&state, &hb, start + Duration::from_millis(7_500), 0);
        assert_eq!(p.writes.len(), 5_000);

        // Told 2.5 s by its last answer, n0000 is not DOWN after 1.5 s in a cluster that shrank.
        let small = View::build(
            0,
            vec![node("n0000", NodeStatus::Ready)],
            vec![],
            vec![],
            None,
        );
        assert!(hb.beat("n0000", start, 2_500));
        let p = plan(&small, &hb, start + Duration::from_millis(1_500), 0);
        assert!(p.writes.is_empty());
        assert!(hb.beat("n0000", start + Duration::from_millis(2_000), 500));
        let p = plan(&small, &hb, start + Duration::from_millis(3_500), 0);
        assert_eq!(statuses(&p), vec![("n0000".into(), NodeStatus::Down)]);
    }
}
