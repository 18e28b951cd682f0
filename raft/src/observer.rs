//! The hook through which an in-memory index follows the state machine: every applied change,
//! in apply order, on the apply path, so a reader of the index after a write's response sees
//! that write. What the index decodes or keeps is the observer's business, not the store's.

use std::fmt::Debug;

use crate::command::Event;
use crate::command::KeyValue;

/// Follows every change the state machine applies. Called on the state machine's task: it must
/// be quick, must not block on I/O, and must not fail (a record it cannot use, it skips).
pub trait ApplyObserver: Send + Sync + Debug + 'static {
    /// The key prefix whose keys `reset` hands over.
    fn prefix(&self) -> Vec<u8>;

    /// The whole key space under `prefix` as of `revision`: at start-up and after a snapshot
    /// install replaced the state.
    fn reset(&self, revision: u64, kvs: Vec<KeyValue>);

    /// The changes of one applied entry, all at `revision` (every key, not only the prefix).
    fn applied(&self, revision: u64, events: &[Event]);
}
