//! Driving the cluster through the `shoal` CLI (scale, update, inspect) and waiting for what the
//! poller and the load see to converge.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;
use tokio::time::{sleep, Instant};

use super::load::Load;
use super::poll::Poller;
use super::STEP_TIMEOUT;

/// `shoal --host HOSTS --tls-dir TLS_DIR ARGS...`, its stdout; an error with its stderr if it
/// fails.
pub(super) async fn cli(exe: &Path, hosts: &str, tls_dir: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(exe)
        .args(["--host", hosts])
        .arg("--tls-dir")
        .arg(tls_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "shoal {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub(super) async fn scale(exe: &Path, hosts: &str, tls_dir: &Path, replicas: u64) -> Result<()> {
    cli(
        exe,
        hosts,
        tls_dir,
        &["service", "scale", &format!("web={replicas}")],
    )
    .await?;
    Ok(())
}

/// Until web's update (`service inspect`) is in `state`, for at most `within`.
pub(super) async fn update_done(
    exe: &Path,
    hosts: &str,
    tls_dir: &Path,
    state: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let out = cli(exe, hosts, tls_dir, &["service", "inspect", "web"]).await?;
        let inspected: Value = serde_json::from_str(&out)?;
        if inspected[0]["update"]["state"] == state {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "web's update never reached {state}: {}",
                inspected[0]["update"]
            );
        }
        sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn until(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Until `n` tasks run and every one of them answered at or after `since` (ever, for None).
pub(super) async fn all_answering(
    poll: &Poller,
    load: &Load,
    n: usize,
    since: Option<Instant>,
) -> Result<()> {
    // A task needs a few seconds at most; many at once queue behind the engine.
    let within = STEP_TIMEOUT.max(Duration::from_secs(2) * n as u32);
    until(&format!("{n} tasks running and answering"), within, || {
        let running = poll.running();
        let answering = load.answering_since(since);
        running.len() == n && running.iter().all(|t| answering.contains(t))
    })
    .await
}

/// Until exactly one task runs and, for a whole second, only it answered.
pub(super) async fn only_one_answering(poll: &Poller, load: &Load) -> Result<()> {
    until("one task left answering", STEP_TIMEOUT, || {
        let running = poll.running();
        let answering = load.answering_since(Instant::now().checked_sub(Duration::from_secs(1)));
        running.len() == 1 && answering.len() == 1 && answering.contains(&running[0])
    })
    .await
}
