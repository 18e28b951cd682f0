//! Checks on a Docker API request's headers before any handler sees it: browsers' and foreign
//! hosts' requests (`api::guard`), and the JSON bodies dockerd requires
//! `Content-Type: application/json` for require it here too (a browser cannot send that
//! cross-site without a preflight, which this API never answers).

use axum::http::{header, HeaderMap};

use super::error::DockerError;

/// Refuses a foreign `Host` (when `check_host`: a plaintext loopback listener) and a foreign
/// `Origin` (always), with 403.
pub(crate) fn check_headers(headers: &HeaderMap, check_host: bool) -> Result<(), DockerError> {
    crate::api::guard::check_headers(headers, check_host).map_err(DockerError::Forbidden)
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
                e.to_string()
                    .starts_with("unsupported Content-Type header (")
                    && e.to_string().ends_with("): must be 'application/json'"),
                "{bad:?}: {e}"
            );
        }
    }
}
