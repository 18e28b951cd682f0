//! The agent's watch on its Docker engine: waits for it at startup, re-lists its images for the
//! heartbeats when they change, and turns its container events into wake-ups for the task runner.
//! A stopped engine is waited for and logged once, never an error.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::time::sleep;

use super::throttle::Throttle;
use crate::engine::{DockerRuntime, EngineInfo, RuntimeError};

/// Between attempts to reach a stopped engine.
const RETRY: Duration = Duration::from_secs(1);
/// Between image listings (new images make the node eligible for more tasks).
const IMAGES_EVERY: Duration = Duration::from_secs(5);
/// Container events that can change what the agent must report.
const EVENTS: [&str; 6] = ["start", "die", "oom", "destroy", "kill", "restart"];

/// Connects to the engine at `url` (None: the local socket) and reads what the node registers with,
/// retrying until the engine answers.
pub(crate) async fn wait_for_engine(url: Option<&str>) -> (DockerRuntime, EngineInfo) {
    let mut throttle = Throttle::default();
    loop {
        let attempt = async {
            let docker = DockerRuntime::connect(url).await?;
            let info = docker.engine_info().await?;
            Ok::<_, RuntimeError>((docker, info))
        };
        match attempt.await {
            Ok((docker, info)) => {
                tracing::info!(
                    engine = %docker.endpoint(),
                    version = %info.version,
                    cpus = info.cpus,
                    memory_bytes = info.memory_bytes,
                    images = info.images.len(),
                    "Docker engine ready"
                );
                return (docker, info);
            }
            Err(e) => {
                let line = e.to_string();
                if throttle.should_log(&line) {
                    tracing::warn!("{line}; waiting for the engine before registering");
                }
            }
        }
        sleep(RETRY).await;
    }
}

/// Keeps `info.images` current; the heartbeat sends the list again when it changed. The list is
/// read again as soon as the engine says an image came or went (a pull, a `docker load`, a tag),
/// so a node is eligible for the tasks of a new image within a heartbeat, and every
/// `IMAGES_EVERY` in case an event was missed.
pub(crate) async fn poll_images(docker: DockerRuntime, info: watch::Sender<EngineInfo>) {
    let mut throttle = Throttle::default();
    let mut events = Box::pin(docker.image_events());
    loop {
        tokio::select! {
            () = sleep(IMAGES_EVERY) => {}
            event = events.next() => {
                if !matches!(event, Some(Ok(_))) {
                    // The engine went away: the listing below says so; subscribe again.
                    sleep(RETRY).await;
                    events = Box::pin(docker.image_events());
                }
            }
        }
        match docker.images().await {
            Ok(images) => {
                if throttle.clear() {
                    tracing::info!(engine = %docker.endpoint(), "Docker engine answers again");
                }
                info.send_if_modified(|info| {
                    let changed = info.images != images;
                    if changed {
                        info.images = images;
                    }
                    changed
                });
            }
            Err(e) => {
                let line = e.to_string();
                if throttle.should_log(&line) {
                    tracing::warn!("{line}");
                }
            }
        }
    }
}

/// Wakes the task runner on every event of node `node_id`'s containers that may change a task's
/// state, and once on every (re)subscription, since events may have been missed in between.
pub(crate) async fn watch_events(docker: DockerRuntime, node_id: String, wake: Arc<Notify>) {
    let mut throttle = Throttle::default();
    loop {
        let mut events = std::pin::pin!(docker.container_events(&node_id));
        wake.notify_one();
        while let Some(event) = events.next().await {
            match event {
                Ok(action) => {
                    // `health_status: healthy` and the like: the task's health changed.
                    if EVENTS.contains(&action.as_str()) || action.starts_with("health_status") {
                        tracing::debug!(%action, "container event");
                        wake.notify_one();
                    }
                    throttle.clear();
                }
                Err(e) => {
                    let line = e.to_string();
                    if throttle.should_log(&line) {
                        tracing::warn!("{line}; watching containers by polling until it is back");
                    }
                    break;
                }
            }
        }
        sleep(RETRY).await;
    }
}
