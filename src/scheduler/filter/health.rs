//! Health: only READY nodes an operator has not drained take new tasks.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Health;

impl Filter for Health {
    fn check(&self, _req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        if !node.node.is_schedulable() {
            broken.push("health (ready and active)".to_string());
        }
    }

    fn reads_placements(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;
    use crate::model::{Availability, NodeStatus};

    #[test]
    fn down_or_drained_nodes_are_rejected() {
        let req = request(&service("web"));
        let mut n = node(1, &[]);
        assert!(broken(&Health, &req, &info(&n, vec![])).is_empty());
        n.status = NodeStatus::Down;
        assert_eq!(
            broken(&Health, &req, &info(&n, vec![])),
            ["health (ready and active)"]
        );
        n.status = NodeStatus::Ready;
        n.availability = Availability::Drain;
        assert_eq!(broken(&Health, &req, &info(&n, vec![])).len(), 1);
    }
}
