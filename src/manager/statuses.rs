//! Task states reported by agents, committed together: one batcher per leader term gathers
//! the reports that arrive within a few milliseconds, checks each move against the object
//! index (`Task::transition` as the agent, the task's node must be the reporter's), and
//! commits them all as one fenced batch entry, each task's change as a merge of the fields that
//! changed (`Write::TaskChange`), not a rewrite of the whole task. A report answers once its
//! moves landed or were refused; a move that met newer state is decided again on the next view.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::host::now_ms;
use crate::model::{Actor, Task, TaskState, TaskStatus};
use crate::objects::{Commit, ObjectStore, View, Write};

/// How long the batcher waits for more reports after the first one of a batch.
const GATHER: Duration = Duration::from_millis(2);
/// Most reports in one batch.
const MAX_REPORTS: usize = 4096;
/// Rounds a move may meet newer state before its report is answered with an error.
const ATTEMPTS: usize = 5;

/// One UpdateTaskStatus call.
pub(crate) struct Report {
    pub node: String,
    pub statuses: Vec<TaskStatus>,
    /// (applied, skipped), or why the report could not be written.
    pub reply: oneshot::Sender<Result<(u32, u32), Status>>,
}

/// Sends reports to the batcher of one term.
pub(crate) type Reports = mpsc::Sender<Report>;

/// Starts the batcher of `term`; it ends when every sender is gone.
pub(crate) fn start<S: ObjectStore>(objects: S, term: u64) -> Reports {
    let (tx, rx) = mpsc::channel(MAX_REPORTS);
    tokio::spawn(run(objects, term, rx));
    tx
}

async fn run<S: ObjectStore>(objects: S, term: u64, mut rx: mpsc::Receiver<Report>) {
    while let Some(first) = rx.recv().await {
        let mut reports = vec![first];
        tokio::time::sleep(GATHER).await;
        while reports.len() < MAX_REPORTS {
            match rx.try_recv() {
                Ok(r) => reports.push(r),
                Err(_) => break,
            }
        }
        commit(&objects, term, reports).await;
    }
}

/// A report's index and a status's index within it.
type Move = (usize, usize);

/// Where one reported move stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Open,
    Applied,
    Skipped,
}

async fn commit<S: ObjectStore>(objects: &S, term: u64, reports: Vec<Report>) {
    crate::metrics::families::STATUS_BATCHES.inc(&[]);
    crate::metrics::families::STATUS_REPORTS.add(&[], reports.len() as u64);
    let mut fates: Vec<Vec<Fate>> = reports
        .iter()
        .map(|r| vec![Fate::Open; r.statuses.len()])
        .collect();
    let mut failure: Option<Status> = None;
    let mut view = objects.view();
    for attempt in 0..ATTEMPTS {
        if !fates.iter().flatten().any(|f| *f == Fate::Open) {
            break;
        }
        if attempt > 0 {
            // What refused a write is newer than this view: wait for the index to show it.
            view = objects.newer_than(&view).await;
        }
        let (writes, owners) = decide(&view, &reports, &mut fates);
        if writes.is_empty() {
            break;
        }
        match objects.commit(term, writes).await {
            Ok(Commit::Done(applied)) => {
                for (landed, moves) in applied.into_iter().zip(owners) {
                    if landed {
                        for (r, s) in moves {
                            fates[r][s] = Fate::Applied;
                        }
                    }
                }
            }
            Ok(Commit::Fenced) => {
                failure = Some(super::dispatcher::leadership_changed());
                break;
            }
            Err(e) => {
                failure = Some(e.into());
                break;
            }
        }
    }
    for (report, fates) in reports.into_iter().zip(fates) {
        let answer = match (&failure, fates.contains(&Fate::Open)) {
            (Some(status), true) => Err(status.clone()),
            (None, true) => Err(Status::aborted(
                "tasks kept changing while their states were being written; report them again",
            )),
            (_, false) => {
                let applied = fates.iter().filter(|f| **f == Fate::Applied).count() as u32;
                Ok((applied, fates.len() as u32 - applied))
            }
        };
        let _ = report.reply.send(answer);
    }
}

/// The writes for every open move, against `view`: moves of one task in one batch build on
/// each other and make one write. Returns the writes and, for each, the (report, status)
/// moves it carries. A move that is not the agent's to make is skipped here.
fn decide(
    view: &View,
    reports: &[Report],
    fates: &mut [Vec<Fate>],
) -> (Vec<Write>, Vec<Vec<Move>>) {
    // task id → (task as changed so far, revision read, moves)
    let mut changed: HashMap<&str, (Task, u64, Vec<Move>)> = HashMap::new();
    let mut order: Vec<&str> = Vec::new();
    let now = now_ms();
    for (r, report) in reports.iter().enumerate() {
        for (s, status) in report.statuses.iter().enumerate() {
            if fates[r][s] != Fate::Open {
                continue;
            }
            let id = status.task_id.as_str();
            if !changed.contains_key(id) {
                let Some(t) = view.task(id) else {
                    fates[r][s] = Fate::Skipped;
                    continue;
                };
                order.push(id);
                changed.insert(id, (t.value.clone(), t.mod_revision, Vec::new()));
            }
            let entry = changed.get_mut(id).expect("inserted above");
            let task = &mut entry.0;
            if task.node_id.as_deref() != Some(report.node.as_str()) {
                tracing::warn!(task = %task.id, node = %report.node, "an agent reported a task of another node");
                fates[r][s] = Fate::Skipped;
                continue;
            }
            if task.state != status.state
                && task
                    .transition(status.state, Actor::Agent, &status.message, now)
                    .is_err()
            {
                fates[r][s] = Fate::Skipped;
                continue;
            }
            if status.container_id.is_some() {
                task.container_id.clone_from(&status.container_id);
            }
            if !status.ports.is_empty() {
                task.ports.clone_from(&status.ports);
            }
            if status.exit_code.is_some() {
                task.exit_code = status.exit_code;
            }
            // Health is a RUNNING container's; a task that ended keeps its last (an unhealthy
            // end is a failure to the orchestrator). A change brings the agent's words on it.
            if task.state == TaskState::Running && task.health != status.health {
                task.health = status.health;
                task.message.clone_from(&status.message);
            }
            entry.2.push((r, s));
        }
    }
    let mut writes = Vec::new();
    let mut owners = Vec::new();
    for id in order {
        let (task, rev, moves) = changed.remove(id).expect("ordered ids were changed");
        if moves.is_empty() {
            continue;
        }
        let before = view.task(id).expect("decided tasks are in the view");
        let Some(write) = Write::task_change(&before.value, rev, &task) else {
            // Nothing new: the report is applied without a write.
            for (r, s) in moves {
                fates[r][s] = Fate::Applied;
            }
            continue;
        };
        writes.push(write);
        owners.push(moves);
    }
    (writes, owners)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState;
    use crate::objects::{Expect, MemoryObjects, Versioned};

    fn status(id: &str, state: TaskState) -> TaskStatus {
        serde_json::from_value(serde_json::json!({"task_id": id, "state": state})).unwrap()
    }

    async fn send(
        tx: &Reports,
        node: &str,
        statuses: Vec<TaskStatus>,
    ) -> Result<(u32, u32), Status> {
        let (reply, answer) = oneshot::channel();
        tx.send(Report {
            node: node.into(),
            statuses,
            reply,
        })
        .await
        .unwrap();
        answer.await.unwrap()
    }

    #[tokio::test]
    async fn reports_of_many_nodes_land_together_and_wrong_moves_are_skipped() {
        let objects = MemoryObjects::new();
        assert!(objects.claim(1).await.unwrap());
        let mut writes = Vec::new();
        for (id, node) in [("a", "n1"), ("b", "n2")] {
            let mut t = Task::new(id.into(), "s".into(), 1, 0);
            t.state = TaskState::Assigned;
            t.node_id = Some(node.into());
            writes.push(Write::Task {
                task: t,
                expect: Expect::Absent,
            });
        }
        objects.commit(1, writes).await.unwrap();
        let before = objects.view().revision();
        let tx = start(objects.clone(), 1);
        let (r1, r2, r3) = tokio::join!(
            send(&tx, "n1", vec![status("a", TaskState::Running)]),
            send(
                &tx,
                "n2",
                vec![
                    status("b", TaskState::Running),
                    status("zz", TaskState::Running)
                ]
            ),
            // n2 cannot report n1's task.
            send(&tx, "n2", vec![status("a", TaskState::Failed)]),
        );
        assert_eq!(r1.unwrap(), (1, 0));
        assert_eq!(r2.unwrap(), (1, 1));
        assert_eq!(r3.unwrap(), (0, 1));
        let view = objects.view();
        let state = |id: &str| view.task(id).map(|t: &Versioned<Task>| t.value.state);
        assert_eq!(state("a"), Some(TaskState::Running));
        assert_eq!(state("b"), Some(TaskState::Running));
        assert_eq!(view.revision(), before + 1, "one batch, one revision");
        // A move backwards is not the agent's to make.
        assert_eq!(
            send(&tx, "n1", vec![status("a", TaskState::Starting)])
                .await
                .unwrap(),
            (0, 1)
        );
    }

    #[tokio::test]
    async fn health_is_written_while_running_and_kept_once_the_task_ended() {
        use crate::model::Health;
        let objects = MemoryObjects::new();
        assert!(objects.claim(1).await.unwrap());
        let mut t = Task::new("a".into(), "s".into(), 1, 0);
        t.state = TaskState::Running;
        t.node_id = Some("n1".into());
        objects
            .commit(
                1,
                vec![Write::Task {
                    task: t,
                    expect: Expect::Absent,
                }],
            )
            .await
            .unwrap();
        let tx = start(objects.clone(), 1);
        let with = |state: TaskState, health: Option<Health>, message: &str| {
            let mut s = status("a", state);
            s.health = health;
            s.message = message.into();
            s
        };
        let task = |objects: &MemoryObjects| objects.view().task("a").unwrap().value.clone();
        let sick = with(TaskState::Running, Some(Health::Unhealthy), "exit code 1");
        assert_eq!(send(&tx, "n1", vec![sick]).await.unwrap(), (1, 0));
        let now = task(&objects);
        assert_eq!(
            (now.state, now.health),
            (TaskState::Running, Some(Health::Unhealthy))
        );
        assert_eq!(now.message, "exit code 1");
        let ended = with(TaskState::Shutdown, None, "stopped");
        assert_eq!(send(&tx, "n1", vec![ended]).await.unwrap(), (1, 0));
        let now = task(&objects);
        assert_eq!(
            (now.state, now.health),
            (TaskState::Shutdown, Some(Health::Unhealthy))
        );
    }
}
