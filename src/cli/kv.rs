//! `shoal kv get|put|del|ls|watch`: the revisioned KV from the command line.

use std::io::Read;

use serde::Serialize;
use shoal_proto::v1 as pb;
use shoal_proto::v1::compare::{Op, Target};
use shoal_proto::v1::{request_op, response_op};

use super::{lossy, out, CliError, KvCommand};
use crate::client::{event_revision, Client};

/// A key as `--json` shows it; values are printed as (lossy) UTF-8.
#[derive(Serialize)]
struct JsonKv {
    key: String,
    value: String,
    create_revision: u64,
    mod_revision: u64,
    version: u64,
    lease: u64,
}

impl From<&pb::KeyValue> for JsonKv {
    fn from(kv: &pb::KeyValue) -> Self {
        JsonKv {
            key: lossy(&kv.key),
            value: lossy(&kv.value),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        }
    }
}

#[derive(Serialize)]
struct JsonRange {
    revision: u64,
    kvs: Vec<JsonKv>,
}

#[derive(Serialize)]
struct JsonKeys {
    revision: u64,
    keys: Vec<String>,
}

#[derive(Serialize)]
struct JsonEvent {
    revision: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    key: String,
    /// None for deletes.
    value: Option<String>,
}

pub(super) async fn run(mut client: Client, command: KvCommand) -> Result<(), CliError> {
    match command {
        KvCommand::Get {
            key,
            stale,
            prefix,
            json,
        } => get(&mut client, key, stale, prefix, json).await,
        KvCommand::Put {
            key,
            value,
            ttl,
            cas,
        } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .map_err(CliError::Stdin)?;
                    buf
                }
            };
            put(&mut client, key, value, ttl, cas).await
        }
        KvCommand::Del { key, prefix } => {
            let req = pb::DeleteRequest {
                key: key.into_bytes(),
                prefix,
                ..Default::default()
            };
            let resp = client.delete(req).await?;
            out(format_args!(
                "deleted {} revision {}",
                resp.deleted,
                revision(&resp.header)
            ))
        }
        KvCommand::Ls { prefix, json } => {
            let req = pb::RangeRequest {
                key: prefix.unwrap_or_default().into_bytes(),
                prefix: true,
                keys_only: true,
                ..Default::default()
            };
            let resp = client.range(req).await?;
            let keys: Vec<String> = resp.kvs.iter().map(|kv| lossy(&kv.key)).collect();
            if json {
                out(serde_json::to_string(&JsonKeys {
                    revision: revision(&resp.header),
                    keys,
                })
                .expect("plain data"))
            } else {
                keys.iter().try_for_each(out)
            }
        }
        KvCommand::Watch {
            key,
            prefix,
            rev,
            json,
        } => watch(&mut client, key, prefix, rev.unwrap_or(0), json).await,
    }
}

async fn get(
    client: &mut Client,
    key: String,
    stale: bool,
    prefix: bool,
    json: bool,
) -> Result<(), CliError> {
    let req = pb::RangeRequest {
        key: key.clone().into_bytes(),
        prefix,
        stale,
        ..Default::default()
    };
    let resp = client.range(req).await?;
    if prefix {
        if json {
            let doc = JsonRange {
                revision: revision(&resp.header),
                kvs: resp.kvs.iter().map(JsonKv::from).collect(),
            };
            return out(serde_json::to_string(&doc).expect("plain data"));
        }
        return resp
            .kvs
            .iter()
            .try_for_each(|kv| out(format_args!("{}\t{}", lossy(&kv.key), lossy(&kv.value))));
    }
    let kv = resp.kvs.first().ok_or(CliError::KeyNotFound(key))?;
    if json {
        out(serde_json::to_string(&JsonKv::from(kv)).expect("plain data"))
    } else {
        out(lossy(&kv.value))
    }
}

async fn put(
    client: &mut Client,
    key: String,
    value: Vec<u8>,
    ttl: Option<std::time::Duration>,
    cas: Option<u64>,
) -> Result<(), CliError> {
    let lease = match ttl {
        Some(ttl) => client.lease_grant(ttl).await?.id,
        None => 0,
    };
    let put = pb::PutRequest {
        key: key.clone().into_bytes(),
        value,
        lease,
        ..Default::default()
    };
    let rev = match cas {
        None => revision(&client.put(put).await?.header),
        Some(expected) => {
            let compare = if expected == 0 {
                pb::Compare {
                    key: put.key.clone(),
                    target: Target::Exists.into(),
                    exists: false,
                    ..Default::default()
                }
            } else {
                pb::Compare {
                    key: put.key.clone(),
                    target: Target::ModRevision.into(),
                    op: Op::Equal.into(),
                    number: expected,
                    ..Default::default()
                }
            };
            let read_back = pb::RangeRequest {
                key: put.key.clone(),
                ..Default::default()
            };
            let req = pb::TxnRequest {
                compare: vec![compare],
                success: vec![pb::RequestOp {
                    request: Some(request_op::Request::Put(put)),
                }],
                failure: vec![pb::RequestOp {
                    request: Some(request_op::Request::Range(read_back)),
                }],
            };
            let resp = client.txn(req).await?;
            if !resp.succeeded {
                let current = resp.responses.iter().find_map(|r| match &r.response {
                    Some(response_op::Response::Range(range)) => {
                        Some(range.kvs.first().map_or(0, |kv| kv.mod_revision))
                    }
                    _ => None,
                });
                let revision = current.ok_or_else(|| CliError::Protocol {
                    addr: client.addr().to_string(),
                    what: "a failed txn without the range it was asked for".into(),
                })?;
                return Err(CliError::CasFailed { key, revision });
            }
            revision(&resp.header)
        }
    };
    if lease != 0 {
        out(format_args!("OK revision {rev} lease {lease}"))
    } else {
        out(format_args!("OK revision {rev}"))
    }
}

async fn watch(
    client: &mut Client,
    key: String,
    prefix: bool,
    start: u64,
    json: bool,
) -> Result<(), CliError> {
    let mut watcher = client.watch(key.into_bytes(), prefix, start).await?;
    loop {
        let event = watcher.next().await?;
        let revision = event_revision(&event);
        let kv = event.kv.unwrap_or_default();
        let deleted = event.r#type == pb::event::EventType::Delete as i32;
        let kind = if deleted { "DELETE" } else { "PUT" };
        if json {
            let value = (!deleted).then(|| lossy(&kv.value));
            let line = JsonEvent {
                revision,
                kind,
                key: lossy(&kv.key),
                value,
            };
            out(serde_json::to_string(&line).expect("plain data"))?;
        } else if deleted {
            out(format_args!("{revision} DELETE {}", lossy(&kv.key)))?;
        } else {
            out(format_args!(
                "{revision} PUT {} {}",
                lossy(&kv.key),
                lossy(&kv.value)
            ))?;
        }
    }
}

fn revision(header: &Option<pb::Header>) -> u64 {
    header.as_ref().map_or(0, |h| h.revision)
}
