//! Moving: a task that moves its slot off a node for a rebalance never goes back to that node.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Moving;

impl Filter for Moving {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        if req.moves_from.as_deref() == Some(node.node.id.as_str()) {
            broken.push("rebalance (a node other than the one it leaves)".to_string());
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

    #[test]
    fn a_moving_task_never_returns_to_the_node_it_leaves() {
        let (n1, n2) = (node(1, &[]), node(2, &[]));
        let mut req = request(&service("web"));
        assert!(broken(&Moving, &req, &info(&n1, vec![])).is_empty());
        req.moves_from = Some(n1.id.clone());
        assert_eq!(
            broken(&Moving, &req, &info(&n1, vec![])),
            ["rebalance (a node other than the one it leaves)"]
        );
        assert!(broken(&Moving, &req, &info(&n2, vec![])).is_empty());
    }
}
