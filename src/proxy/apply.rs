//! Making one proxy config record live, safely: render it locally (this proxy's port, run dir and
//! template), skip it when the text is what already runs, else write it beside the live file,
//! validate it, rename it over the live file and reload. A config that fails anywhere on the way
//! leaves the previous file live and becomes the error this proxy reports. The only writer of the
//! live file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::control::Control;
use super::error::ApplyError;
use super::render::{render, ProxyKind, RenderOptions};
use crate::model::{ProxyConfig, ProxyStatus};

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written, validated and reloaded.
    Reloaded,
    /// The rendered text is what already runs: nothing written, nothing reloaded.
    Unchanged,
    /// The previous config stays live; the error is in the status.
    Failed(ApplyError),
}

/// The live file of one proxy and what is known to run from it.
pub(crate) struct Applier<C> {
    kind: ProxyKind,
    path: PathBuf,
    template: Option<PathBuf>,
    options: RenderOptions,
    control: C,
    /// The text the proxy was last reloaded with (None until the first reload: whatever the file
    /// held when `shoal proxy` started may never have been loaded, so it is applied once).
    live: Option<String>,
    applied_generation: u64,
    applied_revision: u64,
    /// The last attempt's failure, `generation N: why`; None once a later attempt succeeds.
    error: Option<String>,
    /// Reloads made and failed attempts since the start, and when the live config went live.
    reloads: u64,
    failures: u64,
    applied_ms: u64,
}

impl<C: Control> Applier<C> {
    pub(crate) fn new(
        kind: ProxyKind,
        path: PathBuf,
        template: Option<PathBuf>,
        options: RenderOptions,
        control: C,
    ) -> Self {
        Applier {
            kind,
            path,
            template,
            options,
            control,
            live: None,
            applied_generation: 0,
            applied_revision: 0,
            error: None,
            reloads: 0,
            failures: 0,
            applied_ms: crate::host::now_ms(),
        }
    }

    /// Makes `record` (stored at `revision`) live if it changes what runs.
    pub(crate) async fn apply(&mut self, record: &ProxyConfig, revision: u64) -> Outcome {
        match self.try_apply(record).await {
            Ok(outcome) => {
                if matches!(outcome, Outcome::Reloaded) {
                    self.reloads += 1;
                    self.applied_ms = crate::host::now_ms();
                }
                self.applied_generation = record.generation;
                self.applied_revision = revision;
                self.error = None;
                outcome
            }
            Err(e) => {
                self.failures += 1;
                self.error = Some(format!("generation {}: {e}", record.generation));
                Outcome::Failed(e)
            }
        }
    }

    /// Records a failure that happened before any rendering (an unreadable record).
    pub(crate) fn fail(&mut self, error: ApplyError) {
        self.failures += 1;
        self.error = Some(error.to_string());
    }

    pub(crate) fn has_error(&self) -> bool {
        self.error.is_some()
    }

    /// What this proxy reports at `/shoal/proxy/status/<name>`.
    pub(crate) fn status(&self, name: &str, now_ms: u64) -> ProxyStatus {
        ProxyStatus {
            name: name.to_string(),
            kind: self.kind.to_string(),
            applied_generation: self.applied_generation,
            applied_revision: self.applied_revision,
            error: self.error.clone(),
            updated_ms: now_ms,
            reloads: self.reloads,
            failures: self.failures,
            applied_ms: self.applied_ms,
        }
    }

    async fn try_apply(&mut self, record: &ProxyConfig) -> Result<Outcome, ApplyError> {
        let text = self.render(record)?;
        if self.live.as_deref() == Some(text.as_str()) {
            return Ok(Outcome::Unchanged);
        }
        let candidate = candidate_path(&self.path);
        write_synced(&candidate, &text)?;
        if let Err(e) = self.control.validate(&candidate, &self.path).await {
            let _ = std::fs::remove_file(&candidate);
            return Err(e);
        }
        let previous = match std::fs::read_to_string(&self.path) {
            Ok(previous) => Some(previous),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                let _ = std::fs::remove_file(&candidate);
                return Err(ApplyError::io("reading", &self.path)(e));
            }
        };
        replace(&candidate, &self.path)?;
        if let Err(e) = self.control.reload().await {
            // The proxy still runs the previous config: the file says so again. With no previous
            // file the new (valid) one stays, for a proxy that starts later to find.
            if let Some(previous) = previous {
                if let Err(restore) = write_synced(&candidate, &previous)
                    .and_then(|()| replace(&candidate, &self.path))
                {
                    tracing::warn!("restoring {}: {restore}", self.path.display());
                }
            }
            return Err(e);
        }
        self.live = Some(text);
        Ok(Outcome::Reloaded)
    }

    /// The record's model through this proxy's options and template (read afresh every time, so
    /// an operator's fix is picked up by the next attempt).
    fn render(&self, record: &ProxyConfig) -> Result<String, ApplyError> {
        let template = match &self.template {
            Some(path) => Some((
                path.display().to_string(),
                std::fs::read_to_string(path).map_err(|e| ApplyError::TemplateUnreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?,
            )),
            None => None,
        };
        let template = template
            .as_ref()
            .map(|(name, text)| (name.as_str(), text.as_str()));
        Ok(render(
            self.kind,
            &record.model,
            record.generation,
            &self.options,
            template,
        )?)
    }
}

/// `DIR/.NAME.shoal-tmp` beside `path`: same directory, so relative includes resolve alike and
/// the rename is atomic; a name no `*.conf` include matches.
fn candidate_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "proxy.conf".into());
    path.with_file_name(format!(".{name}.shoal-tmp"))
}

fn write_synced(path: &Path, text: &str) -> Result<(), ApplyError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    };
    write().map_err(ApplyError::io("writing", path))
}

/// Renames `from` over `to` and syncs the directory, so the new name survives a crash.
fn replace(from: &Path, to: &Path) -> Result<(), ApplyError> {
    if let Err(e) = std::fs::rename(from, to) {
        let _ = std::fs::remove_file(from);
        return Err(ApplyError::io("replacing", to)(e));
    }
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(dir) = std::fs::File::open(dir) {
            let _ = dir.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
