//! `/v1/txn`: Consul's KV transaction verbs as one store transaction, all or nothing. Checks
//! (cas, check-index, check-not-exists, get's existence) become the transaction's compares and
//! every write its success branch; a failed check applies nothing and answers 409 with
//! Consul's `Errors`. Checks run before the writes (Consul runs them in order): a check on a
//! key the same transaction writes earlier sees the value before the transaction.

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::json;
use serde_json::Map;
use serde_json::Value;
use shoal_raft::Command;
use shoal_raft::Compare;
use shoal_raft::CompareOp;
use shoal_raft::CompareTarget;
use shoal_raft::Delete;
use shoal_raft::KeyValue;
use shoal_raft::Lock;
use shoal_raft::Op;
use shoal_raft::OpResponse;
use shoal_raft::Put;
use shoal_raft::Range;
use shoal_raft::Rejection;
use shoal_raft::Response as Applied;
use shoal_raft::StoreError;
use shoal_raft::Txn;

use super::acl::Acl;
use super::error::ApiError;
use super::json;
use super::kv::mod_revision_is;
use super::kv::unexpected;
use super::kv::Entry;
use super::kv::MAX_VALUE;
use super::query::Query;
use super::session;
use super::Api;
use crate::model::Access;
use crate::security::policy;

/// Consul's limit on operations in one transaction.
const MAX_OPS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Set,
    Cas,
    Lock,
    Unlock,
    Get,
    GetTree,
    CheckIndex,
    CheckSession,
    CheckNotExists,
    Delete,
    DeleteTree,
    DeleteCas,
}

impl Verb {
    fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "set" => Verb::Set,
            "cas" => Verb::Cas,
            "lock" => Verb::Lock,
            "unlock" => Verb::Unlock,
            "get" => Verb::Get,
            "get-tree" => Verb::GetTree,
            "check-index" => Verb::CheckIndex,
            "check-session" => Verb::CheckSession,
            "check-not-exists" => Verb::CheckNotExists,
            "delete" => Verb::Delete,
            "delete-tree" => Verb::DeleteTree,
            "delete-cas" => Verb::DeleteCas,
            _ => return None,
        })
    }
}

#[derive(Debug)]
struct KvOp {
    verb: Verb,
    key: String,
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn bad(i: usize, what: String) -> ApiError {
    ApiError::BadRequest(format!("Failed to parse body: operation {i}: {what}"))
}

fn parse_ops(body: &[u8]) -> Result<Vec<KvOp>, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("Failed to parse body: {e}")))?;
    let Value::Array(items) = value else {
        return Err(ApiError::BadRequest(
            "Failed to parse body: a transaction is a JSON array of operations".into(),
        ));
    };
    if items.len() > MAX_OPS {
        return Err(ApiError::TooLarge(format!(
            "Transaction contains too many operations ({} > {MAX_OPS})",
            items.len()
        )));
    }
    let mut ops = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let kv = item
            .as_object()
            .and_then(|o| field(o, "KV"))
            .and_then(Value::as_object)
            .ok_or_else(|| bad(i, "only KV operations are supported".into()))?;
        let text = |name: &str| -> Result<String, ApiError> {
            match field(kv, name) {
                None => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Err(bad(i, format!("{name} must be a string, not {v}"))),
            }
        };
        let number = |name: &str| -> Result<u64, ApiError> {
            match field(kv, name) {
                None => Ok(0),
                Some(v) => v.as_u64().ok_or_else(|| {
                    bad(i, format!("{name} must be a non-negative integer, not {v}"))
                }),
            }
        };
        let verb_text = text("Verb")?;
        let verb = Verb::parse(&verb_text)
            .ok_or_else(|| bad(i, format!("unknown KV verb {verb_text:?}")))?;
        let value = BASE64
            .decode(text("Value")?)
            .map_err(|e| bad(i, format!("Value is not valid base64: {e}")))?;
        if value.len() > MAX_VALUE {
            return Err(ApiError::TooLarge(format!(
                "operation {i}: value is {} bytes, max size: {MAX_VALUE} bytes",
                value.len()
            )));
        }
        let key = text("Key")?;
        if key.is_empty() && !matches!(verb, Verb::GetTree | Verb::DeleteTree) {
            return Err(bad(i, "Missing key name".into()));
        }
        ops.push(KvOp {
            verb,
            key,
            value,
            flags: number("Flags")?,
            index: number("Index")?,
            session: text("Session")?,
        });
    }
    Ok(ops)
}

/// One Consul operation's part of the store transaction.
struct Plan {
    /// The compare this op adds, if any (its message if it fails is built from the key).
    compare: Option<Compare>,
    /// Position of this op's store op in the success branch, if it has one.
    op: Option<usize>,
    lease: u64,
}

pub(crate) async fn handle(
    api: &Api,
    acl: &Acl,
    q: Option<&str>,
    body: Bytes,
) -> Result<Response, ApiError> {
    Query::parse(q, &[])?;
    let ops = parse_ops(&body)?;
    // Every operation is checked against the token before anything is read or written; a tree
    // read needs read on every key under its prefix (no filtering inside a transaction).
    for op in &ops {
        match op.verb {
            Verb::Set | Verb::Cas | Verb::Lock | Verb::Unlock | Verb::Delete | Verb::DeleteCas => {
                acl.need_key(&op.key, Access::Write)?
            }
            Verb::DeleteTree => acl.need_tree(&op.key, Access::Write)?,
            Verb::GetTree => acl.need_tree(&op.key, Access::Read)?,
            Verb::Get | Verb::CheckIndex | Verb::CheckSession | Verb::CheckNotExists => {
                acl.need_key(&op.key, Access::Read)?
            }
        }
    }
    let mut txn = Txn::default();
    let mut plans = Vec::with_capacity(ops.len());
    for (i, op) in ops.iter().enumerate() {
        let key = op.key.as_bytes().to_vec();
        let mut plan = Plan {
            compare: None,
            op: None,
            lease: 0,
        };
        let mut put = Put {
            key: key.clone(),
            value: op.value.clone(),
            flags: op.flags,
            prev_kv: true,
            ..Default::default()
        };
        let range = |prefix| {
            Op::Range(Range {
                key: key.clone(),
                prefix,
                ..Default::default()
            })
        };
        let delete = |prefix| {
            Op::Delete(Delete {
                key: key.clone(),
                prefix,
                prev_kv: false,
            })
        };
        let store_op = match op.verb {
            Verb::Set => Some(Op::Put(put)),
            Verb::Cas => {
                plan.compare = Some(mod_revision_is(&op.key, op.index));
                Some(Op::Put(put))
            }
            Verb::Lock | Verb::Unlock | Verb::CheckSession => {
                let Some(s) = session::lookup(api, &op.session).await? else {
                    return conflict(i, format!("invalid session {:?}", op.session));
                };
                plan.lease = s.lease;
                match op.verb {
                    Verb::Lock => {
                        put.lock = Lock::Acquire(s.lease);
                        if s.delete_keys() {
                            put.lease = s.lease;
                        }
                        Some(Op::Put(put))
                    }
                    Verb::Unlock => {
                        put.lock = Lock::Release(s.lease);
                        Some(Op::Put(put))
                    }
                    _ => {
                        // The store cannot compare a lock holder: read it now, and make the
                        // transaction depend on the key not changing since.
                        let (res, _) = api
                            .store
                            .range(
                                &Range {
                                    key: key.clone(),
                                    ..Default::default()
                                },
                                false,
                            )
                            .await?;
                        let kv = res.kvs.into_iter().next().unwrap_or_default();
                        if kv.lock != s.lease {
                            return conflict(
                                i,
                                format!(
                                    "failed session check for key {:?}, current session {:?} != {:?}",
                                    op.key,
                                    if kv.lock == 0 { String::new() } else { session::session_id(kv.lock) },
                                    op.session
                                ),
                            );
                        }
                        plan.compare = Some(mod_revision_is(&op.key, kv.mod_revision));
                        Some(range(false))
                    }
                }
            }
            Verb::Get => {
                plan.compare = Some(Compare {
                    key: key.clone(),
                    target: CompareTarget::Exists(true),
                    op: CompareOp::Equal,
                });
                Some(range(false))
            }
            Verb::GetTree => Some(range(true)),
            Verb::CheckIndex => {
                plan.compare = Some(mod_revision_is(&op.key, op.index));
                Some(range(false))
            }
            Verb::CheckNotExists => {
                plan.compare = Some(Compare {
                    key: key.clone(),
                    target: CompareTarget::Exists(false),
                    op: CompareOp::Equal,
                });
                None
            }
            Verb::Delete => Some(delete(false)),
            Verb::DeleteTree => Some(delete(true)),
            Verb::DeleteCas => {
                plan.compare = Some(mod_revision_is(&op.key, op.index));
                Some(delete(false))
            }
        };
        if let Some(c) = &plan.compare {
            txn.compare.push(c.clone());
        }
        // The cluster's own records are never a user's to write, whatever the verb.
        match &store_op {
            Some(Op::Put(p)) => policy::user_write("put", &p.key, false)?,
            Some(Op::Delete(d)) => policy::user_write("delete", &d.key, d.prefix)?,
            _ => {}
        }
        if let Some(o) = store_op {
            plan.op = Some(txn.success.len());
            txn.success.push(o);
        }
        plans.push(plan);
    }

    let (revision, responses) = match api.store.write(Command::Txn(txn)).await {
        Ok(Applied::Txn {
            revision,
            succeeded: true,
            responses,
        }) => (revision, responses),
        Ok(Applied::Txn { .. }) => return failed_checks(api, &ops, &plans).await,
        Ok(Applied::Rejected { reason, .. }) => {
            // A lock held by another session, or an unlock by one that does not hold it.
            let refused = match &reason {
                Rejection::LockHeld { key, .. }
                | Rejection::LockNotHeld { key, .. }
                | Rejection::NotMergeable { key } => key.as_slice(),
                Rejection::LeaseNotFound(_) => &[],
                // Store::write turns this one into an error; never an answer here.
                Rejection::NoSpace { quota, used } => {
                    return Err(StoreError::NoSpace {
                        quota: *quota,
                        used: *used,
                    }
                    .into())
                }
            };
            let i = ops
                .iter()
                .position(|op| {
                    matches!(op.verb, Verb::Lock | Verb::Unlock) && op.key.as_bytes() == refused
                })
                .unwrap_or(0);
            let what = match ops.get(i).map(|o| o.verb) {
                Some(Verb::Lock) => {
                    format!("failed to lock key {:?}, lock is already held", ops[i].key)
                }
                Some(Verb::Unlock) => format!(
                    "failed to unlock key {:?}, lock isn't held, or is held by another session",
                    ops[i].key
                ),
                _ => reason.to_string(),
            };
            return conflict(i, what);
        }
        Err(StoreError::LeaseNotFound(lease)) => {
            // A session's lease ended between the lookup and the write.
            let i = plans.iter().position(|p| p.lease == lease).unwrap_or(0);
            return conflict(i, format!("invalid session {:?}", ops[i].session));
        }
        Ok(other) => return Err(unexpected(other)),
        Err(e) => return Err(e.into()),
    };

    let mut results = Vec::new();
    for (op, plan) in ops.iter().zip(&plans) {
        let Some(r) = plan.op.and_then(|i| responses.get(i)) else {
            continue;
        };
        match r {
            OpResponse::Range(res) => {
                let with_value = matches!(op.verb, Verb::Get | Verb::GetTree);
                for kv in &res.kvs {
                    results.push(json!({ "KV": Entry::new(kv, with_value) }));
                }
            }
            OpResponse::Put { prev_kv } => {
                let kv = written(op, plan.lease, prev_kv.as_ref(), revision);
                results.push(json!({ "KV": Entry::new(&kv, false) }));
            }
            OpResponse::Delete { .. } => {}
        }
    }
    let body = json!({ "Results": results, "Errors": null });
    Ok(api.with_meta(json(StatusCode::OK, &body), revision))
}

/// The entry a put left, from the entry before it (the store returns the previous one).
fn written(op: &KvOp, lease: u64, prev: Option<&KeyValue>, revision: u64) -> KeyValue {
    let (held, lock_index) = prev.map_or((0, 0), |p| (p.lock, p.lock_index));
    let (lock, lock_index) = match op.verb {
        Verb::Lock if held == lease => (held, lock_index),
        Verb::Lock => (lease, lock_index + 1),
        Verb::Unlock => (0, lock_index),
        _ => (held, lock_index),
    };
    KeyValue {
        key: op.key.as_bytes().to_vec(),
        create_revision: prev.map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        flags: op.flags,
        lock,
        lock_index,
        ..Default::default()
    }
}

fn conflict(i: usize, what: String) -> Result<Response, ApiError> {
    let body = json!({ "Results": null, "Errors": [{ "OpIndex": i, "What": what }] });
    Ok(json(StatusCode::CONFLICT, &body))
}

/// The transaction's compares failed and nothing was applied: read the compared keys again to
/// say which checks fail (as of now; if they all pass by now, say the state changed).
async fn failed_checks(api: &Api, ops: &[KvOp], plans: &[Plan]) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    for (i, (op, plan)) in ops.iter().zip(plans).enumerate() {
        if plan.compare.is_none() {
            continue;
        }
        let range = Range {
            key: op.key.as_bytes().to_vec(),
            ..Default::default()
        };
        let (res, _) = api.store.range(&range, false).await?;
        let kv = res.kvs.first();
        let current = kv.map_or(0, |kv| kv.mod_revision);
        let what = match op.verb {
            Verb::Cas if current != op.index => {
                format!("failed to set key {:?}, index is stale", op.key)
            }
            Verb::DeleteCas if current != op.index => {
                format!("failed to delete key {:?}, index is stale", op.key)
            }
            Verb::CheckIndex if current != op.index => {
                format!("current modify index {current} != {}", op.index)
            }
            Verb::Get if kv.is_none() => format!("key {:?} doesn't exist", op.key),
            Verb::CheckNotExists if kv.is_some() => format!("key {:?} exists", op.key),
            Verb::CheckSession if kv.map_or(0, |kv| kv.lock) != plan.lease => format!(
                "failed session check for key {:?}, the session no longer holds it",
                op.key
            ),
            _ => continue,
        };
        errors.push(json!({ "OpIndex": i, "What": what }));
    }
    if errors.is_empty() {
        errors.push(json!({ "OpIndex": 0, "What": "a check failed against a state that has changed since; retry the transaction" }));
    }
    let body = json!({ "Results": null, "Errors": errors });
    Ok(json(StatusCode::CONFLICT, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_consul_operations() {
        let body = br#"[{"KV":{"Verb":"set","Key":"a","Value":"aGk=","Flags":3}},
                       {"kv":{"verb":"cas","key":"b","index":4}},
                       {"KV":{"Verb":"delete-tree","Key":""}}]"#;
        let ops = parse_ops(body).unwrap();
        assert_eq!(ops.len(), 3);
        assert_eq!(
            (ops[0].verb, ops[0].value.as_slice(), ops[0].flags),
            (Verb::Set, b"hi".as_slice(), 3)
        );
        assert_eq!((ops[1].verb, ops[1].index), (Verb::Cas, 4));
        assert_eq!(ops[2].verb, Verb::DeleteTree);
        for bad in [
            r#"{}"#,
            r#"[{"Node":{}}]"#,
            r#"[{"KV":{"Verb":"frob","Key":"a"}}]"#,
            r#"[{"KV":{"Verb":"set","Key":"a","Value":"!!"}}]"#,
            r#"[{"KV":{"Verb":"set"}}]"#,
        ] {
            assert!(
                matches!(parse_ops(bad.as_bytes()), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let many = format!(
            "[{}]",
            vec![r#"{"KV":{"Verb":"get","Key":"a"}}"#; 65].join(",")
        );
        assert!(matches!(
            parse_ops(many.as_bytes()),
            Err(ApiError::TooLarge(_))
        ));
    }
}
