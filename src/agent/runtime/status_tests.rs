//! Unit tests of reducing `docker inspect` to a `ContainerInfo`.

use super::*;
use bollard::models::{
    ContainerConfig, ContainerState as DockerState, NetworkSettings, PortBinding,
};

fn bind(ip: &str, port: &str) -> PortBinding {
    PortBinding {
        host_ip: Some(ip.into()),
        host_port: Some(port.into()),
    }
}

#[test]
fn inspect_reduces_to_state_owner_and_ports() {
    let labels = [
        ("shoal.task", "t1"),
        ("shoal.service", "web"),
        ("shoal.node", "n1"),
    ];
    let ports = PortMap::from([
        (
            "80/tcp".to_string(),
            Some(vec![bind("0.0.0.0", "32768"), bind("::", "32768")]),
        ),
        ("81/tcp".to_string(), None),
    ]);
    let info = ContainerInfo::from_inspect(ContainerInspectResponse {
        id: Some("abc".into()),
        name: Some("/c1".into()),
        config: Some(ContainerConfig {
            image: Some("shoal/whoami:latest".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }),
        state: Some(DockerState {
            status: Some(ContainerStateStatusEnum::EXITED),
            exit_code: Some(137),
            oom_killed: Some(true),
            error: Some(String::new()),
            ..Default::default()
        }),
        network_settings: Some(NetworkSettings {
            ports: Some(ports),
            ..Default::default()
        }),
        ..Default::default()
    });
    assert_eq!(info.name, "c1");
    assert_eq!(info.owner.as_ref().unwrap().task, "t1");
    assert_eq!(
        info.state,
        ContainerState::Exited {
            exit_code: 137,
            oom_killed: true
        }
    );
    assert_eq!(info.error, None);
    assert_eq!(info.ports.len(), 1, "{:?}", info.ports);
    assert_eq!(
        (info.ports[0].host_ip.as_str(), info.host_port(80)),
        ("0.0.0.0", Some(32768))
    );
    assert_eq!(info.host_port(81), None);
}
