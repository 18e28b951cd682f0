//! The child processes of `shoal dev`: each in its own process group (a Ctrl-C in the terminal
//! reaches only `shoal dev`, which then stops them in order), SIGTERM first and SIGKILL 5 s later.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::sync::mpsc;

use super::DevError;

/// How long children get to stop after SIGTERM before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub(crate) struct Proc {
    /// `manager`, `agent`, `nginx` or `proxy`.
    pub(crate) kind: &'static str,
    pub(crate) name: String,
    pub(crate) pid: u32,
    pub(crate) log: PathBuf,
    exited: Option<String>,
}

/// Every child `shoal dev` started, and the news of their exits.
pub(crate) struct Group {
    procs: Vec<Proc>,
    exits_tx: mpsc::UnboundedSender<(usize, String)>,
    exits_rx: mpsc::UnboundedReceiver<(usize, String)>,
}

impl Group {
    pub(crate) fn new() -> Group {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Group {
            procs: Vec::new(),
            exits_tx,
            exits_rx,
        }
    }

    /// Starts `exe args...` with stdout and stderr appended to `log`; returns its index.
    pub(crate) fn spawn(
        &mut self,
        kind: &'static str,
        name: &str,
        exe: &Path,
        args: &[String],
        log: &Path,
    ) -> Result<usize, DevError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(DevError::io("opening log", log))?;
        let stderr = file.try_clone().map_err(DevError::io("opening log", log))?;
        let mut child = tokio::process::Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            // If `shoal dev` itself fails, no child outlives it.
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DevError::Spawn {
                kind,
                name: name.to_string(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        let index = self.procs.len();
        let tx = self.exits_tx.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => describe(status),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = tx.send((index, status));
        });
        self.procs.push(Proc {
            kind,
            name: name.to_string(),
            pid,
            log: log.to_path_buf(),
            exited: None,
        });
        Ok(index)
    }

    pub(crate) fn get(&self, index: usize) -> &Proc {
        &self.procs[index]
    }

    /// How the child at `index` exited, if it has.
    pub(crate) fn exited(&mut self, index: usize) -> Option<String> {
        self.drain();
        self.procs[index].exited.clone()
    }

    pub(crate) fn alive(&mut self) -> usize {
        self.drain();
        self.procs.iter().filter(|p| p.exited.is_none()).count()
    }

    /// How many children of `kind` still run.
    pub(crate) fn alive_of(&mut self, kind: &str) -> usize {
        self.drain();
        self.procs
            .iter()
            .filter(|p| p.kind == kind && p.exited.is_none())
            .count()
    }

    /// Waits for the next child to exit: its index and how it exited.
    pub(crate) async fn next_exit(&mut self) -> (usize, String) {
        // The group holds a sender itself, so the channel never closes.
        let (index, status) = self
            .exits_rx
            .recv()
            .await
            .expect("sender held by the group");
        self.procs[index].exited = Some(status.clone());
        (index, status)
    }

    /// SIGTERM to every live child's process group, SIGKILL to those still alive after the grace.
    pub(crate) async fn stop(&mut self) {
        self.signal_alive(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        while self.alive() > 0 {
            if tokio::time::timeout_at(deadline, self.next_exit())
                .await
                .is_err()
            {
                break;
            }
        }
        if self.alive() > 0 {
            self.signal_alive(Signal::SIGKILL);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.alive() > 0
                && tokio::time::timeout_at(deadline, self.next_exit())
                    .await
                    .is_ok()
            {}
        }
    }

    fn signal_alive(&mut self, signal: Signal) {
        self.drain();
        for p in self.procs.iter().filter(|p| p.exited.is_none()) {
            if let Ok(pid) = i32::try_from(p.pid) {
                // ESRCH: it exited in the meantime, which is what we want.
                let _ = killpg(Pid::from_raw(pid), signal);
            }
        }
    }

    fn drain(&mut self) {
        while let Ok((index, status)) = self.exits_rx.try_recv() {
            self.procs[index].exited = Some(status);
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The last non-empty line of a log, to say why a child died.
pub(crate) fn last_log_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string())
}
