//! The watch workload: writers put unique values under `/jepsen/watch/` while several watchers,
//! each through a different manager, watch the prefix from one common revision. After the heal a
//! sentinel write (recorded like any put) marks the end: each watcher reports the span it covered.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shoal_proto::v1 as pb;

use super::{Ctx, ROOT};
use crate::history::Kind;

const WATCHERS: usize = 3;

fn prefix() -> String {
    format!("{ROOT}watch/")
}
fn sentinel() -> String {
    format!("{ROOT}watch/end")
}

pub async fn run(ctx: Ctx) {
    let Some(start) = super::lock::start_revision(&ctx).await else {
        return;
    };
    let mut watchers = Vec::new();
    for w in 0..WATCHERS {
        watchers.push(tokio::spawn(watcher(ctx.clone(), w, start)));
    }
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for c in 0..ctx.concurrency.clamp(1, 3) {
        let (ctx, next) = (ctx.clone(), next.clone());
        writers.push(tokio::spawn(async move { writer(ctx, c, next).await }));
    }
    for t in writers {
        let _ = t.await;
    }
    ctx.wait_finals().await;
    let mut proc = ctx.process();
    for attempt in 0..30 {
        if let Some(mut c) = ctx.final_client(attempt).await {
            let value = format!("end-{attempt}");
            let inv = proc.invoke("put", &sentinel(), json!(value));
            let req = pb::PutRequest {
                key: sentinel().into_bytes(),
                value: value.into_bytes(),
                ..Default::default()
            };
            match c.put(req).await {
                Ok(r) => {
                    let rev = super::revision(&r.header);
                    proc.complete(&inv, Kind::Ok, json!({"revision": rev}), None);
                    break;
                }
                Err(e) => proc.write_failed(&inv, &e),
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
}

async fn writer(ctx: Ctx, c: usize, next: Arc<AtomicU64>) {
    let mut proc = ctx.process();
    let mut offset = c;
    let Some(mut client) = ctx.client(offset).await else {
        return;
    };
    while !ctx.stopped() {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}k{}", prefix(), n % 4);
        let value = format!("v{n}");
        let inv = proc.invoke("put", &key, json!(value));
        let req = pb::PutRequest {
            key: key.into_bytes(),
            value: value.into_bytes(),
            ..Default::default()
        };
        match client.put(req).await {
            Ok(r) => {
                let rev = super::revision(&r.header);
                proc.complete(&inv, Kind::Ok, json!({"revision": rev}), None);
            }
            Err(e) => {
                proc.write_failed(&inv, &e);
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

async fn watcher(ctx: Ctx, w: usize, start: u64) {
    let proc = ctx.process();
    let end = |through: u64, error: Option<String>| {
        proc.note(
            "watch-end",
            "",
            json!({"watcher": w, "from": start, "through": through, "error": error}),
        );
    };
    let Some(mut client) = ctx.final_client(w).await else {
        return end(start.saturating_sub(1), Some("no manager reachable".into()));
    };
    let mut watch = match client.watch(prefix().into_bytes(), true, start).await {
        Ok(watch) => watch,
        Err(e) => return end(start.saturating_sub(1), Some(e.to_string())),
    };
    loop {
        match watch.next().await {
            Ok(event) => {
                let Some(kv) = &event.kv else { continue };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                proc.note(
                    "watch-event",
                    "",
                    json!({"revision": kv.mod_revision, "key": key,
                        "value": String::from_utf8_lossy(&kv.value)}),
                );
                if key == sentinel() {
                    return end(kv.mod_revision, None);
                }
            }
            Err(e) => return end(watch.next_revision().saturating_sub(1), Some(e.to_string())),
        }
    }
}
