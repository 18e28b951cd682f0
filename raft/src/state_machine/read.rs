//! The read side of the state machine: what reads see (the live DB or a snapshot of it), one
//! key's record, and the keys a range selects. Reads never write.

use std::io;

use rocksdb::DB;

use crate::codec;
use crate::command::KeyValue;
use crate::command::Range;
use crate::command::RangeResult;
use crate::db::io_err;
use crate::db::prefix_end;
use crate::db::CF_KV;

/// Reads one key's record (stored without its key).
#[cfg(test)]
pub(crate) fn read_kv(db: &DB, key: &[u8]) -> io::Result<Option<KeyValue>> {
    View::live(db).get_kv(key)
}

/// What reads see: the live DB, or a point-in-time snapshot of it.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub db: &'a DB,
    pub snap: Option<&'a rocksdb::Snapshot<'a>>,
}

impl<'a> View<'a> {
    pub(crate) fn live(db: &'a DB) -> Self {
        View { db, snap: None }
    }

    fn get_kv(&self, key: &[u8]) -> io::Result<Option<KeyValue>> {
        let cf = self.db.cf_handle(CF_KV).expect("cf kv");
        let bytes = match self.snap {
            Some(s) => s.get_cf(cf, key),
            None => self.db.get_cf(cf, key),
        }
        .map_err(io_err)?;
        match bytes {
            None => Ok(None),
            Some(bytes) => {
                let mut kv: KeyValue = codec::decode(&bytes)?;
                kv.key = key.to_vec();
                Ok(Some(kv))
            }
        }
    }

    fn iter_from(&self, start: &[u8]) -> rocksdb::DBIteratorWithThreadMode<'a, DB> {
        let cf = self.db.cf_handle(CF_KV).expect("cf kv");
        let mode = rocksdb::IteratorMode::From(start, rocksdb::Direction::Forward);
        match self.snap {
            Some(s) => s.iterator_cf(cf, mode),
            None => self.db.iterator_cf(cf, mode),
        }
    }
}

/// Reads the keys `range` selects. `unlimited` ignores the range's limit (for merging).
pub(crate) fn scan(view: View<'_>, range: &Range, unlimited: bool) -> io::Result<RangeResult> {
    let mut out = RangeResult::default();
    if !range.prefix {
        if let Some(mut kv) = view.get_kv(&range.key)? {
            out.count = 1;
            if !range.count_only {
                if range.keys_only {
                    kv.value.clear();
                }
                out.kvs.push(kv);
            }
        }
        return Ok(out);
    }
    let end = prefix_end(&range.key);
    for item in view.iter_from(&range.key) {
        let (key, bytes) = item.map_err(io_err)?;
        if end.as_deref().is_some_and(|end| key.as_ref() >= end) {
            break;
        }
        out.count += 1;
        if range.count_only {
            continue;
        }
        if !unlimited && range.limit > 0 && out.kvs.len() as u64 >= range.limit {
            out.more = true;
            continue;
        }
        let mut kv: KeyValue = codec::decode(&bytes)?;
        kv.key = key.to_vec();
        if range.keys_only {
            kv.value.clear();
        }
        out.kvs.push(kv);
    }
    Ok(out)
}
