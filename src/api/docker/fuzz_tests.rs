//! Random and adversarial requests against the Docker API, in process on a one-manager store
//! with no nodes: no panic, no 5xx for a client's mistake (501 is the truth for what shoal does
//! not serve), and a refused request changes nothing in the store.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::objects::Objects;
use super::streams::Execs;
use super::{dispatch, Api, DockerPolicy};
use crate::api::fuzz::{self, Hostile};
use crate::api::test_store::TestStore;

const QUERY_NAMES: &[&str] = &[
    "t",
    "signal",
    "all",
    "filters",
    "name",
    "force",
    "v",
    "condition",
    "fromImage",
    "tag",
    "limit",
    "since",
    "until",
    "size",
    "version",
    "rollback",
    "registryAuthFrom",
];

const BODIES: &[&str] = &[
    r#"{"Image":"nginx"}"#,
    r#"{"Image":"nginx","HostConfig":{"Privileged":true}}"#,
    r#"{"Image":"nginx","HostConfig":{"Binds":["/:/host"],"PidMode":"host"}}"#,
    r#"{"Image":"nginx","HostConfig":{"Devices":[{"PathOnHost":"/dev/mem"}],"CapAdd":["ALL"]}}"#,
    r#"{"Image":5}"#,
    r#"{"Image":"nginx","ExposedPorts":{"99999/tcp":{}},"HostConfig":{"PortBindings":{"80/tcp":[{"HostPort":"-1"}]}}}"#,
    r#"{"Image":"nginx","HostConfig":{"Memory":-1,"NanoCpus":18446744073709551615}}"#,
    r#"{"Name":"n","Driver":"overlay","IPAM":{"Config":[{"Subnet":"300.1.2.3/99"}]}}"#,
    r#"{"Name":"","Labels":{"":""}}"#,
    r#"{"Container":"nope","EndpointConfig":{"IPAddress":"x"}}"#,
    r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"nginx"}},"Mode":{"Replicated":{"Replicas":18446744073709551615}}}"#,
    r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{"Image":"nginx"}},"Mode":{"Replicated":{"Replicas":-1}}}"#,
    r#"{"Name":"s","TaskTemplate":{"ContainerSpec":{}},"EndpointSpec":{"Ports":[{"TargetPort":0,"PublishedPort":70000}]}}"#,
    r#"{"Name":"../../s","TaskTemplate":{"ContainerSpec":{"Image":"nginx"}},"Mode":{"Global":{}}}"#,
    r#"{"Availability":"drain","Role":"manager","Labels":{"a":"b"}}"#,
    r#"{"Availability":"explode"}"#,
    r#"{"Cmd":["sh"],"AttachStdout":true}"#,
    r#"{"Detach":true,"Tty":false}"#,
];

fn path() -> impl Strategy<Value = String> {
    let s = fuzz::segment;
    let version = prop::sample::select(vec![
        "",
        "",
        "/v1.44",
        "/v1.12",
        "/v99999999999999999999",
        "/v",
    ]);
    let route = prop_oneof![
        1 => prop::sample::select(vec![
            "/_ping", "/version", "/info", "/containers/json", "/containers/create",
            "/images/json", "/images/load", "/images/create", "/networks", "/networks/create",
            "/services", "/services/create", "/tasks", "/nodes", "/volumes", "/secrets",
            "/configs", "/swarm", "/build", "/system/df",
        ])
        .prop_map(String::from),
        3 => (
            prop::sample::select(vec![
                "containers", "exec", "images", "networks", "services", "tasks", "nodes",
                "volumes", "plugins", "secrets",
            ]),
            s(),
            prop::sample::select(vec![
                "", "/json", "/start", "/stop", "/kill", "/restart", "/wait", "/rename",
                "/exec", "/logs", "/top", "/stats", "/resize", "/pause", "/update",
                "/connect", "/disconnect", "/attach", "/export", "/x",
            ]),
        )
            .prop_map(|(kind, id, verb)| format!("/{kind}/{id}{verb}")),
        1 => prop::collection::vec(s(), 0..4).prop_map(|p| format!("/{}", p.join("/"))),
    ];
    (version, route).prop_map(|(v, r)| format!("{v}{r}"))
}

fn request() -> impl Strategy<Value = Hostile> {
    (
        fuzz::method(),
        path(),
        fuzz::query(QUERY_NAMES),
        fuzz::headers(),
        fuzz::body(BODIES),
    )
        .prop_map(|(method, path, query, headers, body)| {
            let target = if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            };
            Hostile {
                method,
                target,
                headers,
                body,
            }
        })
}

/// The store has no nodes: what needs one answers so, a server-side condition.
fn no_node(status: u16, body: &str) -> bool {
    status == 500 && body.contains("no node is READY")
}

#[test]
fn hostile_requests_get_a_client_error_and_refused_writes_change_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(TestStore::open());
    let api = Api {
        objects: Objects {
            store: store.store.clone(),
            index: store.objects.clone(),
        },
        engine_tls: None,
        execs: Execs::default(),
        policy: std::sync::Arc::new(DockerPolicy::default()),
        check_host: true,
    };
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&request(), |req| {
        rt.block_on(async {
            let mut builder = Request::builder()
                .method(req.method.clone())
                .uri(req.target.as_str());
            for (name, value) in req.header_map().iter() {
                builder = builder.header(name, value);
            }
            let Ok(http) = builder.body(Body::from(req.body.clone())) else {
                return Ok(()); // hyper refuses it before any handler
            };
            let before = store.dump().await;
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                dispatch(State(api.clone()), http),
            )
            .await
            .map_err(|_| TestCaseError::fail("no answer within 10s"))?;
            let status = answer.status().as_u16();
            *seen.borrow_mut().entry(status).or_default() += 1;
            // A stream (`events`) is not read to its end; its status is what counts.
            let text = if req.target.contains("events") {
                String::new()
            } else {
                let body = answer.into_body().collect().await.unwrap().to_bytes();
                String::from_utf8_lossy(&body).into_owned()
            };
            prop_assert!(
                status < 500 || status == 501 || no_node(status, &text),
                "{} {} answered {status}: {text}",
                req.method,
                req.target
            );
            if status >= 400 || req.method == Method::GET || req.method == Method::HEAD {
                let after = store.dump().await;
                prop_assert!(
                    before.0 == after.0,
                    "{} {} answered {status} and changed the store",
                    req.method,
                    req.target
                );
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The requests reach the handlers: some succeed, most are refused for several reasons.
    fuzz::assert_reached_handlers(&seen.into_inner());
}
