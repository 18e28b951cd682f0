//! A manager's security material in `DATA_DIR/tls`: its credentials (`ca.pem`, `cert.pem`,
//! `key.pem`: the layout `shoal --tls-dir` and `docker --tlsverify` read, so an operator on a
//! manager's host can use them), the KEK (`kek`), the name its certificate carries (`name`),
//! and, until the store holds it, the CA state a bootstrap created (`bootstrap-ca.json`).
//! The current join tokens are kept in `DATA_DIR/tokens/{worker,manager}` for deployments to
//! read.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use shoal_tls::seal::Kek;
use shoal_tls::Credentials;
use shoal_tls::Role;

use super::join;
use super::state::CaState;
use super::SecurityError;

const KEK_FILE: &str = "kek";
const NAME_FILE: &str = "name";
const BOOTSTRAP_FILE: &str = "bootstrap-ca.json";

pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Where the current join token of `role` is kept.
pub fn token_file(data_dir: &Path, role: Role) -> PathBuf {
    data_dir.join("tokens").join(role.as_str())
}

/// What a manager starts with.
pub struct Material {
    pub creds: Credentials,
    pub kek: Kek,
    /// This manager's certificate name (`manager-<hex>`).
    pub name: String,
    /// For the store: the managers' shared secret when bootstrapping or joining (None: the
    /// store has its own).
    pub raft_token: Option<String>,
}

/// How a manager is started.
pub struct Start<'a> {
    pub data_dir: &'a Path,
    pub join: &'a [String],
    pub token: Option<&'a str>,
    /// Names and IPs for the certificate.
    pub sans: Vec<String>,
    /// Node certificate lifetime (a bootstrap sets the cluster's).
    pub lifetime: Duration,
}

fn read(path: &Path) -> Result<Option<String>, SecurityError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SecurityError::BadInput(format!("{}: {e}", path.display()))),
    }
}

/// Loads, bootstraps or joins for this manager's material.
pub async fn open_manager(start: Start<'_>) -> Result<Material, SecurityError> {
    let dir = tls_dir(start.data_dir);
    if dir.join(KEK_FILE).exists() && dir.join(shoal_tls::creds::KEY_FILE).exists() {
        let material = load(&dir)?;
        if let Some(token) = start.token {
            let token = shoal_tls::token::JoinToken::parse(token)?;
            if token.cluster_id != material.creds.cluster_id() {
                return Err(SecurityError::BadInput(format!(
                    "{} belongs to cluster {}, the token to cluster {}: refusing to mix them",
                    start.data_dir.display(),
                    material.creds.cluster_id(),
                    token.cluster_id
                )));
            }
        }
        return Ok(material);
    }
    if start.data_dir.join("peer-secret").exists() {
        return Err(SecurityError::BadInput(format!(
            "{} holds a manager without its TLS material ({} is missing): restore it, or start from an empty data dir",
            start.data_dir.display(),
            dir.display()
        )));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| SecurityError::BadInput(format!("{}: {e}", dir.display())))?;
    let name = format!("manager-{:08x}", rand::random::<u32>());
    if start.join.is_empty() {
        bootstrap(&dir, name, &start)
    } else {
        let token = start.token.ok_or_else(|| {
            SecurityError::BadInput(
                "--join needs --token: the manager token (`shoal cluster token manager`)".into(),
            )
        })?;
        let joined = join::join(start.join, token, Role::Manager, &name, &start.sans).await?;
        let kek = Kek::from_bytes(&joined.kek)?;
        joined.creds.save_dir(&dir)?;
        kek.save(&dir.join(KEK_FILE))?;
        shoal_tls::creds::write_private(&dir.join(NAME_FILE), name.as_bytes())?;
        Ok(Material {
            creds: joined.creds,
            kek,
            name,
            raft_token: Some(joined.raft_token),
        })
    }
}

fn bootstrap(dir: &Path, name: String, start: &Start<'_>) -> Result<Material, SecurityError> {
    let kek = Kek::generate();
    let raft_token = shoal_raft::JoinToken::generate();
    let ca = CaState::bootstrap(
        &raft_token.cluster_id,
        raft_token.as_str(),
        start.lifetime,
        &kek,
    )?;
    let (key_pem, csr_pem) = shoal_tls::pki::signing_request()?;
    let cert_pem = ca.issue(&kek, &csr_pem, Role::Manager, &name, &start.sans)?;
    let creds = Credentials::with_cert(&ca.roots_pem, &cert_pem, &key_pem)?;
    // The CA state first: whatever a crash leaves, a restart finds the state to write.
    shoal_tls::creds::write_private(
        &dir.join(BOOTSTRAP_FILE),
        &serde_json::to_vec(&ca).expect("plain data"),
    )?;
    shoal_tls::creds::write_private(&dir.join(NAME_FILE), name.as_bytes())?;
    kek.save(&dir.join(KEK_FILE))?;
    creds.save_dir(dir)?;
    Ok(Material {
        creds,
        kek,
        name,
        raft_token: Some(raft_token.as_str().to_string()),
    })
}

fn load(dir: &Path) -> Result<Material, SecurityError> {
    let creds = Credentials::load_dir(dir)?;
    let kek = Kek::load(&dir.join(KEK_FILE))?;
    let name = read(&dir.join(NAME_FILE))?
        .map(|s| s.trim().to_string())
        .or_else(|| creds.identity().map(|i| i.name))
        .unwrap_or_default();
    let raft_token = match pending_bootstrap(dir)? {
        Some(ca) => Some(ca.raft_token(&kek)?),
        None => None,
    };
    Ok(Material {
        creds,
        kek,
        name,
        raft_token,
    })
}

/// The CA state a bootstrap created and the store does not hold yet.
pub fn pending_bootstrap(dir: &Path) -> Result<Option<CaState>, SecurityError> {
    match read(&dir.join(BOOTSTRAP_FILE))? {
        None => Ok(None),
        Some(json) => serde_json::from_str(&json)
            .map(Some)
            .map_err(|e| SecurityError::Corrupt(format!("{BOOTSTRAP_FILE}: {e}"))),
    }
}

/// The store holds the bootstrap CA state now.
pub fn bootstrap_written(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(BOOTSTRAP_FILE));
}
