//! Dependency: a task that names other containers (`--link`, `--volumes-from`,
//! `--net container:NAME`) goes where all of them already are.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Dependency;

impl Filter for Dependency {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        for dep in &req.dependencies {
            if !node.held.names.contains_key(dep) {
                broken.push(format!("dependency {dep} present"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;

    #[test]
    fn dependencies_must_be_on_the_node() {
        let (db, data) = (service("db"), service("data"));
        let mut app = service("app");
        app.links = vec!["db:database".into()];
        app.volumes_from = vec!["data:ro".into()];
        let n = node(1, &[]);
        let req = request(&app);
        let both = info(&n, vec![placed(&db, 1), placed(&data, 1)]);
        assert!(broken(&Dependency, &req, &both).is_empty());
        let only_db = info(&n, vec![placed(&db, 1)]);
        assert_eq!(
            broken(&Dependency, &req, &only_db),
            ["dependency data present"]
        );
        let mut net = service("sidecar");
        net.network_mode = Some("container:db.1".into());
        assert!(
            broken(&Dependency, &request(&net), &only_db).is_empty(),
            "by task name"
        );
        assert!(broken(&Dependency, &request(&db), &info(&n, vec![])).is_empty());
    }
}
