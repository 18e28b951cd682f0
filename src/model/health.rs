//! Container health: a service's health check (Docker's `HEALTHCHECK`, as `--health-*` flags
//! set it) and the health an agent observes on a task's container. The check runs in the
//! engine; shoal only carries its settings there and the result back, to gate routing and to
//! replace unhealthy tasks.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ModelError;

/// Docker's `State.Health.Status` of a container that has a health check (one without has no
/// health at all: `Option<Health>` is None).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not yet passed a check (the start period, or no probe answered yet).
    Starting,
    Healthy,
    /// Failed `retries` checks in a row: the orchestrator treats the task as failed.
    Unhealthy,
}

impl Health {
    /// Docker's spelling (`none` is no health check at all).
    pub fn parse_docker(status: &str) -> Option<Health> {
        match status {
            "starting" => Some(Health::Starting),
            "healthy" => Some(Health::Healthy),
            "unhealthy" => Some(Health::Unhealthy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
        }
    }

    /// Whether a task with this health (None: it has no check) may receive traffic.
    pub fn serves(health: Option<Health>) -> bool {
        matches!(health, None | Some(Health::Healthy))
    }
}

/// A service's health check, as Docker's `HealthConfig`: a field left at its zero value keeps
/// the image's own `HEALTHCHECK` setting (the engine merges them).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `[]` the image's test; `["NONE"]` no check; `["CMD", prog, args...]`; `["CMD-SHELL", cmd]`.
    #[serde(default)]
    pub test: Vec<String>,
    #[serde(default)]
    pub interval_ms: u64,
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default)]
    pub start_period_ms: u64,
    /// Failures in a row before the container is unhealthy; 0 keeps the image's (Docker: 3).
    #[serde(default)]
    pub retries: u32,
}

/// Docker refuses health-check durations under 1 ms (other than 0, "inherit").
const MIN_NS: u64 = 1_000_000;

impl HealthCheck {
    /// Whether `test` is one of Docker's forms.
    pub fn validate(&self) -> Result<(), ModelError> {
        check_test(&self.test)
    }

    /// Checks a Docker API create body's `Healthcheck` as the engine would, so that a bad one
    /// is a 400 at create rather than a task the engine rejects later.
    pub fn check_docker(value: &Value) -> Result<(), ModelError> {
        let bad = |reason: String| Err(ModelError::HealthCheck(reason));
        let map = match value {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            _ => return bad("Healthcheck must be a JSON object".into()),
        };
        match map.get("Test") {
            None | Some(Value::Null) => {}
            Some(Value::Array(words)) => {
                let words: Option<Vec<String>> =
                    words.iter().map(|w| w.as_str().map(String::from)).collect();
                match words {
                    Some(words) => check_test(&words)?,
                    None => return bad("Healthcheck.Test must be an array of strings".into()),
                }
            }
            Some(_) => return bad("Healthcheck.Test must be an array of strings".into()),
        }
        for key in ["Interval", "Timeout", "StartPeriod", "StartInterval"] {
            match map.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_i64() {
                    Some(0) => {}
                    Some(ns) if ns < 0 => {
                        return bad(format!("Healthcheck.{key} {ns} is negative"));
                    }
                    Some(ns) if (ns as u64) < MIN_NS => {
                        return bad(format!(
                            "Healthcheck.{key} {ns}ns is under the minimum of 1ms"
                        ));
                    }
                    Some(_) => {}
                    None => return bad(format!("Healthcheck.{key} must be a whole number of ns")),
                },
            }
        }
        match map.get("Retries") {
            None | Some(Value::Null) => Ok(()),
            Some(v) => match v.as_i64() {
                Some(n) if n < 0 => bad(format!("Healthcheck.Retries {n} is negative")),
                Some(n) if n > i64::from(i32::MAX) => {
                    bad(format!("Healthcheck.Retries {n} is too large"))
                }
                Some(_) => Ok(()),
                None => bad("Healthcheck.Retries must be a whole number".into()),
            },
        }
    }
}

fn check_test(test: &[String]) -> Result<(), ModelError> {
    let bad = |reason: &str| Err(ModelError::HealthCheck(reason.to_string()));
    match test.first().map(String::as_str) {
        None => Ok(()),
        Some("NONE") if test.len() == 1 => Ok(()),
        Some("NONE") => bad("a NONE health check takes no arguments"),
        Some("CMD") if test.len() >= 2 && !test[1].is_empty() => Ok(()),
        Some("CMD") => bad("a CMD health check needs a program to run"),
        Some("CMD-SHELL") if test.len() == 2 && !test[1].trim().is_empty() => Ok(()),
        Some("CMD-SHELL") => bad("a CMD-SHELL health check takes one command line"),
        Some(other) => Err(ModelError::HealthCheck(format!(
            "health check test starts with {other:?}: expected NONE, CMD or CMD-SHELL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn docker_spellings_and_serving() {
        assert_eq!(Health::parse_docker("healthy"), Some(Health::Healthy));
        assert_eq!(Health::parse_docker("none"), None);
        assert_eq!(
            serde_json::to_string(&Health::Unhealthy).unwrap(),
            "\"unhealthy\""
        );
        assert!(Health::serves(None) && Health::serves(Some(Health::Healthy)));
        assert!(!Health::serves(Some(Health::Starting)));
        assert!(!Health::serves(Some(Health::Unhealthy)));
    }

    #[test]
    fn a_check_round_trips_and_dockers_passes() {
        let check = HealthCheck {
            test: vec!["CMD".into(), "/whoami".into(), "check".into()],
            interval_ms: 500,
            timeout_ms: 2_000,
            start_period_ms: 0,
            retries: 2,
        };
        check.validate().unwrap();
        let json = serde_json::to_value(&check).unwrap();
        assert_eq!(json["interval_ms"], 500);
        assert_eq!(serde_json::from_value::<HealthCheck>(json).unwrap(), check);
        let docker = json!({"Test": check.test, "Interval": 500_000_000u64, "Retries": 2});
        HealthCheck::check_docker(&docker).unwrap();
    }

    #[test]
    fn bad_tests_and_docker_bodies_are_refused() {
        for test in [
            vec!["CMD"],
            vec!["CMD-SHELL"],
            vec!["CMD-SHELL", " "],
            vec!["NONE", "x"],
            vec!["RUN", "x"],
        ] {
            let check = HealthCheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert!(check.validate().is_err(), "{test:?}");
        }
        let err = |v: Value| HealthCheck::check_docker(&v).unwrap_err().to_string();
        assert!(err(json!({"Interval": -1})).contains("Interval -1 is negative"));
        assert!(err(json!({"Timeout": 5})).contains("under the minimum"));
        assert!(err(json!({"Retries": -2})).contains("Retries -2"));
        assert!(err(json!({"Test": "CMD true"})).contains("array of strings"));
        assert!(err(json!({"Test": ["CMD"]})).contains("needs a program"));
        assert!(err(json!({"Interval": "1s"})).contains("whole number"));
        assert!(err(json!("x")).contains("JSON object"));
        HealthCheck::check_docker(&json!(null)).unwrap();
        HealthCheck::check_docker(&json!({"Test": ["NONE"]})).unwrap();
        HealthCheck::check_docker(&json!({"Test": [], "Interval": 0, "Retries": 0})).unwrap();
    }
}
