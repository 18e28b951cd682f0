//! The scheduler loop's planning half: hands the PENDING tasks of one store read to the pure
//! scheduler (`crate::scheduler::schedule`) and turns its decisions into writes: ASSIGNED on
//! the chosen node, or the reason a task stays PENDING (written only when it changes).

use rand::rngs::StdRng;

use crate::model::{Actor, TaskState};
use crate::scheduler::{self, Decision, Snapshot, Strategy};

use crate::objects::{Expect, View, Write};

use super::Plan;

/// Decides the scheduler's writes for `state` at `now_ms`.
pub fn plan(state: &View, now_ms: u64, strategy: Strategy, rng: &mut StdRng) -> Plan {
    if !state.has_pending() {
        return Plan::default();
    }
    let snapshot = Snapshot::new(
        state.nodes().map(|n| &n.value),
        state.services().map(|s| &s.value),
        state.tasks().map(|t| &t.value),
    );
    let pending = snapshot.pending();
    let decisions = scheduler::schedule(&pending, &snapshot, strategy, rng);
    let mut writes = Vec::new();
    for decision in decisions {
        let (id, node, reason) = match &decision {
            Decision::Assign { task_id, node_id } => (task_id, Some(node_id), None),
            Decision::Unschedulable { task_id, reason } => (task_id, None, Some(reason)),
        };
        let Some(current) = state.task(id) else {
            continue;
        };
        let rev = current.mod_revision;
        let mut task = current.value.clone();
        if let Some(node) = node {
            task.node_id = Some(node.clone());
            if task
                .transition(TaskState::Assigned, Actor::Scheduler, "", now_ms)
                .is_err()
            {
                continue;
            }
        } else if let Some(reason) = reason {
            if task.message == *reason {
                continue;
            }
            task.message = reason.clone();
            task.updated_ms = now_ms;
        }
        writes.push(Write::Task {
            task,
            expect: Expect::ModRevision(rev),
        });
    }
    Plan {
        writes,
        wake_at_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::SeedableRng;

    use super::*;
    use crate::model::{Node, NodeStatus, Service, Task};
    use crate::objects::Versioned;

    fn node(id: &str, labels: &[(&str, &str)]) -> Versioned<Node> {
        Versioned {
            value: Node {
                id: id.into(),
                name: id.into(),
                addr: "127.0.0.2".into(),
                engine_addr: String::new(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                operator_labels: BTreeMap::new(),
                cpus: 2,
                memory_bytes: 1 << 30,
                engine_version: String::new(),
                images: vec!["img:latest".into()],
                status: NodeStatus::Ready,
                availability: Default::default(),
                heartbeat_ms: 500,
                message: String::new(),
            },
            mod_revision: 1,
        }
    }

    fn state(constraint: Option<&str>) -> View {
        let service: Service = serde_json::from_value(serde_json::json!({
            "id": "s", "name": "web", "image": "img", "replicas": 2,
            "constraints": constraint.into_iter().collect::<Vec<_>>(),
        }))
        .unwrap();
        let mut tasks = Vec::new();
        for slot in 1..=2 {
            let mut t = Task::new(format!("t{slot}"), "s".into(), slot, 10);
            t.state = TaskState::Pending;
            tasks.push(Versioned {
                value: t,
                mod_revision: 5 + slot,
            });
        }
        View::build(
            9,
            vec![node("n1", &[("storage", "ssd")]), node("n2", &[])],
            vec![Versioned {
                value: service,
                mod_revision: 2,
            }],
            tasks,
            None,
        )
    }

    #[test]
    fn pending_tasks_are_assigned_and_spread() {
        let plan = plan(
            &state(None),
            100,
            Strategy::Spread,
            &mut StdRng::seed_from_u64(1),
        );
        let assigned: Vec<(String, Option<String>, TaskState, Expect)> = plan
            .writes
            .iter()
            .map(|w| match w {
                Write::Task { task, expect } => {
                    (task.id.clone(), task.node_id.clone(), task.state, *expect)
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            assigned,
            vec![
                (
                    "t1".into(),
                    Some("n1".into()),
                    TaskState::Assigned,
                    Expect::ModRevision(6)
                ),
                (
                    "t2".into(),
                    Some("n2".into()),
                    TaskState::Assigned,
                    Expect::ModRevision(7)
                ),
            ]
        );
    }

    #[test]
    fn an_unplaceable_task_gets_its_reason_once() {
        let mut s = state(Some("storage==nvme"));
        let mut rng = StdRng::seed_from_u64(1);
        let first = plan(&s, 100, Strategy::Spread, &mut rng);
        assert_eq!(first.writes.len(), 2);
        let Write::Task { task, .. } = &first.writes[0] else {
            panic!()
        };
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(
            task.message,
            "no suitable node: constraint storage==nvme: 0 of 2 nodes match"
        );
        // Once written, the same reason is not written again.
        for w in &first.writes {
            let Write::Task { task, .. } = w else {
                panic!()
            };
            let mod_revision = s.task(&task.id).unwrap().mod_revision;
            s.put_task(Versioned {
                value: task.clone(),
                mod_revision,
            });
        }
        assert!(plan(&s, 200, Strategy::Spread, &mut rng).writes.is_empty());
    }
}
