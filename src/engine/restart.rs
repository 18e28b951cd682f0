//! The model's restart policy (`always`, `on-failure[:N]`, `no`) in Docker's terms: the engine restarts
//! a task's container in place, and the agent reports an exit only once Docker has given up on it.

use bollard::models::RestartPolicyNameEnum;

use crate::model::RestartPolicy;

pub(crate) fn to_docker(policy: RestartPolicy) -> bollard::models::RestartPolicy {
    let (name, maximum_retry_count) = match policy {
        RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
        RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
        RestartPolicy::OnFailure { max } => (RestartPolicyNameEnum::ON_FAILURE, max.map(i64::from)),
    };
    bollard::models::RestartPolicy {
        name: Some(name),
        maximum_retry_count,
    }
}
