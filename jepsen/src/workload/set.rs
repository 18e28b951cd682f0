//! The set workload: each add puts a key of its own (`/jepsen/set/<element>`, unique elements);
//! after the heal, one linearizable range read of the prefix is the final read.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use shoal_proto::v1 as pb;

use super::{Ctx, ROOT};
use crate::history::Kind;

fn prefix() -> String {
    format!("{ROOT}set/")
}

pub async fn run(ctx: Ctx) {
    let next = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for c in 0..ctx.concurrency {
        let (ctx, next) = (ctx.clone(), next.clone());
        tasks.push(tokio::spawn(async move { client(ctx, c, next).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ctx.wait_finals().await;
    final_read(&ctx).await;
}

async fn client(ctx: Ctx, c: usize, next: Arc<AtomicI64>) {
    let mut proc = ctx.process();
    let mut offset = c;
    let Some(mut client) = ctx.client(offset).await else {
        return;
    };
    while !ctx.stopped() {
        let e = next.fetch_add(1, Ordering::Relaxed);
        let inv = proc.invoke("add", "", json!(e));
        let req = pb::PutRequest {
            key: format!("{}{e}", prefix()).into_bytes(),
            value: b"1".to_vec(),
            ..Default::default()
        };
        match client.put(req).await {
            Ok(_) => proc.complete(&inv, Kind::Ok, json!(e), None),
            Err(err) => {
                proc.write_failed(&inv, &err);
                offset += 1;
                match ctx.client(offset).await {
                    Some(c) => client = c,
                    None => return,
                }
            }
        }
        ctx.pause(ctx.think).await;
    }
}

/// Reads may be retried: a failed read is recorded and tried again, for up to a minute.
async fn final_read(ctx: &Ctx) {
    let mut proc = ctx.process();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for attempt in 0.. {
        let Some(mut client) = ctx.final_client(attempt).await else {
            return;
        };
        let inv = proc.invoke("final-read", "", Value::Null);
        let req = pb::RangeRequest {
            key: prefix().into_bytes(),
            prefix: true,
            keys_only: true,
            ..Default::default()
        };
        match client.range(req).await {
            Ok(r) => {
                let mut elements: Vec<i64> = r
                    .kvs
                    .iter()
                    .filter_map(|kv| {
                        let key = std::str::from_utf8(&kv.key).ok()?;
                        key.strip_prefix(&prefix())?.parse().ok()
                    })
                    .collect();
                elements.sort_unstable();
                proc.complete(&inv, Kind::Ok, json!(elements), None);
                return;
            }
            Err(e) => proc.read_failed(&inv, &e),
        }
        if tokio::time::Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
