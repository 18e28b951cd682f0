//! Port: a host port (and protocol) can be published once per node; tasks assigned in the same
//! batch count, so two replicas asking for the same host port never share a node.

use super::super::view::{NodeInfo, Request};
use super::Filter;

pub(crate) struct Port;

impl Filter for Port {
    fn check(&self, req: &Request, node: &NodeInfo, broken: &mut Vec<String>) {
        for &(port, protocol) in &req.host_ports {
            if node.held.host_ports.contains_key(&(port, protocol)) {
                broken.push(format!("host port {port}/{protocol} free"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::testutil::*;
    use super::*;
    use crate::model::{PortSpec, Protocol};

    fn with_port(name: &str, host_port: Option<u16>, protocol: Protocol) -> crate::model::Service {
        let mut svc = service(name);
        svc.ports = vec![PortSpec {
            container_port: 80,
            protocol,
            host_port,
        }];
        svc
    }

    #[test]
    fn a_used_host_port_rejects_the_node() {
        let n = node(1, &[]);
        let web = with_port("web", Some(8080), Protocol::Tcp);
        let busy = info(&n, vec![placed(&web, 1)]);
        assert_eq!(
            broken(&Port, &request(&web), &busy),
            ["host port 8080/tcp free"]
        );
        let udp = with_port("dns", Some(8080), Protocol::Udp);
        assert!(
            broken(&Port, &request(&udp), &busy).is_empty(),
            "other protocol"
        );
        let other = with_port("api", Some(9090), Protocol::Tcp);
        assert!(broken(&Port, &request(&other), &busy).is_empty());
        let ephemeral = with_port("eph", None, Protocol::Tcp);
        assert!(broken(&Port, &request(&ephemeral), &busy).is_empty());
    }
}
