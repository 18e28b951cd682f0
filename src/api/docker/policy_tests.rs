//! Each rule of the policy refused by default and allowed by its flag; the bind allow list.

use serde_json::{json, Value};

use super::*;

fn create(host: Value) -> Value {
    json!({"Image": "whoami", "HostConfig": host})
}

fn refused(policy: &DockerPolicy, body: &Value) -> String {
    policy.check_create(body).expect_err("refused").to_string()
}

/// What each rule refuses, as the docker CLI and compose send it.
fn cases() -> Vec<(DockerAllow, Value)> {
    use DockerAllow as A;
    vec![
        (A::Privileged, json!({"Privileged": true})),
        (A::HostNamespaces, json!({"NetworkMode": "host"})),
        (A::HostNamespaces, json!({"PidMode": "host"})),
        (A::HostNamespaces, json!({"IpcMode": "host"})),
        (A::HostNamespaces, json!({"UTSMode": "host"})),
        (A::HostNamespaces, json!({"UsernsMode": "host"})),
        (A::HostNamespaces, json!({"CgroupnsMode": "host"})),
        (
            A::Devices,
            json!({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda", "CgroupPermissions": "rwm"}]}),
        ),
        (A::Devices, json!({"DeviceCgroupRules": ["b *:* rwm"]})),
        (
            A::Devices,
            json!({"DeviceRequests": [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]}),
        ),
        (A::CapAdd, json!({"CapAdd": ["SYS_ADMIN"]})),
        (
            A::SecurityOpt,
            json!({"SecurityOpt": ["seccomp=unconfined"]}),
        ),
        (
            A::SecurityOpt,
            json!({"SecurityOpt": ["apparmor:unconfined"]}),
        ),
        (A::SecurityOpt, json!({"MaskedPaths": []})),
    ]
}

#[test]
fn every_rule_is_refused_by_default_naming_the_rule_and_its_flag() {
    let policy = DockerPolicy::default();
    for (rule, host) in cases() {
        let message = refused(&policy, &create(host.clone()));
        assert!(
            message.starts_with("shoal policy: ")
                && message.contains(&format!("--docker-allow {rule}")),
            "{host}: {message}"
        );
    }
    let message = refused(&policy, &create(json!({"Privileged": true})));
    assert_eq!(
        message,
        "shoal policy: privileged containers are not allowed (start the manager with --docker-allow privileged)"
    );
    let exec = json!({"Cmd": ["sh"], "Privileged": true});
    assert!(policy
        .check_exec(&exec)
        .unwrap_err()
        .to_string()
        .contains("--docker-allow privileged"));
}

#[test]
fn each_rule_allowed_lets_its_field_through_and_only_its_field() {
    for (rule, host) in cases() {
        let policy = DockerPolicy::new([rule], &[]).unwrap();
        policy
            .check_create(&create(host.clone()))
            .unwrap_or_else(|e| panic!("{rule} allowed, {host}: {e}"));
        // The other rules still hold.
        for (other, host) in cases().into_iter().filter(|(r, _)| *r != rule) {
            assert!(
                policy.check_create(&create(host.clone())).is_err(),
                "{rule} allowed, {other} still refused: {host}"
            );
        }
    }
    let policy = DockerPolicy::new([DockerAllow::Privileged], &[]).unwrap();
    policy
        .check_exec(&json!({"Cmd": ["sh"], "Privileged": true}))
        .unwrap();
}

#[test]
fn what_the_docker_cli_sends_for_a_plain_run_is_allowed() {
    let policy = DockerPolicy::default();
    // `docker run -d -p 80 -v data:/data --security-opt no-new-privileges --cap-drop ALL`.
    let body = create(json!({
        "Privileged": false,
        "NetworkMode": "default",
        "PidMode": "",
        "IpcMode": "",
        "UTSMode": "",
        "UsernsMode": "",
        "CgroupnsMode": "",
        "Devices": [],
        "DeviceCgroupRules": null,
        "DeviceRequests": null,
        "CapAdd": null,
        "CapDrop": ["ALL"],
        "SecurityOpt": ["no-new-privileges"],
        "MaskedPaths": null,
        "ReadonlyPaths": null,
        "Binds": ["data:/data", "other:/other:ro"],
        "Mounts": [
            {"Type": "volume", "Source": "v", "Target": "/v"},
            {"Type": "tmpfs", "Target": "/tmp"}
        ],
        "PortBindings": {"80/tcp": [{"HostIp": "", "HostPort": ""}]},
    }));
    policy.check_create(&body).unwrap();
    policy.check_create(&json!({"Image": "whoami"})).unwrap();
    policy
        .check_exec(&json!({"Cmd": ["sh"], "Privileged": false}))
        .unwrap();
}

#[test]
fn bind_mounts_are_allowed_under_the_listed_paths_only() {
    let binds = |source: &str| create(json!({"Binds": [format!("{source}:/mnt:ro")]}));
    let mount = |source: &str| {
        create(json!({"Mounts": [{"Type": "bind", "Source": source, "Target": "/mnt"}]}))
    };
    let volume_device = |source: &str| {
        create(
            json!({"Mounts": [{"Type": "volume", "Source": "v", "Target": "/mnt",
            "VolumeOptions": {"DriverConfig": {"Name": "local",
                "Options": {"type": "none", "o": "bind", "device": source}}}}]}),
        )
    };
    let none = DockerPolicy::default();
    let some = DockerPolicy::new([], &["/srv".into(), "/data/".into()]).unwrap();
    let shapes: [fn(&str) -> Value; 3] = [binds, mount, volume_device];
    for shape in shapes {
        for source in [
            "/srv",
            "/srv/app",
            "/data/x/y",
            "/srv/./a//b",
            "/srv/a/../b",
        ] {
            assert!(
                none.check_create(&shape(source)).is_err(),
                "{source}: refused without an allow list"
            );
            some.check_create(&shape(source))
                .unwrap_or_else(|e| panic!("{source}: {e}"));
        }
        for source in [
            "/",
            "/etc",
            "/srv/../etc",
            "/srv/app/../../etc/shadow",
            "/srvx",
            "/srv2/app",
            "/data/../../../",
            "/var/run/docker.sock",
        ] {
            let message = refused(&some, &shape(source));
            assert!(
                message.contains("--docker-allow-bind") && message.contains(source),
                "{source}: {message}"
            );
        }
    }
    let all = DockerPolicy::new([], &["/".into()]).unwrap();
    all.check_create(&binds("/etc")).unwrap();
    assert!(DockerPolicy::new([], &["srv".into()]).is_err());
}

#[test]
fn rules_parse_by_name() {
    for rule in DockerAllow::ALL {
        assert_eq!(rule.name().parse::<DockerAllow>(), Ok(rule));
    }
    let err = "root".parse::<DockerAllow>().unwrap_err();
    assert!(err.contains("privileged, host-namespaces"), "{err}");
    assert_eq!(normalise("/a/./b/../c//"), Some("/a/c".into()));
    assert_eq!(normalise("/../.."), Some("/".into()));
    assert_eq!(normalise("a/b"), None);
}

/// A random JSON value, biased towards the HostConfig keys the policy reads.
fn random_value(rng: &mut rand::rngs::StdRng, depth: u32) -> Value {
    use rand::Rng;
    const KEYS: &[&str] = &[
        "HostConfig",
        "Privileged",
        "NetworkMode",
        "PidMode",
        "Devices",
        "CapAdd",
        "SecurityOpt",
        "MaskedPaths",
        "Binds",
        "Mounts",
        "Type",
        "Source",
        "VolumeOptions",
        "DriverConfig",
        "Options",
        "device",
        "Image",
    ];
    const STRINGS: &[&str] = &[
        "host",
        "bind",
        "/",
        "/srv/../etc",
        "/srv",
        "a:b:c",
        "",
        "no-new-privileges",
        "..",
        "seccomp=unconfined",
        "HOST",
        "/srv/x:/y",
    ];
    match rng.random_range(0..if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>()),
        4 => json!(STRINGS[rng.random_range(0..STRINGS.len())]),
        5 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..5))
                .map(|_| {
                    let k = KEYS[rng.random_range(0..KEYS.len())].to_string();
                    (k, random_value(rng, depth + 1))
                })
                .collect(),
        ),
    }
}

#[test]
fn random_bodies_are_answered_never_a_panic_and_the_default_lets_no_privilege_through() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(19);
    let default = DockerPolicy::default();
    let open = DockerPolicy::new(DockerAllow::ALL, &["/".into()]).unwrap();
    for _ in 0..20_000 {
        let mut body = random_value(&mut rng, 0);
        if let Value::Object(map) = &mut body {
            map.insert("HostConfig".into(), random_value(&mut rng, 1));
        }
        let _ = open.check_exec(&body);
        // Everything allowed: only a bind source that is not an absolute path is refused.
        if let Err(e) = open.check_create(&body) {
            assert!(e.to_string().contains("bind mounts of"), "{body}: {e}");
        }
        if default.check_create(&body).is_ok() {
            let host = &body["HostConfig"];
            assert_ne!(host["Privileged"], json!(true), "{body}");
            assert_ne!(host["NetworkMode"], json!("host"), "{body}");
            assert_ne!(host["PidMode"], json!("host"), "{body}");
        }
    }
}

#[test]
fn a_services_container_spec_is_held_to_the_same_rules() {
    let default = DockerPolicy::default();
    let binds = DockerPolicy::new([], &["/srv".into()]).unwrap();
    let spec = |v: Value| v;
    let bind = spec(json!({"Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}));
    let err = default.check_service(&bind).unwrap_err().to_string();
    assert!(err.contains("bind mounts of \"/etc\""), "{err}");
    assert!(binds
        .check_service(&json!({"Mounts": [{"Type": "bind", "Source": "/srv/a", "Target": "/x"}]}))
        .is_ok());
    let err = default
        .check_service(&json!({"CapabilityAdd": ["NET_ADMIN"]}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--docker-allow cap-add"), "{err}");
    let err = default
        .check_service(&json!({"Privileges": {"Seccomp": {"Mode": "unconfined"}}}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--docker-allow security-opt"), "{err}");
    assert!(default
        .check_service(&json!({"Image": "x", "Mounts": [{"Type": "volume", "Target": "/d"}]}))
        .is_ok());
}
