use serde_json::json;

use super::*;
use crate::model::{FailureAction, UpdateState, UpdateStatus};

fn create(spec: Value) -> Result<Read, String> {
    read(&spec, &blank("s1".into(), 7)).map_err(|e| e.to_string())
}

/// What docker CLI 28 sends for `docker service create --name web --replicas 2 -p 80
/// --constraint node.labels.storage==ssd --update-parallelism 1 shoal/whoami:latest a b`.
fn cli_body() -> Value {
    json!({"Name":"web","Labels":{},"TaskTemplate":{"ContainerSpec":{"Image":"shoal/whoami:latest","Args":["a","b"],"Init":false,"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{}},"Placement":{"Constraints":["node.labels.storage==ssd"]},"ForceUpdate":0},"Mode":{"Replicated":{"Replicas":2}},"UpdateConfig":{"Parallelism":1,"FailureAction":"pause","Monitor":5000000000u64,"MaxFailureRatio":0,"Order":"stop-first"},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishMode":"ingress"}]}})
}

#[test]
fn the_docker_clis_create_body_is_read() {
    let Read { service: s, force } = create(cli_body()).unwrap();
    assert!(!force);
    assert_eq!((s.id.as_str(), s.name.as_str()), ("s1", "web"));
    assert_eq!((s.image.as_str(), s.replicas), ("shoal/whoami:latest", 2));
    assert_eq!(s.cmd, ["a", "b"]);
    assert_eq!(s.constraints, ["node.labels.storage==ssd"]);
    assert_eq!(
        s.ports,
        [PortSpec {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_port: None
        }]
    );
    assert_eq!(s.update_policy, UpdatePolicy::default());
    assert_eq!(s.restart, RestartPolicy::Always);
    assert!(s.container.is_none() && s.created_ms == 7);
}

#[test]
fn every_flag_the_cli_sends_maps_to_the_service() {
    // `-e A=1 --label sl=1 --container-label cl=2 --restart-condition on-failure
    // --restart-max-attempts 3 --reserve-cpu 0.5 --reserve-memory 64m --health-cmd true
    // --health-interval 1s --health-retries 2 --update-delay 2s --update-order start-first
    // --update-failure-action rollback --update-max-failure-ratio 0.25 -p 8080:80/udp`
    let body = json!({"Name":"w2","Labels":{"sl":"1"},"TaskTemplate":{"ContainerSpec":{"Image":"shoal/whoami:latest","Labels":{"cl":"2"},"Env":["A=1"],"Init":false,"Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":1000000000,"Retries":2},"DNSConfig":{}},"Resources":{"Limits":{},"Reservations":{"NanoCPUs":500000000,"MemoryBytes":67108864}},"RestartPolicy":{"Condition":"on-failure","Delay":5000000000u64,"MaxAttempts":3},"Placement":{},"ForceUpdate":0},"Mode":{"Replicated":{}},"UpdateConfig":{"Parallelism":1,"Delay":2000000000,"FailureAction":"rollback","Monitor":5000000000u64,"MaxFailureRatio":0.25,"Order":"start-first"},"EndpointSpec":{"Mode":"vip","Ports":[{"Protocol":"udp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]}});
    let s = create(body).unwrap().service;
    assert_eq!(s.replicas, 1, "Replicated without Replicas is one");
    assert_eq!(s.service_labels["sl"], "1");
    assert_eq!(s.labels["cl"], "2");
    assert_eq!(s.env, ["A=1"]);
    assert_eq!(s.restart, RestartPolicy::OnFailure { max: Some(3) });
    assert_eq!(
        (s.reservations.nano_cpus, s.reservations.memory_bytes),
        (500_000_000, 64 << 20)
    );
    let h = s.health.as_ref().unwrap();
    assert_eq!(
        (h.test.clone(), h.interval_ms, h.retries),
        (vec!["CMD-SHELL".to_string(), "true".to_string()], 1_000, 2)
    );
    let p = s.update_policy;
    assert_eq!(
        (
            p.delay_ms,
            p.order,
            p.failure_action,
            p.max_failure_permille
        ),
        (2_000, UpdateOrder::StartFirst, FailureAction::Rollback, 250)
    );
    assert_eq!(s.ports[0].host_port, Some(8080));
    assert_eq!(s.ports[0].protocol, Protocol::Udp);
}

#[test]
fn a_rendered_spec_reads_back_as_the_same_service() {
    let mut s = create(cli_body()).unwrap().service;
    s.labels.insert("interlock.hostname".into(), "test".into());
    s.service_labels.insert("team".into(), "a".into());
    s.env = vec!["A=1".into()];
    s.constraints.push("node!=node-2".into());
    s.constraints.push("zone==~a".into());
    s.restart = RestartPolicy::OnFailure { max: Some(2) };
    s.reservations.memory_bytes = 1 << 20;
    s.ports.push("8080:81/udp".parse().unwrap());
    s.health = Some(HealthCheck {
        test: vec!["CMD".into(), "/whoami".into(), "check".into()],
        interval_ms: 500,
        timeout_ms: 2_000,
        start_period_ms: 0,
        retries: 3,
    });
    s.update_policy.parallelism = 2;
    s.update_policy.max_failure_permille = 125;
    s.update_policy.order = UpdateOrder::StartFirst;
    // Fields swarm mode cannot express are kept from the service updated.
    s.affinities = vec!["container!=db".into()];
    s.stop_grace_ms = Some(0);
    s.version = 3;
    s.update = Some(UpdateStatus {
        state: UpdateState::Completed,
        started_ms: 1,
        completed_ms: Some(2),
        message: String::new(),
    });
    let spec = render(&s);
    assert_eq!(
        spec["TaskTemplate"]["Placement"]["Constraints"],
        json!([
            "node.labels.storage==ssd",
            "node.hostname!=node-2",
            "zone==~a"
        ])
    );
    let back = read(&spec, &s).unwrap();
    assert!(!back.force);
    assert_eq!(back.service, s);
    // A scale through the spec is no new spec; an image is.
    let mut scaled = spec.clone();
    scaled["Mode"]["Replicated"]["Replicas"] = json!(5);
    let next = read(&scaled, &s).unwrap().service;
    assert!(next.same_spec(&s) && next.replicas == 5);
    let mut image = spec.clone();
    image["TaskTemplate"]["ContainerSpec"]["Image"] = json!("shoal/whoami:v2");
    assert!(!read(&image, &s).unwrap().service.same_spec(&s));
    let mut forced = spec;
    forced["TaskTemplate"]["ForceUpdate"] = json!(1);
    assert!(read(&forced, &s).unwrap().force);
}

#[test]
fn constraints_translate_both_ways() {
    let shoal = |c: &str| constraint_to_shoal(c).map_err(|e| e.to_string());
    assert_eq!(
        shoal("node.hostname==node-1"),
        Ok(Some("node==node-1".into()))
    );
    assert_eq!(shoal("node.id != abc"), Ok(Some("node!=abc".into())));
    // Who set a label stays told: the operator (node.labels), the agent (engine.labels).
    assert_eq!(
        shoal("node.labels.storage==ssd"),
        Ok(Some("node.labels.storage==ssd".into()))
    );
    assert_eq!(
        shoal("engine.labels.zone!=b"),
        Ok(Some("engine.labels.zone!=b".into()))
    );
    assert_eq!(
        shoal("node.labels.node==x"),
        Ok(Some("node.labels.node==x".into()))
    );
    assert_eq!(shoal("storage==ssd"), Ok(Some("storage==ssd".into())));
    assert_eq!(shoal("node.role==worker"), Ok(None));
    assert_eq!(shoal("node.role!=manager"), Ok(None));
    for (bad, why) in [
        ("node.role==manager", "managers run no tasks"),
        ("node.platform.os==linux", "shoal places by"),
        ("storage", "expected KEY==VALUE"),
        ("node.labels.storage==", "no value"),
    ] {
        let err = shoal(bad).unwrap_err();
        assert!(
            err.starts_with(&format!("invalid constraint {bad:?}")) && err.contains(why),
            "{bad}: {err}"
        );
    }
    assert_eq!(constraint_to_docker("node==n1"), "node.hostname==n1");
    for same in [
        "storage!=hdd",
        "node.labels.storage==ssd",
        "engine.labels.zone==a",
    ] {
        assert_eq!(constraint_to_docker(same), same);
    }
}

#[test]
fn what_shoal_cannot_honour_is_a_400_naming_the_field() {
    let cases: Vec<(Value, &str)> = vec![
        (json!([]), "expected a JSON object"),
        (json!(null), "must be a JSON object"),
        (
            json!({"Name": "web"}),
            "TaskTemplate.ContainerSpec is required",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {}}}),
            "ContainerSpec.Image is required",
        ),
        (
            json!({"Name": "a b", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}}),
            "invalid service name \"a b\"",
        ),
        (
            json!({"Name": "web", "Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {"Image": "x"}}}),
            "Mode.Global is not supported",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x", "Mounts": [{"Type": "volume", "Target": "/d"}]}}}),
            "ContainerSpec.Mounts is not supported",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x", "Command": ["sh"]}}}),
            "--entrypoint",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Resources": {"Limits": {"NanoCPUs": 1}}}}),
            "Limits.NanoCPUs (--limit-*)",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Placement": {"Constraints": ["node.labels.storage=ssd"]}}}),
            "invalid constraint",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "Placement": {"Preferences": [{"Spread": {"SpreadDescriptor": "node.labels.zone"}}]}}}),
            "--placement-pref",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}, "RestartPolicy": {"Condition": "sometimes"}}}),
            "Condition \"sometimes\"",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x", "Healthcheck": {"Test": ["CMD"]}}}}),
            "needs a program",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "UpdateConfig": {"Order": "sideways"}}),
            "UpdateConfig.Order",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "UpdateConfig": {"MaxFailureRatio": 2}}),
            "MaxFailureRatio 2",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "RollbackConfig": {"Parallelism": 3}}),
            "RollbackConfig",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "EndpointSpec": {"Ports": [{"TargetPort": 70000}]}}),
            "TargetPort 70000",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "Networks": [{"Target": "net"}]}),
            "Networks is not supported",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x", "Labels": {"interlock.hostname": "a", "interlock.port": "x"}}}}),
            "interlock.port",
        ),
        (
            json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}, "Mode": {"Replicated": {"Replicas": -1}}}),
            "Mode.Replicated.Replicas",
        ),
    ];
    for (spec, want) in cases {
        let err = create(spec.clone()).unwrap_err();
        assert!(err.contains(want), "{spec}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let base = create(cli_body()).unwrap().service;
    let mut renamed = render(&base);
    renamed["Name"] = json!("other");
    let err = read(&renamed, &base).unwrap_err().to_string();
    assert!(err.contains("renaming services is not supported"), "{err}");
}
