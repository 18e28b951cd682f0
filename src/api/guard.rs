//! Checks on a request's headers against browsers, for the HTTP APIs a manager serves (Docker's
//! and Consul's): a web page can send a "simple" POST (a form, text/plain) anywhere without
//! asking, and a DNS-rebinding page can reach a loopback listener under its own name. So on a
//! plaintext loopback listener a `Host` that is not this machine's is refused, and on any
//! listener an `Origin` from elsewhere (API clients send none).

use std::net::IpAddr;

use axum::http::{header, HeaderMap};

/// Refuses a foreign `Host` (when `check_host`: a plaintext loopback listener) and a foreign
/// `Origin` (always).
pub(crate) fn check_headers(headers: &HeaderMap, check_host: bool) -> Result<(), String> {
    if check_host {
        if let Some(host) = headers.get(header::HOST) {
            let text = host.to_str().unwrap_or("");
            if !is_local(authority_host(text)) {
                return Err(format!(
                    "shoal: Host {text:?} is not this machine: a loopback listener answers only requests addressed to localhost or a loopback IP"
                ));
            }
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        let host = text
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        if !host.is_some_and(|h| is_local(authority_host(h))) {
            return Err(format!(
                "shoal: requests from web pages (Origin {text:?}) are refused"
            ));
        }
    }
    Ok(())
}

/// The host of `host[:port]`, `[v6]:port` or `[v6]`, lowercase, without a trailing dot.
fn authority_host(authority: &str) -> String {
    let authority = authority.trim();
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
            _ => authority,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// This machine's names: `localhost` and `*.localhost` (RFC 6761: never resolved elsewhere),
/// loopback IPs, and `docker`, the name Go docker clients send when they speak over a unix
/// socket (relayed to TCP by a socket proxy).
fn is_local(host: String) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host == "docker"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_loopback_listener_answers_requests_addressed_to_this_machine_only() {
        // What the docker CLI, docker-compose (docker-py) and Go SDKs send.
        for host in [
            "127.0.0.1:2375",
            "localhost:2375",
            "localhost",
            "[::1]:2375",
            "127.0.0.2:8333",
            "api.moby.localhost",
            "docker",
            "LOCALHOST.:2375",
        ] {
            check_headers(&headers(&[(header::HOST, host)]), true)
                .unwrap_or_else(|e| panic!("{host}: {e}"));
        }
        check_headers(&HeaderMap::new(), true).unwrap();
        for host in [
            "evil.example:2375",
            "evil.example",
            "localhost.evil.example",
            "10.0.0.1:2375",
            "127.0.0.1.evil.example",
            "",
        ] {
            let e = check_headers(&headers(&[(header::HOST, host)]), true).unwrap_err();
            assert!(e.contains("is not this machine"), "{host}: {e}");
        }
        // Beyond loopback (TLS, or --insecure-docker-api), any name reaches it.
        check_headers(&headers(&[(header::HOST, "manager-1.example:2376")]), false).unwrap();
    }

    #[test]
    fn foreign_origins_are_refused_on_every_listener() {
        for origin in ["https://evil.example", "null", "http://10.0.0.1:2375", "x"] {
            for check_host in [true, false] {
                let e =
                    check_headers(&headers(&[(header::ORIGIN, origin)]), check_host).unwrap_err();
                assert!(e.contains("web pages"), "{origin}: {e}");
            }
        }
        check_headers(&headers(&[(header::ORIGIN, "http://localhost:3000")]), true).unwrap();
        check_headers(&headers(&[(header::ORIGIN, "http://127.0.0.1")]), false).unwrap();
    }
}
