//! Unit tests of the reconcile decision, with plain assignment sets and containers.

use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::engine::Owner;
use crate::model::PublishedPort;

const NODE: &str = "node1";

fn node() -> Node<'static> {
    Node {
        id: NODE,
        host_ip: "127.0.0.2".parse().unwrap(),
    }
}

fn service() -> Service {
    serde_json::from_value(serde_json::json!({
        "id": "svc1", "name": "web", "image": "shoal/whoami:latest", "replicas": 3,
        "ports": [{"container_port": 80}],
    }))
    .unwrap()
}

fn assigned(id: &str, state: TaskState, desired: TaskState) -> Assignment {
    let mut task = Task::new(id.into(), "svc1".into(), 1, 0);
    task.node_id = Some(NODE.into());
    task.state = state;
    task.desired_state = desired;
    Assignment {
        task,
        service: Some(service()),
    }
}

/// RUNNING, with the ports its container (as `container` makes it) published.
fn running_task(id: &str) -> Assignment {
    let mut a = assigned(id, TaskState::Running, TaskState::Running);
    a.task.ports = container(id, Some(id), ContainerState::Running).ports;
    a
}

fn container(id: &str, task: Option<&str>, state: ContainerState) -> ContainerInfo {
    let owner = task.map(|t| Owner {
        task: t.into(),
        service: "svc1".into(),
        node: NODE.into(),
    });
    ContainerInfo {
        id: format!("c-{id}"),
        name: format!("web.1.{id}"),
        image: "shoal/whoami:latest".into(),
        owner,
        labels: BTreeMap::new(),
        state,
        error: None,
        restart_count: 0,
        ports: vec![PublishedPort {
            container_port: 80,
            protocol: crate::model::Protocol::Tcp,
            host_ip: "127.0.0.2".into(),
            host_port: 32768,
        }],
        health: None,
        health_output: None,
    }
}

fn exited(code: i64) -> ContainerState {
    ContainerState::Exited {
        exit_code: code,
        oom_killed: false,
    }
}

fn run(set: &[Assignment], containers: &[ContainerInfo]) -> Vec<Action> {
    run_started(set, containers, &HashSet::new())
}

fn run_started(
    set: &[Assignment],
    containers: &[ContainerInfo],
    started: &HashSet<String>,
) -> Vec<Action> {
    let observed = Observed {
        containers,
        started,
    };
    plan(Some(set), observed, node())
}

fn reports(actions: &[Action]) -> Vec<(String, TaskState, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Report(s) => Some((s.task_id.clone(), s.state, s.message.clone())),
            _ => None,
        })
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop { container, .. } => Some(container.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_happens_before_the_first_set() {
    let containers = [
        container("t1", Some("t1"), ContainerState::Running),
        container("x", None, ContainerState::Running),
    ];
    let observed = Observed {
        containers: &containers,
        started: &HashSet::new(),
    };
    assert_eq!(plan(None, observed, node()), vec![]);
}

#[test]
fn an_assigned_task_is_accepted_and_started_with_its_spec() {
    let actions = run(
        &[assigned("t1", TaskState::Assigned, TaskState::Running)],
        &[],
    );
    let [Action::Start { task, spec, accept }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!((task.as_str(), *accept), ("t1", true));
    assert_eq!(spec.name, "web.1.t1");
    assert_eq!(spec.owner.node, NODE);
    assert_eq!(spec.host_ip, Some(node().host_ip));
}

#[test]
fn a_task_starts_on_the_spec_version_it_was_created_from() {
    let mut edited = service();
    edited.image = "shoal/whoami:v2".into();
    let updated = service().updated_to(edited, 0);
    let image_of = |version: u64| {
        let mut a = assigned("t1", TaskState::Assigned, TaskState::Running);
        a.task.spec_version = version;
        a.service = Some(updated.clone());
        match run(&[a], &[]).as_slice() {
            [Action::Start { spec, .. }] => Ok(spec.image.clone()),
            other => Err(reports(other)),
        }
    };
    assert_eq!(image_of(1), Ok("shoal/whoami:v2".to_string()));
    assert_eq!(image_of(0), Ok("shoal/whoami:latest".to_string()));
    // A version the service no longer keeps: refused, for the orchestrator to replace.
    let refused = image_of(5).unwrap_err();
    assert_eq!(refused[0].1, TaskState::Rejected);
    assert!(refused[0].2.contains("version 5"), "{refused:?}");
}

#[test]
fn adopted_running_containers_are_kept_not_restarted() {
    let set = [running_task("t1"), running_task("t2")];
    let containers = [
        container("t1", Some("t1"), ContainerState::Running),
        container("t2", Some("t2"), ContainerState::Restarting),
    ];
    assert_eq!(run(&set, &containers), vec![]);
}

#[test]
fn a_container_docker_restarted_on_new_host_ports_is_reported_with_them() {
    let set = [running_task("t1")];
    let mut moved = container("t1", Some("t1"), ContainerState::Running);
    moved.ports[0].host_port = 32771;
    let actions = run(&set, &[moved]);
    let [Action::Report(s)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!((s.state, s.ports[0].host_port), (TaskState::Running, 32771));
    // While Docker restarts it there is nothing bound to report.
    let mut restarting = container("t1", Some("t1"), ContainerState::Restarting);
    restarting.ports.clear();
    assert_eq!(run(&set, &[restarting]), vec![]);
}

#[test]
fn a_running_container_is_reported_running_once_the_set_lags() {
    let set = [assigned("t1", TaskState::Accepted, TaskState::Running)];
    let containers = [container("t1", Some("t1"), ContainerState::Running)];
    let actions = run(&set, &containers);
    let [Action::Report(s)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(s.state, TaskState::Running);
    assert_eq!(s.container_id.as_deref(), Some("c-t1"));
    assert_eq!(s.ports[0].host_port, 32768);
}

#[test]
fn an_exited_container_is_reported_complete_or_failed() {
    let set = [running_task("ok"), running_task("bad"), running_task("oom")];
    let mut oom = container(
        "oom",
        Some("oom"),
        ContainerState::Exited {
            exit_code: 137,
            oom_killed: true,
        },
    );
    oom.error = None;
    let mut bad = container("bad", Some("bad"), exited(3));
    bad.error = Some("boom".into());
    let containers = [container("ok", Some("ok"), exited(0)), bad, oom];
    let mut got = reports(&run(&set, &containers));
    got.sort();
    assert_eq!(
        got,
        vec![
            ("bad".into(), TaskState::Failed, "exit code 3: boom".into()),
            ("ok".into(), TaskState::Complete, "exit code 0".into()),
            ("oom".into(), TaskState::Failed, "OOM killed".into()),
        ]
    );
    assert!(
        stopped(&run(&set, &containers)).is_empty(),
        "kept until the task is terminal"
    );
}

#[test]
fn a_vanished_container_fails_its_task_and_is_never_recreated() {
    let set = [running_task("t1")];
    assert_eq!(
        reports(&run(&set, &[])),
        vec![(
            "t1".into(),
            TaskState::Failed,
            "container disappeared".into()
        )]
    );
    // The set still says ASSIGNED, but this agent already created the task's container once.
    let stale = [assigned("t2", TaskState::Assigned, TaskState::Running)];
    let started = HashSet::from(["t2".to_string()]);
    let actions = run_started(&stale, &[], &started);
    assert_eq!(reports(&actions)[0].1, TaskState::Failed);
    assert!(!actions.iter().any(|a| matches!(a, Action::Start { .. })));
}

#[test]
fn stray_and_terminal_containers_are_stopped_and_removed() {
    let mut failed = running_task("old");
    failed.task.state = TaskState::Orphaned;
    failed.task.desired_state = TaskState::Shutdown;
    let set = [failed, running_task("t1")];
    let containers = [
        container("old", Some("old"), ContainerState::Running),
        container("gone", Some("gone"), ContainerState::Running),
        container("nobody", None, exited(0)),
        container("t1", Some("t1"), ContainerState::Running),
    ];
    let actions = run(&set, &containers);
    let mut stops = stopped(&actions);
    stops.sort();
    assert_eq!(stops, ["c-gone", "c-nobody", "c-old"]);
    assert!(reports(&actions).is_empty(), "{actions:?}");
}

#[test]
fn desired_shutdown_stops_removes_and_then_reports() {
    let set = [
        assigned("t1", TaskState::Running, TaskState::Shutdown),
        assigned("t2", TaskState::Assigned, TaskState::Shutdown),
    ];
    let containers = [container("t1", Some("t1"), ContainerState::Running)];
    let actions = run(&set, &containers);
    assert_eq!(actions.len(), 2, "{actions:?}");
    let Action::Stop {
        container,
        then: Some(then),
        ..
    } = &actions[0]
    else {
        panic!("{actions:?}");
    };
    assert_eq!(
        (container.as_str(), then.state),
        ("c-t1", TaskState::Shutdown)
    );
    assert_eq!(reports(&actions)[0].0, "t2", "nothing to stop, just report");
    assert_eq!(reports(&actions)[0].1, TaskState::Shutdown);
}

#[test]
fn never_two_containers_for_one_task() {
    let set = [running_task("t1")];
    let containers = [
        container("a", Some("t1"), exited(1)),
        container("b", Some("t1"), ContainerState::Running),
    ];
    let actions = run(&set, &containers);
    assert_eq!(stopped(&actions), ["c-a"], "the running one is kept");
    assert!(reports(&actions).is_empty(), "{actions:?}");
    // A task with a container, whatever its state, is never started again.
    let accepted = [assigned("t1", TaskState::Assigned, TaskState::Running)];
    let actions = run(&accepted, &[container("t1", Some("t1"), exited(0))]);
    assert!(!actions.iter().any(|a| matches!(a, Action::Start { .. })));
}

#[test]
fn a_container_created_but_never_started_is_replaced() {
    let set = [assigned("t1", TaskState::Accepted, TaskState::Running)];
    let containers = [container("t1", Some("t1"), ContainerState::Created)];
    let actions = run(&set, &containers);
    assert!(
        matches!(&actions[..], [Action::Remove { container }, Action::Start { accept: false, .. }] if container == "c-t1"),
        "{actions:?}"
    );
}

#[test]
fn a_task_whose_service_is_gone_is_rejected() {
    let mut a = assigned("t1", TaskState::Assigned, TaskState::Running);
    a.service = None;
    assert_eq!(
        reports(&run(&[a], &[])),
        vec![(
            "t1".into(),
            TaskState::Rejected,
            "service svc1 no longer exists".into()
        )]
    );
}

#[test]
fn containers_of_other_nodes_are_never_touched() {
    let mut other = container("x", Some("x"), ContainerState::Running);
    other.owner.as_mut().unwrap().node = "node2".into();
    assert_eq!(run(&[], &[other]), vec![]);
}

#[test]
fn health_changes_are_reported_with_the_failing_probe() {
    let set = [running_task("t1")];
    let mut c = container("t1", Some("t1"), ContainerState::Running);
    c.health = Some(Health::Starting);
    let actions = run(&set, std::slice::from_ref(&c));
    let [Action::Report(s)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(
        (s.state, s.health),
        (TaskState::Running, Some(Health::Starting))
    );
    c.health = Some(Health::Unhealthy);
    c.health_output = Some("connection refused".into());
    let actions = run(&set, std::slice::from_ref(&c));
    let [Action::Report(s)] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(s.health, Some(Health::Unhealthy));
    assert_eq!(s.message, "connection refused");
    // Once the set holds what the container shows, nothing more to say.
    let mut known = running_task("t1");
    known.task.health = Some(Health::Unhealthy);
    assert_eq!(run(&[known], &[c]), vec![]);
}

#[test]
fn a_serving_task_asked_to_stop_drains_first_and_others_stop_at_once() {
    let drain_of = |task: Assignment| {
        let c = container(&task.task.id, Some(&task.task.id), ContainerState::Running);
        let actions = run(&[task], &[c]);
        match actions.as_slice() {
            [Action::Stop { drain, then, .. }] => {
                assert_eq!(then.as_ref().map(|t| t.state), Some(TaskState::Shutdown));
                *drain
            }
            other => panic!("{other:?}"),
        }
    };
    let stopping = |state: TaskState, health: Option<Health>| {
        let mut a = assigned("t1", state, TaskState::Shutdown);
        a.task.health = health;
        a.task.stop_grace_ms = 3_000;
        a
    };
    let grace = Duration::from_millis(3_000);
    assert_eq!(drain_of(stopping(TaskState::Running, None)), grace);
    assert_eq!(
        drain_of(stopping(TaskState::Running, Some(Health::Healthy))),
        grace
    );
    assert_eq!(
        drain_of(stopping(TaskState::Running, Some(Health::Unhealthy))),
        Duration::ZERO,
        "an unhealthy task is out of the proxies already"
    );
    assert_eq!(
        drain_of(stopping(TaskState::Running, Some(Health::Starting))),
        Duration::ZERO
    );
    assert_eq!(
        drain_of(stopping(TaskState::Starting, None)),
        Duration::ZERO
    );
    let mut plain = stopping(TaskState::Running, None);
    plain.task.stop_grace_ms = 0;
    assert_eq!(drain_of(plain), Duration::ZERO);
    // Killed already: nothing left to drain.
    let killed = container("t1", Some("t1"), exited(137));
    let actions = run(&[stopping(TaskState::Running, None)], &[killed]);
    assert!(
        matches!(actions.as_slice(), [Action::Stop { drain, .. }] if drain.is_zero()),
        "{actions:?}"
    );
}
