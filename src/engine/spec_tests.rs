//! Unit tests of `ContainerSpec`'s translation: owner labels and env, ports, restart policies.

use super::*;
use bollard::models::RestartPolicyNameEnum;

fn owner() -> Owner {
    Owner {
        task: "t1".into(),
        service: "web".into(),
        node: "n1".into(),
    }
}

#[test]
fn restart_policies_map_to_docker_names() {
    let cases = [
        ("no", RestartPolicyNameEnum::NO, None),
        ("always", RestartPolicyNameEnum::ALWAYS, None),
        ("on-failure", RestartPolicyNameEnum::ON_FAILURE, None),
        ("on-failure:3", RestartPolicyNameEnum::ON_FAILURE, Some(3)),
    ];
    for (spelling, name, max) in cases {
        let policy: RestartPolicy = spelling.parse().unwrap();
        let docker = super::restart::to_docker(policy);
        assert_eq!(
            (docker.name, docker.maximum_retry_count),
            (Some(name), max),
            "{spelling}"
        );
    }
}

#[test]
fn model_ports_publish_on_the_given_address() {
    let mut spec = ContainerSpec::new("c1", "img", owner());
    spec.ports = vec!["80".parse().unwrap(), "5353:53/udp".parse().unwrap()];
    spec.host_ip = Some("127.0.0.3".parse().unwrap());
    let body = spec.to_create_body().unwrap();
    let bindings = body.host_config.unwrap().port_bindings.unwrap();
    let ephemeral = &bindings["80/tcp"].as_ref().unwrap()[0];
    assert_eq!(
        (ephemeral.host_ip.as_deref(), ephemeral.host_port.as_deref()),
        (Some("127.0.0.3"), None)
    );
    let fixed = &bindings["53/udp"].as_ref().unwrap()[0];
    assert_eq!(
        (fixed.host_ip.as_deref(), fixed.host_port.as_deref()),
        (Some("127.0.0.3"), Some("5353"))
    );
}

#[test]
fn every_container_carries_its_owner_as_labels_and_env() {
    let mut spec = ContainerSpec::new("c1", "shoal/whoami:latest", owner());
    spec.labels
        .insert("interlock.hostname".into(), "test".into());
    spec.env.push(("GREETING".into(), "hi=there".into()));
    let body = spec.to_create_body().unwrap();
    let labels = body.labels.unwrap();
    assert_eq!(labels["shoal.task"], "t1");
    assert_eq!(labels["shoal.service"], "web");
    assert_eq!(labels["shoal.node"], "n1");
    assert_eq!(labels["interlock.hostname"], "test");
    let env = body.env.unwrap();
    for var in [
        "GREETING=hi=there",
        "SHOAL_TASK=t1",
        "SHOAL_SERVICE=web",
        "SHOAL_NODE=n1",
    ] {
        assert!(env.contains(&var.to_string()), "{var} missing from {env:?}");
    }
    assert_eq!(body.cmd, None, "an empty cmd keeps the image's");
}

#[test]
fn ports_restart_and_limits_map_to_docker() {
    let mut spec = ContainerSpec::new("c1", "img", owner());
    spec.ports.push("80".parse().unwrap());
    spec.ports.push("5353:53/udp".parse().unwrap());
    spec.restart = RestartPolicy::OnFailure { max: Some(2) };
    spec.memory_bytes = Some(64 << 20);
    let body = spec.to_create_body().unwrap();
    let mut exposed = body.exposed_ports.unwrap();
    exposed.sort();
    assert_eq!(exposed, ["53/udp", "80/tcp"]);
    let host = body.host_config.unwrap();
    let bindings = host.port_bindings.unwrap();
    let random = &bindings["80/tcp"].as_ref().unwrap()[0];
    assert_eq!(
        (random.host_ip.as_deref(), random.host_port.as_deref()),
        (None, None)
    );
    let fixed = &bindings["53/udp"].as_ref().unwrap()[0];
    assert_eq!(fixed.host_ip.as_deref(), None, "no address: every address");
    assert_eq!(fixed.host_port.as_deref(), Some("5353"));
    let restart = host.restart_policy.unwrap();
    assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
    assert_eq!(restart.maximum_retry_count, Some(2));
    assert_eq!(host.memory, Some(64 << 20));
}

#[test]
fn reserved_labels_and_bad_env_names_are_refused() {
    let mut spec = ContainerSpec::new("c1", "img", owner());
    spec.labels.insert("shoal.task".into(), "other".into());
    let err = spec.to_create_body().unwrap_err().to_string();
    assert!(err.contains("shoal.task is reserved"), "{err}");
    // A compose service's update policy is the manager's to read, and harmless on the engine.
    let mut spec = ContainerSpec::new("c1", "img", owner());
    spec.labels
        .insert("shoal.update.parallelism".into(), "1".into());
    assert!(spec.to_create_body().is_ok());

    let mut spec = ContainerSpec::new("c1", "img", owner());
    spec.env.push(("A=B".into(), "x".into()));
    assert!(matches!(
        spec.to_create_body(),
        Err(RuntimeError::InvalidSpec(_))
    ));
}

#[test]
fn a_health_check_becomes_dockers_and_zeros_keep_the_images() {
    let mut spec = ContainerSpec::new("web.1", "shoal/whoami", owner());
    assert_eq!(spec.to_create_body().unwrap().healthcheck, None);
    spec.health = Some(crate::model::HealthCheck {
        test: vec![],
        interval_ms: 250,
        retries: 2,
        ..Default::default()
    });
    let check = spec.to_create_body().unwrap().healthcheck.unwrap();
    assert_eq!(check.test, None, "the image's test");
    assert_eq!(check.interval, Some(250_000_000));
    assert_eq!((check.timeout, check.retries), (Some(0), Some(2)));
    spec.health = Some(crate::model::HealthCheck {
        test: vec!["CMD".into()],
        ..Default::default()
    });
    let err = spec.to_create_body().unwrap_err().to_string();
    assert!(err.contains("needs a program"), "{err}");
}
