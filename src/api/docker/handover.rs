//! Compose's recreate with an update policy, the API's half. `docker-compose up -d` with a
//! changed image recreates each container itself: stop the old one, rename it, create and start
//! its successor under the old name, remove the old one. With `shoal.update.*` labels on the
//! compose service, a stop is a handover instead: answered at once while the container keeps
//! serving (`Container::handover`), and stopped by the leader's orchestrator once its successor
//! serves (`manager/control/handover.rs`). Compose recreates every container in parallel: the
//! start of a successor waits for its turn (at most `parallelism` containers of the compose
//! service handing over to a started successor or stopping at once, `delay` after a turn frees),
//! so they go a few at a time, every old container serving until its own successor serves; `rm`
//! of a container handing over waits until it has stopped. A stop that no successor follows
//! (`docker-compose down`: `rm` comes next) is carried out at once by `rm`, or after
//! `HANDOVER_ORPHAN_MS`. Every wait is bounded, and falls back with a warning.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::DockerError;
use super::view::View;
use super::Api;
use crate::host::now_ms;
use crate::model::{
    compose_service, Handover, HandoverPolicy, Service, HANDOVER_TIMEOUT_MS, MAX_POLICY_MS,
    UPDATE_LABELS,
};

/// Containers of the compose service handing over at a time; 0 is all at once.
pub(crate) const PARALLELISM: &str = UPDATE_LABELS[0];
/// Wait between one handover ending and the next stop going on (`2s`, `500ms`).
pub(crate) const DELAY: &str = UPDATE_LABELS[1];
/// `start-first`, the only order (compose without a policy recreates stop-first).
pub(crate) const ORDER: &str = UPDATE_LABELS[2];

/// The longest a successor's start waits for its turn: then it starts anyway. With the start's
/// own work, below compose's HTTP timeout (60 s).
const TURN_TIMEOUT: Duration = Duration::from_secs(40);
/// The longest `rm` waits for a container handing over to stop (its successor to serve, its
/// drain delay): then it stops it at once.
const REMOVE_WAIT: Duration = Duration::from_millis(HANDOVER_TIMEOUT_MS + 5_000);

/// One manager's starts check and take turns one at a time, so that two never take the last
/// free turn together.
static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The handover policy a create body's labels carry: None without `shoal.update.*` labels. An
/// unknown `shoal.` label, a bad value, or a policy on a container that no compose service
/// owns (no `com.docker.compose.project`/`.service`/`.container-number` labels) is a 400.
pub(crate) fn policy(
    labels: &BTreeMap<String, String>,
) -> Result<Option<HandoverPolicy>, DockerError> {
    let bad = |why: String| Err(DockerError::BadRequest(why));
    if let Some(key) = labels
        .keys()
        .find(|k| k.starts_with("shoal.") && !UPDATE_LABELS.contains(&k.as_str()))
    {
        return bad(format!(
            "label {key} is reserved for shoal (a container may carry {})",
            UPDATE_LABELS.join(", ")
        ));
    }
    if !UPDATE_LABELS.iter().any(|k| labels.contains_key(*k)) {
        return Ok(None);
    }
    if compose_service(labels).is_none() || !labels.contains_key(crate::model::COMPOSE_NUMBER) {
        return bad(format!(
            "labels {}: an update policy applies to a compose service's containers \
             (com.docker.compose.project, .service and .container-number labels)",
            UPDATE_LABELS.join(", ")
        ));
    }
    let parallelism = match labels.get(PARALLELISM).map(|v| v.trim()) {
        None => 1,
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= 1_000 => n,
            _ => {
                return bad(format!(
                    "label {PARALLELISM}={v:?}: expected a number of containers from 0 \
                     (all at once) to 1000"
                ))
            }
        },
    };
    let delay_ms = match labels.get(DELAY) {
        None => 0,
        Some(v) => match crate::duration::parse(v) {
            Ok(d) if d.as_millis() <= u128::from(MAX_POLICY_MS) => d.as_millis() as u64,
            Ok(_) => return bad(format!("label {DELAY}={v:?}: at most a day")),
            Err(e) => return bad(format!("label {DELAY}={v:?}: {e}")),
        },
    };
    match labels.get(ORDER).map(|v| v.trim()) {
        None | Some("start-first") => {}
        Some("stop-first") => {
            return bad(format!(
                "label {ORDER}=stop-first: a container's successor always starts first \
                 (without shoal.update.* labels compose recreates stop-first)"
            ))
        }
        Some(v) => return bad(format!("label {ORDER}={v:?}: expected start-first")),
    }
    Ok(Some(HandoverPolicy {
        parallelism,
        delay_ms,
    }))
}

/// A stop of the running container `id`: with a handover policy, deferred (true: answered;
/// the orchestrator stops it once its successor serves). False: stop it now, as without one.
pub(crate) async fn defer_stop(api: &Api, id: &str) -> Result<bool, DockerError> {
    let since_ms = now_ms();
    let written = api
        .objects
        .update_service(id, |s| {
            let (name, running) = (s.name.clone(), s.replicas > 0);
            let Some(c) = s.container.as_mut().filter(|_| running) else {
                return Ok(false);
            };
            if c.handover_policy.is_none() || c.handover.is_some() {
                return Ok(false);
            }
            c.handover = Some(Handover { name, since_ms });
            Ok(true)
        })
        .await?;
    let deferred = written
        .container
        .as_ref()
        .is_some_and(|c| c.handover.is_some());
    if deferred {
        tracing::info!(container = %written.name, "stop deferred until its successor serves");
    }
    Ok(deferred)
}

/// The container handing over that `new` succeeds (compose created `new` in its place), if any.
fn predecessor<'v>(view: &'v View, new: &Service) -> Option<&'v Service> {
    compose_service(&new.labels)?;
    view.state.services().map(|s| &s.value).find(|old| {
        old.replicas > 0
            && old
                .container
                .as_ref()
                .and_then(|c| c.handover.as_ref())
                .is_some_and(|h| h.name == new.name)
            && new.succeeds(old)
    })
}

/// How many turns of `old`'s compose service are taken, `old`'s own aside: containers handing
/// over whose successor was started, and containers stopping (a replaced one draining).
fn turns_taken(view: &View, old: &Service) -> u64 {
    let group = compose_service(&old.labels);
    let started = |name: &str| {
        view.state
            .service_by_name(name)
            .is_some_and(|s| s.value.replicas > 0)
    };
    view.state
        .services()
        .map(|s| &s.value)
        .filter(|s| s.id != old.id && s.is_container())
        .filter(|s| compose_service(&s.labels) == group)
        .filter(
            |s| match s.container.as_ref().and_then(|c| c.handover.as_ref()) {
                Some(h) if s.replicas > 0 => started(&h.name),
                _ => {
                    s.replicas == 0
                        && view
                            .state
                            .tasks_of_service(&s.id)
                            .any(|t| !t.value.state.is_terminal())
                }
            },
        )
        .count() as u64
}

/// Before `start` of `id`: if it succeeds a container handing over, waits for a turn of their
/// compose service (fewer than `parallelism` others handing over or stopping; `delay` after one
/// frees) and returns the lock the caller holds until its start is written, so that no two
/// starts take the last turn. None: no turn to wait for, or none within `TURN_TIMEOUT` (then
/// it starts anyway, start-first still, with a warning).
pub(crate) async fn wait_turn(
    api: &Api,
    id: &str,
) -> Result<Option<tokio::sync::MutexGuard<'static, ()>>, DockerError> {
    let deadline = tokio::time::Instant::now() + TURN_TIMEOUT;
    loop {
        let (parallelism, delay_ms) = {
            let turns = TURNS.lock().await;
            let view = api.objects.view().await?;
            let Some(new) = view.state.service(id).map(|s| &s.value) else {
                return Err(DockerError::no_such_container(id));
            };
            let Some(old) = predecessor(&view, new) else {
                return Ok(None);
            };
            let Some(policy) = old.container.as_ref().and_then(|c| c.handover_policy) else {
                return Ok(None);
            };
            if policy.parallelism == 0 || turns_taken(&view, old) < policy.parallelism {
                return Ok(Some(turns));
            }
            (policy.parallelism, policy.delay_ms)
        };
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let turn = api
            .objects
            .wait_for(wait, |v| {
                let new = v.state.service(id).map(|s| &s.value)?;
                match predecessor(v, new) {
                    Some(old) => (turns_taken(v, old) < parallelism).then_some(()),
                    None => Some(()),
                }
            })
            .await?;
        if turn.is_none() {
            tracing::warn!(
                container = %id,
                "handover: no turn within {} s; starting it anyway",
                TURN_TIMEOUT.as_secs()
            );
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
}

/// Before `rm` of a running container with a handover policy: waits until it stopped (handing
/// over, until its successor served and its drain delay passed; stopping after a handover, its
/// drain delay). False: the caller stops it at once; it was not stopped (a plain `rm` of a
/// running container, refused as ever), handing over without a successor (`docker-compose
/// down`, `rm` after `stop`), or still running after `REMOVE_WAIT`.
pub(crate) async fn wait_stopped(api: &Api, id: &str) -> Result<bool, DockerError> {
    let view = api.objects.view().await?;
    let Some(service) = view.state.service(id).map(|s| &s.value) else {
        return Ok(true);
    };
    let handover = service.container.as_ref().and_then(|c| c.handover.as_ref());
    match handover {
        Some(h) if service.replicas > 0 => {
            let successor = view.state.service_by_name(&h.name);
            if !successor.is_some_and(|s| s.value.succeeds(service)) {
                return Ok(false);
            }
        }
        // Stopping: its handover is over.
        _ if service.replicas == 0 => {}
        // Running, never stopped: `rm` refuses it as without a policy.
        _ => return Ok(true),
    }
    let stopped = api
        .objects
        .wait_for(REMOVE_WAIT, |v| {
            let Some(s) = v.state.service(id) else {
                return Some(());
            };
            let tasks: Vec<_> = v.state.tasks_of_service(id).map(|t| &t.value).collect();
            (!super::containers::active(&s.value, &tasks)).then_some(())
        })
        .await?;
    if stopped.is_none() {
        tracing::warn!(
            container = %service.name,
            "handover: still running after {} s; stopping it now",
            REMOVE_WAIT.as_secs()
        );
    }
    Ok(stopped.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut l: BTreeMap<String, String> = [
            ("com.docker.compose.project", "p"),
            ("com.docker.compose.service", "web"),
            ("com.docker.compose.container-number", "1"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        l.retain(|_, v| v != "-");
        l
    }

    fn err(extra: &[(&str, &str)]) -> String {
        match policy(&labels(extra)) {
            Err(DockerError::BadRequest(m)) => m,
            other => panic!("{extra:?}: {other:?}"),
        }
    }

    #[test]
    fn update_labels_become_a_policy() {
        assert_eq!(policy(&labels(&[])).unwrap(), None);
        assert_eq!(
            policy(&labels(&[(ORDER, "start-first")])).unwrap(),
            Some(HandoverPolicy {
                parallelism: 1,
                delay_ms: 0
            })
        );
        assert_eq!(
            policy(&labels(&[(PARALLELISM, "2"), (DELAY, "1500ms")])).unwrap(),
            Some(HandoverPolicy {
                parallelism: 2,
                delay_ms: 1500
            })
        );
        assert_eq!(
            policy(&labels(&[(PARALLELISM, "0")]))
                .unwrap()
                .unwrap()
                .parallelism,
            0
        );
    }

    #[test]
    fn bad_update_labels_are_refused_with_a_reason() {
        for (extra, needle) in [
            (
                vec![(PARALLELISM, "two")],
                "expected a number of containers",
            ),
            (vec![(PARALLELISM, "-1")], "expected a number of containers"),
            (vec![(PARALLELISM, "100000")], "to 1000"),
            (vec![(DELAY, "5")], "shoal.update.delay=\"5\""),
            (vec![(DELAY, "2 days")], "shoal.update.delay"),
            (vec![(DELAY, "48h")], "at most a day"),
            (vec![(ORDER, "stop-first")], "always starts first"),
            (vec![(ORDER, "sideways")], "expected start-first"),
            (vec![("shoal.task", "x")], "reserved for shoal"),
            (vec![("shoal.update.monitor", "5s")], "reserved for shoal"),
            (
                vec![(PARALLELISM, "1"), ("com.docker.compose.project", "-")],
                "a compose service's containers",
            ),
            (
                vec![
                    (PARALLELISM, "1"),
                    ("com.docker.compose.container-number", "-"),
                ],
                "a compose service's containers",
            ),
        ] {
            let m = err(&extra);
            assert!(m.contains(needle), "{extra:?}: {m}");
        }
    }
}
