//! Typed reads and writes of cluster objects (`/shoal/nodes/`, `/shoal/services/`, `/shoal/tasks/`)
//! over the client, as `crate::objects`' `Versioned` records, resolved by its rule. Every write
//! here is one txn conditioned on the revision it read: a failed compare is a definite "not
//! applied", so only that case is ever tried again.

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_proto::v1 as pb;
use shoal_proto::v1::compare::{Op, Target};
use shoal_proto::v1::request_op;

use super::CliError;
use crate::client::Client;
use crate::model::keys;

/// How often a read-modify-write is tried when its compare fails (someone else wrote first).
pub(super) const ATTEMPTS: u32 = 5;

pub(super) use crate::objects::{Named, Versioned};

/// The one object `query` designates (`objects::resolve`), as a CLI error.
pub(super) fn resolve<'a, T: Named>(items: &'a [T], query: &str) -> Result<&'a T, CliError> {
    Ok(crate::objects::resolve(items, query)?)
}

/// Every object directly under `prefix` (one of `keys::NODES`, `SERVICES`, `TASKS`).
pub(super) async fn list<T: DeserializeOwned>(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<Versioned<T>>, CliError> {
    let resp = client
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?;
    resp.kvs
        .iter()
        .filter(|kv| std::str::from_utf8(&kv.key).is_ok_and(|k| keys::id_of(prefix, k).is_some()))
        .map(decode)
        .collect()
}

/// One key's value as a `T` (None if the key does not exist).
pub(super) async fn get<T: DeserializeOwned>(
    client: &mut Client,
    key: &str,
) -> Result<Option<Versioned<T>>, CliError> {
    let resp = client
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    resp.kvs.first().map(decode).transpose()
}

/// One key's raw value and mod revision (None if the key does not exist).
pub(super) async fn get_raw(
    client: &mut Client,
    key: &str,
) -> Result<Option<(Vec<u8>, u64)>, CliError> {
    let resp = client
        .range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })
        .await?;
    Ok(resp
        .kvs
        .into_iter()
        .next()
        .map(|kv| (kv.value, kv.mod_revision)))
}

pub(super) fn decode<T: DeserializeOwned>(kv: &pb::KeyValue) -> Result<Versioned<T>, CliError> {
    match serde_json::from_slice(&kv.value) {
        Ok(value) => Ok(Versioned {
            value,
            mod_revision: kv.mod_revision,
        }),
        Err(e) => Err(CliError::BadObject {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            reason: e.to_string(),
        }),
    }
}

/// The compare "`key` is still as read": at `mod_revision`, or absent when that is 0.
pub(super) fn unchanged(key: &str, mod_revision: u64) -> pb::Compare {
    if mod_revision == 0 {
        return absent(key);
    }
    pb::Compare {
        key: key.as_bytes().to_vec(),
        target: Target::ModRevision.into(),
        op: Op::Equal.into(),
        number: mod_revision,
        ..Default::default()
    }
}

/// The compare "`key` does not exist".
pub(super) fn absent(key: &str) -> pb::Compare {
    pb::Compare {
        key: key.as_bytes().to_vec(),
        target: Target::Exists.into(),
        exists: false,
        ..Default::default()
    }
}

pub(super) fn put_raw(key: &str, value: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::Put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            ..Default::default()
        })),
    }
}

/// Puts `value` as JSON at `key`.
pub(super) fn put_json(key: &str, value: &impl Serialize) -> pb::RequestOp {
    put_raw(key, serde_json::to_vec(value).expect("plain data"))
}

pub(super) fn delete(key: &str) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::Delete(pb::DeleteRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        })),
    }
}

/// Applies `ops` if every compare holds (`Cluster.CommitObjects`: the manager checks each is a
/// valid object of its key); whether it did. An error means the outcome is unknown
/// (the client says so) and is never followed by another attempt.
pub(super) async fn commit(
    client: &mut Client,
    compare: Vec<pb::Compare>,
    success: Vec<pb::RequestOp>,
) -> Result<bool, CliError> {
    let resp = client
        .commit_objects(pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        })
        .await?;
    Ok(resp.succeeded)
}

/// Reads the object `query` designates under `prefix`, lets `change` modify it, and writes it
/// back conditioned on the revision read; on a conflict, reads again (at most `ATTEMPTS` times).
/// Returns the object as written.
pub(super) async fn update<T, F>(
    client: &mut Client,
    prefix: &str,
    query: &str,
    mut change: F,
) -> Result<T, CliError>
where
    T: Named + Serialize + DeserializeOwned + Clone,
    F: FnMut(&mut T) -> Result<(), CliError>,
{
    for _ in 0..ATTEMPTS {
        let all: Vec<Versioned<T>> = list(client, prefix).await?;
        let found = resolve(&all, query)?;
        let key = format!("{prefix}{}", found.id());
        let mut value = found.value.clone();
        change(&mut value)?;
        let compare = vec![unchanged(&key, found.mod_revision)];
        if commit(client, compare, vec![put_json(&key, &value)]).await? {
            return Ok(value);
        }
    }
    Err(CliError::Contended {
        kind: T::KIND,
        name: query.to_string(),
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_say_what_was_read() {
        let c = unchanged("/k", 7);
        assert_eq!(
            (c.target, c.op, c.number),
            (Target::ModRevision as i32, 0, 7)
        );
        let c = unchanged("/k", 0);
        assert_eq!((c.target, c.exists), (Target::Exists as i32, false));
        assert_eq!(absent("/k").key, b"/k".to_vec());
    }

    #[test]
    fn decode_names_the_key_of_a_bad_object() {
        let kv = pb::KeyValue {
            key: b"/shoal/services/x".to_vec(),
            value: b"{".to_vec(),
            ..Default::default()
        };
        let err = decode::<crate::model::Service>(&kv)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("unreadable object at /shoal/services/x: "),
            "{err}"
        );
    }
}
