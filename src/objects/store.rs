//! The seam between the control plane and the store: a view in O(1), a linearizable barrier,
//! the leader's term claim and fenced batched commits. Control loops, the dispatcher and the
//! APIs depend on [`ObjectStore`]; [`Objects`] is the product implementation over the
//! replicated store and its index, `MemoryObjects` the in-memory double for tests.

use std::future::Future;
use std::sync::Arc;

use shoal_raft::{
    Command, Compare, CompareOp, CompareTarget, Op, Put, Response, Store, StoreError, Txn,
};
use tokio::sync::watch;

use super::index::Index;
use super::view::View;
use super::write::{batches, term_value, Commit, Write};
use crate::model::keys;

/// How long a retry waits for the index to show what made a write miss.
pub const CATCH_UP: std::time::Duration = std::time::Duration::from_secs(1);

/// The store as the control plane sees it.
pub trait ObjectStore: Clone + Send + Sync + 'static {
    /// This replica's latest applied view. O(1); not linearizable on its own.
    fn view(&self) -> Arc<View>;

    /// Views as apply publishes them.
    fn subscribe(&self) -> watch::Receiver<Arc<View>>;

    /// A view newer than `seen` (after a write met newer state than a view showed: the view
    /// catches up with what apply has applied), or the latest one after [`CATCH_UP`].
    fn newer_than(&self, seen: &View) -> impl Future<Output = Arc<View>> + Send {
        let mut views = self.subscribe();
        let revision = seen.revision();
        async move {
            let newer = views.wait_for(|v| v.revision() > revision);
            if let Ok(Ok(view)) = tokio::time::timeout(CATCH_UP, newer).await {
                return view.clone();
            }
            let latest = views.borrow().clone();
            latest
        }
    }

    /// A view that holds every write committed before the call.
    fn barrier(&self) -> impl Future<Output = Result<Arc<View>, StoreError>> + Send;

    /// Writes `term` as the leader term unless a later one is there. Ok(false): a later
    /// leader has fenced this one out.
    fn claim(&self, term: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Commits `writes` fenced by `term`, in as few log entries as fit (one for most plans),
    /// each write applied on its own when its expectation holds.
    fn commit(
        &self,
        term: u64,
        writes: Vec<Write>,
    ) -> impl Future<Output = Result<Commit, StoreError>> + Send;
}

/// Entries of one commit in flight at once.
const PIPELINE: usize = 2;

/// The replicated store with this manager's object index.
#[derive(Clone)]
pub struct Objects {
    store: Store,
    index: Arc<Index>,
}

impl Objects {
    /// `index` must be the observer the store was opened with.
    pub fn new(store: Store, index: Arc<Index>) -> Objects {
        Objects { store, index }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Waits on `views` until one is at `revision` or later.
pub(crate) async fn view_at(
    mut views: watch::Receiver<Arc<View>>,
    revision: u64,
) -> Result<Arc<View>, StoreError> {
    let view = views
        .wait_for(|v| v.revision() >= revision)
        .await
        .map_err(|_| StoreError::Stopped("the object index stopped".into()))?;
    Ok(view.clone())
}

impl ObjectStore for Objects {
    fn view(&self) -> Arc<View> {
        self.index.view()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.index.subscribe()
    }

    async fn barrier(&self) -> Result<Arc<View>, StoreError> {
        let revision = self.store.barrier().await?;
        view_at(self.index.subscribe(), revision).await
    }

    async fn claim(&self, term: u64) -> Result<bool, StoreError> {
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
        match self.store.write(Command::Txn(txn)).await? {
            // The stored term is greater than ours: a later leader has fenced us out.
            Response::Txn { succeeded, .. } => Ok(!succeeded),
            other => Err(StoreError::Protocol(format!(
                "unexpected answer to the term claim: {other:?}"
            ))),
        }
    }

    async fn commit(&self, term: u64, writes: Vec<Write>) -> Result<Commit, StoreError> {
        use futures::StreamExt;
        // A large plan is several entries: proposed together (in order), so that they share
        // appends, fsyncs and replication rounds instead of waiting for each other.
        let mut answers = futures::stream::iter(batches(term, &writes))
            .map(|batch| self.store.write(Command::Batch(batch)))
            .buffered(PIPELINE);
        let mut outcomes = Vec::with_capacity(writes.len());
        while let Some(answer) = answers.next().await {
            match answer? {
                Response::Batch { fenced: true, .. } => return Ok(Commit::Fenced),
                Response::Batch { applied, .. } => outcomes.extend(applied),
                other => {
                    return Err(StoreError::Protocol(format!(
                        "unexpected answer to a batch of object writes: {other:?}"
                    )))
                }
            }
        }
        Ok(Commit::Done(outcomes))
    }
}
