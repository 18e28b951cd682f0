//! Resources: a task's CPU and memory reservations must fit in what its node has left after
//! the reservations of the tasks already there (nothing is overcommitted).

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Resources;

impl Filter for Resources {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        let want = req.reservations;
        let used = node.held.reserved;
        if want.nano_cpus > 0 && used.nano_cpus + want.nano_cpus > node.node.nano_cpus() {
            let cpus = want.nano_cpus as f64 / 1e9;
            broken.push(format!("resources: {cpus} CPUs free"));
        }
        if want.memory_bytes > 0 && used.memory_bytes + want.memory_bytes > node.node.memory_bytes {
            broken.push(format!(
                "resources: {} bytes of memory free",
                want.memory_bytes
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;
    use crate::model::Reservations;

    #[test]
    fn reservations_fit_in_what_is_left() {
        // node(): 2 CPUs, 4 GiB.
        let n = node(1, &[]);
        let mut big = service("big");
        big.reservations = Reservations {
            nano_cpus: 1_500_000_000,
            memory_bytes: 3 << 30,
        };
        let req = request(&big);
        assert!(broken(&Resources, &req, &info(&n, vec![])).is_empty());
        let taken = info(&n, vec![placed(&big, 1)]);
        assert_eq!(
            broken(&Resources, &req, &taken),
            [
                "resources: 1.5 CPUs free",
                "resources: 3221225472 bytes of memory free"
            ]
        );
        assert!(
            broken(&Resources, &request(&service("tiny")), &taken).is_empty(),
            "no reservation"
        );
    }
}
