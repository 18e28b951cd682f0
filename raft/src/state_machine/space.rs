//! Space accounting and the storage quota: how many bytes the state machine holds, counted by
//! one formula from replicated data only (so every replica arrives at the same figure whatever
//! its files look like on disk), and the quotas the managers asked for. Apply refuses, from these
//! figures alone, any entry that would grow the store past the smallest quota.
//!
//! What counts: every live key (key, value and a fixed overhead for its metadata), every lease,
//! every lease attachment, and the change history watches catch up from. Not counted: the Raft
//! log (bounded by snapshots and purging), snapshot files and RocksDB's own overheads; see
//! docs/operations.md for the disk a quota needs.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::command::Command;
use crate::command::KeyValue;
use crate::db::from_be;
use crate::db::io_err;
use crate::db::CF_HISTORY;
use crate::db::CF_KV;
use crate::db::CF_LEASE;
use crate::db::CF_LEASE_KEY;
use crate::db::CF_LEASE_LOCK;
use crate::db::CF_SM;
use crate::types::NodeId;

/// Where [`Space`] is stored, in the `sm` column family (so snapshots carry it).
pub(crate) const KEY_SPACE: &[u8] = b"space";
/// Bytes charged for a live key besides its key and value: its revisions, version, lease, lock
/// and flags as stored.
pub(crate) const KV_OVERHEAD: u64 = 64;
/// Bytes charged for a lease.
pub(crate) const LEASE_BYTES: u64 = 40;
/// The default `--quota-bytes`: etcd's default backend quota.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;
/// The smallest quota a manager accepts: below it, the cluster's own records do not fit.
pub const MIN_QUOTA_BYTES: u64 = 1 << 20;

pub(crate) fn kv_bytes(kv: &KeyValue) -> u64 {
    (kv.key.len() + kv.value.len()) as u64 + KV_OVERHEAD
}

/// A key's entry in `lease_key` or `lease_lock`: the lease id and the key.
pub(crate) fn attachment_bytes(key: &[u8]) -> u64 {
    8 + key.len() as u64
}

/// A history record: its revision and its encoded events.
pub(crate) fn history_bytes(encoded: usize) -> u64 {
    8 + encoded as u64
}

/// The store's space, as apply keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Space {
    /// Bytes held, by this module's formula.
    pub used: u64,
    /// The part of `used` that is change history, which gives way first when space runs out.
    pub history: u64,
    /// Each member's `--quota-bytes`, as it last proposed it; the smallest governs. Dropped when
    /// the member leaves. Empty: no quota (a cluster none of whose managers has proposed one).
    pub quotas: BTreeMap<NodeId, u64>,
    /// The oldest revision history may still hold; every revision from here to the current one
    /// is held.
    pub history_floor: u64,
    /// Raised when apply refused a write for want of space; cleared once deletes or revokes have
    /// freed as much as that write lacked (history aside), or by a quota change.
    pub alarm: Option<NoSpace>,
}

/// The NOSPACE alarm: what the store held, against which quota, when a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NoSpace {
    pub quota: u64,
    pub used: u64,
    /// [`Space::live`] then.
    pub live: u64,
    /// How many bytes the refused write lacked.
    pub short: u64,
    pub revision: u64,
}

impl Space {
    /// The quota in force: the smallest any member asked for.
    pub(crate) fn quota(&self) -> Option<u64> {
        self.quotas.values().min().copied()
    }

    /// Forgets the quotas of managers that are no longer members.
    pub(crate) fn retain_members(&mut self, member: impl Fn(NodeId) -> bool) {
        self.quotas.retain(|id, _| member(*id));
    }

    pub(crate) fn grow(&mut self, n: u64) {
        self.used = self.used.saturating_add(n);
    }

    pub(crate) fn shrink(&mut self, n: u64) {
        self.used = self.used.saturating_sub(n);
    }

    /// What the store holds besides history: what only deletes and revokes free.
    pub(crate) fn live(&self) -> u64 {
        self.used.saturating_sub(self.history)
    }
}

/// Whether `cmd` may store more than it removes: what the quota refuses once the store is full.
/// Deletes, lease revokes, quota changes and id allocations always go through.
pub(crate) fn may_grow(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Put(_) | Command::Txn(_) | Command::Batch(_) | Command::LeaseGrant { .. }
    )
}

/// Reads the stored space record, or measures a store written before space was tracked. The
/// measure is the same formula apply keeps up incrementally, so a replica that measures at one
/// index and one that counted its way there agree.
pub(crate) fn read(db: &DB, revision: u64) -> io::Result<Space> {
    let sm = db.cf_handle(CF_SM).expect("cf sm");
    if let Some(bytes) = db.get_cf(sm, KEY_SPACE).map_err(io_err)? {
        return Ok(codec::decode(&bytes)?);
    }
    measure(db, revision)
}

/// What [`measure`] does with each record (key, value) of a column family.
type Visit<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// Counts everything [`Space::used`] covers, from scratch.
pub(crate) fn measure(db: &DB, revision: u64) -> io::Result<Space> {
    let mut space = Space {
        history_floor: revision + 1,
        ..Space::default()
    };
    let each = |name: &str, f: &mut Visit<'_>| {
        let cf = db.cf_handle(name).expect("state machine cf");
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(io_err)?;
            f(&k[..], &v[..])?;
        }
        Ok::<_, io::Error>(())
    };
    let mut used = 0u64;
    each(CF_KV, &mut |k, v| {
        let mut kv: KeyValue = codec::decode(v)?;
        kv.key = k.to_vec();
        used += kv_bytes(&kv);
        Ok(())
    })?;
    each(CF_LEASE, &mut |_, _| {
        used += LEASE_BYTES;
        Ok(())
    })?;
    for name in [CF_LEASE_KEY, CF_LEASE_LOCK] {
        each(name, &mut |k, _| {
            used += k.len() as u64;
            Ok(())
        })?;
    }
    let mut first = None;
    let mut history = 0u64;
    each(CF_HISTORY, &mut |k, v| {
        first = first.or(from_be(k));
        history += history_bytes(v.len());
        Ok(())
    })?;
    space.history = history;
    used += history;
    if let Some(first) = first {
        space.history_floor = first;
    }
    space.used = used;
    Ok(space)
}

/// Bytes for people: `2 GiB`, `1.5 MiB`, `512 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl fmt::Display for NoSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NOSPACE since revision {}: {} held of a {} quota",
            self.revision,
            human_bytes(self.used),
            human_bytes(self.quota)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(3 << 19), "1.5 MiB");
        assert_eq!(human_bytes(1024), "1 KiB");
    }

    #[test]
    fn the_smallest_quota_governs() {
        let mut s = Space::default();
        assert_eq!(s.quota(), None);
        s.quotas.insert(1, 5 << 20);
        s.quotas.insert(2, 3 << 20);
        assert_eq!(s.quota(), Some(3 << 20));
        s.retain_members(|id| id == 1);
        assert_eq!(s.quota(), Some(5 << 20));
    }
}
