//! Operators' client certificates by name: what the CA issued (`/shoal/clients/<name>`, one
//! record per name) and which names are revoked (`/shoal/revoked/client/<name>`, as for nodes).
//! A certificate is revoked by its name, so a revoked name is never issued again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_proto::v1 as pb;
use shoal_raft::{Command, Put, Range, Store};
use shoal_tls::Role;

use super::state;
use super::SecurityError;

/// `/shoal/clients/<name>`: a [`ClientRecord`].
pub const CLIENTS: &str = "/shoal/clients/";

/// What the CA issued under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub name: String,
    /// The certificate name of whoever asked for the newest one.
    pub issued_by: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Certificates issued under this name so far.
    pub count: u64,
}

/// A name an operator's certificate may carry: 1 to 64 letters, digits, `-`, `_`, `.` or `@`
/// (it is a key segment, and what `shoal cluster client-certs` prints).
pub fn check_name(name: &str) -> Result<(), SecurityError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(SecurityError::BadInput(format!(
            "invalid client certificate name {name:?}: 1 to 64 letters, digits, '-', '_', '.' or '@'"
        )))
    }
}

fn key(name: &str) -> String {
    format!("{CLIENTS}{name}")
}

/// Whether `name`'s client certificates are revoked, read linearizably (the CA decides on it).
pub async fn is_revoked(store: &Store, name: &str) -> Result<bool, SecurityError> {
    state::is_revoked_now(store, Role::Client, name).await
}

/// Records that `by` was issued a certificate named `name`, valid until `expires_ms`.
pub async fn record(
    store: &Store,
    name: &str,
    by: &str,
    now_ms: u64,
    expires_ms: u64,
) -> Result<(), SecurityError> {
    let count = read(store, name).await?.map_or(0, |r| r.count);
    let record = ClientRecord {
        name: name.to_string(),
        issued_by: by.to_string(),
        issued_ms: now_ms,
        expires_ms,
        count: count + 1,
    };
    store
        .write(Command::Put(Put {
            key: key(name).into_bytes(),
            value: serde_json::to_vec(&record).expect("plain data"),
            ..Default::default()
        }))
        .await?;
    Ok(())
}

async fn read(store: &Store, name: &str) -> Result<Option<ClientRecord>, SecurityError> {
    let range = Range {
        key: key(name).into_bytes(),
        ..Default::default()
    };
    let (found, _) = store.range(&range, false).await?;
    found
        .kvs
        .first()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .map_err(|e| SecurityError::Corrupt(format!("{}: {e}", key(name))))
        })
        .transpose()
}

/// Revokes `name`'s client certificates; whether the CA had issued that name.
pub async fn revoke(store: &Store, name: &str) -> Result<bool, SecurityError> {
    check_name(name)?;
    let known = read(store, name).await?.is_some();
    state::revoke(store, Role::Client, name).await?;
    tracing::info!(%name, known, "client certificate name revoked");
    Ok(known)
}

/// Every name issued or revoked, by name.
pub async fn list(store: &Store) -> Result<Vec<pb::ClientCert>, SecurityError> {
    let range = Range {
        key: CLIENTS.as_bytes().to_vec(),
        prefix: true,
        ..Default::default()
    };
    let (found, _) = store.range(&range, false).await?;
    let mut out: BTreeMap<String, pb::ClientCert> = BTreeMap::new();
    for kv in found.kvs {
        let r: ClientRecord = serde_json::from_slice(&kv.value).map_err(|e| {
            SecurityError::Corrupt(format!("{}: {e}", String::from_utf8_lossy(&kv.key)))
        })?;
        out.insert(
            r.name.clone(),
            pb::ClientCert {
                name: r.name,
                issued_by: r.issued_by,
                issued_ms: r.issued_ms,
                expires_ms: r.expires_ms,
                count: r.count,
                revoked: false,
            },
        );
    }
    let prefix = shoal_tls::creds::revocation_name(Role::Client, "");
    for name in state::revoked(store).await? {
        if let Some(name) = name.strip_prefix(&prefix) {
            out.entry(name.to_string())
                .or_insert_with(|| pb::ClientCert {
                    name: name.to_string(),
                    ..Default::default()
                })
                .revoked = true;
        }
    }
    Ok(out.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_key_segment_of_plain_characters() {
        for ok in ["admin", "alice@ops", "ci-deploy_2", "a.b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a/b", "../x", "with space", &"x".repeat(65), "tab\t"] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("invalid client certificate name"), "{bad}: {e}");
        }
    }
}
