//! Generators of hostile HTTP requests shared by the API surfaces' property tests: mangled path
//! segments, query strings with huge, negative and non-numeric values, foreign headers and
//! broken bodies. A request is built from a route table the surface gives.

use axum::http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;

/// One generated request, before it becomes the surface's request type.
#[derive(Debug, Clone)]
pub(crate) struct Hostile {
    pub method: Method,
    /// Path and query, as on the request line.
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Hostile {
    pub fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                map.append(*name, v);
            }
        }
        map
    }
}

pub(crate) fn method() -> impl Strategy<Value = Method> {
    prop::sample::select(vec![
        Method::GET,
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::HEAD,
        Method::PATCH,
        Method::OPTIONS,
    ])
}

/// A path segment: real-looking names, traversal, bad escapes, huge and random ones.
pub(crate) fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]{1,8}",
        1 => Just(String::new()),
        1 => Just("..".to_string()),
        1 => Just("%2e%2e%2f%2e%2e".to_string()),
        1 => Just("%".to_string()),
        1 => Just("%ff%fe%00".to_string()),
        1 => Just("%C3%A9%E2%82%AC".to_string()),
        1 => Just("00000000-0000-000a-0000-000000000000".to_string()),
        1 => Just("ffffffff-ffff-ffff-ffff-ffffffffffff".to_string()),
        1 => Just("-1".to_string()),
        1 => Just("18446744073709551615".to_string()),
        1 => Just("x".repeat(5000)),
        2 => "([a-zA-Z0-9._~:@!$&'()*+,;=-]|%[0-9a-fA-F]{2}){0,16}",
    ]
}

/// A query value: numbers at and past every integer limit, durations, JSON, junk.
pub(crate) fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "-1",
            "10",
            "true",
            "True",
            "false",
            "abc",
            "1.5",
            "1e400",
            "NaN",
            "18446744073709551615",
            "18446744073709551616",
            "9223372036854775807",
            "-9223372036854775808",
            "9999999999999",
            "99999999999999999999999999",
            "4294967296",
            "1s",
            "1m",
            "10m",
            "1h",
            "-1s",
            "9999999999999s",
            "1e400s",
            "99999999999999999999h",
            "dc1",
            "dc2",
            "SIGKILL",
            "SIGNOPE",
            "999",
            "00000000-0000-000a-0000-000000000000",
            "%",
            "%ff",
            "%7B",
            "%7B%7D",
            "%5B%5D",
            "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D",
            "%7B%22label%22%3A5%7D",
            "%7B%22id%22%3A%7B%22x%22%3Atrue%7D%7D",
            "%7B%22a%22%3A%5B%5B%5D%5D%7D",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        "[a-z0-9%+]{0,12}",
    ]
}

/// A query string of parameters from `names` and random ones, some without a value.
pub(crate) fn query(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    let name = prop_oneof![
        6 => prop::sample::select(names).prop_map(String::from),
        1 => "[a-z%]{1,6}",
    ];
    prop::collection::vec((name, prop::option::weighted(0.85, value())), 0..5).prop_map(|ps| {
        ps.into_iter()
            .map(|(k, v)| match v {
                Some(v) => format!("{k}={v}"),
                None => k,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// Content-Type, Host and Origin, mostly harmless, sometimes foreign or malformed.
pub(crate) fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let content_type = prop::option::weighted(
        0.8,
        prop::sample::select(vec![
            "application/json",
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/x-tar",
            "",
            "application/jsonx",
        ]),
    );
    let host = prop::option::weighted(
        0.3,
        prop::sample::select(vec![
            "localhost",
            "127.0.0.1:2375",
            "[::1]:8500",
            "evil.example",
            "localhost.evil.example",
            "",
            "[::1",
        ]),
    );
    let origin = prop::option::weighted(
        0.1,
        prop::sample::select(vec!["http://evil.example", "null", "http://localhost:8080"]),
    );
    (content_type, host, origin).prop_map(|(c, h, o)| {
        let mut out = Vec::new();
        if let Some(c) = c {
            out.push(("content-type", c.to_string()));
        }
        if let Some(h) = h {
            out.push(("host", h.to_string()));
        }
        if let Some(o) = o {
            out.push(("origin", o.to_string()));
        }
        out
    })
}

/// A body: one of `samples` (valid and subtly wrong JSON for this surface), generic broken JSON,
/// a sample cut short, or random bytes.
pub(crate) fn body(samples: &'static [&'static str]) -> impl Strategy<Value = Vec<u8>> {
    let generic: &'static [&'static str] = &[
        "",
        "null",
        "[]",
        "{}",
        "\"x\"",
        "1e400",
        "-1",
        "{\"a\":",
        "{\"a\":1,\"a\":2}",
        "\u{feff}{}",
        "{\"\\ud800\":1}",
    ];
    prop_oneof![
        4 => prop::sample::select(samples).prop_map(|s| s.as_bytes().to_vec()),
        2 => prop::sample::select(generic).prop_map(|s| s.as_bytes().to_vec()),
        1 => (prop::sample::select(samples), any::<prop::sample::Index>()).prop_map(|(s, i)| {
            let cut = i.index(s.len().max(1));
            s.as_bytes()[..cut.min(s.len())].to_vec()
        }),
        1 => Just(format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// That a run's requests reached the handlers (statuses seen -> count): some succeeded, and
/// several kinds of client error came back, so a test cannot pass by refusing all at the door.
pub(crate) fn assert_reached_handlers(seen: &std::collections::BTreeMap<u16, usize>) {
    eprintln!("statuses: {seen:?}");
    assert!(seen.range(200..300).count() >= 1, "{seen:?}");
    assert!(seen.range(400..500).count() >= 3, "{seen:?}");
}
