//! The lock workload, over leases: acquire is a txn "if the lock key does not exist, put it with
//! my lease"; release is "if the key is still at the revision I acquired it, delete it". A
//! watcher records every grant and every end of a hold (release or lease expiry) with its
//! revision; after the heal a sentinel write tells the watcher how far it got.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal::client::Client;
use shoal_proto::v1 as pb;
use shoal_proto::v1::compare::{Op as CmpOp, Target};
use shoal_proto::v1::request_op;

use super::{revision, Ctx, Proc, ROOT};
use crate::history::Kind;

const TTL: Duration = Duration::from_secs(2);

fn lock_key() -> String {
    format!("{ROOT}lock")
}
fn sentinel_key() -> String {
    format!("{ROOT}lock-end")
}

pub async fn run(ctx: Ctx) {
    // The watcher starts before any client, from the current revision.
    let Some(start) = start_revision(&ctx).await else {
        return;
    };
    let watcher = tokio::spawn(watch(ctx.clone(), start));
    let mut tasks = Vec::new();
    for c in 0..ctx.concurrency.min(4) {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move { client(ctx, c).await }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ctx.wait_finals().await;
    // The sentinel: the watcher stops when it sees it. Not part of the checked history.
    for attempt in 0..30 {
        if let Some(mut c) = ctx.final_client(attempt).await {
            let req = pb::PutRequest {
                key: sentinel_key().into_bytes(),
                value: attempt.to_string().into_bytes(),
                ..Default::default()
            };
            if c.put(req).await.is_ok() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(60), watcher).await;
}

pub(crate) async fn start_revision(ctx: &Ctx) -> Option<u64> {
    for attempt in 0..60 {
        if let Some(mut c) = ctx.final_client(attempt).await {
            let req = pb::RangeRequest {
                key: ROOT.as_bytes().to_vec(),
                count_only: true,
                ..Default::default()
            };
            if let Ok(r) = c.range(req).await {
                return Some(revision(&r.header) + 1);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    None
}

async fn watch(ctx: Ctx, start: u64) {
    let proc = ctx.process();
    let Some(mut client) = ctx.final_client(0).await else {
        return;
    };
    let Ok(mut w) = client.watch(lock_key().into_bytes(), true, start).await else {
        return;
    };
    while let Ok(event) = w.next().await {
        let Some(kv) = &event.kv else { continue };
        let key = String::from_utf8_lossy(&kv.key);
        if key == sentinel_key() {
            proc.note("lock-watch-end", "", json!({"through": kv.mod_revision}));
            return;
        }
        if key != lock_key() {
            continue;
        }
        let ty = if event.r#type == pb::event::EventType::Delete as i32 {
            "delete"
        } else {
            "put"
        };
        proc.note(
            "lock-event",
            &lock_key(),
            json!({"type": ty, "revision": kv.mod_revision,
                "holder": String::from_utf8_lossy(&kv.value), "lease": kv.lease}),
        );
    }
}

async fn client(ctx: Ctx, c: usize) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ (0x4c4f_434b + c as u64));
    let mut proc = ctx.process();
    let mut offset = c;
    let mut n = 0u64;
    let Some(mut client) = ctx.client(offset).await else {
        return;
    };
    while !ctx.stopped() {
        n += 1;
        if !cycle(&ctx, &mut client, &mut proc, n, &mut rng).await {
            offset += 1;
            match ctx.client(offset).await {
                Some(c) => client = c,
                None => return,
            }
        }
        ctx.pause(Duration::from_millis(rng.random_range(10..60)))
            .await;
    }
}

/// One grant, acquire, hold, release. False when the client should move to another manager.
async fn cycle(ctx: &Ctx, client: &mut Client, proc: &mut Proc, n: u64, rng: &mut StdRng) -> bool {
    let Ok(lease) = client.lease_grant(TTL).await else {
        return false;
    };
    let holder = format!("p{}-{n}", proc.id);
    let key = lock_key();
    let inv = proc.invoke("acquire", &key, json!({"holder": holder}));
    let req = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: key.clone().into_bytes(),
            target: Target::Exists.into(),
            exists: false,
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::Put(pb::PutRequest {
                key: key.clone().into_bytes(),
                value: holder.clone().into_bytes(),
                lease: lease.id,
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let acquired = match client.txn(req).await {
        Ok(r) if r.succeeded => {
            let rev = revision(&r.header);
            proc.complete(
                &inv,
                Kind::Ok,
                json!({"holder": holder, "revision": rev, "lease": lease.id}),
                None,
            );
            rev
        }
        Ok(_) => {
            proc.complete(&inv, Kind::Fail, inv.value.clone(), None);
            let _ = client.lease_revoke(lease.id).await;
            return true;
        }
        Err(e) => {
            proc.write_failed(&inv, &e);
            return false;
        }
    };
    // Hold it for a while (well within the TTL).
    ctx.pause(Duration::from_millis(rng.random_range(50..400)))
        .await;
    let inv = proc.invoke(
        "release",
        &key,
        json!({"holder": holder, "acquired": acquired}),
    );
    let req = pb::TxnRequest {
        compare: vec![pb::Compare {
            key: key.clone().into_bytes(),
            target: Target::ModRevision.into(),
            op: CmpOp::Equal.into(),
            number: acquired,
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(request_op::Request::Delete(pb::DeleteRequest {
                key: key.clone().into_bytes(),
                ..Default::default()
            })),
        }],
        failure: vec![],
    };
    let ok = match client.txn(req).await {
        Ok(r) if r.succeeded => {
            let rev = revision(&r.header);
            proc.complete(
                &inv,
                Kind::Ok,
                json!({"holder": holder, "revision": rev}),
                None,
            );
            true
        }
        Ok(_) => {
            // The lease expired first: the store ended the hold.
            proc.complete(&inv, Kind::Fail, inv.value.clone(), None);
            true
        }
        Err(e) => {
            proc.write_failed(&inv, &e);
            false
        }
    };
    let _ = client.lease_revoke(lease.id).await;
    ok
}
