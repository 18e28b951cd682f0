//! The load generator: closed-loop clients sending `GET /` through nginx, counting failures and
//! when each task first and last answered.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};

use super::{wall_ms, HOST, REQUEST_TIMEOUT};

/// Requests sent and failed so far, and why they failed.
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    pub(super) sent: u64,
    pub(super) failed: u64,
    pub(super) errors: BTreeMap<String, u64>,
}

/// When a task first and last answered a request through nginx.
struct Answer {
    first: Instant,
    first_wall_ms: u64,
    last: Instant,
}

struct LoadShared {
    stop: AtomicBool,
    counters: Mutex<Counters>,
    answers: Mutex<HashMap<String, Answer>>,
}

/// `clients` tasks sending `GET /` with `Host: test.local` through nginx in a closed loop.
pub(super) struct Load {
    shared: Arc<LoadShared>,
    handles: Vec<JoinHandle<()>>,
}

impl Load {
    pub(super) fn start(addr: SocketAddr, clients: usize) -> Load {
        let shared = Arc::new(LoadShared {
            stop: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
            answers: Mutex::new(HashMap::new()),
        });
        let handles = (0..clients)
            .map(|_| {
                let shared = shared.clone();
                tokio::spawn(async move {
                    while !shared.stop.load(Ordering::Relaxed) {
                        let result = request(addr).await;
                        let now = Instant::now();
                        let failed = result.is_err();
                        {
                            let mut c = shared.counters.lock().expect("not poisoned");
                            c.sent += 1;
                            if let Err(kind) = &result {
                                c.failed += 1;
                                *c.errors.entry(kind.clone()).or_insert(0) += 1;
                            }
                        }
                        if let Ok(task) = result {
                            let mut answers = shared.answers.lock().expect("not poisoned");
                            answers
                                .entry(task)
                                .and_modify(|a| a.last = now)
                                .or_insert(Answer {
                                    first: now,
                                    first_wall_ms: wall_ms(),
                                    last: now,
                                });
                        }
                        if failed {
                            // A refused connection fails at once: do not spin on it.
                            sleep(Duration::from_millis(10)).await;
                        }
                    }
                })
            })
            .collect();
        Load { shared, handles }
    }

    pub(super) fn counters(&self) -> Counters {
        self.shared.counters.lock().expect("not poisoned").clone()
    }

    pub(super) fn answered(&self, task: &str) -> bool {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .contains_key(task)
    }

    /// The tasks that answered at or after `since` (ever, for None).
    pub(super) fn answering_since(&self, since: Option<Instant>) -> HashSet<String> {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, a)| since.is_none_or(|s| a.last >= s))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub(super) fn first_answer(&self, task: &str) -> Option<(Instant, u64)> {
        self.shared
            .answers
            .lock()
            .expect("not poisoned")
            .get(task)
            .map(|a| (a.first, a.first_wall_ms))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in &self.handles {
            h.abort();
        }
    }
}

/// One `GET /` through nginx, a new connection each (HTTP/1.0): the task that answered, or why
/// the request failed (a non-200 status, a connection error, a timeout).
pub(super) async fn request(addr: SocketAddr) -> Result<String, String> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {:?}", e.kind()))?;
        let _ = s.set_nodelay(true);
        s.write_all(format!("GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| format!("write: {:?}", e.kind()))?;
        let mut buf = Vec::with_capacity(512);
        s.read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {:?}", e.kind()))?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1).unwrap_or("(none)");
        if status != "200" {
            return Err(format!("status {status}"));
        }
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        body.lines()
            .find_map(|l| l.strip_prefix("task:"))
            .map(|t| t.trim().to_string())
            .ok_or_else(|| "200 without a task line".to_string())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("timeout".into()))
}
