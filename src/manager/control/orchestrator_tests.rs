//! The orchestrator's decisions on hand-built cluster states.

use std::collections::BTreeMap;

use super::*;
use crate::objects::Versioned;

fn node(id: &str, status: NodeStatus, availability: Availability) -> Versioned<Node> {
    Versioned {
        value: Node {
            id: id.into(),
            name: format!("node-{id}"),
            addr: "127.0.0.2".into(),
            engine_addr: String::new(),
            labels: BTreeMap::new(),
            operator_labels: BTreeMap::new(),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: String::new(),
            images: vec!["img".into()],
            status,
            availability,
            heartbeat_ms: 500,
            message: String::new(),
        },
        mod_revision: 1,
    }
}

fn service(replicas: u64, restart: RestartPolicy) -> Versioned<Service> {
    let mut s: Service = serde_json::from_value(serde_json::json!({
        "id": "s", "name": "web", "image": "img", "replicas": replicas,
    }))
    .unwrap();
    s.restart = restart;
    Versioned {
        value: s,
        mod_revision: 2,
    }
}

fn task(id: &str, slot: u64, state: TaskState, node: Option<&str>) -> Versioned<Task> {
    let mut t = Task::new(id.into(), "s".into(), slot, 100);
    t.state = state;
    t.node_id = node.map(String::from);
    if state.is_terminal() {
        t.desired_state = TaskState::Shutdown;
    }
    Versioned {
        value: t,
        mod_revision: 10,
    }
}

fn state(services: Vec<Versioned<Service>>, tasks: Vec<Versioned<Task>>) -> View {
    View::build(
        20,
        vec![
            node("n1", NodeStatus::Ready, Availability::Active),
            node("n2", NodeStatus::Ready, Availability::Active),
        ],
        services,
        tasks,
        None,
    )
}

fn run(state: &View, now_ms: u64) -> Plan {
    let mut n = 0;
    plan(state, now_ms, &mut || {
        n += 1;
        format!("new{n}")
    })
}

/// (id, slot, state, desired) of a task the plan writes.
type Put = (String, u64, TaskState, TaskState);

/// Every task the plan writes, and the ids it deletes.
fn summary(plan: &Plan) -> (Vec<Put>, Vec<String>) {
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for w in &plan.writes {
        match w {
            Write::Task { task, .. } => {
                puts.push((task.id.clone(), task.slot, task.state, task.desired_state))
            }
            Write::DeleteTask { id, .. } => deletes.push(id.clone()),
            Write::DeleteService { id, .. } => deletes.push(format!("service {id}")),
            other => panic!("unexpected {other:?}"),
        }
    }
    (puts, deletes)
}

use TaskState::*;

#[test]
fn empty_slots_get_new_pending_tasks() {
    let p = run(
        &state(vec![service(3, RestartPolicy::Always)], vec![]),
        1000,
    );
    let (puts, deletes) = summary(&p);
    assert_eq!(
        puts,
        vec![
            ("new1".into(), 1, Pending, Running),
            ("new2".into(), 2, Pending, Running),
            ("new3".into(), 3, Pending, Running),
        ]
    );
    assert!(deletes.is_empty());
    assert!(p.writes.iter().all(|w| matches!(
        w,
        Write::Task {
            expect: Expect::Absent,
            ..
        }
    )));
}

#[test]
fn a_converged_service_needs_no_writes() {
    let tasks = vec![
        task("a", 1, Running, Some("n1")),
        task("b", 2, Running, Some("n2")),
    ];
    let p = run(&state(vec![service(2, RestartPolicy::Always)], tasks), 1000);
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    assert_eq!(p.wake_at_ms, None);
}

#[test]
fn scaling_down_stops_the_highest_slots() {
    let tasks = vec![
        task("a", 1, Running, Some("n1")),
        task("b", 2, Running, Some("n2")),
        task("c", 3, Pending, None),
    ];
    let p = run(&state(vec![service(1, RestartPolicy::Always)], tasks), 1000);
    let (puts, _) = summary(&p);
    assert_eq!(
        puts,
        vec![
            // Running: its agent stops it. Pending: nobody has it, so it ends here.
            ("b".into(), 2, Running, Shutdown),
            ("c".into(), 3, Shutdown, Shutdown),
        ]
    );
}

#[test]
fn tasks_of_a_down_node_are_orphaned_and_replaced_in_their_slot() {
    let mut s = state(
        vec![service(2, RestartPolicy::Always)],
        vec![
            task("a", 1, Running, Some("n1")),
            task("b", 2, Running, Some("n2")),
        ],
    );
    s.put_node(node("n2", NodeStatus::Down, Availability::Active));
    let p = run(&s, 1000);
    let (puts, _) = summary(&p);
    assert_eq!(
        puts,
        vec![
            ("b".into(), 2, Orphaned, Shutdown),
            ("new1".into(), 2, Pending, Running),
        ]
    );
    let Write::Task { task, expect } = &p.writes[0] else {
        panic!()
    };
    assert_eq!(task.message, "node node-n2 is down");
    assert_eq!(*expect, Expect::ModRevision(10));
}

#[test]
fn draining_a_node_replaces_its_tasks_before_stopping_them() {
    let mut s = state(
        vec![service(1, RestartPolicy::Always)],
        vec![task("a", 1, Running, Some("n1"))],
    );
    s.put_node(node("n1", NodeStatus::Ready, Availability::Drain));
    // Start-first: the replacement first, the drained task keeps serving.
    let (puts, _) = summary(&run(&s, 1000));
    assert_eq!(puts, vec![("new1".into(), 1, Pending, Running)]);
    // While the replacement is on its way, nothing moves.
    s.put_task(task("b", 1, Starting, Some("n2")));
    let (puts, _) = summary(&run(&s, 1000));
    assert_eq!(puts, vec![]);
    // Once it serves, the drained one stops.
    s.put_task(task("b", 1, Running, Some("n2")));
    let (puts, _) = summary(&run(&s, 1000));
    assert_eq!(puts, vec![("a".into(), 1, Running, Shutdown)]);
}

#[test]
fn a_drained_task_that_does_not_serve_stops_at_once() {
    let mut s = state(
        vec![service(1, RestartPolicy::Always)],
        vec![task("a", 1, Assigned, Some("n1"))],
    );
    s.put_node(node("n1", NodeStatus::Ready, Availability::Drain));
    let (puts, _) = summary(&run(&s, 1000));
    assert_eq!(
        puts,
        vec![
            ("a".into(), 1, Shutdown, Shutdown),
            ("new1".into(), 1, Pending, Running),
        ]
    );
}

#[test]
fn restart_policy_decides_whether_a_finished_slot_is_refilled() {
    let cases = [
        (RestartPolicy::Always, Complete, true),
        (RestartPolicy::Always, Failed, true),
        (RestartPolicy::OnFailure { max: None }, Complete, false),
        (RestartPolicy::OnFailure { max: None }, Failed, true),
        (RestartPolicy::OnFailure { max: None }, Rejected, true),
        (RestartPolicy::No, Failed, false),
        (RestartPolicy::No, Complete, false),
        // Stopped or orphaned by the cluster: refilled whatever the policy.
        (RestartPolicy::No, Orphaned, true),
        (RestartPolicy::No, Shutdown, true),
    ];
    for (policy, finished, refill) in cases {
        let s = state(
            vec![service(1, policy)],
            vec![task("a", 1, finished, Some("n1"))],
        );
        let (puts, _) = summary(&run(&s, 1000));
        assert_eq!(!puts.is_empty(), refill, "{policy:?} after {finished}");
    }
}

#[test]
fn on_failure_max_counts_failures_in_a_row() {
    let mut failed = task("a", 1, Failed, Some("n1"));
    failed.value.failures = 1;
    let s = state(
        vec![service(1, RestartPolicy::OnFailure { max: Some(2) })],
        vec![failed.clone()],
    );
    let p = run(&s, 10_000);
    let Some(Write::Task { task, .. }) = p.writes.first() else {
        panic!("{:?}", p.writes)
    };
    assert_eq!(task.failures, 2);
    failed.value.failures = 2;
    let s = state(
        vec![service(1, RestartPolicy::OnFailure { max: Some(2) })],
        vec![failed],
    );
    assert!(run(&s, 10_000).writes.is_empty());
}

#[test]
fn a_failing_slot_backs_off_instead_of_creating_tasks_in_a_loop() {
    assert_eq!(
        [0, 1, 2, 3, 4, 5, 9].map(backoff_ms),
        [0, 0, 1000, 2000, 4000, 8000, 10_000]
    );
    let mut failed = task("a", 1, Rejected, Some("n1"));
    failed.value.failures = 2;
    failed.value.updated_ms = 1_000;
    let s = state(vec![service(1, RestartPolicy::Always)], vec![failed]);
    let early = run(&s, 2_000);
    assert!(early.writes.is_empty());
    assert_eq!(early.wake_at_ms, Some(3_000), "third failure in a row: 2 s");
    let due = run(&s, 3_000);
    let (puts, _) = summary(&due);
    assert_eq!(puts, vec![("new1".into(), 1, Pending, Running)]);
}

#[test]
fn duplicates_in_a_slot_keep_the_most_advanced() {
    let tasks = vec![
        task("old", 1, Running, Some("n1")),
        task("new", 1, Assigned, Some("n2")),
    ];
    let (puts, _) = summary(&run(
        &state(vec![service(1, RestartPolicy::Always)], tasks),
        1000,
    ));
    assert_eq!(puts, vec![("new".into(), 1, Shutdown, Shutdown)]);
}

#[test]
fn tasks_of_a_removed_service_are_stopped_then_forgotten() {
    let tasks = vec![
        task("a", 1, Running, Some("n1")),
        task("b", 2, Failed, Some("n2")),
        task("c", 3, Pending, None),
    ];
    let (puts, deletes) = summary(&run(&state(vec![], tasks), 1000));
    assert_eq!(
        puts,
        vec![
            ("a".into(), 1, Running, Shutdown),
            ("c".into(), 3, Shutdown, Shutdown),
        ]
    );
    assert_eq!(deletes, vec!["b".to_string()]);
}

#[test]
fn finished_tasks_beyond_the_retention_limit_are_forgotten() {
    let mut tasks = vec![task("live", 1, Running, Some("n1"))];
    for i in 0..7u64 {
        let mut t = task(&format!("f{i}"), 1, Failed, Some("n1"));
        t.value.updated_ms = 100 + i;
        tasks.push(t);
    }
    // A finished task of a slot that no longer exists goes too.
    tasks.push(task("gone", 2, Complete, Some("n2")));
    let (puts, mut deletes) = summary(&run(
        &state(vec![service(1, RestartPolicy::Always)], tasks),
        1000,
    ));
    assert!(puts.is_empty());
    deletes.sort();
    assert_eq!(deletes, vec!["f0", "f1", "gone"]);
}

/// A plain container (`docker create`): one slot, running when `replicas` is 1.
fn container(replicas: u64, start_seq: u64, restart: RestartPolicy) -> Versioned<Service> {
    let mut s = service(replicas, restart);
    s.value.container = Some(crate::model::Container {
        config: serde_json::json!({"Image": "img"}),
        start_seq,
        auto_remove: false,
        created_ms: 1,
        handover_policy: None,
        handover: None,
    });
    s
}

fn started(mut t: Versioned<Task>, start_seq: u64) -> Versioned<Task> {
    t.value.start_seq = start_seq;
    t
}

#[test]
fn a_created_container_runs_nothing_until_started() {
    let p = run(
        &state(vec![container(0, 0, RestartPolicy::No)], vec![]),
        1000,
    );
    assert_eq!(summary(&p), (vec![], vec![]));
    let p = run(
        &state(vec![container(1, 1, RestartPolicy::No)], vec![]),
        1000,
    );
    let Write::Task { task, .. } = &p.writes[0] else {
        panic!("{:?}", p.writes)
    };
    assert_eq!((task.slot, task.start_seq, task.state), (1, 1, Pending));
}

#[test]
fn a_stopped_container_keeps_its_last_task_and_start_runs_it_again() {
    let exited = started(task("t1", 1, Complete, Some("n1")), 1);
    let older = started(task("t0", 1, Failed, Some("n1")), 1);
    // Stopped (replicas 0): the newest finished task stays, for `ps -a`, logs and exit code.
    let mut newest = exited.clone();
    newest.value.updated_ms = 200;
    let p = run(
        &state(
            vec![container(0, 1, RestartPolicy::No)],
            vec![newest.clone(), older],
        ),
        1000,
    );
    assert_eq!(summary(&p), (vec![], vec!["t0".to_string()]));
    // Restart policy "no" leaves it finished...
    let p = run(
        &state(
            vec![container(1, 1, RestartPolicy::No)],
            vec![newest.clone()],
        ),
        1000,
    );
    assert_eq!(summary(&p), (vec![], vec![]));
    // ...but `docker start` (start_seq 2) runs it again at once, with no backoff.
    let mut failing = newest;
    failing.value.state = Failed;
    failing.value.failures = 6;
    failing.value.updated_ms = 999;
    let p = run(
        &state(vec![container(1, 2, RestartPolicy::No)], vec![failing]),
        1000,
    );
    let (puts, _) = summary(&p);
    assert_eq!(puts, vec![("new1".into(), 1, Pending, Running)]);
}

#[test]
fn a_container_stays_on_its_down_node_unless_it_reschedules() {
    let running = started(task("t1", 1, Running, Some("n2")), 1);
    let mut s = state(
        vec![container(1, 1, RestartPolicy::Always)],
        vec![running.clone()],
    );
    s.put_node(node("n2", NodeStatus::Down, Availability::Active));
    assert_eq!(summary(&run(&s, 1000)), (vec![], vec![]));

    let mut rescheduling = s.services().next().unwrap().clone();
    rescheduling.value.reschedule_on_node_failure = true;
    s.put_service(rescheduling);
    let (puts, _) = summary(&run(&s, 1000));
    assert_eq!(
        puts,
        vec![
            ("t1".into(), 1, Orphaned, Shutdown),
            ("new1".into(), 1, Pending, Running)
        ]
    );
}

#[test]
fn an_auto_remove_container_goes_once_its_task_ended() {
    let mut rm = container(1, 1, RestartPolicy::No);
    rm.value.container.as_mut().unwrap().auto_remove = true;
    let done = started(task("t1", 1, Complete, Some("n1")), 1);
    let p = run(&state(vec![rm.clone()], vec![done.clone()]), 1000);
    assert_eq!(summary(&p), (vec![], vec!["service s".to_string()]));
    // Still running, or started again since: it stays.
    let live = started(task("t1", 1, Running, Some("n1")), 1);
    assert_eq!(
        summary(&run(&state(vec![rm.clone()], vec![live]), 1000)),
        (vec![], vec![])
    );
    rm.value.container.as_mut().unwrap().start_seq = 2;
    let (puts, deletes) = summary(&run(&state(vec![rm], vec![done]), 1000));
    assert_eq!((puts.len(), deletes), (1, vec![]));
}

/// A write with new tasks' ids blanked (each round names them afresh), for comparing plans.
fn normalized(writes: &[Write]) -> Vec<String> {
    let mut out: Vec<String> = writes
        .iter()
        .map(|w| match w {
            Write::Task {
                task,
                expect: Expect::Absent,
            } => {
                let mut t = task.clone();
                t.id = String::new();
                format!("new {t:?}")
            }
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

/// Commits `writes` to `state` as the store would (each on its own expectation).
fn commit(state: &mut View, writes: &[Write], revision: u64) {
    for w in writes {
        match w {
            Write::Task { task, expect } => {
                let current = state.task(&task.id).map(|t| t.mod_revision);
                let ok = match expect {
                    Expect::Absent => current.is_none(),
                    Expect::ModRevision(r) => current == Some(*r),
                };
                if ok {
                    state.put_task(Versioned {
                        value: task.clone(),
                        mod_revision: revision,
                    });
                }
            }
            Write::DeleteTask { id, mod_revision } => {
                if state.task(id).map(|t| t.mod_revision) == Some(*mod_revision) {
                    state.delete_record(&crate::model::keys::task(id));
                }
            }
            Write::DeleteService { id, .. } => {
                state.delete_record(&crate::model::keys::service(id));
            }
            other => panic!("the orchestrator does not write {other:?}"),
        }
    }
    state.set_revision(revision);
}

#[test]
fn incremental_rounds_decide_what_full_rounds_decide() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    for seed in 0..40u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let services: Vec<Versioned<Service>> = (0..4)
            .map(|i| {
                let mut s = service(rng.random_range(0..4), RestartPolicy::Always);
                s.value.id = format!("s{i}");
                s.value.name = format!("web{i}");
                s.value.restart = [
                    RestartPolicy::Always,
                    RestartPolicy::No,
                    RestartPolicy::OnFailure { max: Some(2) },
                ][rng.random_range(0..3)];
                s.value.update_policy.rebalance = rng.random_bool(0.5);
                s
            })
            .collect();
        let mut state = state(services, vec![]);
        let mut orch = Orchestrator::default();
        let (mut a, mut b) = (0, 0);
        let mut now = 1_000;
        for round in 0..25u64 {
            let revision = 100 + round * 2;
            let inc = orch.plan(&state, now, &mut || {
                a += 1;
                format!("a{a}")
            });
            let full = plan(&state, now, &mut || {
                b += 1;
                format!("b{b}")
            });
            assert_eq!(
                normalized(&inc.writes),
                normalized(&full.writes),
                "seed {seed}, round {round}"
            );
            // Never later than a full round (a missed backoff); earlier is one spare round.
            let in_time = match (inc.wake_at_ms, full.wake_at_ms) {
                (_, None) => true,
                (Some(i), Some(f)) => i <= f,
                (None, Some(_)) => false,
            };
            assert!(in_time, "seed {seed}, round {round}");
            commit(&mut state, &inc.writes, revision);
            // The world moves: agents run, tasks fail, nodes go down and come back, services
            // scale.
            let tasks: Vec<Versioned<Task>> = state.tasks().cloned().collect();
            for t in tasks {
                if rng.random_bool(0.3) && !t.value.state.is_terminal() {
                    let mut task = t.value.clone();
                    task.node_id = Some(["n1", "n2"][rng.random_range(0..2)].into());
                    task.state = [Running, Failed, Complete][rng.random_range(0..3)];
                    task.updated_ms = now;
                    state.put_task(Versioned {
                        value: task,
                        mod_revision: revision + 1,
                    });
                }
            }
            if rng.random_bool(0.2) {
                let status = [NodeStatus::Ready, NodeStatus::Down][rng.random_range(0..2)];
                state.put_node(node("n2", status, Availability::Active));
            }
            if rng.random_bool(0.2) {
                let mut s = state
                    .services()
                    .nth(rng.random_range(0..4))
                    .unwrap()
                    .clone();
                s.value.replicas = rng.random_range(0..4);
                s.mod_revision = revision + 1;
                state.put_service(s);
            }
            state.set_revision(revision + 1);
            now += rng.random_range(0..3_000);
        }
    }
}

#[test]
fn an_unhealthy_task_is_stopped_and_replaced_as_a_failure() {
    let unhealthy = |failures: u32| {
        let mut t = task("a", 1, Running, Some("n1"));
        t.value.health = Some(crate::model::Health::Unhealthy);
        t.value.message = "connection refused".into();
        t.value.failures = failures;
        t
    };
    // Always: stopped, and a new task in its slot, counting the failure.
    let p = run(
        &state(vec![service(1, RestartPolicy::Always)], vec![unhealthy(0)]),
        1000,
    );
    let (puts, _) = summary(&p);
    assert_eq!(
        puts,
        vec![
            ("a".into(), 1, Running, Shutdown),
            ("new1".into(), 1, Pending, Running)
        ]
    );
    let written = |p: &Plan, id: &str| -> Task {
        p.writes
            .iter()
            .find_map(|w| match w {
                Write::Task { task, .. } if task.id == id => Some(task.clone()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(written(&p, "a").message, "unhealthy: connection refused");
    assert_eq!(written(&p, "new1").failures, 1);
    // on-failure:1 after one failure already, and no: stopped, not replaced.
    for policy in [RestartPolicy::OnFailure { max: Some(1) }, RestartPolicy::No] {
        let p = run(&state(vec![service(1, policy)], vec![unhealthy(1)]), 1000);
        let (puts, _) = summary(&p);
        assert_eq!(puts, vec![("a".into(), 1, Running, Shutdown)], "{policy:?}");
    }
    // Once it has stopped, its end still counts as a failure: no replacement for `no`.
    let mut ended = unhealthy(0);
    ended.value.state = Shutdown;
    ended.value.desired_state = Shutdown;
    let p = run(
        &state(vec![service(1, RestartPolicy::No)], vec![ended]),
        1000,
    );
    assert!(p.writes.is_empty(), "{:?}", p.writes);
    // A second failure in a row waits out the backoff.
    let p = run(
        &state(vec![service(1, RestartPolicy::Always)], vec![unhealthy(1)]),
        100,
    );
    assert_eq!(summary(&p).0, vec![("a".into(), 1, Running, Shutdown)]);
    assert_eq!(p.wake_at_ms, Some(100 + backoff_ms(2)));
}

#[test]
fn a_healthy_or_starting_task_is_left_alone() {
    for health in [
        crate::model::Health::Healthy,
        crate::model::Health::Starting,
    ] {
        let mut t = task("a", 1, Running, Some("n1"));
        t.value.health = Some(health);
        let p = run(
            &state(vec![service(1, RestartPolicy::Always)], vec![t]),
            1000,
        );
        assert!(p.writes.is_empty(), "{health:?}: {:?}", p.writes);
    }
}

#[test]
fn new_tasks_carry_the_drain_delay_of_their_service() {
    let mut routed = service(1, RestartPolicy::Always);
    routed
        .value
        .labels
        .insert("interlock.hostname".into(), "test".into());
    let grace = |s: Versioned<Service>| match &run(&state(vec![s], vec![]), 1000).writes[0] {
        Write::Task { task, .. } => task.stop_grace_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(grace(service(1, RestartPolicy::Always)), 0, "not routed");
    assert_eq!(grace(routed.clone()), DEFAULT_STOP_GRACE_MS);
    routed.value.stop_grace_ms = Some(750);
    assert_eq!(grace(routed), 750);
}

/// Three ready nodes that have the service's image, and `tasks`, of a service of `replicas`
/// that rebalances.
fn rebalancing(replicas: u64, tasks: Vec<Versioned<Task>>) -> View {
    let mut svc = service(replicas, RestartPolicy::Always);
    svc.value.update_policy.rebalance = true;
    let nodes = ["n1", "n2", "n3"].map(|id| node(id, NodeStatus::Ready, Availability::Active));
    View::build(20, nodes, vec![svc], tasks, None)
}

/// The tasks the plan creates, as (slot, the node each leaves).
fn moves(plan: &Plan) -> Vec<(u64, Option<String>)> {
    plan.writes
        .iter()
        .filter_map(|w| match w {
            Write::Task {
                task,
                expect: Expect::Absent,
            } => Some((task.slot, task.moves_from.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_rebalance_moves_one_task_at_a_time_off_the_crowded_node_start_first() {
    let on_n1: Vec<_> = (1..=4)
        .map(|slot| task(&format!("t{slot}"), slot, Running, Some("n1")))
        .collect();
    // Everything on n1, nothing on n2 and n3: slot 4 moves first, and nothing stops yet.
    let p = run(&rebalancing(4, on_n1.clone()), 1_000);
    assert_eq!(moves(&p), vec![(4, Some("n1".into()))]);
    assert_eq!(p.writes.len(), 1, "{:?}", p.writes);

    // The move is on its way: nothing else moves, the old task stays.
    let mut mover = task("m4", 4, Assigned, Some("n2"));
    mover.value.moves_from = Some("n1".into());
    let mut tasks = on_n1.clone();
    tasks.push(mover.clone());
    assert!(run(&rebalancing(4, tasks.clone()), 1_000).writes.is_empty());

    // It serves: the task it replaces stops, and only then may the next move start.
    mover.value.state = Running;
    tasks.pop();
    tasks.push(mover.clone());
    let p = run(&rebalancing(4, tasks), 1_000);
    let (puts, _) = summary(&p);
    assert_eq!(puts, vec![("t4".into(), 4, Running, Shutdown)]);
    assert!(moves(&p).is_empty());
    let stopped = p.writes.iter().find_map(|w| match w {
        Write::Task { task, .. } if task.id == "t4" => Some(task.message.clone()),
        _ => None,
    });
    assert_eq!(stopped.as_deref(), Some("rebalanced to node node-n2"));

    // Once it stopped: 3 on n1, 1 on n2, none on n3, so slot 3 moves.
    let mut tasks: Vec<_> = on_n1[..3].to_vec();
    tasks.push(mover);
    assert_eq!(
        moves(&run(&rebalancing(4, tasks.clone()), 1_000)),
        vec![(3, Some("n1".into()))]
    );
    // Even (2, 1, 1): nothing moves.
    let mut moved = task("m3", 3, Running, Some("n3"));
    moved.value.moves_from = Some("n1".into());
    tasks.retain(|t| t.value.id != "t3");
    tasks.push(moved);
    assert!(run(&rebalancing(4, tasks), 1_000).writes.is_empty());
}

#[test]
fn a_rebalance_waits_for_a_settled_service_and_its_policy() {
    let mut tasks: Vec<_> = (1..=3)
        .map(|slot| task(&format!("t{slot}"), slot, Running, Some("n1")))
        .collect();
    tasks.push(task("t4", 4, Starting, Some("n1")));
    // A task still starting: no move yet.
    assert!(moves(&run(&rebalancing(4, tasks.clone()), 1_000)).is_empty());
    // Without the policy, a crowded node stays as it is.
    tasks[3].value.state = Running;
    let mut still = rebalancing(4, tasks.clone());
    let mut svc = still.service("s").unwrap().clone();
    svc.value.update_policy.rebalance = false;
    still.put_service(svc);
    assert!(run(&still, 1_000).writes.is_empty());
    // With it, and parallelism 2, two moves at once.
    let mut two = rebalancing(4, tasks);
    let mut svc = two.service("s").unwrap().clone();
    svc.value.update_policy.parallelism = 2;
    two.put_service(svc);
    assert_eq!(
        moves(&run(&two, 1_000)),
        vec![(3, Some("n1".into())), (4, Some("n1".into()))]
    );
}

#[test]
fn a_move_that_finds_no_node_is_called_off_and_retried_later() {
    let mut tasks: Vec<_> = (1..=4)
        .map(|slot| task(&format!("t{slot}"), slot, Running, Some("n1")))
        .collect();
    let mut mover = task("m4", 4, Pending, None);
    mover.value.moves_from = Some("n1".into());
    mover.value.message = "no suitable node: host port 80/tcp free: 0 of 3 nodes match".into();
    tasks.push(mover.clone());
    let p = run(&rebalancing(4, tasks.clone()), 5_000);
    let (puts, _) = summary(&p);
    assert_eq!(puts, vec![("m4".into(), 4, Shutdown, Shutdown)]);
    assert!(moves(&p).is_empty());

    // Called off at 5 s: no new move before 15 s, and the orchestrator wakes up then.
    mover.value.state = Shutdown;
    mover.value.desired_state = Shutdown;
    mover.value.updated_ms = 5_000;
    tasks.pop();
    tasks.push(mover);
    let p = run(&rebalancing(4, tasks.clone()), 6_000);
    assert!(p.writes.is_empty());
    assert_eq!(p.wake_at_ms, Some(5_000 + rebalance::RETRY_AFTER_MS));
    assert_eq!(
        moves(&run(&rebalancing(4, tasks), 15_000)),
        vec![(4, Some("n1".into()))]
    );
}

/// Compose's recreate of container `old` (handing over since 1000) by `new`, both of compose
/// project p, service web, number 1; the successor's task in `new_state` if any.
fn handover_state(new_state: Option<TaskState>) -> View {
    let compose = |s: &mut Service| {
        for (k, v) in [
            (crate::model::COMPOSE_PROJECT, "p"),
            (crate::model::COMPOSE_SERVICE, "web"),
            (crate::model::COMPOSE_NUMBER, "1"),
        ] {
            s.labels.insert(k.into(), v.into());
        }
    };
    let mut old = container(1, 1, RestartPolicy::No);
    old.value.name = "7f3e_p_web_1".into();
    compose(&mut old.value);
    old.value.container.as_mut().unwrap().handover = Some(crate::model::Handover {
        name: "p_web_1".into(),
        since_ms: 1_000,
    });
    let mut new = container(1, 1, RestartPolicy::No);
    new.value.id = "n".into();
    new.value.name = "p_web_1".into();
    compose(&mut new.value);
    let mut tasks = vec![started(task("old", 1, Running, Some("n1")), 1)];
    if let Some(state) = new_state {
        let mut t = started(task("new", 1, state, Some("n2")), 1);
        t.value.service_id = "n".into();
        tasks.push(t);
    }
    let services = match new_state {
        Some(_) => vec![old, new],
        None => vec![old],
    };
    state(services, tasks)
}

/// The handing-over container's record as the plan writes it, if it does.
fn handed_over(plan: &Plan) -> Option<&Service> {
    plan.writes.iter().find_map(|w| match w {
        Write::Service { service, .. } if service.id == "s" => Some(&**service),
        _ => None,
    })
}

#[test]
fn a_container_handing_over_stops_once_its_successor_serves() {
    // The successor runs, not healthy yet: the old one keeps serving, woken at the timeout.
    let mut s = handover_state(Some(Running));
    let mut unhealthy = s.task("new").unwrap().clone();
    unhealthy.value.health = Some(Health::Starting);
    s.put_task(unhealthy.clone());
    let p = run(&s, 3_000);
    assert!(handed_over(&p).is_none(), "{:?}", p.writes);
    assert_eq!(
        p.wake_at_ms,
        Some(1_000 + crate::model::HANDOVER_TIMEOUT_MS)
    );
    // Healthy: the old container's record says stopped, and nothing else happens this round.
    unhealthy.value.health = Some(Health::Healthy);
    s.put_task(unhealthy);
    let p = run(&s, 3_000);
    let written = handed_over(&p).expect("the old container stops");
    assert_eq!(written.replicas, 0);
    assert_eq!(written.container.as_ref().unwrap().handover, None);
    assert!(!p
        .writes
        .iter()
        .any(|w| matches!(w, Write::Task { task, .. } if task.id == "old")));
    // The next round stops its task as `docker stop`'s: asked to shut down, still RUNNING
    // (the agent waits its drain delay), so out of the proxies.
    let mut after = s.clone();
    after.put_service(Versioned {
        value: written.clone(),
        mod_revision: 30,
    });
    let (puts, _) = summary(&run(&after, 3_100));
    assert_eq!(puts, vec![("old".into(), 1, Running, Shutdown)]);
}

#[test]
fn a_handover_without_a_successor_or_past_its_bound_is_an_ordinary_stop() {
    // No successor (`docker-compose stop`): kept only for the orphan window.
    let s = handover_state(None);
    let p = run(&s, 2_000);
    assert!(handed_over(&p).is_none());
    assert_eq!(p.wake_at_ms, Some(1_000 + crate::model::HANDOVER_ORPHAN_MS));
    let p = run(&s, 1_000 + crate::model::HANDOVER_ORPHAN_MS);
    assert_eq!(handed_over(&p).map(|s| s.replicas), Some(0));
    // A successor that never serves: stopped at the timeout.
    let s = handover_state(Some(Starting));
    assert!(handed_over(&run(&s, 20_000)).is_none());
    let p = run(&s, 1_000 + crate::model::HANDOVER_TIMEOUT_MS);
    assert_eq!(handed_over(&p).map(|s| s.replicas), Some(0));
    // A stopped container's stale handover is nothing to decide.
    let mut s = handover_state(Some(Running));
    let mut stopped = s.service("s").unwrap().clone();
    stopped.value.replicas = 0;
    s.put_service(stopped);
    assert!(handed_over(&run(&s, 3_000)).is_none());
}

#[test]
fn the_loop_replans_a_handover_when_only_its_successor_changes() {
    let mut s = handover_state(Some(Starting));
    let mut orch = Orchestrator::default();
    let mut n = 0;
    let mut ids = || {
        n += 1;
        format!("new{n}")
    };
    assert!(handed_over(&orch.plan(&s, 2_000, &mut ids)).is_none());
    let mut t = s.task("new").unwrap().clone();
    t.value.state = Running;
    t.mod_revision = 40;
    s.put_task(t);
    let p = orch.plan(&s, 2_100, &mut ids);
    assert_eq!(
        handed_over(&p).map(|s| s.replicas),
        Some(0),
        "{:?}",
        p.writes
    );
}
