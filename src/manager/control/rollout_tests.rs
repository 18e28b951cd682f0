//! Rolling updates on hand-built states: the step alone, then the orchestrator applying it.

use super::*;
use crate::manager::control::orchestrator;
use crate::model::{Health, TaskState, UpdateOrder, UpdatePolicy, UpdateState};
use crate::objects::{Versioned, View, Write};

const STARTED_MS: u64 = 1_000;

/// `web` with `replicas`, updated from version 0 (image v0) to 1 (image v1) at `STARTED_MS`.
fn updating(replicas: u64, policy: UpdatePolicy) -> Service {
    let mut v0: Service = serde_json::from_value(serde_json::json!({
        "id": "s", "name": "web", "image": "img:v0", "replicas": replicas,
    }))
    .unwrap();
    v0.update_policy = policy;
    let mut edited = v0.clone();
    edited.image = "img:v1".into();
    v0.updated_to(edited, STARTED_MS)
}

/// Task `id` in `slot` on spec `version`, RUNNING on n1 (or in `state`), last written at `at_ms`.
fn task(id: &str, slot: u64, version: u64, state: TaskState, at_ms: u64) -> Task {
    let mut t = Task::new(id.into(), "s".into(), slot, at_ms);
    t.spec_version = version;
    t.state = state;
    t.node_id = Some("n1".into());
    if state.is_terminal() {
        t.desired_state = TaskState::Shutdown;
    }
    t
}

fn old(slot: u64) -> Task {
    task(&format!("old{slot}"), slot, 0, TaskState::Running, 10)
}

fn run_step(service: &Service, tasks: &[Task], now_ms: u64) -> Step {
    let tasks: Vec<&Task> = tasks.iter().collect();
    step(service, &tasks, now_ms, |t| {
        matches!(t.state, TaskState::Failed | TaskState::Rejected)
            || t.health == Some(Health::Unhealthy)
    })
}

fn slots(step: &Step) -> Vec<u64> {
    step.replace.iter().copied().collect()
}

#[test]
fn an_update_a_client_started_is_stamped_by_the_leader_first() {
    let mut service = updating(2, UpdatePolicy::default());
    service.update.as_mut().unwrap().started_ms = 0;
    let step = run_step(&service, &[old(1), old(2)], 2_000);
    assert!(step.replace.is_empty());
    assert_eq!(step.service.unwrap().update.unwrap().started_ms, 2_000);
}

#[test]
fn it_replaces_outdated_slots_lowest_first_up_to_its_parallelism() {
    let tasks = [old(1), old(2), old(3)];
    let one = updating(3, UpdatePolicy::default());
    assert_eq!(slots(&run_step(&one, &tasks, 2_000)), vec![1]);
    let two = updating(
        3,
        UpdatePolicy {
            parallelism: 2,
            ..UpdatePolicy::default()
        },
    );
    assert_eq!(slots(&run_step(&two, &tasks, 2_000)), vec![1, 2]);
    let all = updating(
        3,
        UpdatePolicy {
            parallelism: 0,
            ..UpdatePolicy::default()
        },
    );
    assert_eq!(slots(&run_step(&all, &tasks, 2_000)), vec![1, 2, 3]);
}

#[test]
fn a_slot_on_its_way_holds_the_next_one_back() {
    let service = updating(3, UpdatePolicy::default());
    // Slot 1's new task is not serving yet (start-first: the old one still runs too).
    let tasks = [
        old(1),
        task("new1", 1, 1, TaskState::Starting, 1_500),
        old(2),
        old(3),
    ];
    assert_eq!(run_step(&service, &tasks, 2_000), Step::default());
    // Once it serves, the next slot goes.
    let tasks = [
        task("new1", 1, 1, TaskState::Running, 1_500),
        old(2),
        old(3),
    ];
    assert_eq!(slots(&run_step(&service, &tasks, 2_000)), vec![2]);
}

#[test]
fn a_new_task_that_is_not_healthy_yet_does_not_serve() {
    let service = updating(2, UpdatePolicy::default());
    let mut starting = task("new1", 1, 1, TaskState::Running, 1_500);
    starting.health = Some(Health::Starting);
    assert!(slots(&run_step(&service, &[starting.clone(), old(2)], 2_000)).is_empty());
    starting.health = Some(Health::Healthy);
    assert_eq!(
        slots(&run_step(&service, &[starting, old(2)], 2_000)),
        vec![2]
    );
}

#[test]
fn the_delay_runs_from_the_last_slot_that_came_to_serve() {
    let service = updating(
        3,
        UpdatePolicy {
            delay_ms: 500,
            ..UpdatePolicy::default()
        },
    );
    let tasks = [
        task("new1", 1, 1, TaskState::Running, 1_600),
        old(2),
        old(3),
    ];
    let waiting = run_step(&service, &tasks, 1_800);
    assert!(waiting.replace.is_empty());
    assert_eq!(waiting.wake_at_ms, Some(2_100));
    assert_eq!(slots(&run_step(&service, &tasks, 2_100)), vec![2]);
}

#[test]
fn it_completes_once_every_slot_serves_its_version_for_the_monitor_period() {
    let service = updating(
        2,
        UpdatePolicy {
            monitor_ms: 5_000,
            ..UpdatePolicy::default()
        },
    );
    let tasks = [
        task("new1", 1, 1, TaskState::Running, 1_500),
        task("new2", 2, 1, TaskState::Running, 2_000),
    ];
    let monitoring = run_step(&service, &tasks, 3_000);
    assert_eq!(
        (monitoring.service, monitoring.wake_at_ms),
        (None, Some(7_000))
    );
    let done = run_step(&service, &tasks, 7_000)
        .service
        .expect("a status write");
    let status = done.update.unwrap();
    assert_eq!(status.state, UpdateState::Completed);
    assert_eq!(status.completed_ms, Some(7_000));
    // Not while an old task still runs beside a new one.
    let tasks = [tasks[0].clone(), tasks[1].clone(), old(2)];
    assert_eq!(run_step(&service, &tasks, 9_000).service, None);
}

#[test]
fn a_failed_new_task_pauses_the_update_by_default() {
    let service = updating(4, UpdatePolicy::default());
    let mut failed = task("new1", 1, 1, TaskState::Failed, 1_500);
    failed.message = "exit code 3".into();
    let tasks = [failed, old(2), old(3), old(4)];
    let step = run_step(&service, &tasks, 2_000);
    assert!(step.replace.is_empty());
    let status = step.service.expect("a status write").update.unwrap();
    assert_eq!(status.state, UpdateState::Paused);
    assert!(
        status.message.contains("1 of 4 updated tasks failed"),
        "{}",
        status.message
    );
    assert!(status.message.contains("exit code 3"), "{}", status.message);
    // A paused update replaces nothing more.
    let paused = Service {
        update: Some(status),
        ..service
    };
    assert_eq!(run_step(&paused, &tasks, 3_000), Step::default());
}

#[test]
fn failures_within_the_ratio_or_before_the_update_do_not_stop_it() {
    let lenient = updating(
        4,
        UpdatePolicy {
            max_failure_permille: 250,
            ..UpdatePolicy::default()
        },
    );
    let tasks = [
        task("new1", 1, 1, TaskState::Failed, 1_500),
        old(2),
        old(3),
        old(4),
    ];
    let step = run_step(&lenient, &tasks, 2_000);
    assert_eq!(step.service, None);
    // An earlier failure of the same version (created before this update started) is history.
    let strict = updating(2, UpdatePolicy::default());
    let tasks = [task("early", 1, 1, TaskState::Failed, 500), old(1), old(2)];
    assert_eq!(slots(&run_step(&strict, &tasks, 2_000)), vec![1]);
}

#[test]
fn a_failing_update_rolls_back_and_a_failing_rollback_pauses() {
    let service = updating(
        2,
        UpdatePolicy {
            failure_action: FailureAction::Rollback,
            ..UpdatePolicy::default()
        },
    );
    let tasks = [task("new1", 1, 1, TaskState::Rejected, 1_500), old(2)];
    let back = run_step(&service, &tasks, 2_000)
        .service
        .expect("a rollback");
    assert_eq!((back.version, back.image.as_str()), (0, "img:v0"));
    let status = back.update.clone().unwrap();
    assert_eq!(status.state, UpdateState::RollbackStarted);
    assert_eq!(status.started_ms, 2_000);
    assert!(
        status.message.starts_with("update rolled back: "),
        "{}",
        status.message
    );
    // Back on version 0, slot 1's version-1 task is the outdated one.
    let tasks = [task("new1", 1, 1, TaskState::Running, 1_500), old(2)];
    assert_eq!(slots(&run_step(&back, &tasks, 2_100)), vec![1]);
    let tasks = [task("again", 1, 0, TaskState::Failed, 2_200), old(2)];
    let paused = run_step(&back, &tasks, 2_300).service.expect("a pause");
    assert_eq!(paused.update.unwrap().state, UpdateState::RollbackPaused);
}

#[test]
fn continue_keeps_updating_through_failures() {
    let service = updating(
        2,
        UpdatePolicy {
            failure_action: FailureAction::Continue,
            parallelism: 2,
            ..UpdatePolicy::default()
        },
    );
    let tasks = [task("new1", 1, 1, TaskState::Failed, 1_500), old(2)];
    let step = run_step(&service, &tasks, 2_000);
    assert_eq!((slots(&step), step.service), (vec![2], None));
}

// The orchestrator applying the steps.

fn view(service: Service, tasks: Vec<Task>) -> View {
    let node = crate::scheduler::testutil::node(1, &[]);
    let versioned = |value| Versioned {
        value,
        mod_revision: 5,
    };
    View::build(
        10,
        vec![versioned(node)],
        vec![Versioned {
            value: service,
            mod_revision: 5,
        }],
        tasks
            .into_iter()
            .map(|t| Versioned {
                value: t,
                mod_revision: 7,
            })
            .collect::<Vec<_>>(),
        None,
    )
}

/// (id, slot, spec version, desired state, message) of each task the plan writes.
fn planned(state: &View, now_ms: u64) -> Vec<(String, u64, u64, TaskState, String)> {
    let mut n = 0;
    let plan = orchestrator::plan(state, now_ms, &mut || {
        n += 1;
        format!("new{n}")
    });
    let mut out: Vec<_> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Task { task: t, .. } => Some((
                t.id.clone(),
                t.slot,
                t.spec_version,
                t.desired_state,
                t.message.clone(),
            )),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

#[test]
fn stop_first_stops_the_old_task_and_starts_the_new_one() {
    let state = view(updating(2, UpdatePolicy::default()), vec![old(1), old(2)]);
    assert_eq!(
        planned(&state, 2_000),
        vec![
            ("new1".into(), 1, 1, TaskState::Running, String::new()),
            (
                "old1".into(),
                1,
                0,
                TaskState::Shutdown,
                "updated to version 1".into()
            ),
        ]
    );
}

#[test]
fn start_first_keeps_the_old_task_until_the_new_one_serves() {
    let service = updating(
        2,
        UpdatePolicy {
            order: UpdateOrder::StartFirst,
            ..UpdatePolicy::default()
        },
    );
    let state = view(service.clone(), vec![old(1), old(2)]);
    assert_eq!(
        planned(&state, 2_000),
        vec![("new1".into(), 1, 1, TaskState::Running, String::new())]
    );
    // Starting: both stay, nothing else moves.
    let starting = task("up1", 1, 1, TaskState::Starting, 2_000);
    let state = view(service.clone(), vec![old(1), starting, old(2)]);
    assert_eq!(planned(&state, 2_100), vec![]);
    // Serving: the old one goes, and slot 2 starts.
    let serving = task("up1", 1, 1, TaskState::Running, 2_200);
    let state = view(service, vec![old(1), serving, old(2)]);
    assert_eq!(
        planned(&state, 2_300),
        vec![
            ("new1".into(), 2, 1, TaskState::Running, String::new()),
            (
                "old1".into(),
                1,
                0,
                TaskState::Shutdown,
                "updated to version 1".into()
            ),
        ]
    );
}

#[test]
fn a_pause_is_written_against_the_service_as_read() {
    let state = view(
        updating(2, UpdatePolicy::default()),
        vec![task("new1", 1, 1, TaskState::Failed, 1_500), old(2)],
    );
    let mut n = 0;
    let plan = orchestrator::plan(&state, 2_000, &mut || {
        n += 1;
        format!("new{n}")
    });
    let written: Vec<_> = plan
        .writes
        .iter()
        .filter_map(|w| match w {
            Write::Service { service, expect } => {
                Some((service.update.clone().unwrap().state, *expect))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        written,
        vec![(UpdateState::Paused, crate::objects::Expect::ModRevision(5))]
    );
}

#[test]
fn a_rollback_refills_the_failed_slot_on_the_spec_rolled_back_to() {
    let service = updating(
        2,
        UpdatePolicy {
            failure_action: FailureAction::Rollback,
            ..UpdatePolicy::default()
        },
    );
    let mut sick = task("sick1", 1, 1, TaskState::Running, 1_500);
    sick.health = Some(Health::Unhealthy);
    let state = view(service, vec![sick, old(2)]);
    let planned = planned(&state, 2_000);
    // The unhealthy task stops; its slot gets a task of version 0 at once, none of version 1.
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert_eq!(
        (planned[0].1, planned[0].2, planned[0].3),
        (1, 0, TaskState::Running)
    );
    assert_eq!((planned[1].0.as_str(), planned[1].2), ("sick1", 1));
    assert_eq!(planned[1].3, TaskState::Shutdown);
}
