//! `shoal proxy`: runs next to one nginx or haproxy, follows `/shoal/proxy/config` through the
//! managers' KV API (a read of the current record, then a watch that fails over between managers)
//! and makes each new record live through `apply`, reporting what runs through `report`. It never
//! exits on a bad config, a proxy that is down or managers that are unreachable: the previous
//! config keeps serving, the error is reported, and a failed attempt is retried with backoff.
//! It joins with `--token` (worker or manager token) for a proxy certificate, kept in memory and
//! renewed while it runs.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;

use super::apply::{Applier, Outcome};
use super::control::{Local, ReloadMethod};
use super::error::{one_line, ApplyError, ProxyError};
use super::render::{ProxyKind, RenderOptions};
use crate::client::{Client, ClientConfig, ClientError, Watcher};
use crate::model::{keys, ProxyConfig, ProxyStatus};

/// First wait after a failed attempt or a lost watch; doubled up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait: a fixed template or a restarted nginx is picked up within this.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything `shoal proxy` is started with.
#[derive(Debug, Clone)]
pub struct ProxyProcessConfig {
    /// Managers' gRPC addresses.
    pub join: Vec<String>,
    /// The join token (worker or manager) the proxy joins with for its certificate.
    pub token: String,
    pub kind: ProxyKind,
    /// The live config file the proxy runs from.
    pub config: PathBuf,
    pub reload: ReloadMethod,
    /// The name this proxy reports under (default: the host name).
    pub name: Option<String>,
    /// An operator's template instead of the built-in one, read at every attempt.
    pub template: Option<PathBuf>,
    pub listen_port: u16,
    pub https_port: u16,
    /// Where an unprivileged nginx keeps its pid, logs and temp files (also `-p` for `nginx -t`).
    pub run_dir: Option<PathBuf>,
}

impl ProxyProcessConfig {
    pub fn new(
        join: Vec<String>,
        token: String,
        kind: ProxyKind,
        config: PathBuf,
        reload: ReloadMethod,
    ) -> Self {
        ProxyProcessConfig {
            join,
            token,
            kind,
            config,
            reload,
            name: None,
            template: None,
            listen_port: 80,
            https_port: 443,
            run_dir: None,
        }
    }
}

/// Ends a background task with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the proxy's apply loop until `shutdown` resolves (an attempt under way is finished
/// first, so the live file and the running proxy never disagree), then removes its status.
pub async fn run(
    config: ProxyProcessConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let checked = check(config)?;
    let key = format!("{}{}", keys::PROXY_STATUS, checked.name);
    tracing::info!(
        "shoal proxy {} for {} at {}, following {} through {}",
        checked.name,
        checked.config.kind,
        checked.config.config.display(),
        keys::PROXY_CONFIG,
        checked.config.join.join(",")
    );
    // A proxy certificate, in memory: a join at every start.
    let creds = crate::security::keeper::node_credentials(
        &checked.config.join,
        &checked.config.token,
        shoal_tls::Role::Proxy,
        &checked.name,
        &[],
        None,
    )
    .await
    .map_err(|e| anyhow::anyhow!("joining the cluster: {e}"))?;
    let keeper = tokio::spawn(crate::security::keeper::run_node(
        checked.config.join.clone(),
        creds.clone(),
        None,
        Vec::new(),
    ));
    let _keeper = AbortOnDrop(keeper);
    let ProxyProcessConfig {
        join,
        kind,
        config: path,
        reload,
        template,
        listen_port,
        https_port,
        run_dir,
        ..
    } = checked.config;
    let options = RenderOptions {
        http_port: listen_port,
        https_port,
        run_dir: run_dir.as_ref().map(|d| d.display().to_string()),
    };
    let control = Local::new(kind, run_dir, reload);
    let applier = Applier::new(kind, path, template, options, control);

    let client_config = ClientConfig::new(join).with_tls(creds);
    let (status_tx, status_rx) =
        watch::channel(applier.status(&checked.name, crate::host::now_ms()));
    let reporter = tokio::spawn(super::report::run(client_config.clone(), key, status_rx));
    let mut follower = Follower {
        name: checked.name,
        client_config,
        applier,
        status: status_tx,
        watcher: None,
        seen: 0,
        latest: None,
        retry_at: None,
        backoff: MIN_BACKOFF,
        last_warning: None,
    };
    follower.run(shutdown).await;
    // Dropping the sender stops the reporter, which revokes the status lease.
    drop(follower);
    let _ = tokio::time::timeout(Duration::from_secs(3), reporter).await;
    Ok(())
}

struct Checked {
    config: ProxyProcessConfig,
    name: String,
}

/// Rejects what can never work before anything starts.
fn check(mut config: ProxyProcessConfig) -> Result<Checked, ProxyError> {
    if config.join.is_empty() {
        return Err(ProxyError::NoManagers);
    }
    let path = std::path::absolute(&config.config).map_err(|e| ProxyError::ConfigPath {
        path: config.config.clone(),
        reason: e.to_string(),
    })?;
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    if !dir.is_dir() {
        return Err(ProxyError::ConfigPath {
            path,
            reason: format!("its directory {} does not exist", dir.display()),
        });
    }
    if path.is_dir() {
        return Err(ProxyError::ConfigPath {
            path,
            reason: "is a directory".into(),
        });
    }
    config.config = path;
    if let Some(run_dir) = &config.run_dir {
        // The templates use it in absolute paths.
        let absolute = std::path::absolute(run_dir).map_err(|e| ProxyError::RunDir {
            path: run_dir.clone(),
            reason: e.to_string(),
        })?;
        if !absolute.is_dir() {
            return Err(ProxyError::RunDir {
                path: absolute,
                reason: "not a directory".into(),
            });
        }
        config.run_dir = Some(absolute);
    }
    let name = config.name.clone().unwrap_or_else(crate::host::host_name);
    if name.trim().is_empty() || name.contains('/') {
        return Err(ProxyError::Name(name));
    }
    Ok(Checked { config, name })
}

/// The apply loop's state: the watch, the newest record seen, and when to retry a failure.
struct Follower {
    name: String,
    client_config: ClientConfig,
    applier: Applier<Local>,
    status: watch::Sender<ProxyStatus>,
    watcher: Option<Watcher>,
    /// The revision of the newest record seen: older ones (a replay after a reconnect) are skipped.
    seen: u64,
    /// The newest readable record and its revision: what a retry applies.
    latest: Option<(ProxyConfig, u64)>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The last failure logged as a warning.
    last_warning: Option<String>,
}

/// What woke the loop up.
enum Wake {
    Shutdown,
    /// A record to apply (from the initial read or the watch), with its revision.
    Record(Result<ProxyConfig, ApplyError>, u64),
    Retry,
    /// The watch or the initial read failed; the old config keeps serving.
    Lost(ClientError),
    Nothing,
}

impl Follower {
    async fn run(&mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut reconnect_backoff = MIN_BACKOFF;
        loop {
            // Only waiting is cancelled by a shutdown; an attempt, once started, completes.
            let wake = tokio::select! {
                () = &mut shutdown => Wake::Shutdown,
                wake = self.next() => wake,
            };
            match wake {
                Wake::Shutdown => return,
                Wake::Record(record, revision) => {
                    reconnect_backoff = MIN_BACKOFF;
                    self.backoff = MIN_BACKOFF;
                    self.handle(record, revision).await;
                }
                Wake::Retry => {
                    if let Some((record, revision)) = self.latest.clone() {
                        self.handle(Ok(record), revision).await;
                    }
                }
                Wake::Lost(e) => {
                    self.watcher = None;
                    tracing::warn!(
                        "following {}: {e}; the current config keeps serving, retrying in {reconnect_backoff:?}",
                        keys::PROXY_CONFIG
                    );
                    tokio::select! {
                        () = &mut shutdown => return,
                        () = tokio::time::sleep(reconnect_backoff) => {}
                    }
                    reconnect_backoff = (reconnect_backoff * 2).min(MAX_BACKOFF);
                }
                Wake::Nothing => {}
            }
        }
    }

    /// Waits for the next thing to do. Safe to cancel: it changes nothing but the watch.
    async fn next(&mut self) -> Wake {
        let Some(watcher) = self.watcher.as_mut() else {
            return match self.open().await {
                Ok(Some((record, revision))) => Wake::Record(record, revision),
                Ok(None) => Wake::Nothing,
                Err(e) => Wake::Lost(e),
            };
        };
        let retry_at = self.retry_at;
        let retry = async move {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = watcher.next() => match event {
                Ok(event) => self.event(event),
                Err(e) => Wake::Lost(e),
            },
            () = retry => Wake::Retry,
        }
    }

    /// Reads the current record and opens a watch from just after that read.
    async fn open(
        &mut self,
    ) -> Result<Option<(Result<ProxyConfig, ApplyError>, u64)>, ClientError> {
        let mut client = Client::connect(self.client_config.clone()).await?;
        let mut req = pb::RangeRequest {
            key: keys::PROXY_CONFIG.as_bytes().to_vec(),
            ..Default::default()
        };
        let resp = match client.range(req.clone()).await {
            Ok(resp) => resp,
            // No leader for now: a replica's copy beats waiting (the watch brings what follows).
            Err(_) => {
                req.stale = true;
                client.range(req).await?
            }
        };
        let revision = resp.header.map_or(0, |h| h.revision);
        let watcher = client
            .watch(keys::PROXY_CONFIG.as_bytes().to_vec(), false, revision + 1)
            .await?;
        tracing::info!(
            "following {} from revision {} through {}",
            keys::PROXY_CONFIG,
            revision + 1,
            watcher.addr()
        );
        self.watcher = Some(watcher);
        Ok(resp
            .kvs
            .first()
            .and_then(|kv| self.record(&kv.value, kv.mod_revision)))
    }

    fn event(&self, event: pb::Event) -> Wake {
        let Some(kv) = event.kv else {
            return Wake::Nothing;
        };
        if event.r#type == pb::event::EventType::Delete as i32 {
            tracing::warn!(
                "{} was deleted at revision {}; the current config keeps serving",
                keys::PROXY_CONFIG,
                kv.mod_revision
            );
            return Wake::Nothing;
        }
        match self.record(&kv.value, kv.mod_revision) {
            Some((record, revision)) => Wake::Record(record, revision),
            None => Wake::Nothing,
        }
    }

    /// The record stored at `revision`, unless it is not newer than the one last seen.
    fn record(
        &self,
        value: &[u8],
        revision: u64,
    ) -> Option<(Result<ProxyConfig, ApplyError>, u64)> {
        if revision <= self.seen {
            return None;
        }
        let record = serde_json::from_slice::<ProxyConfig>(value)
            .map_err(|e| ApplyError::Record {
                revision,
                reason: one_line(&e.to_string()),
            })
            // Checked here too, not only by the leader that wrote it: whatever holds the record
            // never writes config syntax through it.
            .and_then(|record| match super::safe::check_model(&record.model) {
                Ok(()) => Ok(record),
                Err(reason) => Err(ApplyError::Unsafe { revision, reason }),
            });
        Some((record, revision))
    }

    /// Applies a record (or reports why it cannot be), publishes the status and schedules a
    /// retry if the attempt failed.
    async fn handle(&mut self, record: Result<ProxyConfig, ApplyError>, revision: u64) {
        self.seen = self.seen.max(revision);
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!("{e}; the current config keeps serving");
                self.applier.fail(e);
                self.latest = None;
                self.retry_at = None;
                self.publish();
                return;
            }
        };
        let generation = record.generation;
        match self.applier.apply(&record, revision).await {
            Outcome::Reloaded => {
                tracing::info!("generation {generation} (revision {revision}) is live");
            }
            Outcome::Unchanged => {
                tracing::debug!("generation {generation} (revision {revision}) changes nothing");
            }
            Outcome::Failed(e) => {
                let line = format!(
                    "generation {generation} (revision {revision}) not applied: {e}; the previous config keeps serving"
                );
                // A retry that fails the same way is not news.
                if self.last_warning.as_deref() == Some(line.as_str()) {
                    tracing::debug!("{line}");
                } else {
                    tracing::warn!("{line}");
                    self.last_warning = Some(line);
                }
            }
        }
        if !self.applier.has_error() {
            self.last_warning = None;
        }
        self.latest = Some((record, revision));
        self.retry_at = if self.applier.has_error() {
            let at = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            Some(at)
        } else {
            self.backoff = MIN_BACKOFF;
            None
        };
        self.publish();
    }

    fn publish(&self) {
        let status = self.applier.status(&self.name, crate::host::now_ms());
        // The reporter holds the receiver until the sender goes: this cannot fail before then.
        let _ = self.status.send(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> ProxyProcessConfig {
        ProxyProcessConfig::new(
            vec!["127.0.0.1:1".into()],
            "token".into(),
            ProxyKind::Nginx,
            dir.join("nginx.conf"),
            ReloadMethod::Command("true".into()),
        )
    }

    #[test]
    fn what_can_never_work_is_refused_before_starting() {
        let dir = tempfile::tempdir().unwrap();
        let ok = check(config(dir.path())).unwrap();
        assert!(ok.config.config.is_absolute());
        assert!(!ok.name.is_empty());

        let mut c = config(dir.path());
        c.join.clear();
        assert!(matches!(check(c), Err(ProxyError::NoManagers)));

        let mut c = config(dir.path());
        c.config = dir.path().join("missing/nginx.conf");
        let err = check(c).err().unwrap().to_string();
        assert!(err.contains("does not exist"), "{err}");

        let mut c = config(dir.path());
        c.run_dir = Some(dir.path().join("nope"));
        assert!(matches!(check(c), Err(ProxyError::RunDir { .. })));

        let mut c = config(dir.path());
        c.name = Some("a/b".into());
        assert!(matches!(check(c), Err(ProxyError::Name(_))));
    }

    #[test]
    fn only_newer_records_are_taken_and_a_bad_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let checked = check(config(dir.path())).unwrap();
        let c = checked.config;
        let applier = Applier::new(
            c.kind,
            c.config.clone(),
            None,
            RenderOptions::default(),
            Local::new(c.kind, None, c.reload.clone()),
        );
        let (status, _rx) = watch::channel(applier.status("p", 0));
        let mut f = Follower {
            name: "p".into(),
            client_config: ClientConfig::new(c.join.clone()),
            applier,
            status,
            watcher: None,
            seen: 0,
            latest: None,
            retry_at: None,
            backoff: MIN_BACKOFF,
            last_warning: None,
        };
        let record = ProxyConfig {
            generation: 3,
            model: Default::default(),
            nginx: String::new(),
            haproxy: String::new(),
        };
        let value = serde_json::to_vec(&record).unwrap();
        assert!(matches!(f.record(&value, 7), Some((Ok(_), 7))));
        f.seen = 7;
        assert!(f.record(&value, 7).is_none());
        assert!(f.record(&value, 6).is_none());
        assert!(matches!(
            f.record(b"{", 8),
            Some((Err(ApplyError::Record { revision: 8, .. }), 8))
        ));
        // A record whose model could inject config is refused before any rendering.
        let mut hostile = record.clone();
        hostile.model.hosts.push(crate::model::ProxyHost {
            name: "a.local;\n}".into(),
            ..Default::default()
        });
        let value = serde_json::to_vec(&hostile).unwrap();
        let Some((Err(e @ ApplyError::Unsafe { revision: 9, .. }), 9)) = f.record(&value, 9) else {
            panic!("a hostile record was taken");
        };
        assert!(
            e.to_string()
                .contains("refused the proxy config at revision 9"),
            "{e}"
        );
    }
}
