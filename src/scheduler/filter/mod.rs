//! Classic Swarm's filters, one module each behind one trait. A node takes a task when no
//! filter finds a rule it breaks; among those, soft preferences narrow the choice when some
//! node meets them. When no node fits, the reason counts, per rule, the nodes that meet it.

mod affinity;
mod constraint;
mod dependency;
mod health;
mod image;
pub(crate) use image::normalize as normalize_image;
mod moving;
mod port;
mod resources;
mod slots;

use super::view::{NodeInfo, Request};
use super::NO_SUITABLE_NODE;

pub(crate) trait Filter {
    /// Pushes each rule `node` breaks for `req`, worded as the condition it fails
    /// ("constraint storage==ssd") and identical for every node that breaks it.
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>);

    /// How many of the request's soft preferences (`==~`, `!=~`) `node` meets.
    fn preference(&self, _req: &Request, _node: &NodeInfo) -> usize {
        0
    }

    /// Whether placing a task on a node can change this filter's answer for that node (false
    /// for rules on the node's own attributes).
    fn reads_placements(&self) -> bool {
        true
    }
}

const FILTERS: [&dyn Filter; 9] = [
    &health::Health,
    &moving::Moving,
    &image::Image,
    &port::Port,
    &slots::ContainerSlots,
    &dependency::Dependency,
    &affinity::Affinity,
    &constraint::Constraint,
    &resources::Resources,
];

/// The indices of the nodes `req` may go to: all that pass every filter, narrowed to those that
/// meet the most soft preferences (none met: preferences are ignored). Err: why none fits.
pub(crate) fn candidates(req: &Request, nodes: &[NodeInfo]) -> Result<Vec<usize>, String> {
    if nodes.is_empty() {
        return Err(format!("{NO_SUITABLE_NODE}: the cluster has no nodes"));
    }
    let mut passing = Vec::new();
    // Each broken rule with the number of nodes breaking it.
    let mut rules: Vec<(String, usize)> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let mut broken = Vec::new();
        for filter in FILTERS {
            filter.check(req, node, &mut broken);
        }
        if broken.is_empty() {
            passing.push(i);
        }
        broken.dedup();
        for rule in broken {
            match rules.iter_mut().find(|(r, _)| *r == rule) {
                Some((_, n)) => *n += 1,
                None => rules.push((rule, 1)),
            }
        }
    }
    if passing.is_empty() {
        // The most restrictive rules first: they are what an operator must change.
        rules.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let total = nodes.len();
        let detail: Vec<String> = rules
            .iter()
            .map(|(rule, n)| format!("{rule}: {} of {total} nodes match", total - n))
            .collect();
        return Err(format!("{NO_SUITABLE_NODE}: {}", detail.join("; ")));
    }
    let score =
        |i: &usize| -> usize { FILTERS.iter().map(|f| f.preference(req, &nodes[*i])).sum() };
    let best = passing.iter().map(score).max().unwrap_or(0);
    passing.retain(|i| score(i) == best);
    Ok(passing)
}

/// Whether `req` may go to `node` for what the node is (its health, engine images and
/// attributes), whatever runs on it.
pub(crate) fn admits(req: &Request, node: &NodeInfo) -> bool {
    let mut broken = Vec::new();
    FILTERS.iter().filter(|f| !f.reads_placements()).all(|f| {
        f.check(req, node, &mut broken);
        broken.is_empty()
    })
}

/// Whether `node`, which passed every filter for `req`, still does after a placement on it.
pub(crate) fn still_passes(req: &Request, node: &NodeInfo) -> bool {
    let mut broken = Vec::new();
    FILTERS.iter().filter(|f| f.reads_placements()).all(|f| {
        f.check(req, node, &mut broken);
        broken.is_empty()
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn reason_counts_matching_nodes_per_rule() {
        let (n1, n2) = (node(1, &[("storage", "ssd")]), node(2, &[]));
        let mut svc = service("db");
        svc.constraints = vec!["storage==ssd".into(), "region==eu".into()];
        let nodes = [info(&n1, vec![]), info(&n2, vec![])];
        let err = candidates(&request(&svc), &nodes).unwrap_err();
        assert_eq!(
            err,
            "no suitable node: constraint region==eu: 0 of 2 nodes match; \
             constraint storage==ssd: 1 of 2 nodes match"
        );
        assert_eq!(
            candidates(&request(&svc), &[]).unwrap_err(),
            "no suitable node: the cluster has no nodes"
        );
    }

    #[test]
    fn soft_preferences_narrow_only_when_met() {
        let (n1, n2) = (node(1, &[("storage", "ssd")]), node(2, &[]));
        let nodes = [info(&n1, vec![]), info(&n2, vec![])];
        let mut svc = service("db");
        svc.constraints = vec!["storage==~ssd".into()];
        assert_eq!(candidates(&request(&svc), &nodes), Ok(vec![0]));
        svc.constraints = vec!["storage==~nvme".into()];
        assert_eq!(candidates(&request(&svc), &nodes), Ok(vec![0, 1]));
    }
}
