//! What a task's container is: its name, image, command, environment, labels, published ports,
//! restart policy, health check and limits, derived from the task and its service alone (no I/O).

use std::net::IpAddr;

use crate::engine::{ContainerSpec, Owner};
use crate::model::{Service, Task};

/// `<service>.<slot>.<first 8 characters of the task id>`: a replacement in the same slot never
/// collides with the name of the container it replaces, and one task can only ever have one.
pub(crate) fn name(task: &Task, service: &Service) -> String {
    let short = task.id.get(..8).unwrap_or(&task.id);
    format!("{}.{short}", task.name(&service.name))
}

/// The container of `task` on node `node_id`, its ports published on `host_ip` (the node's
/// advertised address: agents sharing one engine each have their own).
pub(crate) fn spec(
    task: &Task,
    service: &Service,
    node_id: &str,
    host_ip: IpAddr,
) -> ContainerSpec {
    let owner = Owner {
        task: task.id.clone(),
        service: service.id.clone(),
        node: node_id.to_string(),
    };
    let mut spec = ContainerSpec::new(name(task, service), service.image.clone(), owner);
    spec.cmd = service.cmd.clone();
    spec.env = service
        .env
        .iter()
        .map(|entry| match entry.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (entry.clone(), String::new()),
        })
        .collect();
    spec.labels = service.labels.clone();
    spec.ports = service.ports.clone();
    spec.host_ip = Some(host_ip);
    spec.restart = service.restart;
    spec.health = service.health.clone();
    let limit = |v: u64| (v != 0).then(|| i64::try_from(v).unwrap_or(i64::MAX));
    spec.memory_bytes = limit(service.reservations.memory_bytes);
    spec.nano_cpus = limit(service.reservations.nano_cpus);
    if let Some(container) = &service.container {
        spec.base = Some(container.config.clone());
        spec.alias = Some(service.name.clone());
    }
    spec
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{Protocol, Reservations, RestartPolicy};

    fn service() -> Service {
        serde_json::from_value(serde_json::json!({
            "id": "svc1", "name": "web", "image": "shoal/whoami:latest", "replicas": 2,
            "cmd": ["serve", "--port", "80"],
            "env": ["GREETING=hi=there", "EMPTY"],
            "labels": {"interlock.hostname": "web"},
            "ports": [{"container_port": 80}, {"container_port": 53, "protocol": "udp", "host_port": 5353}],
            "restart": {"policy": "on_failure", "max": 3},
        }))
        .unwrap()
    }

    #[test]
    fn a_task_container_carries_its_service_and_owner() {
        let svc = service();
        let task = Task::new("0123456789abcdef".into(), "svc1".into(), 2, 0);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let spec = spec(&task, &svc, "node1", ip);
        assert_eq!(spec.name, "web.2.01234567");
        assert_eq!(spec.image, "shoal/whoami:latest");
        assert_eq!(
            spec.owner,
            Owner {
                task: "0123456789abcdef".into(),
                service: "svc1".into(),
                node: "node1".into()
            }
        );
        assert_eq!(spec.cmd, ["serve", "--port", "80"]);
        assert_eq!(
            spec.env,
            [
                ("GREETING".to_string(), "hi=there".to_string()),
                ("EMPTY".to_string(), String::new())
            ]
        );
        assert_eq!(
            spec.labels,
            BTreeMap::from([("interlock.hostname".to_string(), "web".to_string())])
        );
        assert_eq!(spec.ports.len(), 2);
        assert_eq!(
            spec.host_ip,
            Some(ip),
            "every port is published on the node's address"
        );
        assert_eq!(
            (spec.ports[0].container_port, spec.ports[0].host_port),
            (80, None)
        );
        assert_eq!(
            (spec.ports[1].host_port, spec.ports[1].protocol),
            (Some(5353), Protocol::Udp)
        );
        assert_eq!(spec.restart, RestartPolicy::OnFailure { max: Some(3) });
        assert_eq!((spec.memory_bytes, spec.nano_cpus), (None, None));
    }

    #[test]
    fn reservations_become_limits_only_when_set() {
        let mut svc = service();
        svc.reservations = Reservations {
            nano_cpus: 500_000_000,
            memory_bytes: 0,
        };
        let task = Task::new("t1".into(), "svc1".into(), 1, 0);
        let spec = spec(&task, &svc, "n", "127.0.0.1".parse().unwrap());
        assert_eq!(
            (spec.memory_bytes, spec.nano_cpus),
            (None, Some(500_000_000))
        );
        assert_eq!(spec.name, "web.1.t1", "short task ids are used whole");
    }
}
