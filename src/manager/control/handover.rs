//! Compose's recreate with an update policy (`Container::handover`): when a container whose stop
//! was deferred may stop. The orchestrator owns that decision, so a new leader carries it on from
//! the store; it only ever sets the container's `replicas` to 0 (and clears the handover), and
//! the usual path stops its task: out of the proxies first, then after its drain delay. Pure.

use crate::model::{Service, HANDOVER_MAX_MS, HANDOVER_ORPHAN_MS, HANDOVER_TIMEOUT_MS};
use crate::objects::View;

/// What becomes of a container handing over, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not handing over.
    None,
    /// Keep serving; decide again by this time at the latest.
    Wait { until_ms: u64 },
    /// Stop it: its successor serves (`handed_over`), or a bound ran out (`why`).
    Stop { handed_over: bool, why: String },
}

/// The decision for `service` in `state` at `now_ms`.
pub fn decide(service: &Service, state: &View, now_ms: u64) -> Decision {
    let Some(handover) = service.container.as_ref().and_then(|c| c.handover.as_ref()) else {
        return Decision::None;
    };
    if service.replicas == 0 {
        return Decision::None;
    }
    let successor = state
        .service_by_name(&handover.name)
        .map(|s| &s.value)
        .filter(|s| s.succeeds(service));
    let started_ms = successor.and_then(|next| {
        state
            .tasks_of_service(&next.id)
            .map(|t| t.value.created_ms)
            .min()
    });
    let deadline = match (successor, started_ms) {
        (None, _) => handover.since_ms.saturating_add(HANDOVER_ORPHAN_MS),
        (Some(_), None) => handover.since_ms.saturating_add(HANDOVER_MAX_MS),
        (Some(_), Some(at)) => at
            .max(handover.since_ms)
            .saturating_add(HANDOVER_TIMEOUT_MS)
            .min(handover.since_ms.saturating_add(HANDOVER_MAX_MS)),
    };
    let Some(next) = successor else {
        return match now_ms >= deadline {
            true => Decision::Stop {
                handed_over: false,
                why: format!(
                    "no successor named {} within {} s: an ordinary stop",
                    handover.name,
                    HANDOVER_ORPHAN_MS / 1000
                ),
            },
            false => Decision::Wait { until_ms: deadline },
        };
    };
    if state.tasks_of_service(&next.id).any(|t| t.value.serves()) {
        return Decision::Stop {
            handed_over: true,
            why: format!("handed over to {}", next.name),
        };
    }
    match now_ms >= deadline {
        true => Decision::Stop {
            handed_over: false,
            why: format!(
                "its successor {} did not serve in time ({} s after its start, {} s in all): \
                 stopped without it",
                next.name,
                HANDOVER_TIMEOUT_MS / 1000,
                HANDOVER_MAX_MS / 1000
            ),
        },
        false => Decision::Wait { until_ms: deadline },
    }
}

/// The container stopped: `replicas` 0, handover over.
pub fn stopped(service: &Service) -> Service {
    let mut service = service.clone();
    service.replicas = 0;
    if let Some(c) = service.container.as_mut() {
        c.handover = None;
    }
    service
}
