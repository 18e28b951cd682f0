//! Errors of `shoal dev`: what stops a local cluster from starting or running.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("{0}")]
    Unsupported(&'static str),

    /// A program `shoal dev` needs is missing; `hint` says how to install it.
    #[error("{program} is not installed: {hint}")]
    NotInstalled {
        program: &'static str,
        hint: &'static str,
    },

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("starting {kind} {name}: {source}")]
    Spawn {
        kind: &'static str,
        name: String,
        source: std::io::Error,
    },

    #[error("{kind} {name} exited during startup ({status}){}; see {}", last_line(.last_log_line), log.display())]
    ExitedEarly {
        kind: &'static str,
        name: String,
        status: String,
        last_log_line: Option<String>,
        log: PathBuf,
    },

    #[error("{kind} {name} did not {what} within {waited:?}; see {}", log.display())]
    StartTimeout {
        kind: &'static str,
        name: String,
        what: &'static str,
        waited: Duration,
        log: PathBuf,
    },

    #[error("{}: {reason}", dir.display())]
    Existing { dir: PathBuf, reason: String },

    #[error(transparent)]
    Hosts(#[from] super::hosts::HostsError),

    #[error("every manager has exited; see the logs in {}", logs.display())]
    AllExited { logs: PathBuf },
}

fn last_line(line: &Option<String>) -> String {
    line.as_ref().map(|l| format!(": {l}")).unwrap_or_default()
}

impl DevError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> DevError {
        let path = path.into();
        move |source| DevError::Io { what, path, source }
    }
}
