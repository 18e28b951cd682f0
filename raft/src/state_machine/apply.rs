//! Deterministic application of one log entry. Everything here depends only on the entry and
//! the stored state: no clock, no randomness, no local configuration, so every replica reaches
//! the same revision with the same keys.

use std::collections::BTreeMap;
use std::io;

use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use super::pending::Base;
use super::pending::Pending;
use super::pending::Writes;
use super::read::scan;
use super::read::View;
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

/// The effect of one entry; the caller writes it with the other entries of the `apply()` call,
/// in one atomic batch.
pub(crate) struct Applied {
    pub writes: Writes,
    pub response: Response,
    pub counters: Counters,
    /// Events at `counters.revision`, empty if the entry changed no key.
    pub events: Vec<Event>,
    pub leases: LeaseChanges,
    pub space: Space,
}

/// Applies one entry's request on top of `db` under the writes `pending` from earlier entries of
/// the same `apply()` call, `space` being the space record they left.
pub(crate) fn apply_request(
    db: &DB,
    pending: &Pending,
    counters: Counters,
    space: &Space,
    req: &Request,
) -> io::Result<Applied> {
    let mut tx = EntryTx {
        base: Base::new(db, pending),
        writes: Writes::default(),
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
    /// What the entry reads: the store as the entries before it left it.
    base: Base<'a>,
    writes: Writes,
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
                self.writes.put(CF_LEASE, be(id), codec::encode(&rec)?);
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
                let membership: crate::types::StoredMembership =
                    match self.base.get(CF_SM, KEY_MEMBERSHIP)? {
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
            let bytes = codec::encode(&self.events)?;
            self.space.grow(space::history_bytes(bytes.len()));
            self.space.history += space::history_bytes(bytes.len());
            self.writes.put(CF_HISTORY, be(self.next_rev), bytes);
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
        self.writes
            .put(CF_SM, KEY_COUNTERS, codec::encode(&self.counters)?);
        self.writes
            .put(CF_SM, space::KEY_SPACE, codec::encode(&self.space)?);
        Ok(Applied {
            writes: self.writes,
            response,
            counters: self.counters,
            events: self.events,
            leases: self.leases,
            space: self.space,
        })
    }

    /// Drops the oldest revision history holds.
    fn trim_history(&mut self) -> io::Result<()> {
        let rev = be(self.space.history_floor);
        if let Some(old) = self.base.get(CF_HISTORY, &rev)? {
            let bytes = space::history_bytes(old.len());
            self.space.shrink(bytes);
            self.space.history = self.space.history.saturating_sub(bytes);
        }
        self.writes.delete(CF_HISTORY, rev);
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
        let mut writes = Writes::default();
        writes.put(CF_SM, space::KEY_SPACE, codec::encode(&space)?);
        Ok(Applied {
            writes,
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
            None => self.base.get_kv(key),
        }
    }

    fn range(&self, r: &Range) -> io::Result<RangeResult> {
        let pending = self.base.pending_kvs(r)?;
        if self.overlay.is_empty() && pending.is_empty() {
            return scan(View::live(self.base.db), r, false);
        }
        // Merge what earlier entries of this apply call, then this entry, changed over the
        // stored keys, then apply the limit.
        let stored = scan(
            View::live(self.base.db),
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
        for (k, v) in pending {
            match v {
                Some(kv) => merged.insert(k, kv),
                None => merged.remove(&k),
            };
        }
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
        let revoked_here = self.leases.revoked.contains(&lease);
        if revoked_here || self.base.get(CF_LEASE, &be(lease))?.is_none() {
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
            if held != 0 {
                self.writes.delete(CF_LEASE_LOCK, lease_key(held, &p.key));
                self.space.shrink(attachment);
            }
            if lock != 0 {
                self.writes
                    .put(CF_LEASE_LOCK, lease_key(lock, &p.key), Vec::new());
                self.space.grow(attachment);
            }
        }
        let prev_lease = prev.as_ref().map_or(0, |kv| kv.lease);
        if prev_lease != 0 && prev_lease != p.lease {
            self.writes
                .delete(CF_LEASE_KEY, lease_key(prev_lease, &p.key));
            self.space.shrink(attachment);
        }
        if p.lease != 0 {
            self.writes
                .put(CF_LEASE_KEY, lease_key(p.lease, &p.key), Vec::new());
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
        self.writes
            .put(CF_KV, p.key.clone(), codec::encode(&stored)?);
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
        self.writes.delete(CF_KV, kv.key.clone());
        self.space.shrink(space::kv_bytes(kv));
        if kv.lock != 0 {
            self.writes
                .delete(CF_LEASE_LOCK, lease_key(kv.lock, &kv.key));
            self.space.shrink(space::attachment_bytes(&kv.key));
        }
        if kv.lease != 0 {
            self.writes
                .delete(CF_LEASE_KEY, lease_key(kv.lease, &kv.key));
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
        if self.base.get(CF_LEASE, &be(id))?.is_none() || self.leases.revoked.contains(&id) {
            return Ok(false);
        }
        self.writes.delete(CF_LEASE, be(id));
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
    fn attached(&self, cf_name: &'static str, id: u64) -> io::Result<Vec<Vec<u8>>> {
        let keys = self.base.keys_with_prefix(cf_name, &be(id))?;
        Ok(keys.into_iter().map(|k| k[8..].to_vec()).collect())
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
#[path = "apply_tests.rs"]
mod tests;
