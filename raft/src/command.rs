//! What a log entry asks of the state machine and what applying it returns. These types are the
//! store's vocabulary: the client API maps its protobuf messages onto them.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::MIN_QUOTA_BYTES;

/// Largest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4 * 1024;
/// Largest value accepted, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Most operations (compares plus ops) in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Most conditional writes in one batch (each a txn within [`MAX_TXN_OPS`]).
pub const MAX_BATCH_WRITES: usize = 8192;
/// Shortest and longest lease TTL accepted.
pub const MIN_LEASE_TTL_MS: u64 = 100;
pub const MAX_LEASE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// A log entry's payload: a command plus the proposer's clock, the only time apply ever sees.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// Proposer's wall clock, milliseconds since the Unix epoch. Informational (lease grant
    /// times); apply never compares it with a local clock.
    pub at_ms: u64,
    pub cmd: Command,
}

impl Request {
    /// A request stamped with this proposer's clock.
    pub fn now(cmd: Command) -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Request { at_ms, cmd }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cmd {
            Command::Put(p) => write!(f, "put({} bytes key)", p.key.len()),
            Command::Delete(d) => write!(f, "delete(prefix={})", d.prefix),
            Command::Txn(t) => write!(f, "txn({} compares)", t.compare.len()),
            Command::LeaseGrant { ttl_ms } => write!(f, "lease_grant({ttl_ms}ms)"),
            Command::LeaseRevoke { ids } => write!(f, "lease_revoke({ids:?})"),
            Command::AllocateMemberId => write!(f, "allocate_member_id"),
            Command::Batch(b) => write!(f, "batch({} writes)", b.writes.len()),
            Command::SetQuota { member, bytes } => write!(f, "set_quota({member}: {bytes})"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    Put(Put),
    Delete(Delete),
    Txn(Txn),
    LeaseGrant {
        ttl_ms: u64,
    },
    /// Revokes leases and deletes their keys; the leader proposes it when a lease expires.
    LeaseRevoke {
        ids: Vec<u64>,
    },
    /// Hands out a manager id that was never used before.
    AllocateMemberId,
    /// Many independent conditional writes in one entry, behind one fence (appended last: the
    /// variant index is part of the log's encoding).
    Batch(Batch),
    /// Records `member`'s storage quota (its `--quota-bytes`); the smallest member's governs.
    /// Each manager proposes its own when the replicated one differs.
    SetQuota {
        member: u64,
        bytes: u64,
    },
}

/// Conditional writes committed as one log entry at one revision: nothing applies unless every
/// `fence` compare holds; then each write applies on its own when its compares hold (partial
/// acceptance, as in Nomad's plan applier). Later writes see the effects of earlier ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub fence: Vec<Compare>,
    /// Each a txn whose `success` ops run when its compares hold; `failure` must be empty.
    pub writes: Vec<Txn>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// 0: no lease. The key is deleted when its lease ends.
    pub lease: u64,
    pub prev_kv: bool,
    /// Opaque client flags stored with the key (Consul's `Flags`).
    pub flags: u64,
    pub lock: Lock,
}

/// What a put does to the key's lock: a lease-held mark that survives value changes and is
/// cleared (not deleted) when the holding lease ends. Consul sessions are built on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lock {
    /// Leave the lock as it is.
    #[default]
    Keep,
    /// Take the lock for this lease; refused if another lease holds it.
    Acquire(u64),
    /// Give the lock up; refused unless this lease holds it.
    Release(u64),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delete {
    pub key: Vec<u8>,
    pub prefix: bool,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub key: Vec<u8>,
    pub prefix: bool,
    /// 0: no limit.
    pub limit: u64,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Range(Range),
    Put(Put),
    Delete(Delete),
    /// Appended last: the variant index is part of the log's encoding.
    Merge(Merge),
}

/// Merges a JSON object into the JSON object stored at `key` ([`crate::merge_patch`], RFC 7386:
/// a member set to null is removed, an object merges into an object, anything else replaces)
/// and stores the result, the key's lease, flags and lock unchanged. A write that carries one
/// applies only when the key exists and holds a JSON object; within a write, a merge reads the
/// key as it was before that write. It lets a small change of a large record (a task's state)
/// travel the log as the change alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    pub key: Vec<u8>,
    /// A JSON object.
    pub patch: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(Vec<u8>),
    ModRevision(u64),
    CreateRevision(u64),
    Version(u64),
    Exists(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: Vec<u8>,
    pub target: CompareTarget,
    pub op: CompareOp,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

/// A key and its metadata, as stored and as returned.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
    pub lease: u64,
    #[serde(default)]
    pub flags: u64,
    /// Lease holding the key's lock (0: unlocked).
    #[serde(default)]
    pub lock: u64,
    /// How many times the lock was acquired.
    #[serde(default)]
    pub lock_index: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key. A delete carries the key with `mod_revision` set to the deleting
/// revision and an empty value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResponse {
    Range(RangeResult),
    Put {
        prev_kv: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
}

/// The result of applying one entry. `revision` is the store revision right after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Blank and membership entries.
    Empty {
        revision: u64,
    },
    Put {
        revision: u64,
        prev_kv: Option<KeyValue>,
    },
    Delete {
        revision: u64,
        deleted: u64,
        prev_kvs: Vec<KeyValue>,
    },
    Txn {
        revision: u64,
        succeeded: bool,
        responses: Vec<OpResponse>,
    },
    LeaseGranted {
        revision: u64,
        id: u64,
        ttl_ms: u64,
    },
    LeaseRevoked {
        revision: u64,
        found: Vec<u64>,
    },
    MemberId {
        id: u64,
    },
    /// A [`Batch`]: `fenced` when a fence compare failed (nothing applied); else whether each
    /// write applied, in order.
    Batch {
        revision: u64,
        fenced: bool,
        applied: Vec<bool>,
    },
    /// The command was well formed but the store's state refuses it; nothing was changed.
    Rejected {
        revision: u64,
        reason: Rejection,
    },
}

impl Response {
    pub fn revision(&self) -> u64 {
        match self {
            Response::Empty { revision }
            | Response::Put { revision, .. }
            | Response::Delete { revision, .. }
            | Response::Txn { revision, .. }
            | Response::LeaseGranted { revision, .. }
            | Response::LeaseRevoked { revision, .. }
            | Response::Batch { revision, .. }
            | Response::Rejected { revision, .. } => *revision,
            Response::MemberId { .. } => 0,
        }
    }
}

/// Why apply refused a put (alone or in a txn, which is then refused whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Rejection {
    #[error("lease {0} not found")]
    LeaseNotFound(u64),
    #[error("key {} is locked by lease {holder}", String::from_utf8_lossy(.key))]
    LockHeld { key: Vec<u8>, holder: u64 },
    #[error("key {} is not locked by lease {lease}", String::from_utf8_lossy(.key))]
    LockNotHeld { key: Vec<u8>, lease: u64 },
    /// The entry would have grown the store past its quota (appended last: the variant index is
    /// part of the encoding managers exchange).
    #[error("{}", no_space_message(.quota, .used))]
    NoSpace { quota: u64, used: u64 },
    /// A merge met a missing key or a value that is not a JSON object (appended last).
    #[error("key {} holds no JSON object to merge into", String::from_utf8_lossy(.key))]
    NotMergeable { key: Vec<u8> },
}

/// The one message a write refused for space carries, everywhere it is shown.
pub(crate) fn no_space_message(quota: &u64, used: &u64) -> String {
    use crate::state_machine::human_bytes;
    format!(
        "the store is full: {} used of its {} quota (--quota-bytes); writes that add data are refused until keys are deleted",
        human_bytes(*used),
        human_bytes(*quota)
    )
}

/// Why a request was refused before it reached the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum InvalidRequest {
    #[error("key is empty")]
    EmptyKey,
    #[error("key is {0} bytes; the limit is {MAX_KEY_BYTES}")]
    KeyTooLarge(usize),
    #[error("value is {0} bytes; the limit is {MAX_VALUE_BYTES}")]
    ValueTooLarge(usize),
    #[error("transaction has {0} compares and operations; the limit is {MAX_TXN_OPS}")]
    TxnTooLarge(usize),
    #[error("lease ttl {0} ms is outside {MIN_LEASE_TTL_MS}..={MAX_LEASE_TTL_MS} ms")]
    LeaseTtl(u64),
    #[error("batch has {0} writes; the limit is {MAX_BATCH_WRITES}")]
    BatchTooLarge(usize),
    #[error("a batched write has failure operations; batched writes only have success operations")]
    BatchFailureOps,
    #[error("a quota of {0} bytes is below the least accepted, {MIN_QUOTA_BYTES}")]
    QuotaTooSmall(u64),
    #[error("a merge patch must be a JSON object")]
    BadMergePatch,
}

fn check_key(key: &[u8], prefix: bool) -> Result<(), InvalidRequest> {
    if key.is_empty() && !prefix {
        return Err(InvalidRequest::EmptyKey);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(InvalidRequest::KeyTooLarge(key.len()));
    }
    Ok(())
}

impl Range {
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        check_key(&self.key, self.prefix)
    }
}

impl Op {
    fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            Op::Range(r) => r.validate(),
            Op::Put(p) => Command::Put(p.clone()).validate(),
            Op::Delete(d) => check_key(&d.key, d.prefix),
            Op::Merge(m) => {
                check_key(&m.key, false)?;
                if m.patch.len() > MAX_VALUE_BYTES {
                    return Err(InvalidRequest::ValueTooLarge(m.patch.len()));
                }
                match serde_json::from_slice::<serde_json::Value>(&m.patch) {
                    Ok(serde_json::Value::Object(_)) => Ok(()),
                    _ => Err(InvalidRequest::BadMergePatch),
                }
            }
        }
    }
}

impl Txn {
    fn validate(&self) -> Result<(), InvalidRequest> {
        let n = self.compare.len() + self.success.len() + self.failure.len();
        if n > MAX_TXN_OPS {
            return Err(InvalidRequest::TxnTooLarge(n));
        }
        for c in &self.compare {
            check_key(&c.key, false)?;
            if let CompareTarget::Value(v) = &c.target {
                if v.len() > MAX_VALUE_BYTES {
                    return Err(InvalidRequest::ValueTooLarge(v.len()));
                }
            }
        }
        self.success
            .iter()
            .chain(&self.failure)
            .try_for_each(Op::validate)
    }
}

impl Command {
    /// Checks limits before proposing, so that the log only holds entries apply accepts.
    pub fn validate(&self) -> Result<(), InvalidRequest> {
        match self {
            Command::Put(p) => {
                check_key(&p.key, false)?;
                if p.value.len() > MAX_VALUE_BYTES {
                    return Err(InvalidRequest::ValueTooLarge(p.value.len()));
                }
                Ok(())
            }
            Command::Delete(d) => check_key(&d.key, d.prefix),
            Command::Txn(t) => t.validate(),
            Command::Batch(b) => {
                if b.writes.len() > MAX_BATCH_WRITES {
                    return Err(InvalidRequest::BatchTooLarge(b.writes.len()));
                }
                Txn {
                    compare: b.fence.clone(),
                    ..Default::default()
                }
                .validate()?;
                for w in &b.writes {
                    if !w.failure.is_empty() {
                        return Err(InvalidRequest::BatchFailureOps);
                    }
                    w.validate()?;
                }
                Ok(())
            }
            Command::LeaseGrant { ttl_ms } => {
                if !(MIN_LEASE_TTL_MS..=MAX_LEASE_TTL_MS).contains(ttl_ms) {
                    return Err(InvalidRequest::LeaseTtl(*ttl_ms));
                }
                Ok(())
            }
            Command::SetQuota { bytes, .. } if *bytes < MIN_QUOTA_BYTES => {
                Err(InvalidRequest::QuotaTooSmall(*bytes))
            }
            Command::LeaseRevoke { .. } | Command::AllocateMemberId | Command::SetQuota { .. } => {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_enforces_limits() {
        let put = |k: usize, v: usize| {
            Command::Put(Put {
                key: vec![b'k'; k],
                value: vec![0; v],
                ..Default::default()
            })
            .validate()
        };
        assert_eq!(put(0, 1), Err(InvalidRequest::EmptyKey));
        assert_eq!(
            put(MAX_KEY_BYTES + 1, 1),
            Err(InvalidRequest::KeyTooLarge(MAX_KEY_BYTES + 1))
        );
        assert_eq!(
            put(1, MAX_VALUE_BYTES + 1),
            Err(InvalidRequest::ValueTooLarge(MAX_VALUE_BYTES + 1))
        );
        assert_eq!(put(MAX_KEY_BYTES, MAX_VALUE_BYTES), Ok(()));
        assert_eq!(
            Command::LeaseGrant { ttl_ms: 1 }.validate(),
            Err(InvalidRequest::LeaseTtl(1))
        );
        let big = Txn {
            success: vec![
                Op::Delete(Delete {
                    key: b"a".to_vec(),
                    ..Default::default()
                });
                MAX_TXN_OPS + 1
            ],
            ..Default::default()
        };
        assert!(matches!(
            Command::Txn(big).validate(),
            Err(InvalidRequest::TxnTooLarge(_))
        ));
        // An empty prefix means "everything" and is allowed for deletes and ranges.
        let all = Delete {
            key: vec![],
            prefix: true,
            prev_kv: false,
        };
        assert_eq!(Command::Delete(all).validate(), Ok(()));
    }
}
