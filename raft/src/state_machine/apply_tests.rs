//! Entries applied to a real RocksDB store, checked through what reads and the counters show.

use super::*;
use crate::state_machine::read::read_kv;

#[path = "batch_tests.rs"]
mod batch;

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
        let a = apply_request(
            &self.db,
            &Pending::default(),
            self.counters,
            &self.space,
            &req,
        )
        .unwrap();
        self.db.write(a.writes.batch(&self.db)).unwrap();
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
        let m = openraft::Membership::new(vec![nodes.keys().copied().collect()], nodes).unwrap();
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
