//! Hostile input on the Docker API of one real manager (no agents: every check here answers
//! before a node would be involved): the operator's policy on container creates, refused by
//! default and loosened by `--docker-allow`/`--docker-allow-bind`; browsers' and foreign hosts'
//! requests; JSON bodies without a JSON content type; numeric parameters at their extremes.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::{run_cli, serial, Cluster};

/// One HTTP/1.1 exchange (`Connection: close`) with the given headers; (status, JSON body or
/// Null).
async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(head.as_bytes()).await.unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    };
    let text = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no answer within 60 s"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{method} {target}: no status in {text:?}"));
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

async fn create(addr: &str, host_config: Value) -> (u16, Value) {
    let body = json!({"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config});
    request(
        addr,
        "POST",
        "/v1.44/containers/create",
        &[JSON],
        &body.to_string(),
    )
    .await
}

/// Each rule's field, and the rule's name.
fn denied() -> Vec<(Value, &'static str)> {
    vec![
        (json!({"Privileged": true}), "privileged"),
        (json!({"NetworkMode": "host"}), "host-namespaces"),
        (json!({"PidMode": "host"}), "host-namespaces"),
        (json!({"IpcMode": "host"}), "host-namespaces"),
        (json!({"UTSMode": "host"}), "host-namespaces"),
        (json!({"UsernsMode": "host"}), "host-namespaces"),
        (
            json!({"Devices": [{"PathOnHost": "/dev/sda", "PathInContainer": "/dev/sda", "CgroupPermissions": "rwm"}]}),
            "devices",
        ),
        (json!({"CapAdd": ["SYS_ADMIN"]}), "cap-add"),
        (
            json!({"SecurityOpt": ["seccomp=unconfined"]}),
            "security-opt",
        ),
    ]
}

fn binds(source: &str) -> Value {
    json!({"Binds": [format!("{source}:/mnt")]})
}

fn mounts(source: &str) -> Value {
    json!({"Mounts": [{"Type": "bind", "Source": source, "Target": "/mnt"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn the_docker_api_refuses_what_its_policy_and_its_listener_do_not_allow() {
    let _serial = serial().await;
    let mut c = Cluster::start(1).await;
    let addr = c.managers[0].docker_api.clone();

    // The policy by default: each rule's field refused with Docker's error shape.
    for (host_config, rule) in denied() {
        let (status, body) = create(&addr, host_config.clone()).await;
        let message = body["message"].as_str().unwrap_or_default();
        assert_eq!(status, 403, "{host_config}: {body}");
        assert!(
            message.starts_with("shoal policy: ")
                && message.contains(&format!("--docker-allow {rule}")),
            "{host_config}: {message}"
        );
    }
    for source in ["/", "/srv", "/var/run/docker.sock"] {
        for host_config in [binds(source), mounts(source)] {
            let (status, body) = create(&addr, host_config.clone()).await;
            assert_eq!(status, 403, "{host_config}: {body}");
            assert!(
                body["message"]
                    .as_str()
                    .unwrap()
                    .contains("--docker-allow-bind"),
                "{body}"
            );
        }
    }
    // The docker CLI shows the rule.
    let out = std::process::Command::new("timeout")
        .args(["60", "docker", "-H", &format!("tcp://{addr}")])
        .args(["create", "--privileged", "busybox", "true"])
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("shoal policy: privileged containers are not allowed (start the manager with --docker-allow privileged)"),
        "{stderr}"
    );
    // What is allowed still works: named volumes, no-new-privileges, a plain create.
    let (status, body) = create(
        &addr,
        json!({"Binds": ["data:/data"], "SecurityOpt": ["no-new-privileges"]}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let id = body["Id"].as_str().unwrap().to_string();

    // Browsers and foreign hosts.
    let path = "/v1.44/containers/create";
    let plain = json!({"Image": "busybox"}).to_string();
    for (headers, status, what) in [
        (
            vec![("Content-Type", "text/plain")],
            400,
            "unsupported Content-Type header (text/plain)",
        ),
        (
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            400,
            "must be 'application/json'",
        ),
        (vec![], 400, "unsupported Content-Type header ()"),
        (
            vec![JSON, ("Origin", "https://evil.example")],
            403,
            "web pages",
        ),
        (
            vec![JSON, ("Host", "evil.example:2375")],
            403,
            "not this machine",
        ),
    ] {
        let (got, body) = request(&addr, "POST", path, &headers, &plain).await;
        assert_eq!(got, status, "{headers:?}: {body}");
        assert!(
            body["message"].as_str().unwrap_or_default().contains(what),
            "{headers:?}: {body}"
        );
    }
    // A DNS-rebinding page cannot even read.
    let (got, _) = request(
        &addr,
        "GET",
        "/_ping",
        &[("Host", "rebind.evil.example")],
        "",
    )
    .await;
    assert_eq!(got, 403);
    for host in ["localhost", "127.0.0.1", "api.moby.localhost"] {
        let (got, _) = request(&addr, "GET", "/_ping", &[("Host", host)], "").await;
        assert_eq!(got, 200, "Host {host}");
    }
    let exec = json!({"Cmd": ["sh"], "Privileged": true}).to_string();
    let (got, body) = request(
        &addr,
        "POST",
        &format!("/containers/{id}/exec"),
        &[JSON],
        &exec,
    )
    .await;
    assert_eq!(got, 403, "{body}");

    // Numbers at their extremes: a clear 400 or an answer, never a dropped connection.
    for (method, target, status) in [
        (
            "POST",
            format!("/containers/{id}/stop?t=18446744073709551615"),
            400,
        ),
        (
            "POST",
            format!("/containers/{id}/restart?t=99999999999999999999"),
            400,
        ),
        ("POST", format!("/containers/{id}/stop?t=ten"), 400),
        (
            "POST",
            format!("/containers/{id}/stop?t=9999999999999"),
            304,
        ),
        ("POST", format!("/containers/{id}/stop?t=-1"), 304),
        (
            "POST",
            format!("/containers/{id}/wait?condition=whenever"),
            400,
        ),
        (
            "GET",
            "/containers/json?limit=18446744073709551615".into(),
            200,
        ),
        ("GET", "/containers/json?limit=-5&all=1".into(), 200),
        ("GET", "/events?until=-1e400".into(), 200),
    ] {
        let (got, body) = request(&addr, method, &target, &[], "").await;
        assert_eq!(got, status, "{method} {target}: {body}");
    }
    let (got, _) = request(&addr, "GET", "/_ping", &[], "").await;
    assert_eq!(got, 200, "still serving");

    // The operator loosens the policy: each refused field is created, binds under the prefix.
    c.managers[0].stop().await;
    c.managers[0].spawn(&[
        "--docker-allow",
        "privileged,host-namespaces,devices,cap-add,security-opt",
        "--docker-allow-bind",
        "/srv,/data",
    ]);
    c.wait_leader().await;
    for (host_config, rule) in denied() {
        let (status, body) = create(&addr, host_config.clone()).await;
        assert_eq!(status, 201, "{rule} allowed, {host_config}: {body}");
    }
    for source in ["/srv", "/srv/app", "/data/x/../y"] {
        for host_config in [binds(source), mounts(source)] {
            let (status, body) = create(&addr, host_config.clone()).await;
            assert_eq!(status, 201, "{host_config}: {body}");
        }
    }
    for source in ["/srv/../etc", "/srv2", "/data/../../", "/etc/shadow"] {
        for host_config in [binds(source), mounts(source)] {
            let (status, body) = create(&addr, host_config.clone()).await;
            assert_eq!(status, 403, "{host_config}: {body}");
        }
    }
    let (got, body) = request(&addr, "POST", path, &[JSON], &plain).await;
    assert_eq!(got, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_policy_rule_or_a_relative_bind_path_stops_the_manager_from_starting() {
    for args in [
        &["manager", "--data-dir", "/tmp/x", "--docker-allow", "root"][..],
        &[
            "manager",
            "--data-dir",
            "/tmp/x",
            "--docker-allow",
            "privileged,",
        ],
    ] {
        let out = run_cli(args, None, &[]).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(out.stderr.contains("unknown rule"), "{out:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("m");
    let out = run_cli(
        &[
            "manager",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--docker-allow-bind",
            "srv",
        ],
        None,
        &[],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr
            .contains("--docker-allow-bind \"srv\": expected an absolute host path"),
        "{out:?}"
    );
}
