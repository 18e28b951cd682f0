//! Keeps credentials fresh while a process runs. A manager follows the CA state in its own
//! replica: new roots, revocations, its own renewal (it signs for itself); the leader moves root
//! rotations on. A node (agent, proxy) asks a manager: roots through `Info`, a new certificate
//! through `Renew` when half to four fifths of its lifetime has passed or another root signs.

use std::path::PathBuf;
use std::time::Duration;
use std::time::SystemTime;

use shoal_raft::Store;
use shoal_tls::seal::Kek;
use shoal_tls::Credentials;
use shoal_tls::PeerIdentity;
use shoal_tls::Role;

use super::join;
use super::local;
use super::state;
use super::state::CaState;
use super::state::Phase;
use super::SecurityError;

/// How long each phase of a root rotation lasts: several node polls, so every node follows.
pub const ROTATION_WINDOW: Duration = Duration::from_secs(6);
const MANAGER_POLL: Duration = Duration::from_secs(1);
const NODE_POLL: Duration = Duration::from_secs(2);

/// Whether `creds`' certificate must be renewed now: past its renewal point (chosen once per
/// certificate), or signed by a root other than the signer.
struct Renewal {
    serial: String,
    at: SystemTime,
}

impl Renewal {
    fn due(&mut self, id: &PeerIdentity, signer_name: &str, phase: Phase) -> bool {
        if self.serial != id.serial {
            self.serial = id.serial.clone();
            self.at = id.renew_at();
        }
        // During `trusting` the new root signs nothing yet.
        let stale_signer = phase != Phase::Trusting && id.issuer != signer_name;
        SystemTime::now() >= self.at || stale_signer
    }
}

fn renewal() -> Renewal {
    Renewal {
        serial: String::new(),
        at: SystemTime::UNIX_EPOCH,
    }
}

/// A manager's keeper; runs until the process ends.
pub struct ManagerKeeper {
    pub store: Store,
    pub creds: Credentials,
    pub kek: Kek,
    pub data_dir: PathBuf,
    pub sans: Vec<String>,
    /// More files to keep a role's current token in (`--write-worker-token`, ...).
    pub token_outputs: Vec<(Role, PathBuf)>,
}

impl ManagerKeeper {
    pub async fn run(self) {
        let mut renewal = renewal();
        let mut last_error = String::new();
        loop {
            if let Err(e) = self.round(&mut renewal).await {
                let line = e.to_string();
                if line != last_error {
                    tracing::warn!("security keeper: {line}");
                    last_error = line;
                }
            } else {
                last_error.clear();
            }
            tokio::time::sleep(MANAGER_POLL).await;
        }
    }

    async fn round(&self, renewal: &mut Renewal) -> Result<(), SecurityError> {
        let dir = local::tls_dir(&self.data_dir);
        if let Some(pending) = local::pending_bootstrap(&dir)? {
            // Written once; a second writer (a restart after a crash) finds it there.
            state::write(&self.store, &pending, 0).await?;
            local::bootstrap_written(&dir);
        }
        let Some((mut ca, _)) = state::read_local(&self.store).await? else {
            return Ok(());
        };
        if self.store.leader() == Some(self.store.id()) && ca.phase != Phase::Stable {
            let kek = &self.kek;
            match state::update(&self.store, |s| {
                s.advance(kek, crate::host::now_ms(), ROTATION_WINDOW)
            })
            .await
            {
                Ok((s, true)) => {
                    tracing::info!(
                        generation = s.generation,
                        phase = s.phase.as_str(),
                        "root CA rotation moved on"
                    );
                    ca = s;
                }
                Ok((_, false)) => {}
                Err(e) => tracing::debug!("advancing the rotation: {e}"),
            }
        }
        self.creds.set_revoked(state::revoked(&self.store).await?);
        let mut changed = false;
        if ca.roots_pem != self.creds.roots_pem() {
            self.creds.set_roots(&ca.roots_pem)?;
            changed = true;
        }
        let signer_name = shoal_tls::pki::root_name(&ca.signer_pem)?;
        if let Some(id) = self.creds.identity() {
            if renewal.due(&id, &signer_name, ca.phase) {
                let (key_pem, csr_pem) = shoal_tls::pki::signing_request()?;
                let cert = ca.issue(&self.kek, &csr_pem, Role::Manager, &id.name, &self.sans)?;
                self.creds.set_cert(&cert, &key_pem)?;
                tracing::info!(issuer = %signer_name, "renewed this manager's certificate");
                changed = true;
            }
        }
        if changed {
            self.creds.save_dir(&dir)?;
        }
        self.write_tokens(&ca)?;
        Ok(())
    }

    /// Keeps `DATA_DIR/tokens/*` and the `--write-*-token` files current for deployments that
    /// read them.
    fn write_tokens(&self, ca: &CaState) -> Result<(), SecurityError> {
        let kept = [Role::Worker, Role::Manager]
            .map(|role| (role, local::token_file(&self.data_dir, role)));
        for (role, path) in kept.iter().chain(&self.token_outputs) {
            let token = format!("{}\n", ca.token(&self.kek, *role)?);
            if std::fs::read_to_string(path).ok().as_deref() != Some(token.as_str()) {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        SecurityError::BadInput(format!("{}: {e}", parent.display()))
                    })?;
                }
                shoal_tls::creds::write_private(path, token.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// A node's keeper (agent, proxy): `save` is where its credentials live on disk, if anywhere.
pub async fn run_node(
    managers: Vec<String>,
    creds: Credentials,
    save: Option<PathBuf>,
    sans: Vec<String>,
) {
    let mut renewal = renewal();
    let mut last_error = String::new();
    let mut next = 0usize;
    loop {
        tokio::time::sleep(NODE_POLL).await;
        let addr = &managers[next % managers.len()];
        let round = async {
            let info = join::info(addr, &creds).await?;
            // A removed manager's certificate must not open this node's engine endpoint.
            creds.set_revoked(info.revoked.iter().cloned().collect());
            let mut changed = false;
            if info.roots_pem != creds.roots_pem() {
                creds.set_roots(&info.roots_pem)?;
                changed = true;
            }
            let phase = match info.phase.as_str() {
                "trusting" => Phase::Trusting,
                "reissuing" => Phase::Reissuing,
                _ => Phase::Stable,
            };
            let signer_name = shoal_tls::pki::root_name(&info.signer_pem)?;
            if let Some(id) = creds.identity() {
                if renewal.due(&id, &signer_name, phase) {
                    join::renew(addr, &creds, &sans).await?;
                    tracing::info!(issuer = %signer_name, "renewed this node's certificate");
                    changed = true;
                }
            }
            if let (true, Some(dir)) = (changed, &save) {
                creds.save_dir(dir)?;
            }
            Ok::<(), SecurityError>(())
        };
        match tokio::time::timeout(Duration::from_secs(10), round).await {
            Ok(Ok(())) => last_error.clear(),
            Ok(Err(e)) => {
                next += 1;
                let line = e.to_string();
                if line != last_error {
                    tracing::warn!("credentials keeper: {line}");
                    last_error = line;
                }
            }
            Err(_) => next += 1,
        }
    }
}

/// A node's credentials: those kept in `dir` if there are any (unexpired), else a join with
/// `token` as `role`/`name` (saved to `dir` when given). Managers that cannot be reached are
/// waited for, logged once per reason; a refused token or bad input is an error.
pub async fn node_credentials(
    managers: &[String],
    token: &str,
    role: Role,
    name: &str,
    sans: &[String],
    dir: Option<&std::path::Path>,
) -> Result<Credentials, SecurityError> {
    if let Some(dir) = dir {
        if dir.join(shoal_tls::creds::KEY_FILE).exists() {
            let creds = Credentials::load_dir(dir)?;
            if creds
                .identity()
                .is_some_and(|id| id.role == role && id.not_after > SystemTime::now())
            {
                return Ok(creds);
            }
        }
    }
    let mut logged = String::new();
    let joined = loop {
        match join::join(managers, token, role, name, sans).await {
            Ok(joined) => break joined,
            Err(e @ SecurityError::Unreachable(_)) => {
                let line = e.to_string();
                if line != logged {
                    tracing::warn!("joining: {line}; retrying");
                    logged = line;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    if let Some(dir) = dir {
        joined.creds.save_dir(dir)?;
    }
    Ok(joined.creds)
}
