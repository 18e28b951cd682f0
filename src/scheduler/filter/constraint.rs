//! Constraint: node attributes against the service's expressions. `node` matches the node's id
//! or name; any other key is a node label (`Node::placement_label`: `node.labels.K` the
//! operator's only, `engine.labels.K` the agent's only, a bare `K` either, engine attributes
//! such as `storagedriver`, `operatingsystem`, `kernelversion` among the agent's). A missing
//! label satisfies only `!=`.

use super::super::expr::Expr;
use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Constraint;

impl Filter for Constraint {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        for expr in req.constraints.iter().filter(|e| !e.soft) {
            if !holds(expr, node) {
                broken.push(format!("constraint {expr}"));
            }
        }
    }

    fn preference(&self, req: &Request, node: &NodeInfo) -> usize {
        req.constraints
            .iter()
            .filter(|e| e.soft && holds(e, node))
            .count()
    }

    fn reads_placements(&self) -> bool {
        false
    }
}

fn holds(expr: &Expr, node: &NodeInfo) -> bool {
    let n = node.node;
    match expr.key.as_str() {
        "node" => expr.holds([n.id.as_str(), n.name.as_str()]),
        label => expr.holds(n.placement_label(label)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;

    fn with(constraints: &[&str]) -> crate::model::Service {
        let mut svc = service("app");
        svc.constraints = constraints.iter().map(|c| c.to_string()).collect();
        svc
    }

    #[test]
    fn node_names_labels_and_engine_attributes() {
        let n = node(
            1,
            &[("storage", "ssd"), ("kernelversion", "6.1.0-18-amd64")],
        );
        let n = info(&n, vec![]);
        for yes in [
            "node==node-1",
            "node==n1",
            "node!=node-2",
            "storage==ssd",
            "storage==s*",
            "kernelversion==/^6\\./",
            "region!=eu",
        ] {
            assert!(
                broken(&Constraint, &request(&with(&[yes])), &n).is_empty(),
                "{yes}"
            );
        }
        for no in [
            "node==node-2",
            "storage!=ssd",
            "region==eu",
            "kernelversion==5.*",
        ] {
            assert_eq!(
                broken(&Constraint, &request(&with(&[no])), &n),
                [format!("constraint {no}")]
            );
        }
        let req = request(&with(&["storage==ssd", "region==eu", "node==node-2"]));
        assert_eq!(broken(&Constraint, &req, &n).len(), 2);
    }

    #[test]
    fn soft_constraints_only_score() {
        let n = node(1, &[("storage", "ssd")]);
        let req = request(&with(&["storage==~hdd", "node!=~node-2"]));
        assert!(broken(&Constraint, &req, &info(&n, vec![])).is_empty());
        assert_eq!(Constraint.preference(&req, &info(&n, vec![])), 1);
    }
}
