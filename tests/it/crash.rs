//! kill -9 every manager in the middle of a stream of writes, restart them all: every write that
//! was acknowledged is there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::sleep;

use crate::cluster::{assert_contains, put, read_prefix, serial, Cluster};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_writes_survive_killing_every_manager() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    c.wait_leader().await;

    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6 {
        // Writers spread over all managers: followers forward, the leader writes directly.
        let mut kv = c.managers[w % 3].kv();
        let (acked, stop) = (acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let (key, value) = (format!("b/{w}/{n:06}"), format!("v{w}-{n}"));
                n += 1;
                match put(&mut kv, &key, &value).await {
                    Ok(_) => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Err(_) => sleep(Duration::from_millis(20)).await,
                }
            }
        }));
    }
    sleep(Duration::from_secs(3)).await;
    for m in &mut c.managers {
        m.kill();
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 50,
        "only {} writes acknowledged before the crash\n{}",
        acked.len(),
        c.logs()
    );

    for m in &mut c.managers {
        m.spawn(&[]);
    }
    let leader = c.wait_leader().await;
    let mut kv = c.managers[leader].kv();
    let all = read_prefix(&mut kv, "b/", false)
        .await
        .expect("linearizable read after restart");
    assert_contains(&all, &acked, "after killing and restarting every manager");
    // And the cluster takes writes again.
    put(&mut kv, "b/after", "x")
        .await
        .expect("a write after the restart");
}
