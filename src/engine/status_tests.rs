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

#[test]
fn health_and_the_last_failed_probe_are_read() {
    use bollard::models::{Health as DockerHealth, HealthcheckResult};
    let probe = |code: i64, output: &str| HealthcheckResult {
        exit_code: Some(code),
        output: Some(output.into()),
        ..Default::default()
    };
    let inspect = |health: Option<DockerHealth>| {
        ContainerInfo::from_inspect(ContainerInspectResponse {
            state: Some(DockerState {
                status: Some(ContainerStateStatusEnum::RUNNING),
                health,
                ..Default::default()
            }),
            ..Default::default()
        })
    };
    let none = inspect(None);
    assert_eq!((none.health, none.health_output), (None, None));
    let sick = inspect(Some(DockerHealth {
        status: Some(HealthStatusEnum::UNHEALTHY),
        log: Some(vec![
            probe(1, "refused\n  port 80"),
            probe(0, "ok"),
            probe(2, ""),
        ]),
        ..Default::default()
    }));
    assert_eq!(sick.health, Some(Health::Unhealthy));
    assert_eq!(
        sick.health_output.as_deref(),
        Some("health check exit code 2")
    );
    let first = inspect(Some(DockerHealth {
        status: Some(HealthStatusEnum::STARTING),
        log: Some(vec![probe(1, "refused\n  port 80")]),
        ..Default::default()
    }));
    assert_eq!(first.health, Some(Health::Starting));
    assert_eq!(first.health_output.as_deref(), Some("refused port 80"));
    let well = inspect(Some(DockerHealth {
        status: Some(HealthStatusEnum::HEALTHY),
        ..Default::default()
    }));
    assert_eq!(well.health, Some(Health::Healthy));
}
