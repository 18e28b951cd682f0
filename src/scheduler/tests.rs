//! Batch scheduling over whole snapshots: the seed scenario and placements that must account for
//! each other within one batch.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::testutil::{node, service, task};
use super::*;
use crate::model::{Node, PortSpec, Protocol};

fn replicas(svc: &Service, n: u64) -> Vec<Task> {
    (1..=n).map(|slot| task(svc, slot, None)).collect()
}

fn run(nodes: &[Node], services: &[&Service], tasks: &[Task], strategy: Strategy) -> Vec<Decision> {
    let snapshot = Snapshot::new(nodes, services.iter().copied(), tasks);
    schedule(
        &snapshot.pending(),
        &snapshot,
        strategy,
        &mut StdRng::seed_from_u64(42),
    )
}

/// Node id → number of tasks assigned to it; panics on an unschedulable task.
fn per_node(decisions: &[Decision]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in decisions {
        match d {
            Decision::Assign { node_id, .. } => *counts.entry(node_id.clone()).or_default() += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    counts
}

fn seed_nodes() -> Vec<Node> {
    vec![node(1, &[("storage", "ssd")]), node(2, &[])]
}

#[test]
fn seed_four_replicas_spread_two_and_two() {
    let web = service("web");
    let decisions = run(&seed_nodes(), &[&web], &replicas(&web, 4), Strategy::Spread);
    assert_eq!(
        per_node(&decisions),
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2)])
    );
}

#[test]
fn seed_ssd_constraint_lands_on_node_1_only() {
    let mut db = service("db");
    db.constraints = vec!["storage==ssd".into()];
    let decisions = run(&seed_nodes(), &[&db], &replicas(&db, 3), Strategy::Spread);
    assert_eq!(per_node(&decisions), BTreeMap::from([("n1".into(), 3)]));
}

#[test]
fn a_label_an_agent_reports_does_not_attract_a_task_meant_for_an_operators_label() {
    // node 1's agent claims storage=ssd itself; the operator labelled node 2 (node update).
    let mut nodes = vec![node(1, &[("storage", "ssd")]), node(2, &[])];
    nodes[1]
        .operator_labels
        .insert("storage".into(), "ssd".into());
    let mut db = service("db");
    db.constraints = vec!["node.labels.storage==ssd".into()];
    let decisions = run(&nodes, &[&db], &replicas(&db, 3), Strategy::Spread);
    assert_eq!(per_node(&decisions), BTreeMap::from([("n2".into(), 3)]));
    // The agent's own labels stay available by their name, and classic Swarm's bare key
    // means either.
    db.constraints = vec!["engine.labels.storage==ssd".into()];
    let decisions = run(&nodes, &[&db], &replicas(&db, 2), Strategy::Spread);
    assert_eq!(per_node(&decisions), BTreeMap::from([("n1".into(), 2)]));
    db.constraints = vec!["storage==ssd".into()];
    let decisions = run(&nodes, &[&db], &replicas(&db, 2), Strategy::Spread);
    assert_eq!(
        per_node(&decisions),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 1)])
    );
    // Nobody can claim an operator's label: with none set, nothing fits.
    nodes[1].operator_labels.clear();
    db.constraints = vec!["node.labels.storage==ssd".into()];
    let decisions = run(&nodes, &[&db], &replicas(&db, 1), Strategy::Spread);
    assert!(
        matches!(&decisions[..], [Decision::Unschedulable { .. }]),
        "{decisions:?}"
    );
}

#[test]
fn seed_impossible_constraint_leaves_tasks_pending_with_the_reason() {
    let mut db = service("db");
    db.constraints = vec!["storage==nvme".into()];
    let decisions = run(&seed_nodes(), &[&db], &replicas(&db, 2), Strategy::Spread);
    assert_eq!(decisions.len(), 2);
    for d in decisions {
        let Decision::Unschedulable { reason, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            reason,
            "no suitable node: constraint storage==nvme: 0 of 2 nodes match"
        );
    }
}

#[test]
fn replicas_with_one_host_port_never_share_a_node() {
    let mut web = service("web");
    web.ports = vec![PortSpec {
        container_port: 80,
        protocol: Protocol::Tcp,
        host_port: Some(80),
    }];
    let decisions = run(
        &seed_nodes(),
        &[&web],
        &replicas(&web, 3),
        Strategy::Binpack,
    );
    assert_eq!(
        per_node(&decisions[..2]),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 1)])
    );
    assert_eq!(
        decisions[2],
        Decision::Unschedulable {
            task_id: "web.3".into(),
            reason: "no suitable node: host port 80/tcp free: 0 of 2 nodes match".into(),
        }
    );
}

#[test]
fn running_tasks_count_and_spread_fills_the_emptier_node() {
    let (web, api) = (service("web"), service("api"));
    let mut tasks = vec![task(&api, 1, Some("n1")), task(&api, 2, Some("n1"))];
    tasks.extend(replicas(&web, 4));
    let decisions = run(&seed_nodes(), &[&web, &api], &tasks, Strategy::Spread);
    assert_eq!(
        per_node(&decisions),
        BTreeMap::from([("n1".into(), 1), ("n2".into(), 3)])
    );
}

#[test]
fn binpack_fills_a_node_before_the_next() {
    let mut web = service("web");
    web.reservations.nano_cpus = 1_000_000_000; // 2 CPUs per node: two fit on each.
    let decisions = run(
        &seed_nodes(),
        &[&web],
        &replicas(&web, 3),
        Strategy::Binpack,
    );
    let nodes: Vec<_> = decisions
        .iter()
        .map(|d| match d {
            Decision::Assign { node_id, .. } => node_id.as_str(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(nodes, ["n1", "n1", "n2"]);
}

#[test]
fn random_is_deterministic_for_a_seed() {
    let web = service("web");
    let tasks = replicas(&web, 8);
    let a = run(&seed_nodes(), &[&web], &tasks, Strategy::Random);
    assert_eq!(a, run(&seed_nodes(), &[&web], &tasks, Strategy::Random));
    assert_eq!(per_node(&a).values().sum::<usize>(), 8);
}

#[test]
fn bad_expressions_and_missing_services_are_reasons() {
    let mut db = service("db");
    db.constraints = vec!["storage=ssd".into()];
    let err = validate(&db).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid constraint \"storage=ssd\""),
        "{err}"
    );
    let decisions = run(&seed_nodes(), &[&db], &replicas(&db, 1), Strategy::Spread);
    assert_eq!(
        decisions,
        [Decision::Unschedulable {
            task_id: "db.1".into(),
            reason: err.to_string()
        }]
    );
    let orphan = replicas(&service("gone"), 1);
    let decisions = run(&seed_nodes(), &[], &orphan, Strategy::Spread);
    assert_eq!(
        decisions,
        [Decision::Unschedulable {
            task_id: "gone.1".into(),
            reason: "service svc-gone does not exist".into()
        }]
    );
    assert!(validate(&service("ok")).is_ok());
}

#[test]
fn pending_skips_placed_and_unwanted_tasks() {
    let web = service("web");
    let mut tasks = replicas(&web, 3);
    tasks[0].node_id = Some("n1".into());
    tasks[0].state = TaskState::Assigned;
    tasks[1].desired_state = TaskState::Shutdown;
    let nodes = seed_nodes();
    let services = [web];
    let snapshot = Snapshot::new(&nodes, &services, &tasks);
    let ids: Vec<_> = snapshot.pending().iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["web.3"]);
}
