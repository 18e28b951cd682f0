//! Affinity: place next to (`==`) or away from (`!=`) other tasks, by container name
//! (`container==web`), image (`image==redis`, also matching images already on the node) or any
//! other key as a task label. Soft forms (`==~`) are preferences.

use super::super::expr::Expr;
use super::super::view::{untagged, NodeInfo, Request};
use super::Filter;

pub(crate) struct Affinity;

impl Filter for Affinity {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        for expr in req.affinities.iter().filter(|e| !e.soft) {
            if !holds(expr, node) {
                broken.push(format!("affinity {expr}"));
            }
        }
    }

    fn preference(&self, req: &Request, node: &NodeInfo) -> usize {
        req.affinities
            .iter()
            .filter(|e| e.soft && holds(e, node))
            .count()
    }
}

fn holds(expr: &Expr, node: &NodeInfo) -> bool {
    match expr.key.as_str() {
        "container" => expr.holds_in(
            |name| node.held.names.contains_key(name),
            || node.held.names.keys().map(String::as_str),
        ),
        "image" => {
            let engine = || {
                let images = node.node.images.iter().map(String::as_str);
                images.flat_map(|i| [i, untagged(i)])
            };
            expr.holds_in(
                |image| node.held.images.contains_key(image) || engine().any(|i| i == image),
                || node.held.images.keys().map(String::as_str).chain(engine()),
            )
        }
        label => {
            let values = node.held.labels.get(label);
            expr.holds_in(
                |value| values.is_some_and(|v| v.contains_key(value)),
                || {
                    values
                        .into_iter()
                        .flat_map(|v| v.keys().map(String::as_str))
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;

    fn with(affinity: &str) -> crate::model::Service {
        let mut svc = service("app");
        svc.affinities = vec![affinity.into()];
        svc
    }

    #[test]
    fn container_image_and_label_affinities() {
        let mut web = service("web");
        web.image = "nginx:1.27".into();
        web.labels.insert("tier".into(), "front".into());
        let mut n = node(1, &[]);
        n.images = vec!["registry:5000/redis:7".into()];
        let with_web = info(&n, vec![placed(&web, 1)]);
        let empty = info(&n, vec![]);
        for yes in [
            "container==web",
            "container==web.*",
            "image==nginx",
            "image==registry:5000/redis",
            "tier==front",
            "container!=db",
        ] {
            assert!(
                broken(&Affinity, &request(&with(yes)), &with_web).is_empty(),
                "{yes}"
            );
        }
        for no in [
            "container==db",
            "image==postgres",
            "tier==back",
            "container!=web",
        ] {
            assert_eq!(
                broken(&Affinity, &request(&with(no)), &with_web),
                [format!("affinity {no}")]
            );
        }
        assert_eq!(
            broken(&Affinity, &request(&with("container==web")), &empty).len(),
            1
        );
        assert!(broken(&Affinity, &request(&with("container!=web")), &empty).is_empty());
    }

    #[test]
    fn soft_affinities_only_score() {
        let web = service("web");
        let n = node(1, &[]);
        let req = request(&with("container==~web"));
        let with_web = info(&n, vec![placed(&web, 1)]);
        assert!(broken(&Affinity, &req, &info(&n, vec![])).is_empty());
        assert_eq!(Affinity.preference(&req, &with_web), 1);
        assert_eq!(Affinity.preference(&req, &info(&n, vec![])), 0);
    }
}
