//! Restart policies in the Docker CLI's spelling (`no`, `always`, `on-failure[:N]`) and their mapping
//! onto Docker's own.

use std::fmt;
use std::str::FromStr;

use bollard::models::RestartPolicyNameEnum;

use super::error::RuntimeError;

/// Docker's restart policy, in the CLI's spelling: `no`, `always`, `on-failure`, `on-failure:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    OnFailure {
        max_retries: Option<u32>,
    },
}

impl FromStr for RestartPolicy {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, RuntimeError> {
        match s.split_once(':') {
            None if s == "no" => Ok(RestartPolicy::No),
            None if s == "always" => Ok(RestartPolicy::Always),
            None if s == "on-failure" => Ok(RestartPolicy::OnFailure { max_retries: None }),
            Some(("on-failure", n)) => match n.parse() {
                Ok(n) => Ok(RestartPolicy::OnFailure {
                    max_retries: Some(n),
                }),
                Err(_) => Err(RuntimeError::InvalidSpec(format!(
                    "restart policy {s:?}: {n:?} is not a retry count"
                ))),
            },
            _ => Err(RuntimeError::InvalidSpec(format!(
                "restart policy {s:?}: expected no, always, on-failure or on-failure:N"
            ))),
        }
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::OnFailure { max_retries: None } => f.write_str("on-failure"),
            RestartPolicy::OnFailure {
                max_retries: Some(n),
            } => write!(f, "on-failure:{n}"),
        }
    }
}

impl RestartPolicy {
    pub(crate) fn to_docker(self) -> bollard::models::RestartPolicy {
        let (name, maximum_retry_count) = match self {
            RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
            RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
            RestartPolicy::OnFailure { max_retries } => (
                RestartPolicyNameEnum::ON_FAILURE,
                max_retries.map(i64::from),
            ),
        };
        bollard::models::RestartPolicy {
            name: Some(name),
            maximum_retry_count,
        }
    }
}
