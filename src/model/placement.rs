//! Classic Swarm's placement hints, read out of a container spec: `-e constraint:EXPR`,
//! `-e affinity:EXPR`, `-e reschedule:on-node-failure` and the labels `com.docker.swarm.*`.
//! Only extraction lives here; the scheduler parses and validates the expressions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

pub const CONSTRAINTS_LABEL: &str = "com.docker.swarm.constraints";
pub const AFFINITIES_LABEL: &str = "com.docker.swarm.affinities";
pub const RESCHEDULE_LABEL: &str = "com.docker.swarm.reschedule-policies";

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Placement {
    pub constraints: Vec<String>,
    pub affinities: Vec<String>,
    pub reschedule_on_node_failure: bool,
}

impl Placement {
    /// Splits the placement entries out of `env` (returning the rest, in order) and adds those
    /// of the labels, whose values are JSON arrays of strings.
    pub fn extract(
        env: Vec<String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<(Placement, Vec<String>), ModelError> {
        let mut placement = Placement::default();
        let mut rest = Vec::with_capacity(env.len());
        for entry in env {
            if let Some(expr) = entry.strip_prefix("constraint:") {
                placement.constraints.push(expr.to_string());
            } else if let Some(expr) = entry.strip_prefix("affinity:") {
                placement.affinities.push(expr.to_string());
            } else if let Some(policy) = entry.strip_prefix("reschedule:") {
                placement.set_reschedule(policy)?;
            } else {
                rest.push(entry);
            }
        }
        placement
            .constraints
            .extend(json_list(labels, CONSTRAINTS_LABEL)?);
        placement
            .affinities
            .extend(json_list(labels, AFFINITIES_LABEL)?);
        for policy in json_list(labels, RESCHEDULE_LABEL)? {
            placement.set_reschedule(&policy)?;
        }
        Ok((placement, rest))
    }

    fn set_reschedule(&mut self, policy: &str) -> Result<(), ModelError> {
        self.reschedule_on_node_failure = match policy {
            "on-node-failure" => true,
            "off" => false,
            other => return Err(ModelError::ReschedulePolicy(other.to_string())),
        };
        Ok(())
    }
}

fn json_list(labels: &BTreeMap<String, String>, label: &str) -> Result<Vec<String>, ModelError> {
    let Some(value) = labels.get(label) else {
        return Ok(Vec::new());
    };
    serde_json::from_str(value).map_err(|e| ModelError::PlacementLabel {
        label: label.to_string(),
        reason: format!("expected a JSON array of strings, got {value:?} ({e})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_labels_are_both_read() {
        let env = vec![
            "A=1".to_string(),
            "constraint:storage==ssd".to_string(),
            "affinity:container!=web".to_string(),
            "reschedule:on-node-failure".to_string(),
            "B=2".to_string(),
        ];
        let labels = BTreeMap::from([
            (
                CONSTRAINTS_LABEL.to_string(),
                r#"["node!=node-2"]"#.to_string(),
            ),
            (
                AFFINITIES_LABEL.to_string(),
                r#"["image==~redis"]"#.to_string(),
            ),
        ]);
        let (p, rest) = Placement::extract(env, &labels).unwrap();
        assert_eq!(rest, vec!["A=1", "B=2"]);
        assert_eq!(p.constraints, vec!["storage==ssd", "node!=node-2"]);
        assert_eq!(p.affinities, vec!["container!=web", "image==~redis"]);
        assert!(p.reschedule_on_node_failure);
    }

    #[test]
    fn malformed_labels_and_policies_are_clear_errors() {
        let labels = BTreeMap::from([(CONSTRAINTS_LABEL.to_string(), "storage==ssd".to_string())]);
        let err = Placement::extract(vec![], &labels).unwrap_err();
        assert!(err.to_string().contains(CONSTRAINTS_LABEL), "{err}");
        let err = Placement::extract(vec!["reschedule:sometimes".into()], &BTreeMap::new());
        assert_eq!(err, Err(ModelError::ReschedulePolicy("sometimes".into())));
    }
}
