//! `MemoryObjects`: a test double of the store for the control plane's unit tests, never on the
//! product path. It keeps records in a map, applies batches with the store's rules (the term
//! fence, one revision per batch, each write on its own expectation) and feeds the same
//! [`Index`] code the product uses, so one conformance suite runs against both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use shoal_raft::{Event, EventKind, KeyValue, StoreError};
use tokio::sync::watch;

use super::index::Index;
use super::store::{view_at, ObjectStore};
use super::view::View;
use super::write::{term_value, Commit, Effect, Write};
use crate::model::keys;

#[derive(Debug, Default)]
struct Records {
    revision: u64,
    /// key → (value, mod revision)
    kvs: BTreeMap<String, (Vec<u8>, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct MemoryObjects {
    records: Arc<Mutex<Records>>,
    index: Arc<Index>,
}

impl MemoryObjects {
    pub fn new() -> MemoryObjects {
        MemoryObjects::default()
    }

    /// Writes a raw record at a new revision (what `shoal kv put` would do).
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let revision = records.revision + 1;
        let event = records.put(key, value.to_vec(), revision);
        records.revision = revision;
        self.index.apply(revision, &[event]);
    }

    /// Every record, as a full read of the store would return them.
    pub fn scan(&self) -> View {
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let kvs: Vec<KeyValue> = records
            .kvs
            .iter()
            .map(|(k, (v, rev))| kv(k, v.clone(), *rev))
            .collect();
        super::index::scan(records.revision, &kvs)
    }
}

fn kv(key: &str, value: Vec<u8>, mod_revision: u64) -> KeyValue {
    KeyValue {
        key: key.as_bytes().to_vec(),
        value,
        mod_revision,
        ..Default::default()
    }
}

impl Records {
    fn mod_revision(&self, key: &str) -> u64 {
        self.kvs.get(key).map_or(0, |(_, rev)| *rev)
    }

    fn put(&mut self, key: &str, value: Vec<u8>, revision: u64) -> Event {
        self.kvs.insert(key.to_string(), (value.clone(), revision));
        Event {
            kind: EventKind::Put,
            kv: kv(key, value, revision),
            prev_kv: None,
        }
    }

    fn delete(&mut self, key: &str, revision: u64) -> Option<Event> {
        self.kvs.remove(key)?;
        Some(Event {
            kind: EventKind::Delete,
            kv: kv(key, Vec::new(), revision),
            prev_kv: None,
        })
    }
}

impl ObjectStore for MemoryObjects {
    fn view(&self) -> Arc<View> {
        self.index.view()
    }

    fn subscribe(&self) -> watch::Receiver<Arc<View>> {
        self.index.subscribe()
    }

    async fn barrier(&self) -> Result<Arc<View>, StoreError> {
        let revision = self
            .records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .revision;
        view_at(self.index.subscribe(), revision).await
    }

    async fn claim(&self, term: u64) -> Result<bool, StoreError> {
        let stored = {
            let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
            records.kvs.get(keys::LEADER_TERM).map(|(v, _)| v.clone())
        };
        let mine = term_value(term);
        if stored.as_ref().is_some_and(|s| *s > mine) {
            return Ok(false);
        }
        self.put_raw(keys::LEADER_TERM, &mine);
        Ok(true)
    }

    async fn commit(&self, term: u64, writes: Vec<Write>) -> Result<Commit, StoreError> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let fence = records.kvs.get(keys::LEADER_TERM).map(|(v, _)| v.clone());
        if fence != Some(term_value(term)) {
            return Ok(Commit::Fenced);
        }
        let revision = records.revision + 1;
        let mut events = Vec::new();
        let mut applied = Vec::with_capacity(writes.len());
        for write in &writes {
            let key = write.key();
            if records.mod_revision(&key) != write.expected_revision() {
                applied.push(false);
                continue;
            }
            match write.effect() {
                Effect::Put(value) => events.push(records.put(&key, value, revision)),
                Effect::Merge(patch) => {
                    // As the store merges: the key must hold a JSON object.
                    let stored = records.kvs.get(&key).map(|(v, _)| v.as_slice());
                    let Some(value) = stored.and_then(|v| shoal_raft::merge_json(v, &patch)) else {
                        applied.push(false);
                        continue;
                    };
                    events.push(records.put(&key, value, revision));
                }
                Effect::Delete => events.extend(records.delete(&key, revision)),
            }
            if let Some(other) = write.also_deleted() {
                events.extend(records.delete(&other, revision));
            }
            applied.push(true);
        }
        if !events.is_empty() {
            records.revision = revision;
            self.index.apply(revision, &events);
        }
        Ok(Commit::Done(applied))
    }
}
