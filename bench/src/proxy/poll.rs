//! The poller: reads the tasks (and, for new RUNNING ones, the leader's rendered nginx config)
//! from the store every `POLL`, remembering when it first saw each.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::RangeRequest;
use shoal_tls::Credentials;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{wall_ms, POLL};
use crate::cluster;

/// A task as the poller last read it.
struct TaskView {
    id: String,
    /// RUNNING and meant to run.
    running: bool,
    /// RUNNING, meant to run or not (a container still up).
    up: bool,
}

/// When the poller first saw a task RUNNING, and the record's `updated_ms` then.
struct SeenRunning {
    at: Instant,
    updated_ms: u64,
}

struct PollShared {
    stop: AtomicBool,
    latest: Mutex<Vec<TaskView>>,
    running: Mutex<HashMap<String, SeenRunning>>,
    /// When the poller first saw a task (seen RUNNING before) in the leader's rendered nginx
    /// config at `/shoal/proxy/config`.
    rendered: Mutex<HashMap<String, Rendered>>,
}

/// The first read of the rendered config that had a task: when (wall clock), which generation.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rendered {
    pub(super) wall_ms: u64,
    pub(super) generation: u64,
}

impl PollShared {
    /// Takes in one read of `/shoal/tasks/` made at `now`; returns the tasks seen RUNNING that
    /// were not seen in the rendered config yet.
    fn record(&self, kvs: Vec<shoal_proto::v1::KeyValue>, now: Instant) -> Vec<String> {
        let mut latest = Vec::new();
        let mut running = self.running.lock().expect("not poisoned");
        for kv in kvs {
            let Ok(t) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            let id = t["id"].as_str().unwrap_or("").to_string();
            let is_running = t["state"] == "running";
            if is_running && !running.contains_key(&id) {
                running.insert(
                    id.clone(),
                    SeenRunning {
                        at: now,
                        updated_ms: t["updated_ms"].as_u64().unwrap_or(0),
                    },
                );
            }
            latest.push(TaskView {
                running: is_running && t["desired_state"] == "running",
                up: is_running,
                id,
            });
        }
        let pending: Vec<String> = {
            let rendered = self.rendered.lock().expect("not poisoned");
            running
                .keys()
                .filter(|id| !rendered.contains_key(*id))
                .cloned()
                .collect()
        };
        *self.latest.lock().expect("not poisoned") = latest;
        pending
    }
}

/// Reads `/shoal/tasks/` every `POLL` (linearizable reads over one kept connection, moving to
/// the next manager when one fails).
pub(super) struct Poller {
    shared: Arc<PollShared>,
    handle: JoinHandle<()>,
}

impl Poller {
    pub(super) fn start(addrs: Vec<SocketAddr>, tls: Credentials) -> Poller {
        let shared = Arc::new(PollShared {
            stop: AtomicBool::new(false),
            latest: Mutex::new(Vec::new()),
            running: Mutex::new(HashMap::new()),
            rendered: Mutex::new(HashMap::new()),
        });
        let s = shared.clone();
        let handle = tokio::spawn(async move {
            let mut next = 0;
            let mut client: Option<KvClient<Channel>> = None;
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !s.stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if client.is_none() {
                    let addr = addrs[next % addrs.len()];
                    next += 1;
                    client = connect(addr, &tls).await.ok();
                }
                let Some(kv) = client.as_mut() else { continue };
                let resp = kv
                    .range(RangeRequest {
                        key: b"/shoal/tasks/".to_vec(),
                        prefix: true,
                        ..Default::default()
                    })
                    .await;
                let now = Instant::now();
                let Ok(resp) = resp else {
                    client = None;
                    continue;
                };
                let pending = s.record(resp.into_inner().kvs, now);
                if pending.is_empty() {
                    continue;
                }
                let config = kv
                    .range(RangeRequest {
                        key: b"/shoal/proxy/config".to_vec(),
                        ..Default::default()
                    })
                    .await;
                let now = wall_ms();
                let Ok(config) = config else {
                    client = None;
                    continue;
                };
                let Some(record) = config.into_inner().kvs.into_iter().next() else {
                    continue;
                };
                let Ok(config) = serde_json::from_slice::<Value>(&record.value) else {
                    continue;
                };
                let nginx = config["nginx"].as_str().unwrap_or("");
                let seen = Rendered {
                    wall_ms: now,
                    generation: config["generation"].as_u64().unwrap_or(0),
                };
                let mut rendered = s.rendered.lock().expect("not poisoned");
                for id in pending {
                    if nginx.contains(&format!("# task {id} ")) {
                        rendered.insert(id, seen);
                    }
                }
            }
        });
        Poller { shared, handle }
    }

    /// Ids of the tasks RUNNING and meant to run, as last read.
    pub(super) fn running(&self) -> Vec<String> {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|t| t.running)
            .map(|t| t.id.clone())
            .collect()
    }

    /// How many tasks are RUNNING, meant to run or being stopped, as last read.
    pub(super) fn up(&self) -> usize {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|t| t.up)
            .count()
    }

    /// Every task id in the last read, whatever its state.
    pub(super) fn all(&self) -> HashSet<String> {
        self.shared
            .latest
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|t| t.id.clone())
            .collect()
    }

    pub(super) fn seen_running(&self, task: &str) -> Option<(Instant, u64)> {
        self.shared
            .running
            .lock()
            .expect("not poisoned")
            .get(task)
            .map(|s| (s.at, s.updated_ms))
    }

    pub(super) fn seen_rendered(&self, task: &str) -> Option<Rendered> {
        self.shared
            .rendered
            .lock()
            .expect("not poisoned")
            .get(task)
            .copied()
    }

    pub(super) fn seen_running_ids(&self) -> Vec<String> {
        self.shared
            .running
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.handle.abort();
    }
}

async fn connect(addr: SocketAddr, tls: &Credentials) -> Result<KvClient<Channel>> {
    let endpoint = cluster::endpoint(addr)?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let channel = cluster::connect(endpoint, tls).await?;
    Ok(KvClient::new(channel))
}
