//! `/v1/kv/<key>`: Consul's KV verbs on the store's key space (a Consul key `a/b` is the store
//! key `a/b`, so `shoal kv get a/b` sees what Consul clients write).

use axum::body::Bytes;
use axum::http::header;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Serialize;
use shoal_raft::Command;
use shoal_raft::Compare;
use shoal_raft::CompareOp;
use shoal_raft::CompareTarget;
use shoal_raft::Delete;
use shoal_raft::KeyValue;
use shoal_raft::Lock;
use shoal_raft::Op;
use shoal_raft::Put;
use shoal_raft::Range;
use shoal_raft::Response as Applied;
use shoal_raft::StoreError;
use shoal_raft::Txn;

use super::acl::Acl;
use super::error::ApiError;
use super::json;
use super::query::Query;
use super::session;
use super::Api;
use crate::model::Access;
use crate::security::policy;

/// Largest value accepted: Consul's default `kv_max_value_size` (512 KiB), so that what works
/// against shoal works against Consul; the store itself would take 1 MiB.
pub(crate) const MAX_VALUE: usize = 512 * 1024;

/// One entry as Consul renders it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Entry {
    pub(crate) lock_index: u64,
    pub(crate) key: String,
    pub(crate) flags: u64,
    /// Base64; null for an empty value, as Consul.
    pub(crate) value: Option<String>,
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) session: Option<String>,
}

impl Entry {
    pub(crate) fn new(kv: &KeyValue, with_value: bool) -> Entry {
        Entry {
            lock_index: kv.lock_index,
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            flags: kv.flags,
            value: (with_value && !kv.value.is_empty()).then(|| BASE64.encode(&kv.value)),
            create_index: kv.create_revision,
            modify_index: kv.mod_revision,
            session: (kv.lock != 0).then(|| session::session_id(kv.lock)),
        }
    }
}

pub(crate) async fn handle(
    api: &Api,
    acl: &Acl,
    method: &Method,
    key: &str,
    q: Option<&str>,
    body: Bytes,
) -> Result<Response, ApiError> {
    match *method {
        Method::GET => get(api, acl, key, q).await,
        Method::PUT | Method::POST => put(api, acl, key, q, body).await,
        Method::DELETE => delete(api, acl, key, q).await,
        _ => Err(ApiError::MethodNotAllowed(method.to_string())),
    }
}

fn missing_key() -> ApiError {
    ApiError::BadRequest("Missing key name".into())
}

async fn get(api: &Api, acl: &Acl, key: &str, q: Option<&str>) -> Result<Response, ApiError> {
    let q = Query::parse(
        q,
        &[
            "recurse",
            "keys",
            "separator",
            "raw",
            "consistent",
            "stale",
            "index",
            "wait",
        ],
    )?;
    let stale = q.stale()?;
    let (recurse, keys) = (q.has("recurse"), q.has("keys"));
    if key.is_empty() && !recurse && !keys {
        return Err(missing_key());
    }
    let prefix = recurse || keys;
    if !prefix {
        acl.need_key(key, Access::Read)?;
    }
    let held = api.block(q.blocking()?, key.as_bytes(), prefix).await?;
    let range = Range {
        key: key.as_bytes().to_vec(),
        prefix,
        keys_only: keys,
        ..Default::default()
    };
    let (mut res, rev) = api.store.range(&range, stale).await?;
    // A tree read leaves out what the token may not read, and says so (as Consul).
    let before = res.kvs.len();
    res.kvs
        .retain(|kv| acl.key(&String::from_utf8_lossy(&kv.key)) >= Access::Read);
    let filtered = res.kvs.len() < before;
    // As Consul: one key answers with its own ModifyIndex (so a blocking query on it wakes
    // only for it); a missing key or a prefix with the revision read (a delete under a prefix
    // leaves no ModifyIndex behind, and an older index would wake the next query at once).
    let index = held.unwrap_or(match res.kvs.as_slice() {
        [kv] if !prefix => kv.mod_revision,
        _ => rev,
    });
    let mark = |mut resp: Response| {
        if filtered {
            resp.headers_mut().insert(
                "X-Consul-Results-Filtered-By-ACLs",
                axum::http::HeaderValue::from_static("true"),
            );
        }
        api.with_meta(resp, index)
    };
    if res.kvs.is_empty() {
        return Ok(mark(StatusCode::NOT_FOUND.into_response()));
    }
    let resp = if keys {
        let sep = q.get("separator").filter(|s| !s.is_empty());
        json(StatusCode::OK, &list_keys(key, &res.kvs, sep))
    } else if q.has("raw") {
        let value = res.kvs[0].value.clone();
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            value,
        )
            .into_response()
    } else {
        let entries: Vec<Entry> = res.kvs.iter().map(|kv| Entry::new(kv, true)).collect();
        json(StatusCode::OK, &entries)
    };
    Ok(mark(resp))
}

/// Keys under `prefix`, each cut after the first `sep` following the prefix (Consul's
/// `?keys&separator=/` lists one level, "directories" ending in the separator).
fn list_keys(prefix: &str, kvs: &[KeyValue], sep: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let k = String::from_utf8_lossy(&kv.key).into_owned();
        let k = match sep.and_then(|s| {
            k.get(prefix.len()..)
                .and_then(|rest| rest.find(s))
                .map(|i| prefix.len() + i + s.len())
        }) {
            Some(end) => k[..end].to_string(),
            None => k,
        };
        if out.last() != Some(&k) {
            out.push(k);
        }
    }
    out
}

async fn put(
    api: &Api,
    acl: &Acl,
    key: &str,
    q: Option<&str>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Query::parse(q, &["cas", "flags", "acquire", "release"])?;
    if key.is_empty() {
        return Err(missing_key());
    }
    policy::user_write("put", key.as_bytes(), false)?;
    acl.need_key(key, Access::Write)?;
    if body.len() > MAX_VALUE {
        return Err(ApiError::TooLarge(format!(
            "Request body({} bytes) too large, max size: {MAX_VALUE} bytes",
            body.len()
        )));
    }
    let flags = q.u64("flags", "flags")?.unwrap_or(0);
    let cas = q.u64("cas", "cas index")?;
    let (acquire, release) = (q.get("acquire"), q.get("release"));
    let mut put = Put {
        key: key.as_bytes().to_vec(),
        value: body.to_vec(),
        flags,
        ..Default::default()
    };
    match (acquire, release) {
        (Some(a), Some(r)) => {
            return Err(ApiError::BadRequest(format!(
                "Conflicting flags: acquire={a}&release={r}"
            )))
        }
        (Some(id), None) => {
            let Some(s) = session::lookup(api, id).await? else {
                return Err(session::invalid(id));
            };
            put.lock = Lock::Acquire(s.lease);
            // Behavior "delete": the key goes with the session.
            if s.delete_keys() {
                put.lease = s.lease;
            }
        }
        (None, Some(id)) => {
            put.lock = match session::parse(id)? {
                Some(lease) => Lock::Release(lease),
                // Not a session shoal could have made: it cannot hold the lock.
                None => return Ok(bool_response(false)),
            };
        }
        (None, None) => {}
    }
    let cmd = match cas {
        Some(index) => Command::Txn(Txn {
            compare: vec![mod_revision_is(key, index)],
            success: vec![Op::Put(put)],
            failure: vec![],
        }),
        None => Command::Put(put),
    };
    let ok = match api.store.write(cmd).await {
        Ok(Applied::Put { .. }) => true,
        Ok(Applied::Txn { succeeded, .. }) => succeeded,
        // A lock held by another session, or a release by a session that does not hold it.
        Ok(Applied::Rejected { .. }) => false,
        Err(StoreError::LeaseNotFound(_)) if acquire.is_some() => {
            // The session's lease ended between the lookup and the write.
            return Err(session::invalid(acquire.unwrap_or_default()));
        }
        Ok(other) => return Err(unexpected(other)),
        Err(e) => return Err(e.into()),
    };
    Ok(bool_response(ok))
}

async fn delete(api: &Api, acl: &Acl, key: &str, q: Option<&str>) -> Result<Response, ApiError> {
    let q = Query::parse(q, &["recurse", "cas"])?;
    let recurse = q.has("recurse");
    if key.is_empty() && !recurse {
        return Err(missing_key());
    }
    policy::user_write("delete", key.as_bytes(), recurse)?;
    if recurse {
        acl.need_tree(key, Access::Write)?;
    } else {
        acl.need_key(key, Access::Write)?;
    }
    let cas = q.u64("cas", "cas index")?;
    let del = Delete {
        key: key.as_bytes().to_vec(),
        prefix: recurse,
        prev_kv: false,
    };
    let cmd = match cas {
        Some(_) if recurse => {
            return Err(ApiError::BadRequest(
                "?cas applies to one key and cannot be combined with ?recurse".into(),
            ))
        }
        Some(index) => Command::Txn(Txn {
            compare: vec![mod_revision_is(key, index)],
            success: vec![Op::Delete(del)],
            failure: vec![],
        }),
        None => Command::Delete(del),
    };
    let ok = match api.store.write(cmd).await? {
        Applied::Delete { .. } => true,
        Applied::Txn { succeeded, .. } => succeeded,
        other => return Err(unexpected(other)),
    };
    Ok(bool_response(ok))
}

/// Consul's check-and-set: index 0 means "only if absent" (an absent key's mod revision is 0).
pub(crate) fn mod_revision_is(key: &str, index: u64) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::ModRevision(index),
        op: CompareOp::Equal,
    }
}

pub(crate) fn bool_response(ok: bool) -> Response {
    json(StatusCode::OK, &ok)
}

pub(crate) fn unexpected(r: Applied) -> ApiError {
    ApiError::Internal(format!("unexpected store response {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvs(keys: &[&str]) -> Vec<KeyValue> {
        keys.iter()
            .map(|k| KeyValue {
                key: k.as_bytes().to_vec(),
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn separator_lists_one_level() {
        let all = kvs(&["a/b", "a/c/d", "a/c/e", "a/f/", "ab"]);
        assert_eq!(
            list_keys("a/", &all[..4], Some("/")),
            vec!["a/b", "a/c/", "a/f/"]
        );
        assert_eq!(list_keys("a", &all, None).len(), 5);
        assert_eq!(list_keys("", &all, Some("/")), vec!["a/", "ab"]);
    }

    #[test]
    fn entries_render_as_consul() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"hi".to_vec(),
            create_revision: 3,
            mod_revision: 4,
            flags: 7,
            lock: 2,
            lock_index: 1,
            ..Default::default()
        };
        let v = serde_json::to_value(Entry::new(&kv, true)).unwrap();
        assert_eq!(v["Value"], "aGk=");
        assert_eq!(v["Flags"], 7);
        assert_eq!(v["LockIndex"], 1);
        assert_eq!(v["Session"], session::session_id(2));
        let empty = KeyValue::default();
        let v = serde_json::to_value(Entry::new(&empty, true)).unwrap();
        assert!(v["Value"].is_null() && v.get("Session").is_none());
    }
}
