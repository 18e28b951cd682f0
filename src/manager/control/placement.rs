//! The scheduler loop's planning half: hands the PENDING tasks of one store read to the pure
//! scheduler (`crate::scheduler::schedule_on`) and turns its decisions into writes: ASSIGNED on
//! the chosen node, or the reason a task stays PENDING (written only when it changes). What the
//! nodes hold is counted once and then followed from view to view: a plan costs what changed
//! since the last one plus the pending tasks, not a count of every task in the cluster.

use std::collections::HashSet;

use rand::rngs::StdRng;

use crate::metrics::families;
use crate::model::{Actor, Task, TaskState};
use crate::scheduler::{self, Decision, Occupancy, Snapshot, Strategy};

use crate::objects::{View, Write};

use super::Plan;

/// The scheduler loop's state across plans.
#[derive(Debug, Default)]
pub struct Placement {
    /// What the nodes hold in `counted`.
    occupancy: Occupancy,
    /// The view `occupancy` was last brought up to; None before the first plan.
    counted: Option<View>,
}

impl Placement {
    /// Decides the scheduler's writes for `state` at `now_ms`.
    pub fn plan(
        &mut self,
        state: &View,
        now_ms: u64,
        strategy: Strategy,
        rng: &mut StdRng,
    ) -> Plan {
        if !state.has_pending() {
            return Plan::default();
        }
        self.count(state);
        decide(state, &mut self.occupancy, now_ms, strategy, rng)
    }

    /// Brings the counters from the last view counted up to `state`.
    fn count(&mut self, state: &View) {
        match &self.counted {
            Some(counted) => follow(&mut self.occupancy, counted, state),
            None => {
                self.occupancy = Occupancy::of(
                    state.services().map(|s| &s.value),
                    state.tasks().map(|t| &t.value),
                )
            }
        }
        self.counted = Some(state.clone());
    }
}

/// Updates `occupancy`, the counters of `old`, to those of `new`: the tasks that changed, and
/// every task of a service that changed (what a task holds comes partly from its service).
fn follow(occupancy: &mut Occupancy, old: &View, new: &View) {
    let services: HashSet<&str> = new
        .service_changes(old)
        .map(|c| {
            let s = c.current().or(c.previous()).expect("a change has a side");
            s.value.id.as_str()
        })
        .collect();
    for &id in &services {
        let before = old.service(id).map(|s| &s.value);
        for task in old.tasks_of_service(id) {
            occupancy.remove(&task.value, before);
        }
        let after = new.service(id).map(|s| &s.value);
        for task in new.tasks_of_service(id) {
            occupancy.add(&task.value, after);
        }
    }
    let counted = |task: &Task| !services.contains(task.service_id.as_str());
    for change in new.task_changes(old) {
        if let Some(before) = change.previous().filter(|t| counted(&t.value)) {
            let task = &before.value;
            occupancy.remove(task, old.service(&task.service_id).map(|s| &s.value));
        }
        if let Some(after) = change.current().filter(|t| counted(&t.value)) {
            let task = &after.value;
            occupancy.add(task, new.service(&task.service_id).map(|s| &s.value));
        }
    }
}

/// Decides the scheduler's writes for `state`, whose nodes hold what `occupancy` counts.
fn decide(
    state: &View,
    occupancy: &mut Occupancy,
    now_ms: u64,
    strategy: Strategy,
    rng: &mut StdRng,
) -> Plan {
    // The index keeps pending tasks in line, oldest first: the order `Snapshot::pending` sorts
    // into. `schedule_on` reads no tasks of the snapshot: `occupancy` stands for them.
    let pending: Vec<&Task> = state.pending().map(|t| &t.value).collect();
    let snapshot = Snapshot {
        nodes: state.nodes().map(|n| &n.value).collect(),
        services: state.services().map(|s| &s.value).collect(),
        tasks: Vec::new(),
    };
    let decisions = scheduler::schedule_on(&pending, &snapshot, occupancy, strategy, rng);
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
            let waited_ms = now_ms.saturating_sub(task.created_ms);
            task.node_id = Some(node.clone());
            if task
                .transition(TaskState::Assigned, Actor::Scheduler, "", now_ms)
                .is_err()
            {
                continue;
            }
            families::PLACEMENTS.inc(&[]);
            families::PLACEMENT_SECONDS.observe(&[], waited_ms as f64 / 1000.0);
        } else if let Some(reason) = reason {
            if task.message == *reason {
                continue;
            }
            families::UNSCHEDULABLE.inc(&[]);
            task.message = reason.clone();
            task.updated_ms = now_ms;
        }
        // Only the fields that changed travel the log (node, state, message, time).
        writes.extend(Write::task_change(&current.value, rev, &task));
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
    use crate::objects::{Expect, Versioned};
    use crate::scheduler::Occupancy;

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

    /// The task a write of the plan leaves in `state`, and what it expected.
    fn written(state: &View, w: &Write) -> (Task, Expect) {
        let Write::TaskChange {
            id,
            mod_revision,
            patch,
        } = w
        else {
            panic!("{w:?}")
        };
        let mut json = serde_json::to_value(&state.task(id).unwrap().value).unwrap();
        shoal_raft::merge_patch(&mut json, patch);
        (
            serde_json::from_value(json).unwrap(),
            Expect::ModRevision(*mod_revision),
        )
    }

    #[test]
    fn pending_tasks_are_assigned_and_spread() {
        let s = state(None);
        let plan =
            Placement::default().plan(&s, 100, Strategy::Spread, &mut StdRng::seed_from_u64(1));
        let assigned: Vec<(String, Option<String>, TaskState, Expect)> = plan
            .writes
            .iter()
            .map(|w| {
                let (task, expect) = written(&s, w);
                (task.id, task.node_id, task.state, expect)
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
        let mut placement = Placement::default();
        let first = placement.plan(&s, 100, Strategy::Spread, &mut rng);
        assert_eq!(first.writes.len(), 2);
        let (task, _) = written(&s, &first.writes[0]);
        assert_eq!(task.state, TaskState::Pending);
        assert_eq!(
            task.message,
            "no suitable node: constraint storage==nvme: 0 of 2 nodes match"
        );
        // Once written, the same reason is not written again.
        for w in &first.writes {
            let (task, _) = written(&s, w);
            let mod_revision = s.task(&task.id).unwrap().mod_revision;
            s.put_task(Versioned {
                value: task,
                mod_revision,
            });
        }
        assert!(placement
            .plan(&s, 200, Strategy::Spread, &mut rng)
            .writes
            .is_empty());
    }

    /// Random changes to tasks, services and nodes, in random steps: the counters followed from
    /// view to view are always those a count of the whole view gives.
    #[test]
    fn followed_counters_equal_a_full_count() {
        use rand::Rng;

        let states = [
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Shutdown,
            TaskState::Failed,
        ];
        for seed in 0..40 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut view = View::default();
            let mut followed = Occupancy::default();
            let mut counted = view.clone();
            let mut revision = 0;
            for step in 0..60 {
                for _ in 0..rng.random_range(1..8) {
                    revision += 1;
                    match rng.random_range(0..10) {
                        0 => {
                            let id = format!("s{}", rng.random_range(0..4));
                            let mut service: Service = serde_json::from_value(serde_json::json!({
                                "id": id, "name": format!("web{}", rng.random_range(0..3)),
                                "image": format!("img:{}", rng.random_range(0..3)),
                                "replicas": 1,
                            }))
                            .unwrap();
                            if rng.random_bool(0.5) {
                                let value = format!("v{}", rng.random_range(0..2));
                                service.labels.insert("tier".into(), value);
                            }
                            if rng.random_bool(0.3) {
                                service.ports = vec![serde_json::from_value(
                                    serde_json::json!({"container_port": 80, "host_port": 8080}),
                                )
                                .unwrap()];
                            }
                            service.reservations.nano_cpus = rng.random_range(0..3) * 1_000;
                            view.put_service(Versioned {
                                value: service,
                                mod_revision: revision,
                            });
                        }
                        1 => view.delete_record(&crate::model::keys::service(&format!(
                            "s{}",
                            rng.random_range(0..4)
                        ))),
                        2 => view.delete_record(&crate::model::keys::task(&format!(
                            "t{}",
                            rng.random_range(0..30)
                        ))),
                        3 => view.put_node(node(&format!("n{}", rng.random_range(0..3)), &[])),
                        _ => {
                            let slot = rng.random_range(0..30);
                            let service = format!("s{}", rng.random_range(0..4));
                            let mut t = Task::new(format!("t{slot}"), service, slot, 10);
                            t.state = states[rng.random_range(0..states.len())];
                            t.node_id = rng
                                .random_bool(0.8)
                                .then(|| format!("n{}", rng.random_range(0..3)));
                            view.put_task(Versioned {
                                value: t,
                                mod_revision: revision,
                            });
                        }
                    }
                }
                view.set_revision(revision);
                if rng.random_bool(0.5) {
                    follow(&mut followed, &counted, &view);
                    counted = view.clone();
                    let full = Occupancy::of(
                        view.services().map(|s| &s.value),
                        view.tasks().map(|t| &t.value),
                    );
                    assert_eq!(followed, full, "seed {seed}, step {step}");
                }
            }
        }
    }
}
