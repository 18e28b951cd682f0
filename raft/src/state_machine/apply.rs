//! Deterministic application of one log entry. Everything here depends only on the entry and
//! the stored state: no clock, no randomness, no local configuration, so every replica reaches
//! the same revision with the same keys.

use std::collections::BTreeMap;
use std::io;

use rocksdb::WriteBatch;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::space;
use super::space::NoSpace;
use super::space::Space;
use crate::codec;
use crate::command::Command;
use crate::command::Compare;
use crate::command::CompareOp;
use crate::command::CompareTarget;
use crate::command::Delete;
use crate::command::Event;
use crate::command::EventKind;
use crate::command::KeyValue;
use crate::command::Lock;
use crate::command::Op;
use crate::command::OpResponse;
use crate::command::Put;
use crate::command::Range;
use crate::command::RangeResult;
use crate::command::Rejection;
use crate::command::Request;
use crate::command::Response;
use crate::command::Txn;
use crate::db::be;
use crate::db::io_err;
use crate::db::prefix_end;
use crate::db::CF_HISTORY;
use crate::db::CF_KV;
use crate::db::CF_LEASE;
use crate::db::CF_LEASE_KEY;
use crate::db::CF_LEASE_LOCK;
use crate::db::CF_SM;

/// How many revisions of change history are kept for watches to catch up from.
pub(crate) const HISTORY_REVISIONS: u64 = 100_000;

pub(crate) const KEY_APPLIED: &[u8] = b"applied";
pub(crate) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(crate) const KEY_COUNTERS: &[u8] = b"counters";

/// Counters the state machine advances; stored as one record so one write keeps them in step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Counters {
    /// The store revision: bumped once by every entry that changes at least one key.
    pub revision: u64,
    pub next_lease: u64,
    pub next_member: u64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            revision: 0,
            next_lease: 1,
            // Manager 1 bootstraps the cluster.
            next_member: 2,
        }
    }
}

/// A lease as the state machine keeps it. Its expiry is the leader's business, not apply's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: u64,
    pub ttl_ms: u64,
    /// The granting entry's proposer clock; informational.
    pub granted_at_ms: u64,
}

/// Lease changes an entry made, for the in-memory lease table.
#[derive(Debug, Default)]
pub(crate) struct LeaseChanges {
    pub granted: Vec<LeaseRecord>,
    pub revoked: Vec<u64>,
}

pub(crate) fn lease_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = be(id).to_vec();
    k.extend_from_slice(key);
    k
}

/// Reads one key's record (stored without its key).
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

/// The effect of one entry, written by the caller in one atomic batch.
pub(crate) struct Applied {
    pub batch: WriteBatch,
    pub response: Response,
    pub counters: Counters,
    /// Events at `counters.revision`, empty if the entry changed no key.
    pub events: Vec<Event>,
    pub leases: LeaseChanges,
    pub space: Space,
}

/// Applies one entry's request on top of `db` as it stands, `space` being its space record.
pub(crate) fn apply_request(
    db: &DB,
    counters: Counters,
    space: &Space,
    req: &Request,
) -> io::Result<Applied> {
    let mut tx = EntryTx {
        db,
        batch: WriteBatch::default(),
        overlay: BTreeMap::new(),
        counters,
        next_rev: counters.revision + 1,
        events: Vec::new(),
        leases: LeaseChanges::default(),
        start: (counters, space.clone()),
        space: space.clone(),
    };
    let response = tx.run(req)?;
    tx.finish(response, space::may_grow(&req.cmd))
}

struct EntryTx<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Keys this entry already changed: later operations in the same txn must see them.
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    counters: Counters,
    /// The revision this entry's changes carry if it changes anything.
    next_rev: u64,
    events: Vec<Event>,
    leases: LeaseChanges,
    /// Counters and space before the entry: what a refused entry leaves in place.
    start: (Counters, Space),
    /// Space as the entry's changes so far leave it.
    space: Space,
}

impl EntryTx<'_> {
    fn run(&mut self, req: &Request) -> io::Result<Response> {
        Ok(match &req.cmd {
            Command::Put(p) => match self.put(p)? {
                Ok(prev_kv) => Response::Put {
                    revision: self.result_revision(),
                    prev_kv,
                },
                Err(reason) => self.rejected(reason),
            },
            Command::Delete(d) => {
                let (deleted, prev_kvs) = self.delete(d)?;
                Response::Delete {
                    revision: self.result_revision(),
                    deleted,
                    prev_kvs,
                }
            }
            Command::Txn(t) => {
                let mut succeeded = true;
                for c in &t.compare {
                    succeeded &= self.compare(c)?;
                }
                let ops = if succeeded { &t.success } else { &t.failure };
                // A txn with a put or a merge that would be refused is rejected whole, before
                // any change.
                let merges = match self.resolve_merges(ops)? {
                    Ok(merges) => merges,
                    Err(reason) => return Ok(self.rejected(reason)),
                };
                for op in ops {
                    if let Op::Put(p) = op {
                        if let Err(reason) = self.check_put(p)? {
                            return Ok(self.rejected(reason));
                        }
                    }
                }
                let mut merges = merges.into_iter();
                let mut responses = Vec::with_capacity(ops.len());
                for op in ops {
                    responses.push(match op {
                        Op::Range(r) => OpResponse::Range(self.range(r)?),
                        Op::Put(p) => OpResponse::Put {
                            prev_kv: self.put(p)?.unwrap_or(None),
                        },
                        Op::Merge(_) => {
                            let p = merges.next().expect("one resolved put per merge");
                            self.put(&p)?.ok();
                            OpResponse::Put { prev_kv: None }
                        }
                        Op::Delete(d) => {
                            let (deleted, prev_kvs) = self.delete(d)?;
                            OpResponse::Delete { deleted, prev_kvs }
                        }
                    });
                }
                Response::Txn {
                    revision: self.result_revision(),
                    succeeded,
                    responses,
                }
            }
            Command::LeaseGrant { ttl_ms } => {
                let id = self.counters.next_lease;
                self.counters.next_lease += 1;
                let rec = LeaseRecord {
                    id,
                    ttl_ms: *ttl_ms,
                    granted_at_ms: req.at_ms,
                };
                let cf = self.db.cf_handle(CF_LEASE).expect("cf lease");
                self.batch.put_cf(cf, be(id), codec::encode(&rec)?);
                self.space.grow(space::LEASE_BYTES);
                self.leases.granted.push(rec);
                Response::LeaseGranted {
                    revision: self.counters.revision,
                    id,
                    ttl_ms: *ttl_ms,
                }
            }
            Command::LeaseRevoke { ids } => {
                let mut found = Vec::new();
                for &id in ids {
                    if self.revoke(id)? {
                        found.push(id);
                    }
                }
                Response::LeaseRevoked {
                    revision: self.result_revision(),
                    found,
                }
            }
            Command::AllocateMemberId => {
                let id = self.counters.next_member;
                self.counters.next_member += 1;
                Response::MemberId { id }
            }
            Command::Batch(b) => {
                let mut fenced = false;
                for c in &b.fence {
                    fenced |= !self.compare(c)?;
                }
                let mut applied = Vec::with_capacity(b.writes.len());
                if !fenced {
                    for w in &b.writes {
                        applied.push(self.conditional(w)?);
                    }
                }
                Response::Batch {
                    revision: self.result_revision(),
                    fenced,
                    applied,
                }
            }
            Command::SetQuota { member, bytes } => {
                // One proposed just before its manager was removed is not kept.
                let sm = self.db.cf_handle(CF_SM).expect("cf sm");
                let membership: crate::types::StoredMembership =
                    match self.db.get_cf(sm, KEY_MEMBERSHIP).map_err(io_err)? {
                        Some(bytes) => codec::decode(&bytes)?,
                        None => Default::default(),
                    };
                if membership.membership().get_node(member).is_none() {
                    return Ok(Response::Empty {
                        revision: self.counters.revision,
                    });
                }
                // A change of the quota in force clears the alarm (see `finish`); the next
                // write that does not fit raises it again.
                self.space.quotas.insert(*member, *bytes);
                Response::Empty {
                    revision: self.counters.revision,
                }
            }
        })
    }

    /// One write of a batch: its success ops when its compares hold and none of its puts
    /// would be refused; otherwise nothing. Whether it applied.
    fn conditional(&mut self, w: &Txn) -> io::Result<bool> {
        for c in &w.compare {
            if !self.compare(c)? {
                return Ok(false);
            }
        }
        let Ok(merges) = self.resolve_merges(&w.success)? else {
            return Ok(false);
        };
        for op in &w.success {
            if let Op::Put(p) = op {
                if self.check_put(p)?.is_err() {
                    return Ok(false);
                }
            }
        }
        let mut merges = merges.into_iter();
        for op in &w.success {
            match op {
                Op::Range(_) => {}
                Op::Put(p) => {
                    self.put(p)?.ok();
                }
                Op::Merge(_) => {
                    let p = merges.next().expect("one resolved put per merge");
                    self.put(&p)?.ok();
                }
                Op::Delete(d) => {
                    self.delete(d)?;
                }
            }
        }
        Ok(true)
    }

    /// The put each merge of `ops` comes to, in order, read against the store as it is before
    /// any of `ops` applies; or why one cannot apply (a missing key, not a JSON object, a put
    /// the store would refuse).
    fn resolve_merges(&self, ops: &[Op]) -> io::Result<Result<Vec<Put>, Rejection>> {
        let mut puts = Vec::new();
        for op in ops {
            let Op::Merge(m) = op else { continue };
            let not_mergeable = || Rejection::NotMergeable { key: m.key.clone() };
            let Some(prev) = self.get(&m.key)? else {
                return Ok(Err(not_mergeable()));
            };
            let Some(value) = crate::merge::merge_json(&prev.value, &m.patch) else {
                return Ok(Err(not_mergeable()));
            };
            let put = Put {
                key: m.key.clone(),
                value,
                lease: prev.lease,
                flags: prev.flags,
                ..Default::default()
            };
            if let Err(reason) = self.check_put(&put)? {
                return Ok(Err(reason));
            }
            puts.push(put);
        }
        Ok(Ok(puts))
    }

    /// The revision the store is at once this entry is applied.
    fn result_revision(&self) -> u64 {
        if self.events.is_empty() {
            self.counters.revision
        } else {
            self.next_rev
        }
    }

    fn rejected(&self, reason: Rejection) -> Response {
        Response::Rejected {
            revision: self.counters.revision,
            reason,
        }
    }

    /// Records the entry's history, keeps history within its window and the store within its
    /// quota, and hands back what to write. An entry that `may_grow` and would leave the store
    /// larger than it found it and past its quota is refused whole, once history has given up
    /// all it can.
    fn finish(mut self, response: Response, may_grow: bool) -> io::Result<Applied> {
        if !self.events.is_empty() {
            self.counters.revision = self.next_rev;
            let cf = self.db.cf_handle(CF_HISTORY).expect("cf history");
            let bytes = codec::encode(&self.events)?;
            self.space.grow(space::history_bytes(bytes.len()));
            self.space.history += space::history_bytes(bytes.len());
            self.batch.put_cf(cf, be(self.next_rev), bytes);
            self.space.history_floor = self.space.history_floor.max(1);
            while self.space.history_floor + HISTORY_REVISIONS <= self.next_rev {
                self.trim_history()?;
            }
        }
        if let Some(quota) = self.space.quota() {
            // History gives way first: a watch that far behind must re-read, as after a
            // compaction. The latest revision stays, for watches resuming from it.
            while self.space.used > quota && self.space.history_floor < self.counters.revision {
                self.trim_history()?;
            }
            if may_grow && self.space.used > quota && self.space.used > self.start.1.used {
                return self.refuse(quota);
            }
        }
        // The alarm stays up until deletes or revokes freed room, so that it does not flap with
        // every small write that happens to fit. History, which fills whatever room there is,
        // does not count.
        if let Some(alarm) = self.space.alarm {
            let freed = self.space.live().saturating_add(alarm.short) <= alarm.live;
            if freed || self.space.quota() != Some(alarm.quota) {
                self.space.alarm = None;
            }
        }
        let sm = self.db.cf_handle(CF_SM).expect("cf sm");
        self.batch
            .put_cf(sm, KEY_COUNTERS, codec::encode(&self.counters)?);
        self.batch
            .put_cf(sm, space::KEY_SPACE, codec::encode(&self.space)?);
        Ok(Applied {
            batch: self.batch,
            response,
            counters: self.counters,
            events: self.events,
            leases: self.leases,
            space: self.space,
        })
    }

    /// Drops the oldest revision history holds.
    fn trim_history(&mut self) -> io::Result<()> {
        let cf = self.db.cf_handle(CF_HISTORY).expect("cf history");
        let rev = be(self.space.history_floor);
        if let Some(old) = self.db.get_pinned_cf(cf, rev).map_err(io_err)? {
            let bytes = space::history_bytes(old.len());
            self.space.shrink(bytes);
            self.space.history = self.space.history.saturating_sub(bytes);
        }
        self.batch.delete_cf(cf, rev);
        self.space.history_floor += 1;
        Ok(())
    }

    /// The entry changes nothing but raises the NOSPACE alarm.
    fn refuse(self, quota: u64) -> io::Result<Applied> {
        let short = self.space.used - quota;
        let (counters, mut space) = self.start;
        space.alarm = Some(NoSpace {
            quota,
            used: space.used,
            live: space.live(),
            short,
            revision: counters.revision,
        });
        let mut batch = WriteBatch::default();
        let sm = self.db.cf_handle(CF_SM).expect("cf sm");
        batch.put_cf(sm, space::KEY_SPACE, codec::encode(&space)?);
        Ok(Applied {
            batch,
            response: Response::Rejected {
                revision: counters.revision,
                reason: Rejection::NoSpace {
                    quota,
                    used: space.used,
                },
            },
            counters,
            events: Vec::new(),
            leases: LeaseChanges::default(),
            space,
        })
    }

    fn get(&self, key: &[u8]) -> io::Result<Option<KeyValue>> {
        match self.overlay.get(key) {
            Some(v) => Ok(v.clone()),
            None => read_kv(self.db, key),
        }
    }

    fn range(&self, r: &Range) -> io::Result<RangeResult> {
        if self.overlay.is_empty() {
            return scan(View::live(self.db), r, false);
        }
        // Merge what this entry changed over the stored keys, then apply the limit.
        let stored = scan(
            View::live(self.db),
            &Range {
                count_only: false,
                ..r.clone()
            },
            true,
        )?;
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = stored
            .kvs
            .into_iter()
            .map(|kv| (kv.key.clone(), kv))
            .collect();
        for (k, v) in &self.overlay {
            let inside = if r.prefix {
                k.starts_with(&r.key)
            } else {
                k == &r.key
            };
            if !inside {
                continue;
            }
            match v {
                Some(kv) => merged.insert(k.clone(), kv.clone()),
                None => merged.remove(k),
            };
        }
        let count = merged.len() as u64;
        let mut kvs: Vec<KeyValue> = if r.count_only {
            vec![]
        } else {
            merged.into_values().collect()
        };
        let more = r.limit > 0 && kvs.len() as u64 > r.limit;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResult { kvs, more, count })
    }

    fn check_lease(&self, lease: u64) -> io::Result<Result<(), Rejection>> {
        if lease == 0 {
            return Ok(Ok(()));
        }
        let cf = self.db.cf_handle(CF_LEASE).expect("cf lease");
        let revoked_here = self.leases.revoked.contains(&lease);
        if revoked_here || self.db.get_cf(cf, be(lease)).map_err(io_err)?.is_none() {
            return Ok(Err(Rejection::LeaseNotFound(lease)));
        }
        Ok(Ok(()))
    }

    /// Why `p` would be refused as things stand, if it would.
    fn check_put(&self, p: &Put) -> io::Result<Result<(), Rejection>> {
        if let Err(reason) = self.check_lease(p.lease)? {
            return Ok(Err(reason));
        }
        let held = self.get(&p.key)?.map_or(0, |kv| kv.lock);
        let key = || p.key.clone();
        Ok(match p.lock {
            Lock::Keep => Ok(()),
            Lock::Acquire(l) => match self.check_lease(l)? {
                Err(reason) => Err(reason),
                Ok(()) if held != 0 && held != l => Err(Rejection::LockHeld {
                    key: key(),
                    holder: held,
                }),
                Ok(()) => Ok(()),
            },
            Lock::Release(l) if held != l => Err(Rejection::LockNotHeld {
                key: key(),
                lease: l,
            }),
            Lock::Release(_) => Ok(()),
        })
    }

    /// Returns the previous value (if asked for) or the reason the put was refused.
    fn put(&mut self, p: &Put) -> io::Result<Result<Option<KeyValue>, Rejection>> {
        if let Err(reason) = self.check_put(p)? {
            return Ok(Err(reason));
        }
        let prev = self.get(&p.key)?;
        let out = if p.prev_kv { prev.clone() } else { None };
        self.write_put(p, prev)?;
        Ok(Ok(out))
    }

    /// Writes a put already found acceptable, over `prev`.
    fn write_put(&mut self, p: &Put, prev: Option<KeyValue>) -> io::Result<()> {
        let (held, held_index) = prev.as_ref().map_or((0, 0), |kv| (kv.lock, kv.lock_index));
        let (lock, lock_index) = match p.lock {
            Lock::Keep => (held, held_index),
            Lock::Acquire(l) if l == held => (held, held_index),
            Lock::Acquire(l) => (l, held_index + 1),
            Lock::Release(_) => (0, held_index),
        };
        let kv = KeyValue {
            key: p.key.clone(),
            value: p.value.clone(),
            create_revision: prev.as_ref().map_or(self.next_rev, |kv| kv.create_revision),
            mod_revision: self.next_rev,
            version: prev.as_ref().map_or(1, |kv| kv.version + 1),
            lease: p.lease,
            flags: p.flags,
            lock,
            lock_index,
        };
        let attachment = space::attachment_bytes(&p.key);
        if held != lock {
            let lock_cf = self.db.cf_handle(CF_LEASE_LOCK).expect("cf lease_lock");
            if held != 0 {
                self.batch.delete_cf(lock_cf, lease_key(held, &p.key));
                self.space.shrink(attachment);
            }
            if lock != 0 {
                self.batch.put_cf(lock_cf, lease_key(lock, &p.key), []);
                self.space.grow(attachment);
            }
        }
        let lease_cf = self.db.cf_handle(CF_LEASE_KEY).expect("cf lease_key");
        let prev_lease = prev.as_ref().map_or(0, |kv| kv.lease);
        if prev_lease != 0 && prev_lease != p.lease {
            self.batch
                .delete_cf(lease_cf, lease_key(prev_lease, &p.key));
            self.space.shrink(attachment);
        }
        if p.lease != 0 {
            self.batch.put_cf(lease_cf, lease_key(p.lease, &p.key), []);
            if prev_lease != p.lease {
                self.space.grow(attachment);
            }
        }
        if let Some(prev) = &prev {
            self.space.shrink(space::kv_bytes(prev));
        }
        self.space.grow(space::kv_bytes(&kv));
        let stored = KeyValue {
            key: Vec::new(),
            ..kv.clone()
        };
        let cf = self.db.cf_handle(CF_KV).expect("cf kv");
        self.batch.put_cf(cf, &p.key, codec::encode(&stored)?);
        self.overlay.insert(p.key.clone(), Some(kv.clone()));
        self.events.push(Event {
            kind: EventKind::Put,
            kv,
            prev_kv: prev,
        });
        Ok(())
    }

    fn delete(&mut self, d: &Delete) -> io::Result<(u64, Vec<KeyValue>)> {
        let victims: Vec<KeyValue> = if d.prefix {
            self.range(&Range {
                key: d.key.clone(),
                prefix: true,
                ..Default::default()
            })?
            .kvs
        } else {
            self.get(&d.key)?.into_iter().collect()
        };
        let deleted = victims.len() as u64;
        for kv in &victims {
            self.remove(kv);
        }
        Ok((deleted, if d.prev_kv { victims } else { Vec::new() }))
    }

    fn remove(&mut self, kv: &KeyValue) {
        let cf = self.db.cf_handle(CF_KV).expect("cf kv");
        self.batch.delete_cf(cf, &kv.key);
        self.space.shrink(space::kv_bytes(kv));
        if kv.lock != 0 {
            let lock_cf = self.db.cf_handle(CF_LEASE_LOCK).expect("cf lease_lock");
            self.batch.delete_cf(lock_cf, lease_key(kv.lock, &kv.key));
            self.space.shrink(space::attachment_bytes(&kv.key));
        }
        if kv.lease != 0 {
            let lease_cf = self.db.cf_handle(CF_LEASE_KEY).expect("cf lease_key");
            self.batch.delete_cf(lease_cf, lease_key(kv.lease, &kv.key));
            self.space.shrink(space::attachment_bytes(&kv.key));
        }
        self.overlay.insert(kv.key.clone(), None);
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: kv.key.clone(),
                mod_revision: self.next_rev,
                ..Default::default()
            },
            prev_kv: Some(kv.clone()),
        });
    }

    fn revoke(&mut self, id: u64) -> io::Result<bool> {
        let cf = self.db.cf_handle(CF_LEASE).expect("cf lease");
        if self.db.get_cf(cf, be(id)).map_err(io_err)?.is_none()
            || self.leases.revoked.contains(&id)
        {
            return Ok(false);
        }
        self.batch.delete_cf(cf, be(id));
        self.space.shrink(space::LEASE_BYTES);
        self.leases.revoked.push(id);
        // Keys attached to the lease go; keys merely locked by it stay, unlocked.
        for key in self.attached(CF_LEASE_KEY, id)? {
            // The attachment may be stale only if this same entry already moved the key.
            if let Some(kv) = self.get(&key)?.filter(|kv| kv.lease == id) {
                self.remove(&kv);
            }
        }
        for key in self.attached(CF_LEASE_LOCK, id)? {
            if let Some(kv) = self.get(&key)?.filter(|kv| kv.lock == id) {
                let unlock = Put {
                    key: kv.key.clone(),
                    value: kv.value.clone(),
                    lease: kv.lease,
                    prev_kv: false,
                    flags: kv.flags,
                    lock: Lock::Release(id),
                };
                // Not checked: `id` is being revoked, and releasing what it holds is the point.
                self.write_put(&unlock, Some(kv))?;
            }
        }
        Ok(true)
    }

    /// Keys recorded under lease `id` in column family `cf_name`.
    fn attached(&self, cf_name: &str, id: u64) -> io::Result<Vec<Vec<u8>>> {
        let cf = self.db.cf_handle(cf_name).expect("lease attachment cf");
        let prefix = be(id);
        let mode = rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut keys = Vec::new();
        for item in self.db.iterator_cf(cf, mode) {
            let (k, _) = item.map_err(io_err)?;
            if !k.starts_with(&prefix) {
                break;
            }
            keys.push(k[8..].to_vec());
        }
        Ok(keys)
    }

    fn compare(&self, c: &Compare) -> io::Result<bool> {
        let kv = self.get(&c.key)?;
        let ord = match (&c.target, &kv) {
            (CompareTarget::Exists(want), _) => {
                let eq = kv.is_some() == *want;
                return Ok(match c.op {
                    CompareOp::Equal => eq,
                    CompareOp::NotEqual => !eq,
                    CompareOp::Less | CompareOp::Greater => false,
                });
            }
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            // A missing key compares as revision / version 0 (as etcd does).
            (CompareTarget::ModRevision(n), _) => {
                kv.as_ref().map_or(0, |kv| kv.mod_revision).cmp(n)
            }
            (CompareTarget::CreateRevision(n), _) => {
                kv.as_ref().map_or(0, |kv| kv.create_revision).cmp(n)
            }
            (CompareTarget::Version(n), _) => kv.as_ref().map_or(0, |kv| kv.version).cmp(n),
            // A value comparison against a missing key is false whatever the operator.
            (CompareTarget::Value(_), None) => return Ok(false),
        };
        Ok(match c.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Less => ord.is_lt(),
            CompareOp::Greater => ord.is_gt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sm {
        _dir: tempfile::TempDir,
        db: std::sync::Arc<DB>,
        counters: Counters,
        space: Space,
    }

    impl Sm {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let db = crate::db::open(dir.path()).unwrap();
            let space = space::read(&db, 0).unwrap();
            Sm {
                _dir: dir,
                db,
                counters: Counters::default(),
                space,
            }
        }

        fn apply(&mut self, cmd: Command) -> (Response, Vec<Event>) {
            let req = Request { at_ms: 7, cmd };
            let a = apply_request(&self.db, self.counters, &self.space, &req).unwrap();
            self.db.write(a.batch).unwrap();
            self.counters = a.counters;
            self.space = a.space;
            (a.response, a.events)
        }

        /// Records a membership of managers `ids`, as a membership entry would.
        fn members(&mut self, ids: &[u64]) {
            let nodes: BTreeMap<u64, crate::types::ManagerNode> = ids
                .iter()
                .map(|id| (*id, crate::types::ManagerNode::default()))
                .collect();
            let m =
                openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes).unwrap();
            let stored = crate::types::StoredMembership::new(None, m);
            let sm = self.db.cf_handle(CF_SM).unwrap();
            self.db
                .put_cf(sm, KEY_MEMBERSHIP, codec::encode(&stored).unwrap())
                .unwrap();
        }

        /// Space as a replica measuring this store from scratch finds it.
        fn measured(&self) -> Space {
            space::measure(&self.db, self.counters.revision).unwrap()
        }

        fn put(&mut self, k: &str, v: &str, lease: u64) -> Response {
            self.apply(Command::Put(Put {
                key: k.into(),
                value: v.into(),
                lease,
                prev_kv: true,
                ..Default::default()
            }))
            .0
        }

        fn get(&self, k: &str) -> Option<KeyValue> {
            read_kv(&self.db, k.as_bytes()).unwrap()
        }
    }

    fn put_op(k: &str, v: &str) -> Op {
        Op::Put(Put {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    fn mod_rev_is(k: &str, rev: u64) -> Compare {
        Compare {
            key: k.into(),
            target: CompareTarget::ModRevision(rev),
            op: CompareOp::Equal,
        }
    }

    #[test]
    fn a_batch_applies_each_write_whose_compares_hold_at_one_revision() {
        let mut sm = Sm::new();
        sm.put("fence", "7", 0);
        sm.put("a", "1", 0);
        let write = |k: &str, rev: u64| Txn {
            compare: vec![mod_rev_is(k, rev)],
            success: vec![put_op(k, "new")],
            failure: vec![],
        };
        let batch = |fence_rev: u64| {
            Command::Batch(crate::command::Batch {
                fence: vec![mod_rev_is("fence", fence_rev)],
                // a is at 2: the first applies; the second then sees a at 3 and is refused;
                // b does not exist (mod revision 0) and is created.
                writes: vec![write("a", 2), write("a", 2), write("b", 0)],
            })
        };
        let (r, events) = sm.apply(batch(1));
        assert_eq!(
            r,
            Response::Batch {
                revision: 3,
                fenced: false,
                applied: vec![true, false, true]
            }
        );
        assert_eq!(events.len(), 2);
        assert!(events.iter().all(|e| e.kv.mod_revision == 3));
        assert_eq!(sm.get("a").unwrap().value, b"new");
        // A fence that fails applies nothing, not even writes whose compares hold.
        let (r, events) = sm.apply(batch(9));
        assert_eq!(
            r,
            Response::Batch {
                revision: 3,
                fenced: true,
                applied: vec![]
            }
        );
        assert!(events.is_empty());
    }

    fn merge_op(k: &str, patch: &str) -> Op {
        Op::Merge(crate::command::Merge {
            key: k.into(),
            patch: patch.into(),
        })
    }

    #[test]
    fn a_merge_changes_part_of_a_json_object_and_keeps_the_keys_lease() {
        let mut sm = Sm::new();
        let Response::LeaseGranted { id: lease, .. } =
            sm.apply(Command::LeaseGrant { ttl_ms: 60_000 }).0
        else {
            panic!("no lease")
        };
        sm.put("t", r#"{"state":"assigned","slot":3,"message":"x"}"#, lease);
        sm.put("plain", "not json", 0);
        let write = |k: &str, patch: &str| Txn {
            compare: vec![],
            success: vec![merge_op(k, patch)],
            failure: vec![],
        };
        let (r, events) = sm.apply(Command::Batch(crate::command::Batch {
            fence: vec![],
            writes: vec![
                write("t", r#"{"state":"running","message":null}"#),
                write("missing", r#"{"a":1}"#),
                write("plain", r#"{"a":1}"#),
            ],
        }));
        let Response::Batch { applied, .. } = r else {
            panic!("{r:?}")
        };
        assert_eq!(applied, vec![true, false, false]);
        assert_eq!(events.len(), 1);
        let t = sm.get("t").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&t.value).unwrap();
        assert_eq!(v, serde_json::json!({"state": "running", "slot": 3}));
        assert_eq!((t.lease, t.version), (lease, 2));
        assert_eq!(events[0].prev_kv.as_ref().map(|p| p.version), Some(1));
        assert_eq!(sm.get("plain").unwrap().value, b"not json");
        assert!(sm.get("missing").is_none());

        // In a txn, a merge that cannot apply rejects the txn whole.
        let (r, _) = sm.apply(Command::Txn(Txn {
            compare: vec![],
            success: vec![put_op("other", "1"), merge_op("missing", "{}")],
            failure: vec![],
        }));
        assert!(
            matches!(
                r,
                Response::Rejected {
                    reason: Rejection::NotMergeable { .. },
                    ..
                }
            ),
            "{r:?}"
        );
        assert!(sm.get("other").is_none());
        // And the space counted matches a measure from scratch.
        assert_eq!(sm.space.used, sm.measured().used);
    }

    #[test]
    fn puts_track_revisions_and_versions() {
        let mut sm = Sm::new();
        assert_eq!(
            sm.put("a", "1", 0),
            Response::Put {
                revision: 1,
                prev_kv: None
            }
        );
        sm.put("b", "x", 0);
        let r = sm.put("a", "2", 0);
        let Response::Put {
            revision: 3,
            prev_kv: Some(prev),
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(prev.value, b"1");
        let a = sm.get("a").unwrap();
        assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 3, 2));
        assert_eq!(a.value, b"2");
    }

    #[test]
    fn deletes_bump_the_revision_only_when_something_goes() {
        let mut sm = Sm::new();
        sm.put("dir/a", "1", 0);
        sm.put("dir/b", "2", 0);
        sm.put("other", "3", 0);
        let (r, _) = sm.apply(Command::Delete(Delete {
            key: b"missing".to_vec(),
            prefix: false,
            prev_kv: false,
        }));
        assert_eq!(
            r,
            Response::Delete {
                revision: 3,
                deleted: 0,
                prev_kvs: vec![]
            }
        );
        let (r, events) = sm.apply(Command::Delete(Delete {
            key: b"dir/".to_vec(),
            prefix: true,
            prev_kv: false,
        }));
        assert_eq!(
            r,
            Response::Delete {
                revision: 4,
                deleted: 2,
                prev_kvs: vec![]
            }
        );
        assert_eq!(events.len(), 2);
        assert!(events
            .iter()
            .all(|e| e.kind == EventKind::Delete && e.kv.mod_revision == 4));
        assert!(sm.get("dir/a").is_none() && sm.get("other").is_some());
    }

    #[test]
    fn txn_takes_the_branch_its_compares_choose() {
        let mut sm = Sm::new();
        sm.put("k", "v1", 0);
        let cas = |rev: u64, value: &str| {
            Command::Txn(Txn {
                compare: vec![Compare {
                    key: b"k".to_vec(),
                    target: CompareTarget::ModRevision(rev),
                    op: CompareOp::Equal,
                }],
                success: vec![Op::Put(Put {
                    key: b"k".to_vec(),
                    value: value.into(),
                    ..Default::default()
                })],
                failure: vec![Op::Range(Range {
                    key: b"k".to_vec(),
                    ..Default::default()
                })],
            })
        };
        let (r, _) = sm.apply(cas(1, "v2"));
        assert!(
            matches!(
                r,
                Response::Txn {
                    revision: 2,
                    succeeded: true,
                    ..
                }
            ),
            "{r:?}"
        );
        let (r, events) = sm.apply(cas(1, "v3"));
        let Response::Txn {
            revision: 2,
            succeeded: false,
            responses,
        } = r
        else {
            panic!("{r:?}")
        };
        assert!(events.is_empty());
        let OpResponse::Range(range) = &responses[0] else {
            panic!()
        };
        assert_eq!(range.kvs[0].value, b"v2");
        // Creation guard: a missing key has mod_revision 0.
        let create = Command::Txn(Txn {
            compare: vec![Compare {
                key: b"new".to_vec(),
                target: CompareTarget::ModRevision(0),
                op: CompareOp::Equal,
            }],
            success: vec![
                Op::Put(Put {
                    key: b"new".to_vec(),
                    value: b"1".to_vec(),
                    ..Default::default()
                }),
                Op::Range(Range {
                    key: b"new".to_vec(),
                    ..Default::default()
                }),
            ],
            failure: vec![],
        });
        let (r, _) = sm.apply(create.clone());
        let Response::Txn {
            succeeded: true,
            responses,
            ..
        } = r
        else {
            panic!("{r:?}")
        };
        let OpResponse::Range(seen) = &responses[1] else {
            panic!()
        };
        assert_eq!(seen.count, 1, "a txn sees its own earlier puts");
        assert!(matches!(
            sm.apply(create).0,
            Response::Txn {
                succeeded: false,
                ..
            }
        ));
    }

    #[test]
    fn leases_own_their_keys() {
        let mut sm = Sm::new();
        let (r, _) = sm.apply(Command::LeaseGrant { ttl_ms: 2000 });
        assert_eq!(
            r,
            Response::LeaseGranted {
                revision: 0,
                id: 1,
                ttl_ms: 2000
            }
        );
        sm.put("l/a", "1", 1);
        sm.put("l/b", "2", 1);
        sm.put("l/c", "3", 0);
        // Re-putting without the lease detaches the key.
        sm.put("l/b", "2", 0);
        let r = sm.put("l/d", "x", 99);
        assert_eq!(
            r,
            Response::Rejected {
                revision: 4,
                reason: Rejection::LeaseNotFound(99)
            }
        );
        let (r, events) = sm.apply(Command::LeaseRevoke { ids: vec![1, 5] });
        assert_eq!(
            r,
            Response::LeaseRevoked {
                revision: 5,
                found: vec![1]
            }
        );
        assert_eq!(events.len(), 1);
        assert!(sm.get("l/a").is_none());
        assert!(sm.get("l/b").is_some() && sm.get("l/c").is_some());
        let r = sm.put("l/e", "x", 1);
        assert!(
            matches!(r, Response::Rejected { .. }),
            "revoked lease accepted: {r:?}"
        );
    }

    #[test]
    fn locks_are_exclusive_and_released_when_their_lease_ends() {
        let mut sm = Sm::new();
        sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        let lock = |sm: &mut Sm, v: &str, lock: Lock| {
            sm.apply(Command::Put(Put {
                key: b"lock".to_vec(),
                value: v.into(),
                flags: 42,
                lock,
                ..Default::default()
            }))
            .0
        };
        assert!(matches!(
            lock(&mut sm, "a", Lock::Acquire(1)),
            Response::Put { .. }
        ));
        let held = sm.get("lock").unwrap();
        assert_eq!((held.lock, held.lock_index, held.flags), (1, 1, 42));
        // Re-acquiring by the holder keeps the index; another lease is refused.
        assert!(matches!(
            lock(&mut sm, "b", Lock::Acquire(1)),
            Response::Put { .. }
        ));
        assert_eq!(sm.get("lock").unwrap().lock_index, 1);
        let r = lock(&mut sm, "c", Lock::Acquire(2));
        assert_eq!(
            r,
            Response::Rejected {
                revision: 2,
                reason: Rejection::LockHeld {
                    key: b"lock".to_vec(),
                    holder: 1
                }
            }
        );
        assert!(matches!(
            lock(&mut sm, "c", Lock::Release(2)),
            Response::Rejected { .. }
        ));
        // A plain put keeps the lock.
        assert!(matches!(
            lock(&mut sm, "d", Lock::Keep),
            Response::Put { .. }
        ));
        assert_eq!(sm.get("lock").unwrap().lock, 1);
        // The holder's lease ends: the key stays, unlocked; lease 2 can take it.
        let (_, events) = sm.apply(Command::LeaseRevoke { ids: vec![1] });
        assert_eq!(events.len(), 1);
        let after = sm.get("lock").unwrap();
        assert_eq!((after.lock, after.value.as_slice()), (0, b"d".as_slice()));
        assert!(matches!(
            lock(&mut sm, "e", Lock::Acquire(2)),
            Response::Put { .. }
        ));
        assert_eq!(sm.get("lock").unwrap().lock_index, 2);
    }

    #[test]
    fn history_records_every_revision() {
        let mut sm = Sm::new();
        sm.put("a", "1", 0);
        sm.put("a", "2", 0);
        let cf = sm.db.cf_handle(CF_HISTORY).unwrap();
        for rev in 1..=2u64 {
            let bytes = sm.db.get_cf(cf, be(rev)).unwrap().expect("history entry");
            let events: Vec<Event> = codec::decode(&bytes).unwrap();
            assert_eq!(events[0].kv.mod_revision, rev);
        }
        assert!(sm.db.get_cf(cf, be(3)).unwrap().is_none());
    }

    #[test]
    fn member_ids_are_never_reused() {
        let mut sm = Sm::new();
        let ids: Vec<_> = (0..3)
            .map(|_| match sm.apply(Command::AllocateMemberId).0 {
                Response::MemberId { id } => id,
                r => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(ids, vec![2, 3, 4]);
    }

    fn put_value(k: &str, bytes: usize) -> Command {
        Command::Put(Put {
            key: k.into(),
            value: vec![b'v'; bytes],
            ..Default::default()
        })
    }

    #[test]
    fn space_counted_entry_by_entry_is_what_a_measure_from_scratch_finds() {
        let mut sm = Sm::new();
        sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        sm.put("a", "1", 1);
        sm.put("a", "22", 2);
        sm.put("b", "333", 1);
        sm.put("c", "4444", 0);
        sm.apply(Command::Put(Put {
            key: b"lock".to_vec(),
            value: b"x".to_vec(),
            lock: Lock::Acquire(2),
            ..Default::default()
        }));
        sm.apply(Command::Txn(Txn {
            compare: vec![],
            success: vec![put_op("d", "1"), put_op("d", "22"), put_op("e", "5")],
            failure: vec![],
        }));
        sm.apply(Command::Delete(Delete {
            key: b"c".to_vec(),
            prefix: false,
            prev_kv: false,
        }));
        sm.apply(Command::LeaseRevoke { ids: vec![2] });
        let counted = sm.space.clone();
        assert!(counted.used > 0);
        assert_eq!(counted, sm.measured());
    }

    #[test]
    fn past_the_quota_writes_that_add_data_are_refused_and_deletes_make_room() {
        let mut sm = Sm::new();
        sm.members(&[1, 2]);
        let quota = crate::state_machine::MIN_QUOTA_BYTES;
        sm.apply(Command::SetQuota {
            member: 1,
            bytes: 4 * quota,
        });
        sm.apply(Command::SetQuota {
            member: 2,
            bytes: quota,
        });
        // A manager that is not a member does not get a say.
        sm.apply(Command::SetQuota {
            member: 9,
            bytes: 1,
        });
        assert_eq!(sm.space.quota(), Some(quota));

        let mut stored = Vec::new();
        let refused = loop {
            let key = format!("k/{:03}", stored.len());
            match sm.apply(put_value(&key, 64 << 10)).0 {
                Response::Put { .. } => stored.push(key),
                r => break r,
            }
            assert!(
                stored.len() < 64,
                "1 MiB holds fewer than 64 values of 64 KiB"
            );
        };
        let revision = sm.counters.revision;
        let Response::Rejected {
            reason: Rejection::NoSpace { quota: q, used },
            revision: r,
        } = refused
        else {
            panic!("{refused:?}")
        };
        assert_eq!((q, r), (quota, revision));
        assert!(used <= quota && sm.space.used <= quota, "{used} > {quota}");
        assert!(refused_message(&refused).contains("1 MiB quota (--quota-bytes)"));
        let alarm = sm.space.alarm.expect("the NOSPACE alarm");
        assert_eq!((alarm.quota, alarm.revision), (quota, revision));
        // History gave way before anything was refused.
        assert!(sm.space.history_floor > 1);
        // What still fits goes through (a 40-byte lease), the alarm staying up; a lease revoke
        // and deletes always go through, and what they free clears the alarm.
        let (r, _) = sm.apply(Command::LeaseGrant { ttl_ms: 1000 });
        assert!(matches!(r, Response::LeaseGranted { id: 1, .. }), "{r:?}");
        assert!(sm.space.alarm.is_some());
        assert!(matches!(
            sm.apply(Command::LeaseRevoke { ids: vec![1] }).0,
            Response::LeaseRevoked { .. }
        ));
        assert!(
            sm.space.alarm.is_some(),
            "the grant's own lease freed nothing"
        );
        for key in &stored[..2] {
            let (r, _) = sm.apply(Command::Delete(Delete {
                key: key.as_bytes().to_vec(),
                prefix: false,
                prev_kv: false,
            }));
            assert!(matches!(r, Response::Delete { deleted: 1, .. }), "{r:?}");
        }
        assert_eq!(
            sm.space.alarm, None,
            "two deletes freed what the write lacked"
        );
        assert!(stored.len() >= 6, "{} values fit", stored.len());
        for key in &stored[2..5] {
            let (r, _) = sm.apply(Command::Delete(Delete {
                key: key.as_bytes().to_vec(),
                prefix: false,
                prev_kv: false,
            }));
            assert!(matches!(r, Response::Delete { deleted: 1, .. }), "{r:?}");
        }
        assert!(sm.space.used <= quota);
        // Room again: writes go through.
        let (r, _) = sm.apply(put_value("k/again", 64 << 10));
        assert!(matches!(r, Response::Put { .. }), "{r:?}");
        assert_eq!(sm.space.alarm, None);
        let measured = sm.measured();
        assert_eq!(
            (sm.space.used, sm.space.history_floor),
            (measured.used, measured.history_floor)
        );
        // Full again; overwriting a value with a smaller one still goes through.
        let mut n = 0;
        while let (Response::Put { .. }, _) = sm.apply(put_value(&format!("k/y{n}"), 64 << 10)) {
            n += 1;
            assert!(n < 64);
        }
        let (r, _) = sm.apply(put_value(&stored[5], 10));
        assert!(matches!(r, Response::Put { .. }), "{r:?}");
    }

    fn refused_message(r: &Response) -> String {
        match r {
            Response::Rejected { reason, .. } => reason.to_string(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn history_keeps_its_window_and_the_floor_follows() {
        let mut sm = Sm::new();
        for i in 0..5 {
            sm.put("a", &i.to_string(), 0);
        }
        assert_eq!(sm.space.history_floor, 1);
        assert_eq!(sm.space, sm.measured());
    }
}
