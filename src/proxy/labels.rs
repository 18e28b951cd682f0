//! Interlock's labels on a service, read into one `ProxyHost` template (without upstreams).
//! Every value is checked, so that nothing a label says can break out of the config it is
//! written into; a bad value is one clear error naming the label. Booleans honour their value
//! (`interlock.ssl=false` is off, unlike Interlock).

use std::collections::BTreeMap;

use crate::model::{Balance, ProxyHost};

pub const HOSTNAME: &str = "interlock.hostname";
pub const DOMAIN: &str = "interlock.domain";
pub const PORT: &str = "interlock.port";

/// The host a service asks to be served as, or None if it has no `interlock.hostname`; the
/// container port to send traffic to (None: the first published one).
pub fn host_of(
    labels: &BTreeMap<String, String>,
) -> Result<Option<(ProxyHost, Option<u16>)>, String> {
    let Some(hostname) = labels.get(HOSTNAME) else {
        return Ok(None);
    };
    let get = |k: &str| labels.get(&format!("interlock.{k}")).map(|v| v.trim());
    let bad = |k: &str, v: &str, why: &str| format!("label interlock.{k}={v:?}: {why}");
    let dns = |k: &str, v: &str| -> Result<String, String> {
        if super::safe::is_dns_name(v) {
            Ok(v.to_ascii_lowercase())
        } else {
            Err(bad(
                k,
                v,
                "expected a DNS name (letters, digits, '-' and '.')",
            ))
        }
    };
    let flag = |k: &str| -> Result<bool, String> {
        match get(k) {
            None => Ok(false),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" | "" => Ok(false),
                _ => Err(bad(k, v, "expected true or false")),
            },
        }
    };
    let path = |k: &str, v: &str| -> Result<String, String> {
        if super::safe::is_plain_path(v) {
            Ok(v.to_string())
        } else {
            Err(bad(
                k,
                v,
                "expected an absolute path without spaces, quotes, ';', '{', '}', '#' or '$'",
            ))
        }
    };
    let list = |k: &str| -> Vec<String> {
        get(k)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };

    let hostname = dns("hostname", hostname.trim())?;
    let name = match get("domain") {
        Some(domain) if !domain.is_empty() => format!("{hostname}.{}", dns("domain", domain)?),
        _ => hostname.clone(),
    };
    let port = match get("port") {
        None => None,
        Some(v) => Some(
            v.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("port", v, "expected a port number from 1 to 65535"))?,
        ),
    };
    let mut aliases = Vec::new();
    for alias in list("alias_domain") {
        aliases.push(format!("{hostname}.{}", dns("alias_domain", &alias)?));
    }
    let mut balance = match get("balance_algorithm") {
        None | Some("") => Balance::RoundRobin,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "roundrobin" | "round_robin" => Balance::RoundRobin,
            "least_conn" | "leastconn" => Balance::LeastConn,
            "ip_hash" | "source" => Balance::IpHash,
            _ => {
                return Err(bad(
                    "balance_algorithm",
                    v,
                    "unknown algorithm: expected roundrobin, least_conn or ip_hash",
                ))
            }
        },
    };
    if flag("ip_hash")? {
        balance = Balance::IpHash;
    }
    let ssl = flag("ssl")?;
    let ssl_cert = match get("ssl_cert") {
        Some(v) => path("ssl_cert", v)?,
        None => format!("/etc/ssl/certs/{name}.pem"),
    };
    let ssl_cert_key = match get("ssl_cert_key") {
        Some(v) => path("ssl_cert_key", v)?,
        None => format!("/etc/ssl/private/{name}.key"),
    };
    let mut websocket_endpoints = Vec::new();
    for ws in list("websocket_endpoint") {
        websocket_endpoints.push(path("websocket_endpoint", &ws)?);
    }
    let context_root = match get("context_root") {
        None | Some("") => None,
        Some(v) => Some(path("context_root", v)?),
    };
    let mut backend_options = Vec::new();
    for option in list("backend_option") {
        if !super::safe::is_option_words(&option) {
            return Err(bad(
                "backend_option",
                &option,
                "expected words of letters, digits, '-', '_' and '.'",
            ));
        }
        backend_options.push(option);
    }
    let health_check = match get("health_check") {
        None | Some("") => None,
        Some(v) => Some(path("health_check", v)?),
    };
    let health_check_interval_ms = match get("health_check_interval") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .ok()
                .filter(|ms| (100..=3_600_000).contains(ms))
                .ok_or_else(|| {
                    bad(
                        "health_check_interval",
                        v,
                        "expected milliseconds from 100 to 3600000",
                    )
                })?,
        ),
    };
    let host = ProxyHost {
        name,
        aliases,
        upstreams: Vec::new(),
        balance,
        ssl,
        ssl_only: ssl && flag("ssl_only")?,
        ssl_cert,
        ssl_cert_key,
        websocket_endpoints,
        context_root,
        context_root_rewrite: flag("context_root_rewrite")?,
        backend_options,
        health_check,
        health_check_interval_ms,
    };
    Ok(Some((host, port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("interlock.{k}"), v.to_string()))
            .collect()
    }

    #[test]
    fn the_seed_labels_make_test_local() {
        let (host, port) = host_of(&labels(&[("hostname", "test"), ("domain", "local")]))
            .unwrap()
            .unwrap();
        assert_eq!(host.name, "test.local");
        assert_eq!(port, None);
        assert_eq!(host.balance, Balance::RoundRobin);
        assert!(!host.ssl);
        assert_eq!(host_of(&BTreeMap::new()), Ok(None));
    }

    #[test]
    fn every_option_is_read() {
        let (host, port) = host_of(&labels(&[
            ("hostname", "App"),
            ("domain", "example.com"),
            ("port", "8080"),
            ("alias_domain", "example.org, example.net"),
            ("ssl", "true"),
            ("ssl_only", "yes"),
            ("ssl_cert", "/certs/app.pem"),
            ("websocket_endpoint", "/ws,/live"),
            ("context_root", "/app"),
            ("context_root_rewrite", "1"),
            ("balance_algorithm", "leastconn"),
            ("backend_option", "forwardfor, http-server-close"),
            ("health_check", "/health"),
            ("health_check_interval", "500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(host.name, "app.example.com");
        assert_eq!(port, Some(8080));
        assert_eq!(host.aliases, ["app.example.org", "app.example.net"]);
        assert!(host.ssl && host.ssl_only);
        assert_eq!(host.ssl_cert, "/certs/app.pem");
        assert_eq!(host.ssl_cert_key, "/etc/ssl/private/app.example.com.key");
        assert_eq!(host.websocket_endpoints, ["/ws", "/live"]);
        assert_eq!(host.context_root.as_deref(), Some("/app"));
        assert!(host.context_root_rewrite);
        assert_eq!(host.balance, Balance::LeastConn);
        assert_eq!(host.backend_options, ["forwardfor", "http-server-close"]);
        assert_eq!(host.health_check.as_deref(), Some("/health"));
        assert_eq!(host.health_check_interval_ms, Some(500));
    }

    #[test]
    fn booleans_honour_their_value() {
        let (host, _) = host_of(&labels(&[
            ("hostname", "a"),
            ("ssl", "false"),
            ("ssl_only", "true"),
            ("ip_hash", "false"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!host.ssl && !host.ssl_only);
        assert_eq!(host.balance, Balance::RoundRobin);
        let (host, _) = host_of(&labels(&[("hostname", "a"), ("ip_hash", "true")]))
            .unwrap()
            .unwrap();
        assert_eq!(host.balance, Balance::IpHash);
    }

    #[test]
    fn bad_values_are_one_clear_error_naming_the_label() {
        for (pairs, needle) in [
            (vec![("hostname", "a b")], "interlock.hostname=\"a b\""),
            (
                vec![("hostname", "a"), ("port", "http")],
                "interlock.port=\"http\"",
            ),
            (
                vec![("hostname", "a"), ("balance_algorithm", "fastest")],
                "unknown algorithm",
            ),
            (
                vec![("hostname", "a"), ("ssl", "maybe")],
                "expected true or false",
            ),
            (
                vec![("hostname", "a"), ("context_root", "/x; return 200")],
                "interlock.context_root",
            ),
            (
                vec![("hostname", "a"), ("backend_option", "x\nlisten")],
                "interlock.backend_option",
            ),
            (
                vec![("hostname", "a"), ("health_check_interval", "5")],
                "milliseconds",
            ),
        ] {
            let err = host_of(&labels(&pairs)).unwrap_err();
            assert!(err.contains(needle), "{pairs:?}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }
}
