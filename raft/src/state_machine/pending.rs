//! The writes of the entries one `apply()` call has applied so far but not yet written: the one
//! RocksDB write batch they go out in, and an index of it that later entries of the same call
//! read through ([`Base`]), so each entry sees the state every earlier one left.

use std::collections::BTreeMap;
use std::io;

use rocksdb::WriteBatch;
use rocksdb::DB;

use crate::codec;
use crate::command::KeyValue;
use crate::command::Range;
use crate::db::io_err;
use crate::db::CF_KV;

/// One write: column family, key, value (`None`: a delete).
type Write = (&'static str, Vec<u8>, Option<Vec<u8>>);

/// Writes to the state machine's column families, in the order they must happen.
#[derive(Debug, Default)]
pub(crate) struct Writes(Vec<Write>);

impl Writes {
    pub(crate) fn put(&mut self, cf: &'static str, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.0.push((cf, key.into(), Some(value)));
    }

    pub(crate) fn delete(&mut self, cf: &'static str, key: impl Into<Vec<u8>>) {
        self.0.push((cf, key.into(), None));
    }

    /// These writes alone, as one RocksDB batch.
    #[cfg(test)]
    pub(crate) fn batch(self, db: &DB) -> WriteBatch {
        let mut p = Pending::default();
        p.add(db, self);
        p.take()
    }
}

/// What one `apply()` call has written so far: a write batch, and the last write of each key
/// in it.
#[derive(Default)]
pub(crate) struct Pending {
    batch: WriteBatch,
    index: BTreeMap<(&'static str, Vec<u8>), Option<Vec<u8>>>,
    bytes: usize,
}

impl Pending {
    /// Adds one entry's writes, after every earlier entry's.
    pub(crate) fn add(&mut self, db: &DB, writes: Writes) {
        for (cf_name, key, value) in writes.0 {
            let cf = db.cf_handle(cf_name).expect("state machine column family");
            self.bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            match &value {
                Some(v) => self.batch.put_cf(cf, &key, v),
                None => self.batch.delete_cf(cf, &key),
            }
            self.index.insert((cf_name, key), value);
        }
    }

    /// Bytes of keys and values written so far.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The batch to write; this is empty again afterwards.
    pub(crate) fn take(&mut self) -> WriteBatch {
        self.index.clear();
        self.bytes = 0;
        std::mem::take(&mut self.batch)
    }

    /// The pending writes of keys of `cf` starting with `prefix`, in key order.
    fn with_prefix<'a>(
        &'a self,
        cf: &'static str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a Option<Vec<u8>>)> + 'a {
        self.index
            .range((cf, prefix.to_vec())..)
            .take_while(move |((c, k), _)| *c == cf && k.starts_with(prefix))
            .map(|((_, k), v)| (k.as_slice(), v))
    }
}

/// What apply reads: RocksDB as it stands, under the writes pending in this `apply()` call.
#[derive(Clone, Copy)]
pub(crate) struct Base<'a> {
    pub db: &'a DB,
    pub pending: &'a Pending,
}

impl<'a> Base<'a> {
    pub(crate) fn new(db: &'a DB, pending: &'a Pending) -> Self {
        Base { db, pending }
    }

    pub(crate) fn get(&self, cf: &'static str, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        if let Some(v) = self.pending.index.get(&(cf, key.to_vec())) {
            return Ok(v.clone());
        }
        let handle = self.db.cf_handle(cf).expect("state machine column family");
        self.db.get_cf(handle, key).map_err(io_err)
    }

    /// One key's record.
    pub(crate) fn get_kv(&self, key: &[u8]) -> io::Result<Option<KeyValue>> {
        match self.get(CF_KV, key)? {
            None => Ok(None),
            Some(bytes) => {
                let mut kv: KeyValue = codec::decode(&bytes)?;
                kv.key = key.to_vec();
                Ok(Some(kv))
            }
        }
    }

    /// The keys of `cf` starting with `prefix`, in order.
    pub(crate) fn keys_with_prefix(
        &self,
        cf: &'static str,
        prefix: &[u8],
    ) -> io::Result<Vec<Vec<u8>>> {
        let handle = self.db.cf_handle(cf).expect("state machine column family");
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut keys = BTreeMap::new();
        for item in self.db.iterator_cf(handle, mode) {
            let (k, _) = item.map_err(io_err)?;
            if !k.starts_with(prefix) {
                break;
            }
            keys.insert(k.to_vec(), ());
        }
        for (k, v) in self.pending.with_prefix(cf, prefix) {
            match v {
                Some(_) => keys.insert(k.to_vec(), ()),
                None => keys.remove(k),
            };
        }
        Ok(keys.into_keys().collect())
    }

    /// The pending writes of the keys `r` selects (`None`: deleted), in key order; what RocksDB
    /// holds for them is stale.
    pub(crate) fn pending_kvs(&self, r: &Range) -> io::Result<Vec<(Vec<u8>, Option<KeyValue>)>> {
        let mut out = Vec::new();
        for (k, v) in self.pending.with_prefix(CF_KV, &r.key) {
            if !r.prefix && k != r.key.as_slice() {
                continue;
            }
            let kv = match v {
                None => None,
                Some(bytes) => {
                    let mut kv: KeyValue = codec::decode(bytes)?;
                    kv.key = k.to_vec();
                    Some(kv)
                }
            };
            out.push((k.to_vec(), kv));
        }
        Ok(out)
    }
}
