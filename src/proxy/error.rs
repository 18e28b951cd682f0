//! Errors of the `shoal proxy` boundary: `ApplyError` is one failed attempt to make a config live
//! (reported in the proxy's status, never fatal); `ProxyError` is what stops `shoal proxy` from
//! starting at all.

use std::path::PathBuf;

use super::render::RenderError;

/// Why a config did not go live. `Display` is one line: it goes into `ProxyStatus.error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The operator's `--template` file cannot be read.
    #[error("template {}: cannot read it: {reason}", path.display())]
    TemplateUnreadable { path: PathBuf, reason: String },

    /// The template does not render.
    #[error(transparent)]
    Render(#[from] RenderError),

    /// The record at `/shoal/proxy/config` does not parse.
    #[error("unreadable proxy config at revision {revision}: {reason}")]
    Record { revision: u64, reason: String },

    /// The record holds a value that could change the config's structure (`proxy::safe`).
    #[error("refused the proxy config at revision {revision}: {reason}")]
    Unsafe { revision: u64, reason: String },

    #[error("{what} {}: {reason}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },

    /// The validator (`nginx -t`, `haproxy -c`) cannot run at all.
    #[error("cannot validate the config: {program} is not installed here ({reason})")]
    NotInstalled { program: String, reason: String },

    /// The validator refused the config: its first meaningful line.
    #[error("{program} refused the config: {line}")]
    Invalid { program: String, line: String },

    /// No live process to reload (pid file missing, empty or stale).
    #[error("{kind} is not running ({detail})")]
    NotRunning { kind: String, detail: String },

    #[error("reload ({how}) failed: {reason}")]
    Reload { how: String, reason: String },
}

impl ApplyError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ApplyError {
        let path = path.into();
        move |e| ApplyError::Io {
            what,
            path,
            reason: e.to_string(),
        }
    }
}

/// What keeps `shoal proxy` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("--join needs at least one manager address")]
    NoManagers,

    #[error("--config {}: {reason}", path.display())]
    ConfigPath { path: PathBuf, reason: String },

    #[error("--run-dir {}: {reason}", path.display())]
    RunDir { path: PathBuf, reason: String },

    #[error("--name must be a non-empty name without '/' (got {0:?})")]
    Name(String),
}

/// `text` on one line: newlines and tabs become spaces, runs of blanks one space.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
