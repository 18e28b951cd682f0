//! Entries applied together (one `apply()` call, one write batch) against the same entries
//! applied one call each: a later entry must see what the earlier ones wrote, so both end with
//! the same answers and the same bytes in every column family.

use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;

use super::*;
use crate::db::SM_CFS;
use crate::state_machine::StateMachine;
use crate::types::LogId;
use crate::types::TypeConfig;

impl Sm {
    /// Applies `cmds` as one `apply()` call does: each on top of the writes of those before it,
    /// all written in one batch at the end.
    fn apply_together(&mut self, cmds: &[Command]) -> Vec<Response> {
        let mut pending = Pending::default();
        let mut out = Vec::new();
        for cmd in cmds {
            let req = Request {
                at_ms: 7,
                cmd: cmd.clone(),
            };
            let a = apply_request(&self.db, &pending, self.counters, &self.space, &req).unwrap();
            pending.add(&self.db, a.writes);
            self.counters = a.counters;
            self.space = a.space;
            out.push(a.response);
        }
        self.db.write(pending.take()).unwrap();
        out
    }

    /// Every key and value of the state machine's column families.
    fn dump(&self) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        for cf_name in SM_CFS {
            let cf = self.db.cf_handle(cf_name).unwrap();
            for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                let (k, v) = item.unwrap();
                out.push((cf_name, k.to_vec(), v.to_vec()));
            }
        }
        out
    }
}

/// Applies `cmds` both ways and checks the answers and the stored state agree; returns the
/// answers.
fn same_either_way(setup: impl Fn(&mut Sm), cmds: &[Command]) -> Vec<Response> {
    let mut alone = Sm::new();
    setup(&mut alone);
    let one_by_one: Vec<Response> = cmds.iter().map(|c| alone.apply(c.clone()).0).collect();
    let mut batched = Sm::new();
    setup(&mut batched);
    let together = batched.apply_together(cmds);
    assert_eq!(together, one_by_one, "answers differ");
    assert_eq!(batched.counters, alone.counters);
    assert_eq!(batched.space, alone.space);
    assert!(batched.dump() == alone.dump(), "stored state differs");
    together
}

fn put_cmd(k: &str, v: &str) -> Command {
    Command::Put(Put {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    })
}

fn del_cmd(k: &str, prefix: bool) -> Command {
    Command::Delete(Delete {
        key: k.into(),
        prefix,
        prev_kv: true,
    })
}

fn cas(k: &str, rev: u64, v: &str) -> Command {
    Command::Txn(Txn {
        compare: vec![mod_rev_is(k, rev)],
        success: vec![put_op(k, v)],
        failure: vec![],
    })
}

#[test]
fn a_compare_and_swap_sees_the_revision_an_earlier_entry_wrote() {
    let r = same_either_way(
        |_| {},
        &[
            put_cmd("a", "1"),
            // a is at revision 1: this one swaps ...
            cas("a", 1, "2"),
            // ... so this one, still expecting 1, must fail ...
            cas("a", 1, "3"),
            // ... and this one, expecting the swap's revision, succeeds.
            cas("a", 2, "4"),
        ],
    );
    let succeeded: Vec<bool> = r
        .iter()
        .skip(1)
        .map(|r| match r {
            Response::Txn { succeeded, .. } => *succeeded,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(succeeded, vec![true, false, true]);
}

#[test]
fn a_put_after_a_delete_in_the_same_call_creates_the_key_afresh() {
    let r = same_either_way(
        |sm| {
            sm.put("a", "old", 0);
            sm.put("a", "older", 0);
        },
        &[
            del_cmd("a", false),
            put_cmd("a", "new"),
            Command::Txn(Txn {
                compare: vec![Compare {
                    key: "a".into(),
                    target: CompareTarget::Version(1),
                    op: CompareOp::Equal,
                }],
                success: vec![put_op("a", "newer")],
                failure: vec![],
            }),
        ],
    );
    assert!(matches!(r[0], Response::Delete { deleted: 1, .. }), "{r:?}");
    assert!(
        matches!(
            r[2],
            Response::Txn {
                succeeded: true,
                ..
            }
        ),
        "{r:?}"
    );
}

#[test]
fn a_merge_sees_the_value_an_earlier_entry_put() {
    let r = same_either_way(
        |_| {},
        &[
            put_cmd("j", r#"{"x":1}"#),
            Command::Batch(crate::command::Batch {
                fence: vec![],
                writes: vec![Txn {
                    compare: vec![],
                    success: vec![merge_op("j", r#"{"y":2}"#)],
                    failure: vec![],
                }],
            }),
        ],
    );
    assert!(
        matches!(&r[1], Response::Batch { applied, .. } if applied == &vec![true]),
        "{r:?}"
    );
}

#[test]
fn ranges_and_prefix_deletes_see_keys_earlier_entries_wrote_and_deleted() {
    let r = same_either_way(
        |sm| {
            sm.put("p/0", "stored", 0);
            sm.put("p/1", "stored", 0);
        },
        &[
            put_cmd("p/2", "new"),
            del_cmd("p/0", false),
            Command::Txn(Txn {
                compare: vec![],
                success: vec![Op::Range(Range {
                    key: "p/".into(),
                    prefix: true,
                    ..Default::default()
                })],
                failure: vec![],
            }),
            del_cmd("p/", true),
        ],
    );
    let Response::Txn { responses, .. } = &r[2] else {
        panic!("{r:?}")
    };
    let OpResponse::Range(found) = &responses[0] else {
        panic!("{responses:?}")
    };
    let keys: Vec<&[u8]> = found.kvs.iter().map(|kv| kv.key.as_slice()).collect();
    assert_eq!(keys, vec![b"p/1".as_slice(), b"p/2".as_slice()]);
    assert!(matches!(r[3], Response::Delete { deleted: 2, .. }), "{r:?}");
}

#[test]
fn leases_and_locks_granted_earlier_in_the_call_are_found_and_revoked() {
    let r = same_either_way(
        |_| {},
        &[
            Command::LeaseGrant { ttl_ms: 1000 },
            Command::Put(Put {
                key: "owned".into(),
                value: "v".into(),
                lease: 1,
                ..Default::default()
            }),
            Command::Put(Put {
                key: "locked".into(),
                value: "v".into(),
                lock: Lock::Acquire(1),
                ..Default::default()
            }),
            // Its keys and locks are found only through the writes above.
            Command::LeaseRevoke { ids: vec![1] },
            // Gone: a put with it is refused.
            Command::Put(Put {
                key: "late".into(),
                value: "v".into(),
                lease: 1,
                ..Default::default()
            }),
        ],
    );
    assert!(matches!(r[1], Response::Put { .. }), "{r:?}");
    assert!(matches!(&r[3], Response::LeaseRevoked { found, .. } if found == &vec![1]));
    assert!(matches!(
        r[4],
        Response::Rejected {
            reason: Rejection::LeaseNotFound(1),
            ..
        }
    ));
}

#[test]
fn the_quota_and_history_trimming_see_earlier_entries_of_the_call() {
    let quota = crate::state_machine::MIN_QUOTA_BYTES;
    let setup = |sm: &mut Sm| {
        sm.members(&[1]);
        sm.apply(Command::SetQuota {
            member: 1,
            bytes: quota,
        });
    };
    let cmds: Vec<Command> = (0..24)
        .map(|i| put_value(&format!("k/{i:02}"), 64 << 10))
        .chain([del_cmd("k/0", true), put_value("k/again", 64 << 10)])
        .collect();
    let r = same_either_way(setup, &cmds);
    let refused = r
        .iter()
        .filter(|r| matches!(r, Response::Rejected { .. }))
        .count();
    assert!(refused > 0, "the quota never bit: {r:?}");
}

fn log_id(index: u64) -> LogId {
    LogId::new(
        LeaderId {
            term: 1,
            node_id: 1,
        },
        index,
    )
}

/// Through openraft's interface: the entries of one call are applied in order, published
/// once written, and the last one's log id is the applied one.
#[tokio::test]
async fn one_apply_call_writes_its_entries_and_the_last_applied_log_id() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::db::open(dir.path()).unwrap();
    let (mut sm, shared) =
        StateMachine::open(db.clone(), dir.path().join("snapshots"), None).unwrap();
    let mut events = shared.events.subscribe();
    let cmds = [
        put_cmd("a", "1"),
        cas("a", 1, "2"),
        cas("a", 1, "3"),
        del_cmd("b", false),
    ];
    let entries: Vec<Result<EntryResponder<TypeConfig>, std::io::Error>> = cmds
        .iter()
        .enumerate()
        .map(|(i, cmd)| {
            let req = Request {
                at_ms: 7,
                cmd: cmd.clone(),
            };
            Ok((
                crate::types::Entry::new_normal(log_id(i as u64 + 1), req),
                None,
            ))
        })
        .collect();
    sm.apply(futures::stream::iter(entries)).await.unwrap();

    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(4)));
    assert_eq!(read_kv(&db, b"a").unwrap().unwrap().value, b"2");
    assert_eq!(shared.revision(), 2);
    // Each revision's changes, in order: the put, then the swap; the failed swap and the
    // delete of a missing key changed nothing.
    assert_eq!(events.recv().await.unwrap().revision, 1);
    assert_eq!(events.recv().await.unwrap().revision, 2);
    assert!(events.try_recv().is_err());
}
