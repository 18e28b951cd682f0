//! Who this manager is: its cluster id and member id (kept durably in the database), and the
//! managers' shared secret for peer calls (kept in `DATA_DIR/peer-secret`, owner-only).

use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use rand::Rng;
use rocksdb::DB;
use serde::Deserialize;
use serde::Serialize;

use crate::codec;
use crate::db::CF_RAFT;
use crate::error::StoreError;
use crate::types::NodeId;

const KEY_IDENTITY: &[u8] = b"identity";
const TOKEN_PREFIX: &str = "SHOAL1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub cluster_id: String,
    pub id: NodeId,
}

pub(crate) fn read(db: &DB) -> Result<Option<Identity>, StoreError> {
    let cf = db.cf_handle(CF_RAFT).expect("cf raft");
    match db
        .get_cf(cf, KEY_IDENTITY)
        .map_err(|e| StoreError::Storage(e.into_string()))?
    {
        None => Ok(None),
        Some(b) => Ok(Some(codec::decode(&b)?)),
    }
}

pub(crate) fn write(db: &DB, identity: &Identity) -> Result<(), StoreError> {
    let cf = db.cf_handle(CF_RAFT).expect("cf raft");
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(cf, KEY_IDENTITY, codec::encode(identity)?, &opts)
        .map_err(|e| StoreError::Storage(e.into_string()))
}

/// A join token: `SHOAL1-<cluster id>-<secret>`. The cluster id lets a manager tell a token for
/// another cluster from a wrong one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub cluster_id: String,
    raw: String,
}

impl JoinToken {
    /// A new secret for a new cluster (with a new cluster id).
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let cluster_id = format!("{:016x}", rng.random::<u64>());
        let secret = format!("{:032x}", rng.random::<u128>());
        let raw = format!("{TOKEN_PREFIX}-{cluster_id}-{secret}");
        JoinToken { cluster_id, raw }
    }

    pub fn parse(s: &str) -> Result<Self, StoreError> {
        let bad = || {
            StoreError::Unauthenticated(
                "malformed join token (expected SHOAL1-<cluster>-<secret>)".into(),
            )
        };
        let mut parts = s.trim().splitn(3, '-');
        let (Some(TOKEN_PREFIX), Some(cluster), Some(secret)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let hex = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(cluster, 16) || !hex(secret, 32) {
            return Err(bad());
        }
        Ok(JoinToken {
            cluster_id: cluster.to_string(),
            raw: s.trim().to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

pub(crate) fn token_path(dir: &Path) -> PathBuf {
    dir.join("peer-secret")
}

pub(crate) fn read_token(dir: &Path) -> Result<Option<JoinToken>, StoreError> {
    let path = token_path(dir);
    match std::fs::read_to_string(&path) {
        Ok(s) => JoinToken::parse(&s)
            .map(Some)
            .map_err(|e| StoreError::DataDir {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::DataDir {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

pub(crate) fn write_token(dir: &Path, token: &JoinToken) -> Result<(), StoreError> {
    let path = token_path(dir);
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| StoreError::DataDir {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(format!("{}\n", token.as_str()).as_bytes())
        .map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Compares secrets without leaking where they differ through timing.
/// Whether a presented join token is the cluster's, compared in constant time (the comparison
/// managers use; agents check the managers' requests to their engine endpoint with it too).
pub fn token_matches(given: &str, token: &str) -> bool {
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_malformed_ones_are_refused() {
        let t = JoinToken::generate();
        let back = JoinToken::parse(t.as_str()).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.cluster_id.len(), 16);
        for bad in [
            "",
            "SHOAL1",
            "SHOAL1-abc-def",
            "SHOAL2-0123456789abcdef-0123456789abcdef0123456789abcdef",
            "SHOAL1-0123456789abcdeg-0123456789abcdef0123456789abcdef",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
