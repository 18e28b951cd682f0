//! `/v1/session/*`: Consul sessions as store leases. A session is a lease (its TTL, or the
//! longest lease the store grants for a session without one); its record lives at
//! `/shoal/consul/sessions/<id>`, put with the lease so that it vanishes with it. A session id
//! is the lease id in a UUID's shape (clients check the shape), so no lookup table is needed.

use std::time::Duration;

use axum::body::Bytes;
use axum::http::Method;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde::Serialize;
use serde_json::Value;
use shoal_raft::Command;
use shoal_raft::KeyValue;
use shoal_raft::Put;
use shoal_raft::Range;
use shoal_raft::Response as Applied;
use shoal_raft::StoreError;

use super::acl::Acl;
use super::error::ApiError;
use super::json;
use super::kv::bool_response;
use super::kv::unexpected;
use super::query::Query;
use super::status::node_name;
use super::Api;
use crate::duration::{format_go as format_duration, parse_unbounded as parse_duration};
use crate::model::Access;

/// Where session records live (hidden nowhere: `shoal kv ls /shoal/consul/` shows them).
pub(crate) const SESSIONS: &str = "/shoal/consul/sessions/";
/// Consul's bounds on a session TTL.
const MIN_TTL: Duration = Duration::from_secs(10);
const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// A session without a TTL lives until destroyed: the store's longest lease (30 days).
const NO_TTL_MS: u64 = shoal_raft::MAX_LEASE_TTL_MS;
const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);
/// The fixed tail that marks a UUID as a shoal session id.
const ID_TAIL: &str = "-0000-000000000000";

/// A session id for a lease: its 16 hex digits in a UUID's first three groups.
pub(crate) fn session_id(lease: u64) -> String {
    let h = format!("{lease:016x}");
    format!("{}-{}-{}{ID_TAIL}", &h[..8], &h[8..12], &h[12..16])
}

/// The lease behind a session id; Err if it is not a UUID, None if it is one shoal never
/// hands out (so no such session exists).
pub(crate) fn parse(id: &str) -> Result<Option<u64>, ApiError> {
    let b = id.as_bytes();
    let shape = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if !shape {
        return Err(ApiError::BadRequest(format!(
            "Invalid session ID {id:?}: must be a UUID (8-4-4-4-12 hex digits)"
        )));
    }
    if !id.to_ascii_lowercase().ends_with(ID_TAIL) {
        return Ok(None);
    }
    let hex: String = id[..18].chars().filter(|c| *c != '-').collect();
    Ok(u64::from_str_radix(&hex, 16).ok().filter(|&l| l != 0))
}

/// Consul's answer to a lock request for a session that does not exist.
pub(crate) fn invalid(id: &str) -> ApiError {
    ApiError::Internal(format!("invalid session {id:?}"))
}

/// A session as stored (and, with its indexes filled in, as Consul renders it).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Record {
    #[serde(rename = "ID")]
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) node: String,
    /// Nanoseconds, as in Consul's JSON. Recorded, not enforced (see `api::http`'s docs).
    pub(crate) lock_delay: u64,
    pub(crate) behavior: String,
    #[serde(rename = "TTL")]
    pub(crate) ttl: String,
    #[serde(default)]
    pub(crate) checks: Vec<String>,
    #[serde(default)]
    pub(crate) node_checks: Vec<String>,
    #[serde(default)]
    pub(crate) create_index: u64,
    #[serde(default)]
    pub(crate) modify_index: u64,
}

pub(crate) struct Session {
    pub(crate) lease: u64,
    pub(crate) record: Record,
}

impl Session {
    pub(crate) fn delete_keys(&self) -> bool {
        self.record.behavior == "delete"
    }
}

fn record_of(kv: &KeyValue) -> Result<Record, ApiError> {
    let mut r: Record = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::Internal(format!(
            "session record {} is not valid JSON: {e}",
            String::from_utf8_lossy(&kv.key)
        ))
    })?;
    r.create_index = kv.create_revision;
    r.modify_index = kv.mod_revision;
    Ok(r)
}

/// Reads a session (linearizably: a session created a moment ago on another manager counts).
pub(crate) async fn lookup(api: &Api, id: &str) -> Result<Option<Session>, ApiError> {
    let Some(lease) = parse(id)? else {
        return Ok(None);
    };
    let range = Range {
        key: format!("{SESSIONS}{}", session_id(lease)).into_bytes(),
        ..Default::default()
    };
    let (res, _) = api.store.range(&range, false).await?;
    res.kvs
        .first()
        .map(|kv| {
            Ok(Session {
                lease,
                record: record_of(kv)?,
            })
        })
        .transpose()
}

pub(crate) async fn handle(
    api: &Api,
    acl: &Acl,
    method: &Method,
    verb: &str,
    id: &str,
    q: Option<&str>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let need = |m: Method| {
        if *method == m {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(method.to_string()))
        }
    };
    let needs_id = |id: &str| {
        if id.is_empty() {
            Err(ApiError::BadRequest("Missing session".into()))
        } else {
            Ok(())
        }
    };
    // Creating, renewing and destroying sessions write; the rest reads.
    let writes = matches!(verb, "create" | "renew" | "destroy");
    acl.need_session(if writes { Access::Write } else { Access::Read })?;
    match verb {
        "create" => {
            need(Method::PUT)?;
            Query::parse(q, &[])?;
            create(api, &body).await
        }
        "renew" => {
            need(Method::PUT)?;
            needs_id(id)?;
            Query::parse(q, &[])?;
            renew(api, id).await
        }
        "destroy" => {
            need(Method::PUT)?;
            needs_id(id)?;
            Query::parse(q, &[])?;
            destroy(api, id).await
        }
        "info" => {
            need(Method::GET)?;
            needs_id(id)?;
            // A UUID shoal never hands out names no record: the answer is an empty list.
            let key = parse(id)?.map_or_else(|| id.to_ascii_lowercase(), session_id);
            read(api, q, Some(key), None).await
        }
        "list" => {
            need(Method::GET)?;
            read(api, q, None, None).await
        }
        "node" => {
            need(Method::GET)?;
            if id.is_empty() {
                return Err(ApiError::BadRequest("Missing node name".into()));
            }
            read(api, q, None, Some(id)).await
        }
        _ => Err(ApiError::NotFound(format!(
            "/v1/session/{verb} is not an endpoint (create, renew, destroy, info, list, node)"
        ))),
    }
}

/// A field of a JSON object, matched case-insensitively as Go's JSON decoder does.
fn field<'a>(obj: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

fn string_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match field(obj, name) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(ApiError::BadRequest(format!(
            "Request decode failed: {name} must be a string, not {other}"
        ))),
    }
}

/// Parses a create request's body into a record (id and indexes left empty) and a TTL.
fn parse_create(body: &[u8], default_node: String) -> Result<(Record, Option<Duration>), ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::BadRequest("Request decode failed: body is not UTF-8".into()))?;
    let value: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_str(text)
            .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))?
    };
    let Value::Object(obj) = value else {
        return Err(ApiError::BadRequest(
            "Request decode failed: the body must be a JSON object".into(),
        ));
    };
    let behavior = match string_field(&obj, "Behavior")?.as_str() {
        "" | "release" => "release",
        "delete" => "delete",
        other => {
            return Err(ApiError::BadRequest(format!(
                "Invalid Behavior setting '{other}': must be release or delete"
            )))
        }
    };
    let ttl_text = string_field(&obj, "TTL")?;
    let ttl = if ttl_text.is_empty() {
        None
    } else {
        let ttl = parse_duration(&ttl_text).map_err(|_| {
            ApiError::BadRequest(format!("Request decode failed: invalid TTL {ttl_text:?}"))
        })?;
        if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
            return Err(ApiError::BadRequest(format!(
                "Invalid Session TTL '{ttl_text}', must be between [{}={}]",
                format_duration(MIN_TTL),
                format_duration(MAX_TTL)
            )));
        }
        Some(ttl)
    };
    let lock_delay = match field(&obj, "LockDelay") {
        None => DEFAULT_LOCK_DELAY,
        Some(Value::String(s)) => parse_duration(s).map_err(|_| {
            ApiError::BadRequest(format!("Request decode failed: invalid LockDelay {s:?}"))
        })?,
        // Consul reads small numbers as seconds and large ones as nanoseconds.
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => {
                return Err(ApiError::BadRequest(format!(
                    "Request decode failed: invalid LockDelay {n}"
                )))
            }
        },
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Request decode failed: invalid LockDelay {other}"
            )))
        }
    };
    if lock_delay > MAX_LOCK_DELAY {
        return Err(ApiError::BadRequest(format!(
            "Lock delay must be less than {}",
            format_duration(MAX_LOCK_DELAY)
        )));
    }
    let node = match string_field(&obj, "Node")? {
        n if n.is_empty() => default_node,
        n => n,
    };
    let record = Record {
        id: String::new(),
        name: string_field(&obj, "Name")?,
        node,
        lock_delay: lock_delay.as_nanos() as u64,
        behavior: behavior.to_string(),
        ttl: ttl.map(format_duration).unwrap_or_default(),
        checks: vec![],
        node_checks: vec![],
        create_index: 0,
        modify_index: 0,
    };
    Ok((record, ttl))
}

async fn create(api: &Api, body: &[u8]) -> Result<Response, ApiError> {
    let (mut record, ttl) = parse_create(body, node_name(api.store.id()))?;
    let ttl_ms = ttl.map_or(NO_TTL_MS, |t| t.as_millis() as u64);
    let lease = match api.store.write(Command::LeaseGrant { ttl_ms }).await? {
        Applied::LeaseGranted { id, .. } => id,
        other => return Err(unexpected(other)),
    };
    record.id = session_id(lease);
    let put = Put {
        key: format!("{SESSIONS}{}", record.id).into_bytes(),
        value: serde_json::to_vec(&record).expect("session record serializes"),
        lease,
        ..Default::default()
    };
    if let Err(e) = api.store.write(Command::Put(put)).await {
        // Without its record the session is unusable: end it (best effort; it expires anyway).
        let _ = api
            .store
            .write(Command::LeaseRevoke { ids: vec![lease] })
            .await;
        return Err(e.into());
    }
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "ID": record.id }),
    ))
}

async fn renew(api: &Api, id: &str) -> Result<Response, ApiError> {
    let not_found = || ApiError::NotFound(format!("Session id '{id}' not found"));
    let Some(lease) = parse(id)? else {
        return Err(not_found());
    };
    match api.store.lease_keep_alive(lease).await {
        Ok(_) => {}
        Err(StoreError::LeaseNotFound(_)) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    }
    let Some(s) = lookup(api, id).await? else {
        return Err(not_found());
    };
    let index = s.record.modify_index;
    Ok(api.with_meta(json(StatusCode::OK, &[s.record]), index))
}

async fn destroy(api: &Api, id: &str) -> Result<Response, ApiError> {
    if let Some(lease) = parse(id)? {
        match api
            .store
            .write(Command::LeaseRevoke { ids: vec![lease] })
            .await?
        {
            Applied::LeaseRevoked { .. } => {}
            other => return Err(unexpected(other)),
        }
    }
    // Consul answers true for a session that was already gone.
    Ok(bool_response(true))
}

/// info (one id), list (all) and node (those of one node), with blocking-query support.
async fn read(
    api: &Api,
    q: Option<&str>,
    one: Option<String>,
    node: Option<&str>,
) -> Result<Response, ApiError> {
    let q = Query::parse(q, &["consistent", "stale", "index", "wait"])?;
    let stale = q.stale()?;
    let (key, prefix) = match &one {
        Some(id) => (format!("{SESSIONS}{id}"), false),
        None => (SESSIONS.to_string(), true),
    };
    let held = api.block(q.blocking()?, key.as_bytes(), prefix).await?;
    let (res, rev) = api
        .store
        .range(
            &Range {
                key: key.into_bytes(),
                prefix,
                ..Default::default()
            },
            stale,
        )
        .await?;
    let mut records = res
        .kvs
        .iter()
        .map(record_of)
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(node) = node {
        records.retain(|r| r.node == node);
    }
    Ok(api.with_meta(json(StatusCode::OK, &records), held.unwrap_or(rev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_look_like_uuids() {
        for lease in [1u64, 42, u64::MAX] {
            let id = session_id(lease);
            assert_eq!(id.len(), 36);
            assert_eq!(parse(&id).unwrap(), Some(lease));
            assert_eq!(parse(&id.to_uppercase()).unwrap(), Some(lease));
        }
        assert_eq!(session_id(1), "00000000-0000-0001-0000-000000000000");
        assert!(parse("not-a-uuid").is_err());
        assert_eq!(parse("adf4238a-882b-9ddc-4a9d-5b6758e4159e").unwrap(), None);
        assert_eq!(parse("00000000-0000-0000-0000-000000000000").unwrap(), None);
    }

    #[test]
    fn create_bodies_as_consul_reads_them() {
        let (r, ttl) = parse_create(
            br#"{"name":"n","ttl":"15s","behavior":"delete","lockdelay":"0s"}"#,
            "m".into(),
        )
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.behavior.as_str(), r.ttl.as_str()),
            ("n", "delete", "15s")
        );
        assert_eq!(
            (ttl, r.lock_delay, r.node.as_str()),
            (Some(Duration::from_secs(15)), 0, "m")
        );
        let (r, ttl) = parse_create(b"", "m".into()).unwrap();
        assert_eq!(
            (ttl, r.behavior.as_str(), r.lock_delay),
            (None, "release", 15_000_000_000)
        );
        let (r, _) = parse_create(br#"{"LockDelay": 5}"#, "m".into()).unwrap();
        assert_eq!(r.lock_delay, 5_000_000_000);
        for bad in [
            r#"{"TTL":"5s"}"#,
            r#"{"TTL":"25h"}"#,
            r#"{"Behavior":"x"}"#,
            "[1]",
            "{",
            r#"{"TTL":"x"}"#,
        ] {
            assert!(
                matches!(
                    parse_create(bad.as_bytes(), "m".into()),
                    Err(ApiError::BadRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
