//! Who calls the Consul API and what they may do: Consul's ACL tokens. A request names its
//! token in `X-Consul-Token`, `Authorization: Bearer`, or `?token=`; the token is found with one
//! read of this manager's replica (`keys::acl_token`, the SHA-256 of the secret), so a token
//! created or deleted on any manager takes effect here once applied. A request without a token
//! gets the manager's `--http-acl-default-policy`: `allow` (everything, as before ACLs) or
//! `deny` (nothing of the KV, sessions or transactions). Status, catalog, health and metrics
//! endpoints need no token. The cluster's own records (`/shoal/`) stay refused to every writer,
//! whatever the token says (`security::policy`).

use axum::http::HeaderMap;
use shoal_raft::Range;

use super::error::ApiError;
use super::query::decode;
use super::Api;
use crate::model::{keys, secret_sha256, Access, AclToken};

/// What one request may do.
#[derive(Debug, Clone)]
pub(crate) struct Acl {
    token: Option<AclToken>,
    /// What a request without a token may do (`--http-acl-default-policy`).
    anonymous: Access,
}

/// The secret a request carries, if any (an empty one is none, as Consul's anonymous token).
fn secret(headers: &HeaderMap, raw_query: Option<&str>) -> Result<Option<String>, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("x-consul-token").filter(|t| !t.is_empty()) {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(t) = header("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
        return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    for part in raw_query.unwrap_or("").split('&') {
        if let Some(v) = part.strip_prefix("token=") {
            return Ok(Some(decode(v, true)?).filter(|t| !t.is_empty()));
        }
    }
    Ok(None)
}

impl Acl {
    /// Everything, as without ACLs (for tests of other parts).
    #[cfg(test)]
    pub(crate) fn allow_all() -> Acl {
        Acl {
            token: None,
            anonymous: Access::Write,
        }
    }

    /// The token of a request, looked up in this manager's replica; 403 "ACL not found" for a
    /// secret no token has.
    pub(crate) async fn resolve(
        api: &Api,
        headers: &HeaderMap,
        raw_query: Option<&str>,
    ) -> Result<Acl, ApiError> {
        let anonymous = api.acl_default;
        let Some(secret) = secret(headers, raw_query)? else {
            return Ok(Acl {
                token: None,
                anonymous,
            });
        };
        let range = Range {
            key: keys::acl_token(&secret_sha256(&secret)).into_bytes(),
            ..Default::default()
        };
        let (found, _) = api.store.range(&range, true).await?;
        let token = found
            .kvs
            .first()
            .and_then(|kv| serde_json::from_slice::<AclToken>(&kv.value).ok())
            .ok_or(ApiError::AclNotFound)?;
        Ok(Acl {
            token: Some(token),
            anonymous,
        })
    }

    /// What the request may do with `key`.
    pub(crate) fn key(&self, key: &str) -> Access {
        self.token
            .as_ref()
            .map_or(self.anonymous, |t| t.key_access(key))
    }

    fn denied(&self, permission: String, on: &str) -> ApiError {
        let who = match &self.token {
            Some(t) => format!("token with AccessorID '{}'", t.accessor_id),
            None => "anonymous token".to_string(),
        };
        ApiError::PermissionDenied(format!(
            "Permission denied: {who} lacks permission '{permission}' on {on:?}"
        ))
    }

    /// Refuses unless the request may do `need` with `key`.
    pub(crate) fn need_key(&self, key: &str, need: Access) -> Result<(), ApiError> {
        if self.key(key) >= need {
            return Ok(());
        }
        Err(self.denied(format!("key:{need}"), key))
    }

    /// Refuses unless the request may do `need` with every key under `prefix` (a recursive
    /// delete, a transaction's tree read).
    pub(crate) fn need_tree(&self, prefix: &str, need: Access) -> Result<(), ApiError> {
        let least = self
            .token
            .as_ref()
            .map_or(self.anonymous, |t| t.least_under(prefix));
        if least >= need {
            return Ok(());
        }
        Err(self.denied(format!("key:{need}"), &format!("{prefix}*")))
    }

    /// Refuses unless the request may do `need` with sessions.
    pub(crate) fn need_session(&self, need: Access) -> Result<(), ApiError> {
        let has = self.token.as_ref().map_or(self.anonymous, |t| t.session);
        if has >= need {
            return Ok(());
        }
        Err(self.denied(format!("session:{need}"), ""))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn the_secret_comes_from_the_header_the_bearer_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(secret(&h, Some("recurse&dc=dc1")).unwrap(), None);
        assert_eq!(
            secret(&h, Some("token=a%2Bb")).unwrap().as_deref(),
            Some("a+b")
        );
        assert_eq!(secret(&h, Some("token=")).unwrap(), None);
        h.insert("authorization", HeaderValue::from_static("Bearer s2"));
        assert_eq!(secret(&h, Some("token=q")).unwrap().as_deref(), Some("s2"));
        h.insert("x-consul-token", HeaderValue::from_static("s1"));
        assert_eq!(secret(&h, None).unwrap().as_deref(), Some("s1"));
    }

    #[test]
    fn anonymous_requests_get_the_default_and_tokens_their_rules() {
        let deny = Acl {
            token: None,
            anonymous: Access::Deny,
        };
        let err = deny
            .need_key("app/x", Access::Read)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("anonymous token lacks permission 'key:read'"),
            "{err}"
        );
        assert!(Acl::allow_all().need_tree("", Access::Write).is_ok());
        let token: AclToken = serde_json::from_value(serde_json::json!({
            "accessor_id": "a1", "secret_sha256": secret_sha256("s"), "created_ms": 0,
            "keys": [{"prefix": "app/", "access": "write"}, {"prefix": "app/ro/", "access": "read"}],
            "session": "read",
        }))
        .unwrap();
        let acl = Acl {
            token: Some(token),
            anonymous: Access::Write,
        };
        assert!(acl.need_key("app/x", Access::Write).is_ok());
        assert!(acl.need_key("app/ro/x", Access::Read).is_ok());
        let err = acl
            .need_key("app/ro/x", Access::Write)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("AccessorID 'a1' lacks permission 'key:write'"),
            "{err}"
        );
        assert!(acl.need_key("other", Access::Read).is_err());
        assert!(acl.need_tree("app/", Access::Write).is_err());
        assert!(acl.need_tree("app/", Access::Read).is_ok());
        assert!(acl.need_session(Access::Read).is_ok());
        assert!(acl.need_session(Access::Write).is_err());
    }
}
