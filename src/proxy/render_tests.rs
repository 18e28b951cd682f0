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
