//! The leader's control loops: orchestrator, scheduler, node liveness and the proxy-config
//! generator. Each is a pure planner (a view of the object index in, writes out) run by the
//! same driver; they share nothing but the store (`objects::ObjectStore`), so none depends on
//! another. `run` starts them whenever this manager becomes the leader, after fencing the store
//! with its term, and stops them when leadership changes.

mod handover;
mod liveness;
mod orchestrator;
mod placement;
mod proxygen;
mod rebalance;
mod rollout;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::host::now_ms;
use crate::metrics::families;
use crate::objects::{Commit, ObjectStore, Objects, View, Write};
use crate::scheduler::Strategy;

pub use self::liveness::{period_ms as heartbeat_period_ms, Heartbeats, MISSED_HEARTBEATS};

/// What one planning round decided.
#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<Write>,
    /// Plan again at this time (ms since the epoch) even if nothing changes: a restart backoff
    /// ending, a node's heartbeat deadline.
    pub wake_at_ms: Option<u64>,
}

/// This manager's term as the leader whose loops run, for the dispatcher: it answers agents
/// only while this is `Some`.
#[derive(Debug, Clone)]
pub struct Leading {
    pub term: u64,
    pub heartbeats: Heartbeats,
}

/// How the leader's loops place tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlConfig {
    pub strategy: Strategy,
}

/// Runs the control loops whenever this manager leads, publishing the running term on
/// `leading`. Never returns on its own.
pub async fn run(
    objects: Objects,
    config: ControlConfig,
    leading: tokio::sync::watch::Sender<Option<Leading>>,
) {
    let mut leadership = objects.store().leadership();
    loop {
        let term = *leadership.borrow_and_update();
        let Some(term) = term else {
            if leadership.changed().await.is_err() {
                return;
            }
            continue;
        };
        tracing::info!(term, "leading: starting the control loops");
        let lead = lead(objects.clone(), term, config, leading.clone());
        tokio::select! {
            _ = lead => {}
            r = leadership.changed() => if r.is_err() { return },
        }
        leading.send_replace(None);
        tracing::info!(term, "no longer leading: control loops stopped");
    }
}

async fn lead<S: ObjectStore>(
    objects: S,
    term: u64,
    config: ControlConfig,
    leading: tokio::sync::watch::Sender<Option<Leading>>,
) {
    // Fence first: from now on, loops of earlier leaders can no longer write. Then a barrier,
    // so the first plans see everything earlier leaders committed.
    let elected = tokio::time::Instant::now();
    let view = loop {
        match objects.claim(term).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(term, "a later leader already wrote its term; not leading");
                std::future::pending::<()>().await;
            }
            Err(e) => {
                tracing::warn!(term, error = %e, "claiming the leader term failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        match objects.barrier().await {
            Ok(view) => break view,
            Err(e) => {
                tracing::warn!(term, error = %e, "first read as leader failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    tracing::info!(
        term,
        revision = view.revision(),
        nodes = view.node_count(),
        tasks = view.task_count(),
        fenced_ms = elected.elapsed().as_millis() as u64,
        "control loops start from the index"
    );
    let heartbeats = Heartbeats::starting(&view, tokio::time::Instant::now());
    leading.send_replace(Some(Leading {
        term,
        heartbeats: heartbeats.clone(),
    }));

    let mut new_id = || random_id(20);
    let mut rng = StdRng::from_os_rng();
    let hb = heartbeats.clone();
    let mut orchestrator = orchestrator::Orchestrator::default();
    let mut placement = placement::Placement::default();
    let mut proxygen = proxygen::ProxyGen::default();
    tokio::join!(
        drive(&objects, term, "orchestrator", elected, |s, now| {
            orchestrator.plan(s, now, &mut new_id)
        }),
        drive(&objects, term, "scheduler", elected, |s, now| {
            placement.plan(s, now, config.strategy, &mut rng)
        }),
        drive(&objects, term, "liveness", elected, |s, now| {
            liveness::plan(s, &hb, tokio::time::Instant::now(), now)
        }),
        drive(&objects, term, "proxygen", elected, |s, now| {
            proxygen.plan(s, now)
        }),
    );
}

/// One control loop: take the latest view, plan, commit; then wait for an object to change or
/// the plan's wake-up time. Planning is CPU work: it runs where it cannot hold up the async
/// workers that carry Raft's heartbeats and the APIs.
async fn drive<S: ObjectStore>(
    objects: &S,
    term: u64,
    name: &'static str,
    elected: tokio::time::Instant,
    mut planner: impl FnMut(&View, u64) -> Plan,
) {
    let mut views = objects.subscribe();
    let mut first = true;
    loop {
        let view = views.borrow_and_update().clone();
        let started = std::time::Instant::now();
        let plan = off_the_async_workers(|| planner(&view, now_ms()));
        families::CONTROL_PASS_SECONDS.observe_duration(&[name], started.elapsed());
        if std::mem::take(&mut first) {
            // A new leader's time from its election to its first decision (bench/README.md).
            tracing::info!(
                name,
                term,
                ms = elected.elapsed().as_millis() as u64,
                writes = plan.writes.len(),
                "first plan of this term"
            );
        }
        if !plan.writes.is_empty() {
            let n = plan.writes.len();
            families::CONTROL_WRITES.add(&[name], n as u64);
            match objects.commit(term, plan.writes).await {
                Ok(Commit::Done(applied)) => {
                    let refused = applied.iter().filter(|a| !**a).count();
                    families::CONTROL_CONFLICTS.add(&[name], refused as u64);
                    tracing::debug!(name, writes = n, refused, "committed");
                    // The view already holds what landed: plan again at once.
                    continue;
                }
                Ok(Commit::Fenced) => {
                    tracing::warn!(name, term, "a later leader fenced this one out; idle");
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    families::CONTROL_COMMIT_ERRORS.inc(&[name]);
                    tracing::warn!(name, error = %e, "control loop write failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let changed = async {
            loop {
                if views.changed().await.is_err() {
                    return false;
                }
                if views.borrow_and_update().objects_differ(&view) {
                    return true;
                }
            }
        };
        match plan.wake_at_ms {
            Some(at) => {
                let after = Duration::from_millis(at.saturating_sub(now_ms()));
                let _ = tokio::time::timeout(after, changed).await;
            }
            None => {
                if !changed.await {
                    return;
                }
            }
        }
    }
}

/// Runs CPU-bound `f` without blocking an async worker of a multi-threaded runtime (the
/// runtime moves its other tasks elsewhere meanwhile); inline elsewhere (tests).
fn off_the_async_workers<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// `len` random lowercase hex characters.
pub fn random_id(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from_digit(rng.random_range(0..16), 16).unwrap_or('0'))
        .collect()
}
