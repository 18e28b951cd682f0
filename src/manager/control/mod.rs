//! The leader's control loops: orchestrator, scheduler, node liveness and the proxy-config
//! generator. Each is a pure planner
//! (one store read in, writes out) run by the same driver; they share nothing but the store
//! (`ObjectStore`), so none depends on another. `run` starts them whenever this manager becomes
//! the leader, after fencing the store with its term, and stops them when leadership changes.

mod liveness;
pub mod objects;
mod orchestrator;
mod placement;
mod proxygen;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_raft::{
    Command, Compare, CompareOp, CompareTarget, Op, Put, Response, Store, StoreError, Txn,
};
use tokio::sync::watch;
use tokio_stream::StreamExt;

use crate::host::now_ms;
use crate::manager::scheduler::Strategy;
use crate::model::keys;

pub use self::liveness::{Heartbeats, MISSED_HEARTBEATS};
use self::objects::{term_value, ClusterState, Commit, ObjectStore};

/// What one planning round decided.
#[derive(Debug, Default)]
pub struct Plan {
    pub writes: Vec<objects::Write>,
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
    /// The latest revision of a change under `/shoal/`: assignment streams wait on it.
    pub revisions: watch::Receiver<u64>,
}

/// How the leader's loops place tasks.
#[derive(Debug, Clone, Copy, Default)]
pub struct ControlConfig {
    pub strategy: Strategy,
}

/// Runs the control loops whenever this manager leads, publishing the running term on
/// `leading`. Never returns on its own.
pub async fn run(store: Store, config: ControlConfig, leading: watch::Sender<Option<Leading>>) {
    let mut leadership = store.leadership();
    loop {
        let term = *leadership.borrow_and_update();
        let Some(term) = term else {
            if leadership.changed().await.is_err() {
                return;
            }
            continue;
        };
        tracing::info!(term, "leading: starting the control loops");
        let lead = lead(store.clone(), term, config, leading.clone());
        tokio::select! {
            _ = lead => {}
            r = leadership.changed() => if r.is_err() { return },
        }
        leading.send_replace(None);
        tracing::info!(term, "no longer leading: control loops stopped");
    }
}

async fn lead(
    store: Store,
    term: u64,
    config: ControlConfig,
    leading: watch::Sender<Option<Leading>>,
) {
    // Fence first: from now on, loops of earlier leaders can no longer write.
    let state = loop {
        match claim_term(&store, term).await {
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
        match store.read(true).await {
            Ok(state) => break state,
            Err(e) => {
                tracing::warn!(term, error = %e, "first read as leader failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let heartbeats = Heartbeats::starting(&state, tokio::time::Instant::now());
    let (revision_tx, revisions) = watch::channel(state.revision);
    leading.send_replace(Some(Leading {
        term,
        heartbeats: heartbeats.clone(),
        revisions: revisions.clone(),
    }));

    let mut new_id = || random_id(20);
    let mut rng = StdRng::from_os_rng();
    let hb = heartbeats.clone();
    let mut proxygen = proxygen::ProxyGen::default();
    tokio::join!(
        forward_changes(&store, state.revision, revision_tx),
        drive(&store, term, "orchestrator", revisions.clone(), |s, now| {
            orchestrator::plan(s, now, &mut new_id)
        }),
        drive(&store, term, "scheduler", revisions.clone(), |s, now| {
            placement::plan(s, now, config.strategy, &mut rng)
        }),
        drive(&store, term, "liveness", revisions.clone(), |s, now| {
            liveness::plan(s, &hb, tokio::time::Instant::now(), now)
        }),
        drive(&store, term, "proxygen", revisions, |s, now| {
            proxygen.plan(s, now)
        }),
    );
}

/// Writes `term` as the leader term unless a later one is there. Ok(false): a later leader.
async fn claim_term(store: &Store, term: u64) -> Result<bool, StoreError> {
    let key = keys::LEADER_TERM.as_bytes().to_vec();
    let mine = term_value(term);
    let txn = Txn {
        // Zero-padded terms compare as numbers: write unless a later term is stored.
        compare: vec![Compare {
            key: key.clone(),
            target: CompareTarget::Value(mine.clone()),
            op: CompareOp::Greater,
        }],
        success: vec![],
        failure: vec![Op::Put(Put {
            key,
            value: mine,
            ..Default::default()
        })],
    };
    match store.write(Command::Txn(txn)).await? {
        // The stored term is greater than ours: a later leader has fenced us out.
        Response::Txn { succeeded, .. } => Ok(!succeeded),
        other => Err(StoreError::Protocol(format!(
            "unexpected answer to the term claim: {other:?}"
        ))),
    }
}

/// Publishes the revision of every change under `/shoal/` from `after` on.
async fn forward_changes(store: &Store, after: u64, revisions: watch::Sender<u64>) {
    loop {
        let from = (*revisions.borrow()).max(after) + 1;
        match store.watch(b"/shoal/".to_vec(), true, from) {
            Ok(mut stream) => {
                while let Some(batch) = stream.next().await {
                    match batch {
                        Ok(batch) => {
                            revisions.send_replace(batch.revision);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control-loop watch failed");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "starting the control-loop watch failed"),
        }
        // A compacted start revision: continue from now; every loop re-reads anyway.
        revisions.send_replace(store.revision());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One control loop: read, plan, commit; then wait for a change or the plan's wake-up time.
async fn drive<S: ObjectStore>(
    store: &S,
    term: u64,
    name: &'static str,
    mut revisions: watch::Receiver<u64>,
    mut planner: impl FnMut(&ClusterState, u64) -> Plan,
) {
    loop {
        let state = match store.read(false).await {
            Ok(state) => state,
            Err(e) => {
                tracing::warn!(name, error = %e, "control loop read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let plan = planner(&state, now_ms());
        if !plan.writes.is_empty() {
            let n = plan.writes.len();
            match store.commit(term, plan.writes).await {
                Ok(Commit::Applied) => {
                    tracing::debug!(name, writes = n, "committed");
                    continue;
                }
                Ok(Commit::Conflict) => {
                    tracing::debug!(name, "conflict; planning again");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, "control loop write failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let wake = plan
            .wake_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now_ms())));
        let changed = revisions.wait_for(|r| *r > state.revision);
        match wake {
            Some(after) => {
                let _ = tokio::time::timeout(after, changed).await;
            }
            None => {
                if changed.await.is_err() {
                    return;
                }
            }
        }
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
