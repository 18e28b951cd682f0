//! Checks on a request's headers before any handler sees it, against browsers: a web page can
//! send a "simple" POST (a form, text/plain) anywhere without asking, and a DNS-rebinding page
//! can reach a loopback listener under its own name. So on a plaintext loopback listener a
//! `Host` that is not this machine's is refused; on any listener an `Origin` from elsewhere is
//! refused (docker clients send none); and the JSON bodies dockerd requires
//! `Content-Type: application/json` for require it here too (a browser cannot send that
//! cross-site without a preflight, which this API never answers).

use std::net::IpAddr;

use axum::http::{header, HeaderMap};

use super::error::DockerError;

/// Refuses a foreign `Host` (when `check_host`: a plaintext loopback listener) and a foreign
/// `Origin` (always).
pub(crate) fn check_headers(headers: &HeaderMap, check_host: bool) -> Result<(), DockerError> {
    if check_host {
        if let Some(host) = headers.get(header::HOST) {
            let text = host.to_str().unwrap_or("");
            if !is_local(authority_host(text)) {
                return Err(DockerError::Forbidden(format!(
                    "shoal: Host {text:?} is not this machine: a loopback Docker API answers only requests addressed to localhost or a loopback IP"
                )));
            }
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or("");
        let host = text
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""));
        if !host.is_some_and(|h| is_local(authority_host(h))) {
            return Err(DockerError::Forbidden(format!(
                "shoal: requests from web pages (Origin {text:?}) are refused"
            )));
        }
    }
    Ok(())
}

/// dockerd's rule for the endpoints that read a JSON body: a `Content-Type` must be
/// `application/json` (parameters allowed); none is accepted only without a body.
pub(crate) fn check_json(headers: &HeaderMap) -> Result<(), DockerError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("\u{fffd}"))
        .unwrap_or("");
    if ct.is_empty() {
        let length = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0");
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        if length.trim() == "0" && !chunked {
            return Ok(());
        }
    }
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        return Ok(());
    }
    Err(DockerError::BadRequest(format!(
        "unsupported Content-Type header ({ct}): must be 'application/json'"
    )))
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
            assert!(matches!(e, DockerError::Forbidden(_)), "{host}: {e}");
        }
        // Beyond loopback (TLS, or --insecure-docker-api), any name reaches it.
        check_headers(&headers(&[(header::HOST, "manager-1.example:2376")]), false).unwrap();
    }

    #[test]
    fn foreign_origins_are_refused_on_every_listener() {
        for origin in ["https://evil.example", "null", "http://10.0.0.1:2375", "x"] {
            for check_host in [true, false] {
                let e = check_headers(&headers(&[(header::ORIGIN, origin)]), check_host)
                    .unwrap_err();
                assert!(
                    e.to_string().contains("web pages") && matches!(e, DockerError::Forbidden(_)),
                    "{origin}: {e}"
                );
            }
        }
        check_headers(&headers(&[(header::ORIGIN, "http://localhost:3000")]), true).unwrap();
        check_headers(&headers(&[(header::ORIGIN, "http://127.0.0.1")]), false).unwrap();
    }

    #[test]
    fn json_bodies_need_a_json_content_type() {
        for ok in [
            &[(header::CONTENT_TYPE, "application/json")][..],
            &[(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            &[(header::CONTENT_TYPE, "Application/JSON")],
            &[],
            &[(header::CONTENT_LENGTH, "0")],
        ] {
            check_json(&headers(ok)).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for bad in [
            &[(header::CONTENT_TYPE, "text/plain")][..],
            &[(header::CONTENT_TYPE, "application/x-www-form-urlencoded")],
            &[(header::CONTENT_TYPE, "multipart/form-data; boundary=x")],
            &[(header::CONTENT_LENGTH, "12")],
            &[(header::TRANSFER_ENCODING, "chunked")],
            &[(header::CONTENT_TYPE, "application/jsonx")],
        ] {
            let e = check_json(&headers(bad)).unwrap_err();
            assert!(
                e.to_string().starts_with("unsupported Content-Type header (")
                    && e.to_string().ends_with("): must be 'application/json'"),
                "{bad:?}: {e}"
            );
        }
    }
}
