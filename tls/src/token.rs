//! Join tokens, as SwarmKit's: `SHOAL2-<cluster>-<root digest>-<secret>`. The digest pins the
//! cluster's root certificate, so a joining node cannot be fooled by a rogue manager; the secret
//! says which role the holder may join as (the manager token's secret or the worker token's).

use crate::TlsError;

const PREFIX: &str = "SHOAL2";

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    /// SHA-256 of the root certificate the joining node must find, hex.
    pub ca_digest: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("cluster_id", &self.cluster_id)
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A new random token secret.
pub fn new_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl JoinToken {
    pub fn new(cluster_id: &str, ca_digest: &str, secret: &str) -> JoinToken {
        JoinToken {
            cluster_id: cluster_id.to_string(),
            ca_digest: ca_digest.to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn parse(s: &str) -> Result<JoinToken, TlsError> {
        let bad = || {
            TlsError::BadInput(
                "malformed join token (expected SHOAL2-<cluster>-<CA digest>-<secret>; print one with `shoal cluster token worker|manager`)"
                    .into(),
            )
        };
        let mut parts = s.trim().split('-');
        let (Some(PREFIX), Some(cluster), Some(digest), Some(secret), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if !is_hex(cluster, 16) || !is_hex(digest, 64) || !is_hex(secret, 32) {
            return Err(bad());
        }
        Ok(JoinToken::new(
            cluster,
            &digest.to_ascii_lowercase(),
            &secret.to_ascii_lowercase(),
        ))
    }

    /// Whether this token's secret is `secret`, compared in constant time.
    pub fn secret_is(&self, secret: &str) -> bool {
        constant_time_eq(self.secret.as_bytes(), secret.as_bytes())
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}-{}-{}-{}",
            self.cluster_id, self.ca_digest, self.secret
        )
    }
}

/// Compares secrets without leaking where they differ through timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let t = JoinToken::new("0123456789abcdef", &"ab".repeat(32), &new_secret());
        let back = JoinToken::parse(&t.to_string()).unwrap();
        assert_eq!(back, t);
        assert!(back.secret_is(&t.secret));
        assert!(!back.secret_is(&new_secret()));
        for bad in [
            "",
            "SHOAL2",
            "SHOAL1-0123456789abcdef-0123456789abcdef0123456789abcdef",
            &format!(
                "SHOAL2-0123456789abcdef-{}-{}",
                "ab".repeat(31),
                new_secret()
            ),
            &format!(
                "SHOAL2-0123456789abcdeg-{}-{}",
                "ab".repeat(32),
                new_secret()
            ),
            &format!("{t}-extra"),
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
