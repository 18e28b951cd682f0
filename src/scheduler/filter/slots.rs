//! Containerslots: a node labelled `containerslots=N` runs at most N tasks. A label that is not
//! a number is ignored, as in classic Swarm.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct ContainerSlots;

const LABEL: &str = "containerslots";

impl Filter for ContainerSlots {
    fn check(&self, _req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        let slots = node
            .node
            .label(LABEL)
            .and_then(|v| v.trim().parse::<usize>().ok());
        if slots.is_some_and(|n| node.held.tasks >= n) {
            broken.push("containerslots free".to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;

    #[test]
    fn a_full_node_is_rejected() {
        let web = service("web");
        let req = request(&web);
        let n = node(1, &[("containerslots", "2")]);
        assert!(broken(&ContainerSlots, &req, &info(&n, vec![placed(&web, 1)])).is_empty());
        let full = info(&n, vec![placed(&web, 1), placed(&web, 2)]);
        assert_eq!(
            broken(&ContainerSlots, &req, &full),
            ["containerslots free"]
        );
        let unlimited = node(2, &[]);
        let two = || vec![placed(&web, 1), placed(&web, 2)];
        assert!(broken(&ContainerSlots, &req, &info(&unlimited, two())).is_empty());
        let garbage = node(3, &[("containerslots", "many")]);
        assert!(broken(&ContainerSlots, &req, &info(&garbage, two())).is_empty());
    }
}
