//! The threads Raft runs on: openraft's core, its state-machine worker (apply, and with it the
//! object index) and replication to the other managers get a tokio runtime of their own, so a
//! leader busy planning or serving thousands of agent streams still sends every heartbeat on time.
//! Its threads (and the log writer's) also ask the kernel for a higher priority where allowed.

use std::time::Duration;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

/// Worker threads of the Raft runtime: the core and one replication or apply task at a time.
const THREADS: usize = 2;

/// The nice value Raft's threads ask for: CFS then gives each about three times the CPU share of
/// a default thread when the machine is saturated (a leader's control loops and agent streams,
/// or other processes), so heartbeats keep their schedule.
const RAFT_NICE: i32 = -5;

/// Raises the calling thread's scheduling priority to [`RAFT_NICE`]. Without the privilege
/// (`CAP_SYS_NICE`) the thread keeps its priority: Raft still runs, only without the head start.
#[allow(unsafe_code)]
pub(crate) fn favour_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority only read their arguments; on Linux PRIO_PROCESS with a
        // thread id sets that one thread's nice value.
        let rc = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, RAFT_NICE)
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "Raft thread keeps its default priority"
            );
        }
    }
}

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
            .on_thread_start(favour_this_thread)
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

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn nice_of_this_thread() -> i32 {
        // SAFETY: reads the calling thread's nice value.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
    }

    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    #[tokio::test]
    async fn raft_threads_run_ahead_of_default_threads_where_allowed() {
        // Whether this process may raise a thread's priority (root, CAP_SYS_NICE), asked of a
        // scratch thread.
        let allowed = std::thread::spawn(|| {
            // SAFETY: sets the nice value of this scratch thread only.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, RAFT_NICE) == 0
            }
        })
        .join()
        .unwrap();
        let default = nice_of_this_thread();
        let rt = RaftRuntime::start().unwrap();
        let nice = rt.run(async { nice_of_this_thread() }).await.unwrap();
        if allowed {
            assert_eq!(nice, RAFT_NICE);
        } else {
            assert_eq!(nice, default, "without the privilege nothing changes");
        }
        assert_eq!(
            nice_of_this_thread(),
            default,
            "the caller's thread keeps its own"
        );
    }
}
