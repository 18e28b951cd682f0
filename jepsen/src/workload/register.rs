//! The register workload: linearizable reads, writes of unique values and compare-and-set (a txn
//! on the value) over many keys. Keys rotate every few dozen operations so that each key's
//! history stays small enough for the linearizability search.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use shoal_proto::v1 as pb;
use shoal_proto::v1::compare::{Op as CmpOp, Target};
use shoal_proto::v1::request_op;

use super::{Ctx, ROOT};
use crate::history::Kind;

/// Keys live at the same time; each gets about OPS_PER_KEY operations.
const KEYS_AT_ONCE: u64 = 4;
const OPS_PER_KEY: u64 = 40;

pub async fn run(ctx: Ctx) {
    let counter = Arc::new(AtomicU64::new(0));
    let values = Arc::new(AtomicI64::new(1));
    let mut tasks = Vec::new();
    for c in 0..ctx.concurrency {
        let (ctx, counter, values) = (ctx.clone(), counter.clone(), values.clone());
        tasks.push(tokio::spawn(async move {
            client(ctx, c, counter, values).await;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

fn parse(kv: Option<&pb::KeyValue>) -> Value {
    kv.and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<i64>().ok())
        .map_or(Value::Null, |v| json!(v))
}

async fn client(ctx: Ctx, c: usize, counter: Arc<AtomicU64>, values: Arc<AtomicI64>) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (0x5245_4700 + c as u64));
    let mut proc = ctx.process();
    let mut offset = c;
    let Some(mut client) = ctx.client(offset).await else {
        return;
    };
    while !ctx.stopped() {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        let key = format!(
            "{ROOT}register/{}",
            n / (OPS_PER_KEY * KEYS_AT_ONCE) * KEYS_AT_ONCE + rng.random_range(0..KEYS_AT_ONCE)
        );
        let mut broken = false;
        match rng.random_range(0..3) {
            0 => {
                let inv = proc.invoke("read", &key, Value::Null);
                let req = pb::RangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                };
                match client.range(req).await {
                    Ok(r) => proc.complete(&inv, Kind::Ok, parse(r.kvs.first()), None),
                    Err(e) => {
                        proc.read_failed(&inv, &e);
                        broken = true;
                    }
                }
            }
            1 => {
                let v = values.fetch_add(1, Ordering::Relaxed);
                let inv = proc.invoke("write", &key, json!(v));
                let req = pb::PutRequest {
                    key: key.clone().into_bytes(),
                    value: v.to_string().into_bytes(),
                    ..Default::default()
                };
                match client.put(req).await {
                    Ok(_) => proc.complete(&inv, Kind::Ok, json!(v), None),
                    Err(e) => {
                        proc.write_failed(&inv, &e);
                        broken = true;
                    }
                }
            }
            _ => {
                // Compare against a recent value: often the current one, often not.
                let latest = values.load(Ordering::Relaxed);
                let old = (latest - rng.random_range(1..6)).max(1);
                let new = values.fetch_add(1, Ordering::Relaxed);
                let inv = proc.invoke("cas", &key, json!([old, new]));
                let req = pb::TxnRequest {
                    compare: vec![pb::Compare {
                        key: key.clone().into_bytes(),
                        target: Target::Value.into(),
                        op: CmpOp::Equal.into(),
                        value: old.to_string().into_bytes(),
                        ..Default::default()
                    }],
                    success: vec![pb::RequestOp {
                        request: Some(request_op::Request::Put(pb::PutRequest {
                            key: key.clone().into_bytes(),
                            value: new.to_string().into_bytes(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![],
                };
                match client.txn(req).await {
                    Ok(r) if r.succeeded => proc.complete(&inv, Kind::Ok, json!([old, new]), None),
                    Ok(_) => proc.complete(&inv, Kind::Fail, json!([old, new]), None),
                    Err(e) => {
                        proc.write_failed(&inv, &e);
                        broken = true;
                    }
                }
            }
        }
        if broken {
            // Another manager next time; the failed one may be down or cut off.
            offset += 1;
            match ctx.client(offset).await {
                Some(c) => client = c,
                None => return,
            }
        }
        ctx.pause(ctx.think).await;
    }
}
