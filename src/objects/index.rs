//! The object index every manager keeps: the state machine hands it each applied change
//! (`shoal_raft::ApplyObserver`), it decodes each changed object once and publishes a new
//! immutable [`View`]. Readers take the latest view in O(1) and wait for newer ones on a
//! `watch` channel; nobody else decodes the store's objects.

use std::sync::{Arc, Mutex};

use shoal_raft::{ApplyObserver, Event, EventKind, KeyValue};
use tokio::sync::watch;

use super::view::View;

/// The prefix under which the cluster's objects live.
const PREFIX: &str = "/shoal/";

#[derive(Debug)]
pub struct Index {
    /// The working copy apply changes; published as a clone (O(1)) after each entry.
    working: Mutex<View>,
    published: watch::Sender<Arc<View>>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            working: Mutex::new(View::default()),
            published: watch::Sender::new(Arc::new(View::default())),
        }
    }
}

impl Index {
    pub fn new() -> Arc<Index> {
        Arc::new(Index::default())
    }

    /// The latest view. O(1).
    pub fn view(&self) -> Arc<View> {
        self.published.borrow().clone()
    }

    /// Views as they are published (every applied entry, whether or not an object changed).
    pub fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.published.subscribe()
    }

    /// Replaces everything with `view` (a start-up scan, a snapshot install, a test).
    pub fn reset_to(&self, view: View) {
        let mut working = self.working.lock().unwrap_or_else(|e| e.into_inner());
        *working = view;
        self.published.send_replace(Arc::new(working.clone()));
    }

    /// Applies one entry's events at `revision` and publishes the result.
    pub fn apply(&self, revision: u64, events: &[Event]) {
        let mut working = self.working.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            let Some(key) = std::str::from_utf8(&event.kv.key)
                .ok()
                .filter(|k| k.starts_with(PREFIX))
            else {
                continue;
            };
            match event.kind {
                EventKind::Put => working.put_record(key, &event.kv.value, event.kv.mod_revision),
                EventKind::Delete => working.delete_record(key),
            }
        }
        working.set_revision(revision);
        self.published.send_replace(Arc::new(working.clone()));
    }
}

/// A view of every record in `kvs` at `revision`: what a full read of the store decodes.
pub fn scan(revision: u64, kvs: &[KeyValue]) -> View {
    let mut view = View::default();
    for kv in kvs {
        if let Ok(key) = std::str::from_utf8(&kv.key) {
            view.put_record(key, &kv.value, kv.mod_revision);
        }
    }
    view.set_revision(revision);
    view
}

impl ApplyObserver for Index {
    fn prefix(&self) -> Vec<u8> {
        PREFIX.as_bytes().to_vec()
    }

    fn reset(&self, revision: u64, kvs: Vec<KeyValue>) {
        self.reset_to(scan(revision, &kvs));
    }

    fn applied(&self, revision: u64, events: &[Event]) {
        self.apply(revision, events);
    }
}
