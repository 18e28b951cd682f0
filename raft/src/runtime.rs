//! The threads Raft runs on: openraft's core, its state-machine worker (apply, and with it the
//! object index) and replication to the other managers get a tokio runtime of their own, so a
//! leader busy planning or serving thousands of agent streams still sends every heartbeat on time.

use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Worker threads of the Raft runtime: the core and one replication or apply task at a time.
const THREADS: usize = 2;

/// The Raft runtime; dropping it stops its threads (from a thread of its own, so dropping it in
/// async code is allowed).
#[derive(Debug)]
pub(crate) struct RaftRuntime {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl RaftRuntime {
    pub fn start() -> std::io::Result<RaftRuntime> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(THREADS)
            .thread_name("raft")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("raft-runtime".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })?;
        Ok(RaftRuntime {
            handle,
            _stop: stop,
        })
    }

    /// Runs `future` on the Raft runtime: whatever it spawns (openraft's tasks) lives there.
    pub async fn run<F>(&self, future: F) -> std::io::Result<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle
            .spawn(future)
            .await
            .map_err(|e| std::io::Error::other(format!("the Raft runtime: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_spawned_by_what_runs_there_stay_on_its_threads() {
        let rt = RaftRuntime::start().unwrap();
        let name = rt
            .run(async {
                tokio::spawn(async { std::thread::current().name().map(String::from) })
                    .await
                    .unwrap()
            })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("raft"));
        let here = std::thread::current().name().map(String::from);
        assert_ne!(here.as_deref(), Some("raft"));
        drop(rt);
    }
}
