//! The built-in templates on a small model, and an operator's template.

use super::*;
use crate::model::{Balance, ProxyHost, Upstream};

fn model() -> ProxyModel {
    let up = |addr: &str, task: &str| Upstream {
        addr: addr.into(),
        task_id: task.into(),
        node: "node-1".into(),
    };
    ProxyModel {
        hosts: vec![
            ProxyHost {
                name: "empty.local".into(),
                ..Default::default()
            },
            ProxyHost {
                name: "test.local".into(),
                aliases: vec!["test.example".into()],
                upstreams: vec![up("127.0.0.2:32768", "t1"), up("127.0.0.3:32769", "t2")],
                balance: Balance::LeastConn,
                websocket_endpoints: vec!["/ws".into()],
                context_root: Some("/app".into()),
                context_root_rewrite: true,
                health_check: Some("/health".into()),
                health_check_interval_ms: Some(500),
                ..Default::default()
            },
        ],
        errors: vec![],
    }
}

#[test]
fn nginx_has_an_upstream_and_a_server_per_host_and_a_503_default() {
    let options = RenderOptions {
        http_port: 8080,
        run_dir: Some("/tmp/run".into()),
        ..Default::default()
    };
    let conf = render(ProxyKind::Nginx, &model(), 7, &options, None).unwrap();
    for needle in [
        "generation 7",
        "pid /tmp/run/nginx.pid;",
        "include conf.d/*.conf;",
        "listen 8080 default_server;",
        "upstream test.local {\n        least_conn;",
        "server 127.0.0.2:32768 max_fails=1 fail_timeout=500ms;",
        "server 127.0.0.3:32769 max_fails=1 fail_timeout=500ms;",
        "server_name test.local test.example;",
        "location /ws {",
        "location /app/ {\n            proxy_pass http://test.local/;",
    ] {
        assert!(conf.contains(needle), "{needle:?} missing from:\n{conf}");
    }
    // A host without servers answers 503 rather than pointing at an empty upstream.
    assert!(!conf.contains("upstream empty.local"), "{conf}");
    let empty = conf.split("server_name empty.local;").nth(1).unwrap();
    assert!(empty.trim_start().starts_with("return 503;"), "{conf}");
}

#[test]
fn haproxy_has_a_backend_per_host() {
    let conf = render(
        ProxyKind::Haproxy,
        &model(),
        1,
        &RenderOptions::default(),
        None,
    )
    .unwrap();
    for needle in [
        "bind *:80",
        "backend test.local\n    balance leastconn",
        "option httpchk GET /health",
        "server t1 127.0.0.2:32768 check inter 500ms",
        "default_backend unavailable",
    ] {
        assert!(conf.contains(needle), "{needle:?} missing from:\n{conf}");
    }
}

#[test]
fn an_operator_template_sees_the_model_and_its_errors_name_the_line() {
    let mine = "{% for h in hosts %}{{ h.name }}={{ h.upstreams | length }}\n{% endfor %}";
    let out = render(
        ProxyKind::Nginx,
        &model(),
        1,
        &RenderOptions::default(),
        Some(("mine.j2", mine)),
    )
    .unwrap();
    assert_eq!(out, "empty.local=0\ntest.local=2\n");
    let broken = "ok\n{% for h in hosts %}{{ h.name }\n";
    let err = render(
        ProxyKind::Nginx,
        &model(),
        1,
        &RenderOptions::default(),
        Some(("broken.j2", broken)),
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("template broken.j2: line 2"),
        "{err}"
    );
    let undefined = render(
        ProxyKind::Nginx,
        &model(),
        1,
        &RenderOptions::default(),
        Some(("u.j2", "{{ nothing.here }}")),
    );
    assert!(
        undefined.is_err(),
        "undefined values are errors, not empty text"
    );
}

#[test]
fn kinds_parse() {
    assert_eq!("nginx".parse(), Ok(ProxyKind::Nginx));
    assert_eq!(
        "traefik".parse::<ProxyKind>().unwrap_err().to_string(),
        "unknown proxy kind \"traefik\": expected nginx or haproxy"
    );
}

/// Values an attacker may control, each aimed at the config's syntax.
const HOSTILE: &[&str] = &[
    "1.2.3.4:80; }",
    "127.0.0.9}\nserver 6.6.6.6:80;",
    "a b",
    "#",
    "evil;",
    "6.6.6.6 # x",
    "}",
    "{",
];

/// Lines that start a `server` entry (nginx upstream or haproxy backend), and the braces.
fn structure(conf: &str) -> (usize, usize, usize) {
    let servers = conf
        .lines()
        .filter(|l| l.trim_start().starts_with("server ") && !l.contains('{'))
        .count();
    (
        servers,
        conf.matches('{').count(),
        conf.matches('}').count(),
    )
}

#[test]
fn hostile_addresses_host_ips_and_labels_cannot_change_the_config_structure() {
    use crate::model::{Node, Protocol, PublishedPort, Service, Task, TaskState};
    use crate::proxy::model::build;

    let node = |id: String, addr: &str| -> Node {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("node-{id}"), "addr": addr,
            "cpus": 1, "memory_bytes": 1, "status": "ready",
        }))
        .unwrap()
    };
    let service = |id: &str, labels: serde_json::Value| -> Service {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": format!("svc-{id}"), "image": "i", "replicas": 1, "labels": labels,
        }))
        .unwrap()
    };
    let task = |id: String, node: String, host_ip: &str| -> Task {
        let mut t = Task::new(id, "web".into(), 1, 0);
        t.node_id = Some(node);
        t.state = TaskState::Running;
        t.ports = vec![PublishedPort {
            container_port: 80,
            protocol: Protocol::Tcp,
            host_ip: host_ip.into(),
            host_port: 32768,
        }];
        t
    };
    let mut nodes = vec![node("good".into(), "127.0.0.2")];
    let mut tasks = vec![task("t-good".into(), "good".into(), "")];
    for (i, hostile) in HOSTILE.iter().enumerate() {
        // A node that registered a hostile address (the dispatcher refuses it; an older
        // record may hold one), and a task reporting a hostile host IP on a good node.
        nodes.push(node(format!("h{i}"), hostile));
        tasks.push(task(format!("t-node-{i}"), format!("h{i}"), ""));
        tasks.push(task(format!("t-ip-{i}"), "good".into(), hostile));
    }
    let web = service(
        "web",
        serde_json::json!({"interlock.hostname": "web", "interlock.domain": "local"}),
    );
    let mut services = vec![web];
    for (i, hostile) in HOSTILE.iter().enumerate() {
        for label in [
            "hostname",
            "domain",
            "alias_domain",
            "context_root",
            "ssl_cert",
            "websocket_endpoint",
            "health_check",
            "backend_option",
        ] {
            let mut labels = serde_json::json!({"interlock.hostname": format!("evil{i}")});
            labels[format!("interlock.{label}")] = serde_json::json!(hostile);
            services.push(service(&format!("evil-{label}-{i}"), labels));
        }
    }
    let model = build(
        &nodes.iter().collect::<Vec<_>>(),
        &services.iter().collect::<Vec<_>>(),
        &tasks.iter().collect::<Vec<_>>(),
    );
    // The one good server is all the model serves; every hostile value is one error line.
    let web = model.hosts.iter().find(|h| h.name == "web.local").unwrap();
    assert_eq!(
        web.upstreams,
        vec![Upstream {
            addr: "127.0.0.2:32768".into(),
            task_id: "t-good".into(),
            node: "node-good".into(),
        }]
    );
    assert!(
        model.errors.len() >= HOSTILE.len() * 2,
        "{:?}",
        model.errors
    );
    assert!(model.errors.iter().all(|e| !e.contains('\n')));

    for kind in [ProxyKind::Nginx, ProxyKind::Haproxy] {
        let conf = render(kind, &model, 1, &RenderOptions::default(), None).unwrap();
        let (servers, open, close) = structure(&conf);
        // Hosts that took a hostile label away are left out; those that remain
        // (e.g. `evil3` with a harmless `#` alias refused) serve nothing.
        assert_eq!(servers, 1, "{kind}: one server line\n{conf}");
        assert_eq!(open, close, "{kind}: braces balance\n{conf}");
        for marker in ["6.6.6.6", "1.2.3.4", "evil;"] {
            assert!(!conf.contains(marker), "{kind}: {marker:?} in\n{conf}");
        }
    }
}

#[test]
fn a_model_with_a_value_that_is_not_plain_is_refused_not_rendered() {
    for hostile in HOSTILE {
        let mut models = Vec::new();
        for field in 0..6 {
            if field == 5 && *hostile == "a b" {
                continue; // words with spaces are what a backend option is
            }
            let mut m = model();
            let host = &mut m.hosts[1];
            match field {
                0 => host.upstreams[0].addr = hostile.to_string(),
                1 => host.upstreams[0].task_id = hostile.to_string(),
                2 => host.upstreams[0].node = hostile.to_string(),
                3 => host.name = hostile.to_string(),
                4 => host.context_root = Some(format!("/app{hostile}")),
                _ => host.backend_options = vec![format!("x{hostile}")],
            }
            models.push(m);
        }
        for (i, m) in models.iter().enumerate() {
            for kind in [ProxyKind::Nginx, ProxyKind::Haproxy] {
                let err = render(kind, m, 1, &RenderOptions::default(), None).unwrap_err();
                assert!(
                    matches!(err, RenderError::Unsafe(_)),
                    "{hostile:?} in field {i}: {err}"
                );
            }
        }
    }
}
