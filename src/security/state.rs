//! The CA as it lives in the store, at `/shoal/ca`: the roots every node trusts and the signer's
//! certificate in clear; the signer's key, a root waiting to take over, the join tokens' secrets
//! and the managers' shared secret sealed with the KEK, which never enters the Raft log.
//!
//! A root rotation goes through two phases so that no node ever meets a certificate it does not
//! trust yet: `trusting` (both roots trusted, the old one still signs) and `reissuing` (the new
//! one signs, every node renews), then back to `stable` with only the new root.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use serde::Serialize;
use shoal_raft::Command;
use shoal_raft::Compare;
use shoal_raft::CompareOp;
use shoal_raft::CompareTarget;
use shoal_raft::Op;
use shoal_raft::Put;
use shoal_raft::Range;
use shoal_raft::Response;
use shoal_raft::Store;
use shoal_raft::Txn;
use shoal_tls::pki::Issue;
use shoal_tls::pki::RootCa;
use shoal_tls::seal::Kek;
use shoal_tls::token::JoinToken;
use shoal_tls::Role;

use super::SecurityError;
use crate::host::now_ms;

pub const CA_KEY: &str = "/shoal/ca";
/// `/shoal/revoked/<role>/<name>`: certificates refused from then on.
pub const REVOKED_PREFIX: &str = "/shoal/revoked/";
/// SwarmKit's default node certificate lifetime.
pub const DEFAULT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Stable,
    /// Both roots are trusted; the old one still signs.
    Trusting,
    /// The new root signs; nodes renew; the old root is still trusted.
    Reissuing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Stable => "stable",
            Phase::Trusting => "trusting",
            Phase::Reissuing => "reissuing",
        }
    }
}

/// The record at `/shoal/ca`.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaState {
    pub cluster_id: String,
    /// Bumped by every change nodes must follow (new roots, new signer).
    pub generation: u64,
    /// Every root trusted now, PEM.
    pub roots_pem: String,
    /// The root that signs new certificates, PEM.
    pub signer_pem: String,
    pub phase: Phase,
    /// When the phase began, ms since the epoch.
    pub phase_since_ms: u64,
    pub cert_lifetime_secs: u64,
    /// [`Secrets`], sealed with the KEK, base64.
    sealed: String,
}

impl std::fmt::Debug for CaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaState")
            .field("cluster_id", &self.cluster_id)
            .field("generation", &self.generation)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// What only managers may read.
#[derive(Clone, Serialize, Deserialize)]
struct Secrets {
    signer_key_pem: String,
    /// The next root during `trusting`.
    pending: Option<RootCa>,
    manager_secret: String,
    worker_secret: String,
    /// The managers' shared secret on peer calls (`SHOAL1-...`).
    raft_token: String,
}

impl CaState {
    /// A new cluster's CA: a first root, fresh token secrets.
    pub fn bootstrap(
        cluster_id: &str,
        raft_token: &str,
        lifetime: Duration,
        kek: &Kek,
    ) -> Result<CaState, SecurityError> {
        let root = RootCa::generate(cluster_id, 1)?;
        let mut state = CaState {
            cluster_id: cluster_id.to_string(),
            generation: 1,
            roots_pem: root.cert_pem.clone(),
            signer_pem: root.cert_pem.clone(),
            phase: Phase::Stable,
            phase_since_ms: now_ms(),
            cert_lifetime_secs: lifetime.as_secs().max(1),
            sealed: String::new(),
        };
        state.seal(
            kek,
            &Secrets {
                signer_key_pem: root.key_pem,
                pending: None,
                manager_secret: shoal_tls::token::new_secret(),
                worker_secret: shoal_tls::token::new_secret(),
                raft_token: raft_token.to_string(),
            },
        )?;
        Ok(state)
    }

    fn secrets(&self, kek: &Kek) -> Result<Secrets, SecurityError> {
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&self.sealed)
            .map_err(|e| SecurityError::Corrupt(format!("sealed secrets: {e}")))?;
        let plain = kek.open(&sealed)?;
        serde_json::from_slice(&plain)
            .map_err(|e| SecurityError::Corrupt(format!("sealed secrets: {e}")))
    }

    fn seal(&mut self, kek: &Kek, secrets: &Secrets) -> Result<(), SecurityError> {
        let plain = serde_json::to_vec(secrets).expect("plain data");
        self.sealed = base64::engine::general_purpose::STANDARD.encode(kek.seal(&plain));
        Ok(())
    }

    pub fn lifetime(&self) -> Duration {
        Duration::from_secs(self.cert_lifetime_secs)
    }

    pub fn raft_token(&self, kek: &Kek) -> Result<String, SecurityError> {
        Ok(self.secrets(kek)?.raft_token)
    }

    /// Signs a node certificate for `role`/`name` with the current signer.
    pub fn issue(
        &self,
        kek: &Kek,
        csr_pem: &str,
        role: Role,
        name: &str,
        sans: &[String],
    ) -> Result<String, SecurityError> {
        if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
            return Err(SecurityError::BadInput(format!(
                "bad certificate name {name:?}"
            )));
        }
        let signer = RootCa {
            cert_pem: self.signer_pem.clone(),
            key_pem: self.secrets(kek)?.signer_key_pem,
        };
        Ok(signer.issue(
            csr_pem,
            &Issue {
                cluster_id: self.cluster_id.clone(),
                role,
                name: name.to_string(),
                sans: sans.to_vec(),
                lifetime: self.lifetime(),
            },
        )?)
    }

    /// The join token for `role` (worker or manager), pinning the signing root.
    pub fn token(&self, kek: &Kek, role: Role) -> Result<JoinToken, SecurityError> {
        let s = self.secrets(kek)?;
        let secret = match role {
            Role::Manager => s.manager_secret,
            Role::Worker => s.worker_secret,
            other => {
                return Err(SecurityError::BadInput(format!(
                    "there is no {other} token: tokens are for worker or manager"
                )))
            }
        };
        let digest = shoal_tls::pki::digest_pem(&self.signer_pem)?;
        Ok(JoinToken::new(&self.cluster_id, &digest, &secret))
    }

    /// The roles a token with `secret` may join as: the manager token any node role, the worker
    /// token a worker or a proxy. Empty: no token has this secret.
    pub fn roles_for_secret(
        &self,
        kek: &Kek,
        secret: &str,
    ) -> Result<&'static [Role], SecurityError> {
        let s = self.secrets(kek)?;
        let eq = |a: &str| shoal_tls::token::constant_time_eq(a.as_bytes(), secret.as_bytes());
        Ok(if eq(&s.manager_secret) {
            &[Role::Manager, Role::Worker, Role::Proxy]
        } else if eq(&s.worker_secret) {
            &[Role::Worker, Role::Proxy]
        } else {
            &[]
        })
    }

    /// A new secret for `role`'s token: the old token no longer joins anything.
    pub fn rotate_token(&mut self, kek: &Kek, role: Role) -> Result<(), SecurityError> {
        let mut s = self.secrets(kek)?;
        match role {
            Role::Manager => s.manager_secret = shoal_tls::token::new_secret(),
            Role::Worker => s.worker_secret = shoal_tls::token::new_secret(),
            other => {
                return Err(SecurityError::BadInput(format!(
                    "there is no {other} token: tokens are for worker or manager"
                )))
            }
        }
        self.seal(kek, &s)
    }

    /// Starts a root rotation: a new root, trusted by everyone from now on, signing later.
    pub fn start_rotation(&mut self, kek: &Kek, now_ms: u64) -> Result<(), SecurityError> {
        if self.phase != Phase::Stable {
            return Err(SecurityError::Conflict(format!(
                "a root rotation is already in progress (phase {})",
                self.phase.as_str()
            )));
        }
        let mut s = self.secrets(kek)?;
        let next = RootCa::generate(&self.cluster_id, self.generation + 1)?;
        self.roots_pem = format!("{}{}", self.signer_pem, next.cert_pem);
        s.pending = Some(next);
        self.generation += 1;
        self.phase = Phase::Trusting;
        self.phase_since_ms = now_ms;
        self.seal(kek, &s)
    }

    /// Moves a rotation on once `window` has passed in its phase (enough for every node to
    /// follow). Returns whether anything changed.
    pub fn advance(
        &mut self,
        kek: &Kek,
        now_ms: u64,
        window: Duration,
    ) -> Result<bool, SecurityError> {
        if self.phase == Phase::Stable || now_ms < self.phase_since_ms + window.as_millis() as u64 {
            return Ok(false);
        }
        let mut s = self.secrets(kek)?;
        match self.phase {
            Phase::Trusting => {
                let next = s.pending.take().ok_or_else(|| {
                    SecurityError::Corrupt("rotation without a pending root".into())
                })?;
                self.signer_pem = next.cert_pem;
                s.signer_key_pem = next.key_pem;
                self.phase = Phase::Reissuing;
            }
            Phase::Reissuing => {
                self.roots_pem = self.signer_pem.clone();
                self.phase = Phase::Stable;
            }
            Phase::Stable => unreachable!("returned above"),
        }
        self.generation += 1;
        self.phase_since_ms = now_ms;
        self.seal(kek, &s)?;
        Ok(true)
    }
}

/// Reads the CA state (linearizable) with its mod revision; None before bootstrap wrote it.
pub async fn read(store: &Store) -> Result<Option<(CaState, u64)>, SecurityError> {
    read_with(store, false).await
}

/// As [`read`], from this replica as it is (no leader needed).
pub async fn read_local(store: &Store) -> Result<Option<(CaState, u64)>, SecurityError> {
    read_with(store, true).await
}

async fn read_with(store: &Store, stale: bool) -> Result<Option<(CaState, u64)>, SecurityError> {
    let range = Range {
        key: CA_KEY.as_bytes().to_vec(),
        ..Default::default()
    };
    let (res, _) = store.range(&range, stale).await?;
    let Some(kv) = res.kvs.into_iter().next() else {
        return Ok(None);
    };
    let state = serde_json::from_slice(&kv.value)
        .map_err(|e| SecurityError::Corrupt(format!("{CA_KEY}: {e}")))?;
    Ok(Some((state, kv.mod_revision)))
}

/// Writes `state` if the record is still at `expect` (0: absent). Ok(false): it changed since.
pub async fn write(store: &Store, state: &CaState, expect: u64) -> Result<bool, SecurityError> {
    let key = CA_KEY.as_bytes().to_vec();
    let txn = Txn {
        compare: vec![Compare {
            key: key.clone(),
            target: CompareTarget::ModRevision(expect),
            op: CompareOp::Equal,
        }],
        success: vec![Op::Put(Put {
            key,
            value: serde_json::to_vec(state).expect("plain data"),
            ..Default::default()
        })],
        failure: vec![],
    };
    match store.write(Command::Txn(txn)).await? {
        Response::Txn { succeeded, .. } => Ok(succeeded),
        other => Err(SecurityError::Corrupt(format!(
            "unexpected answer to a CA write: {other:?}"
        ))),
    }
}

/// Changes the CA state with `change`, retrying on a concurrent change.
pub async fn update<T>(
    store: &Store,
    mut change: impl FnMut(&mut CaState) -> Result<T, SecurityError>,
) -> Result<(CaState, T), SecurityError> {
    for _ in 0..10 {
        let (mut state, rev) = read(store)
            .await?
            .ok_or_else(|| SecurityError::Corrupt("the cluster has no CA yet".into()))?;
        let out = change(&mut state)?;
        if write(store, &state, rev).await? {
            return Ok((state, out));
        }
    }
    Err(SecurityError::Conflict(
        "the CA changed under ten attempts in a row; try again".into(),
    ))
}

/// Every revoked `role/name`.
pub async fn revoked(store: &Store) -> Result<HashSet<String>, SecurityError> {
    let range = Range {
        key: REVOKED_PREFIX.as_bytes().to_vec(),
        prefix: true,
        keys_only: true,
        ..Default::default()
    };
    let (res, _) = store.range(&range, true).await?;
    Ok(res
        .kvs
        .iter()
        .filter_map(|kv| std::str::from_utf8(&kv.key).ok())
        .filter_map(|k| k.strip_prefix(REVOKED_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Whether `role`/`name` is revoked, as this replica has it: one key read, for the calls made
/// for every agent (registering), where reading every revocation would cost O(revoked) each.
pub async fn is_revoked(store: &Store, role: Role, name: &str) -> Result<bool, SecurityError> {
    revoked_key(store, role, name, true).await
}

/// As [`is_revoked`], read linearizably: for the CA's decisions (renewing, issuing), which must
/// not follow a revocation a second late.
pub async fn is_revoked_now(store: &Store, role: Role, name: &str) -> Result<bool, SecurityError> {
    revoked_key(store, role, name, false).await
}

async fn revoked_key(
    store: &Store,
    role: Role,
    name: &str,
    stale: bool,
) -> Result<bool, SecurityError> {
    let range = Range {
        key: format!(
            "{REVOKED_PREFIX}{}",
            shoal_tls::creds::revocation_name(role, name)
        )
        .into_bytes(),
        keys_only: true,
        ..Default::default()
    };
    let (res, _) = store.range(&range, stale).await?;
    Ok(!res.kvs.is_empty())
}

/// `/shoal/managers/<member id>`: the name in that manager's certificate, for revoking it when
/// the manager is removed.
pub const MANAGER_NAMES: &str = "/shoal/managers/";

/// `/shoal/manager-addresses/<member id>`: the IP addresses that manager's certificate names
/// (a JSON list), which the CA keeps out of workers' and proxies' certificates.
pub const MANAGER_ADDRESSES: &str = "/shoal/manager-addresses/";

/// Records this manager's certificate name and the IP addresses among its `sans` under its
/// member id.
pub async fn record_manager(
    store: &Store,
    name: &str,
    sans: &[String],
) -> Result<(), SecurityError> {
    store
        .write(Command::Put(Put {
            key: format!("{MANAGER_NAMES}{}", store.id()).into_bytes(),
            value: name.as_bytes().to_vec(),
            ..Default::default()
        }))
        .await?;
    let ips: Vec<&String> = sans
        .iter()
        .filter(|s| s.parse::<std::net::IpAddr>().is_ok())
        .collect();
    let value = serde_json::to_vec(&ips).expect("a list of strings serializes");
    let key = format!("{MANAGER_ADDRESSES}{}", store.id()).into_bytes();
    let range = Range {
        key: key.clone(),
        ..Default::default()
    };
    // Written at every start, but only when it changed: a restart is no Raft write.
    let (found, _) = store.range(&range, false).await?;
    if found.kvs.first().map(|kv| &kv.value) != Some(&value) {
        store
            .write(Command::Put(Put {
                key,
                value,
                ..Default::default()
            }))
            .await?;
    }
    Ok(())
}

/// Every IP address a manager's certificate names (removed managers' included: their
/// certificates may still be out there until they expire).
pub async fn manager_addresses(
    store: &Store,
) -> Result<std::collections::BTreeSet<std::net::IpAddr>, SecurityError> {
    let range = Range {
        key: MANAGER_ADDRESSES.as_bytes().to_vec(),
        prefix: true,
        ..Default::default()
    };
    let (res, _) = store.range(&range, false).await?;
    Ok(res
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Vec<String>>(&kv.value).ok())
        .flatten()
        .filter_map(|s| s.parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect())
}

/// The certificate names every manager recorded.
pub async fn manager_names(store: &Store) -> Result<Vec<String>, SecurityError> {
    let range = Range {
        key: MANAGER_NAMES.as_bytes().to_vec(),
        prefix: true,
        ..Default::default()
    };
    let (res, _) = store.range(&range, false).await?;
    Ok(res
        .kvs
        .into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
        .collect())
}

/// The certificate name of manager `id`, if it recorded one.
pub async fn manager_name(store: &Store, id: u64) -> Result<Option<String>, SecurityError> {
    let range = Range {
        key: format!("{MANAGER_NAMES}{id}").into_bytes(),
        ..Default::default()
    };
    let (res, _) = store.range(&range, false).await?;
    Ok(res
        .kvs
        .into_iter()
        .next()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Refuses `role`/`name`'s certificates from now on (a removed node).
pub async fn revoke(store: &Store, role: Role, name: &str) -> Result<(), SecurityError> {
    let key = format!(
        "{REVOKED_PREFIX}{}",
        shoal_tls::creds::revocation_name(role, name)
    );
    store
        .write(Command::Put(Put {
            key: key.into_bytes(),
            value: now_ms().to_string().into_bytes(),
            ..Default::default()
        }))
        .await?;
    Ok(())
}

/// Removes node `id` (`shoal node rm`, `docker node rm`): its certificate is revoked first, so
/// that its agent cannot register it again, then its record is deleted. A READY node needs
/// `force` (a `Conflict` otherwise). None: there is no such node.
pub async fn remove_node(
    store: &Store,
    id: &str,
    force: bool,
) -> Result<Option<crate::model::Node>, SecurityError> {
    let key = crate::model::keys::node(id);
    let range = Range {
        key: key.clone().into_bytes(),
        ..Default::default()
    };
    let (found, _) = store.range(&range, false).await?;
    let Some(kv) = found.kvs.into_iter().next() else {
        return Ok(None);
    };
    let node: crate::model::Node = serde_json::from_slice(&kv.value)
        .map_err(|e| SecurityError::Corrupt(format!("node {id}: {e}")))?;
    if node.status == crate::model::NodeStatus::Ready && !force {
        return Err(SecurityError::Conflict(format!(
            "node {id} ({}) is READY: stop its agent first, or remove it with --force",
            node.name
        )));
    }
    revoke(store, Role::Worker, id).await?;
    store
        .write(Command::Delete(shoal_raft::Delete {
            key: key.into_bytes(),
            ..Default::default()
        }))
        .await?;
    tracing::info!(node = %id, name = %node.name, "node removed; its certificate is revoked");
    Ok(Some(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (CaState, Kek) {
        let kek = Kek::generate();
        let s = CaState::bootstrap("0123456789abcdef", "SHOAL1-x", DEFAULT_CERT_LIFETIME, &kek)
            .unwrap();
        (s, kek)
    }

    #[test]
    fn secrets_are_sealed_and_open_only_with_the_kek() {
        let (s, kek) = state();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("PRIVATE KEY"), "{json}");
        assert!(!json.contains("SHOAL1-x"));
        assert_eq!(s.raft_token(&kek).unwrap(), "SHOAL1-x");
        assert!(s.raft_token(&Kek::generate()).is_err());
    }

    #[test]
    fn tokens_grant_their_roles_and_rotation_invalidates_the_old_one() {
        let (mut s, kek) = state();
        let worker = s.token(&kek, Role::Worker).unwrap();
        let manager = s.token(&kek, Role::Manager).unwrap();
        assert_eq!(
            s.roles_for_secret(&kek, &worker.secret).unwrap(),
            &[Role::Worker, Role::Proxy]
        );
        assert!(s
            .roles_for_secret(&kek, &manager.secret)
            .unwrap()
            .contains(&Role::Manager));
        assert!(s.roles_for_secret(&kek, "00").unwrap().is_empty());
        assert!(s.token(&kek, Role::Client).is_err());
        s.rotate_token(&kek, Role::Worker).unwrap();
        assert!(s.roles_for_secret(&kek, &worker.secret).unwrap().is_empty());
        let manager_after = s.token(&kek, Role::Manager).unwrap();
        assert_eq!(
            manager_after, manager,
            "rotating one token leaves the other"
        );
    }

    #[test]
    fn a_rotation_trusts_both_roots_then_signs_with_the_new_one_then_drops_the_old() {
        let (mut s, kek) = state();
        let old = s.signer_pem.clone();
        let window = Duration::from_secs(5);
        s.start_rotation(&kek, 1_000).unwrap();
        assert!(s.start_rotation(&kek, 1_000).is_err(), "one at a time");
        assert_eq!(s.phase, Phase::Trusting);
        assert_eq!(s.signer_pem, old);
        assert_eq!(
            shoal_tls::pki::certs_from_pem(&s.roots_pem).unwrap().len(),
            2
        );
        assert!(!s.advance(&kek, 2_000, window).unwrap(), "window not over");
        assert!(s.advance(&kek, 6_000, window).unwrap());
        assert_eq!(s.phase, Phase::Reissuing);
        assert_ne!(s.signer_pem, old);
        let (_, csr) = shoal_tls::pki::signing_request().unwrap();
        let cert = s.issue(&kek, &csr, Role::Worker, "n1", &[]).unwrap();
        let id = shoal_tls::PeerIdentity::from_pem(&cert).unwrap();
        assert_eq!(id.issuer, shoal_tls::pki::root_name(&s.signer_pem).unwrap());
        assert!(s.advance(&kek, 11_000, window).unwrap());
        assert_eq!(s.phase, Phase::Stable);
        assert_eq!(s.roots_pem, s.signer_pem);
        assert_eq!(s.generation, 4);
    }
}
