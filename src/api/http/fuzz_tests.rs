//! Random and adversarial requests against the Consul-compatible API, in process on a
//! one-manager store: no panic, no 5xx for a client's mistake, and a refused request changes
//! nothing in the store.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, Uri};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::sync::watch;

use super::{dispatch, Api};
use crate::api::fuzz::{self, Hostile};
use crate::api::test_store::TestStore;
use crate::metrics::manager::ManagerMetrics;
use crate::model::Access;

const QUERY_NAMES: &[&str] = &[
    "recurse",
    "keys",
    "separator",
    "raw",
    "index",
    "wait",
    "cas",
    "flags",
    "acquire",
    "release",
    "stale",
    "consistent",
    "dc",
    "token",
];

const BODIES: &[&str] = &[
    "value",
    r#"{"TTL":"10s"}"#,
    r#"{"TTL":"1s"}"#,
    r#"{"TTL":"99999999999999999999h"}"#,
    r#"{"TTL":"-10s"}"#,
    r#"{"TTL":10}"#,
    r#"{"Name":"n","Behavior":"delete","TTL":"15s"}"#,
    r#"{"Behavior":"explode"}"#,
    r#"{"LockDelay":"-1s"}"#,
    r#"{"LockDelay":"99999999999999999999s"}"#,
    r#"{"Node":"nope","Checks":["x"]}"#,
    r#"[{"KV":{"Verb":"set","Key":"fuzz/a","Value":"eA=="}}]"#,
    r#"[{"KV":{"Verb":"cas","Key":"fuzz/a","Value":"eA==","Index":18446744073709551615}}]"#,
    r#"[{"KV":{"Verb":"check-index","Key":"fuzz/a","Index":1}},{"KV":{"Verb":"delete-tree","Key":""}}]"#,
    r#"[{"KV":{"Verb":"lock","Key":"fuzz/a","Session":"00000000-0000-000a-0000-000000000000"}}]"#,
    r#"[{"KV":{"Verb":"set","Key":"fuzz/a","Value":"not base64!"}}]"#,
    r#"[{"KV":{"Verb":"explode","Key":"fuzz/a"}}]"#,
    r#"[{"KV":{"Verb":"set","Key":"","Value":""}}]"#,
    r#"[{"KV":{"Verb":"get","Key":"fuzz/a","Index":-1}}]"#,
    r#"[{"Node":{"Verb":"set"}}]"#,
    r#"{"KV":{}}"#,
];

fn path() -> impl Strategy<Value = String> {
    let s = fuzz::segment;
    prop_oneof![
        4 => prop::collection::vec(s(), 0..4).prop_map(|p| format!("/v1/kv/{}", p.join("/"))),
        1 => Just("/v1/kv".to_string()),
        1 => Just("/v1/kv/".to_string()),
        3 => (
            prop::sample::select(vec!["create", "destroy", "renew", "info", "list", "node", "x"]),
            s()
        )
            .prop_map(|(verb, arg)| format!("/v1/session/{verb}/{arg}")),
        1 => Just("/v1/session/create".to_string()),
        2 => Just("/v1/txn".to_string()),
        1 => prop::sample::select(vec![
            "/v1/status/leader",
            "/v1/status/peers",
            "/v1/agent/self",
            "/v1/catalog/nodes",
            "/v1/catalog/datacenters",
            "/health",
            "/v1/acl/token/self",
            "//v1/kv",
            "/v1/kv/%2F%2F",
        ])
        .prop_map(String::from),
        1 => s().prop_map(|p| format!("/{p}")),
    ]
}

fn request() -> impl Strategy<Value = Hostile> {
    (
        fuzz::method(),
        path(),
        fuzz::query(QUERY_NAMES),
        fuzz::headers(),
        prop::option::weighted(
            0.1,
            prop::sample::select(vec!["bogus".to_string(), String::new(), "x".repeat(4000)]),
        ),
        fuzz::body(BODIES),
    )
        .prop_map(|(method, path, query, mut headers, token, body)| {
            if let Some(t) = token {
                headers.push(("x-consul-token", t.to_string()));
            }
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

/// 500 for an unknown session in `?acquire` and for a `?dc` other than ours ("No path to
/// datacenter") are Consul's own answers (documented in `mod.rs`); clients match on them.
fn consul_compatible_500(status: u16, body: &str) -> bool {
    status == 500 && (body.contains("invalid session") || body.contains("No path to datacenter"))
}

#[test]
fn hostile_requests_get_a_client_error_and_refused_writes_change_nothing() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(TestStore::open());
    let creds = {
        let ca = shoal_tls::pki::RootCa::generate(store.store.cluster_id(), 1).unwrap();
        shoal_tls::Credentials::new(store.store.cluster_id(), &ca.cert_pem).unwrap()
    };
    // Blocking queries answer at once: the manager is "stopping".
    let (_stop, stopping) = watch::channel(true);
    let api = Api {
        store: store.store.clone(),
        stopping,
        check_host: true,
        metrics: ManagerMetrics {
            store: store.store.clone(),
            objects: store.objects.clone(),
            conns: Default::default(),
            creds,
        },
        acl_default: Access::Write,
    };
    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::cell::RefCell::new(std::collections::BTreeMap::<u16, usize>::new());
    let result = runner.run(&request(), |req| {
        rt.block_on(async {
            let Ok(uri) = req.target.parse::<Uri>() else {
                return Ok(()); // hyper refuses it before any handler
            };
            let before = store.dump().await;
            let answer = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                dispatch(
                    State(api.clone()),
                    req.method.clone(),
                    uri,
                    req.header_map(),
                    Bytes::from(req.body.clone()),
                ),
            )
            .await
            .map_err(|_| TestCaseError::fail("no answer within 10s"))?;
            let status = answer.status().as_u16();
            *seen.borrow_mut().entry(status).or_default() += 1;
            let body = answer.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body);
            prop_assert!(
                status < 500 || consul_compatible_500(status, &text),
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
