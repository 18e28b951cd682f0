//! Image: with no registry to pull from, a task goes only to nodes whose engine has its image.
//! References are compared as Docker names them (`whoami` is `whoami:latest`); a digest or an
//! image id cannot be checked against tags and passes.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Image;

impl Filter for Image {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        let Some(want) = &req.image else {
            return;
        };
        if !node.engine_images.contains(want) {
            broken.push(format!("image {want} present"));
        }
    }

    fn reads_placements(&self) -> bool {
        false
    }
}

/// `repo` → `repo:latest`; `docker.io/library/x:1` → `x:1`.
pub(crate) fn normalize(reference: &str) -> String {
    let r = reference
        .strip_prefix("docker.io/")
        .unwrap_or(reference)
        .strip_prefix("library/")
        .unwrap_or_else(|| reference.strip_prefix("docker.io/").unwrap_or(reference));
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') {
        r.to_string()
    } else {
        format!("{r}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;

    #[test]
    fn nodes_without_the_image_are_rejected() {
        let mut svc = service("web");
        svc.image = "shoal/whoami".into();
        let req = request(&svc);
        let mut n = node(1, &[]);
        n.images = vec!["shoal/whoami:latest".into()];
        assert!(broken(&Image, &req, &info(&n, vec![])).is_empty());
        n.images = vec!["shoal/whoami:1".into()];
        assert_eq!(
            broken(&Image, &req, &info(&n, vec![])),
            ["image shoal/whoami:latest present"]
        );
        svc.image = "shoal/whoami@sha256:abc".into();
        assert!(broken(&Image, &request(&svc), &info(&n, vec![])).is_empty());
    }

    #[test]
    fn references_normalize_as_docker_names_them() {
        assert_eq!(normalize("nginx"), "nginx:latest");
        assert_eq!(normalize("docker.io/library/nginx:1"), "nginx:1");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(normalize("localhost:5000/app:2"), "localhost:5000/app:2");
    }
}
