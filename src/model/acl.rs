//! ACL tokens of the Consul-compatible HTTP API, Consul's way: a token is a secret a client
//! sends (`X-Consul-Token`), and its rules say what it may do with keys (by prefix, the longest
//! matching prefix deciding) and with sessions. The store keeps each token under the SHA-256 of
//! its secret (`keys::acl_token`), never the secret, plus a public accessor id to list and
//! delete it by.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a rule grants; each level includes the ones before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    #[default]
    Deny,
    Read,
    Write,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Deny => "deny",
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// Consul's `key_prefix "<prefix>" { policy = "<access>" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRule {
    pub prefix: String,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclToken {
    /// Public, UUID-shaped: how operators name the token (`shoal acl token delete`).
    pub accessor_id: String,
    /// SHA-256 of the secret, 64 lowercase hex digits: also the last part of the token's key.
    pub secret_sha256: String,
    #[serde(default)]
    pub description: String,
    /// Key rules; a key no rule covers is denied.
    #[serde(default)]
    pub keys: Vec<KeyRule>,
    /// Sessions: read lists and shows them, write creates, renews and destroys them.
    #[serde(default)]
    pub session: Access,
    pub created_ms: u64,
}

/// The SHA-256 of a token's secret, as its key holds it.
pub fn secret_sha256(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl AclToken {
    /// What the token may do with `key`: the rule with the longest prefix of it; no rule, deny.
    pub fn key_access(&self, key: &str) -> Access {
        self.keys
            .iter()
            .filter(|r| key.starts_with(&r.prefix))
            .max_by_key(|r| r.prefix.len())
            .map_or(Access::Deny, |r| r.access)
    }

    /// The least the token may do with any key under `prefix` (what a recursive delete needs
    /// on every key it could remove): the rule governing `prefix` itself, and every rule for a
    /// longer prefix under it.
    pub fn least_under(&self, prefix: &str) -> Access {
        self.keys
            .iter()
            .filter(|r| r.prefix.len() > prefix.len() && r.prefix.starts_with(prefix))
            .map(|r| r.access)
            .fold(self.key_access(prefix), Access::min)
    }

    /// Checks what a stored token must be; the error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if !is_sha256_hex(&self.secret_sha256) {
            return Err("secret_sha256 must be 64 lowercase hex digits".into());
        }
        if self.accessor_id.is_empty()
            || self.accessor_id.len() > 64
            || !self
                .accessor_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "accessor id {:?} must be letters, digits and dashes",
                self.accessor_id
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in &self.keys {
            if !seen.insert(r.prefix.as_str()) {
                return Err(format!("two rules for the key prefix {:?}", r.prefix));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(rules: &[(&str, Access)]) -> AclToken {
        AclToken {
            accessor_id: "a".into(),
            secret_sha256: secret_sha256("s"),
            description: String::new(),
            keys: rules
                .iter()
                .map(|(p, a)| KeyRule {
                    prefix: p.to_string(),
                    access: *a,
                })
                .collect(),
            session: Access::Deny,
            created_ms: 0,
        }
    }

    #[test]
    fn the_longest_matching_prefix_decides() {
        let t = token(&[
            ("", Access::Read),
            ("app/", Access::Write),
            ("app/secret/", Access::Deny),
        ]);
        assert_eq!(t.key_access("other"), Access::Read);
        assert_eq!(t.key_access("app/x"), Access::Write);
        assert_eq!(t.key_access("app/secret/k"), Access::Deny);
        assert_eq!(token(&[]).key_access("x"), Access::Deny);
        // A recursive delete of app/ would reach app/secret/, which it may not touch.
        assert_eq!(t.least_under("app/"), Access::Deny);
        assert_eq!(t.least_under("app/a"), Access::Write);
        assert_eq!(t.least_under(""), Access::Deny);
    }

    #[test]
    fn secrets_hash_to_sha256_hex_and_tokens_validate() {
        let h = secret_sha256("abc");
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&h) && !is_sha256_hex("abc") && !is_sha256_hex(&h.to_uppercase()));
        assert!(token(&[("a/", Access::Read)]).validate().is_ok());
        let dup = token(&[("a/", Access::Read), ("a/", Access::Write)]);
        assert!(dup.validate().unwrap_err().contains("two rules"));
        let mut bad = token(&[]);
        bad.accessor_id = "x y".into();
        assert!(bad.validate().is_err());
        bad.accessor_id = "ok".into();
        bad.secret_sha256 = "00".into();
        assert!(bad.validate().is_err());
    }
}
