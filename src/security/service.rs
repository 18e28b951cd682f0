//! `shoal.v1.Ca` on every manager: joins by token, renewals, tokens, client certificates and
//! root rotations, all from the CA state in the store opened with this manager's KEK.

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_server::Ca;
use shoal_raft::Store;
use shoal_tls::seal::Kek;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::policy::Method;
use super::state;
use super::state::CaState;
use super::SecurityError;

pub struct CaService {
    store: Store,
    creds: Credentials,
    kek: Kek,
}

impl CaService {
    pub fn new(store: Store, creds: Credentials, kek: Kek) -> CaService {
        CaService { store, creds, kek }
    }

    async fn state(&self) -> Result<CaState, SecurityError> {
        state::read(&self.store)
            .await?
            .map(|(s, _)| s)
            .ok_or_else(|| SecurityError::Unreachable("the cluster's CA is not written yet".into()))
    }

    fn authorize<T>(
        &self,
        req: &Request<T>,
        method: Method,
    ) -> Result<std::sync::Arc<shoal_tls::PeerIdentity>, Status> {
        super::admit(&self.creds, req, method)
    }
}

impl CaService {
    /// Whether a joining node may take `name`: the CA, not the joiner, decides who is who. A
    /// worker's name is its node id, so an existing node's id is refused (its certificate would
    /// stream that node's tasks); so is a name a manager's certificate carries.
    async fn claimable(&self, role: Role, name: &str) -> Result<(), Status> {
        let taken = match role {
            Role::Worker => {
                if !crate::model::is_node_id(name) {
                    return Err(Status::invalid_argument(format!(
                        "invalid node id {name:?}: 1 to 64 letters, digits or '-'"
                    )));
                }
                self.exists(&crate::model::keys::node(name)).await?
            }
            Role::Manager => state::manager_names(&self.store)
                .await?
                .iter()
                .any(|n| n == name),
            Role::Proxy | Role::Client => false,
        };
        if taken {
            return Err(Status::already_exists(format!(
                "{role} name {name} is taken by a member of the cluster; join with a new data dir (a new name)"
            )));
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, Status> {
        let range = shoal_raft::Range {
            key: key.as_bytes().to_vec(),
            count_only: true,
            ..Default::default()
        };
        let (found, _) = self.store.range(&range, false).await?;
        Ok(found.count > 0)
    }
}

/// The names a certificate may carry besides its subject: a worker or a proxy only IP
/// addresses (its own, which the managers dial), never a host name, which a Docker client
/// checks and a manager's certificate carries.
fn check_sans(role: Role, sans: &[String]) -> Result<(), Status> {
    if matches!(role, Role::Manager) {
        return Ok(());
    }
    if let Some(name) = sans.iter().find(|s| s.parse::<std::net::IpAddr>().is_err()) {
        return Err(Status::invalid_argument(format!(
            "a {role} certificate names IP addresses only, not {name:?}"
        )));
    }
    if sans.len() > 16 {
        return Err(Status::invalid_argument(format!(
            "a {role} certificate names at most 16 addresses, not {}",
            sans.len()
        )));
    }
    Ok(())
}

fn peer(req_remote: Option<std::net::SocketAddr>) -> String {
    req_remote.map_or_else(|| "?".into(), |a| a.to_string())
}

#[tonic::async_trait]
impl Ca for CaService {
    async fn info(&self, req: Request<pb::CaInfoRequest>) -> Result<Response<pb::CaInfo>, Status> {
        // This replica's view: a joining node needs roots, not the latest revision.
        let (s, _) = state::read_local(&self.store)
            .await?
            .ok_or_else(|| Status::unavailable("the cluster's CA is not written yet"))?;
        // Nodes learn revocations here (they cannot read the store); strangers do not.
        let member = req
            .extensions()
            .get::<shoal_tls::PeerInfo>()
            .is_some_and(|p| p.identity.is_some());
        let revoked = match member {
            true => state::revoked(&self.store).await?.into_iter().collect(),
            false => Vec::new(),
        };
        Ok(Response::new(pb::CaInfo {
            cluster_id: s.cluster_id.clone(),
            roots_pem: s.roots_pem.clone(),
            signer_pem: s.signer_pem.clone(),
            generation: s.generation,
            phase: s.phase.as_str().to_string(),
            cert_lifetime_secs: s.cert_lifetime_secs,
            revoked,
        }))
    }

    async fn join(&self, req: Request<pb::CaJoinRequest>) -> Result<Response<pb::Issued>, Status> {
        let remote = peer(
            req.extensions()
                .get::<shoal_tls::PeerInfo>()
                .map(|p| p.remote),
        );
        let r = req.into_inner();
        let role: Role = r
            .role
            .parse()
            .map_err(|e: shoal_tls::TlsError| Status::invalid_argument(e.to_string()))?;
        let s = self.state().await?;
        let allowed = s.roles_for_secret(&self.kek, &r.secret)?;
        if allowed.is_empty() {
            tracing::warn!(peer = %remote, "join refused: not a current join token");
            return Err(Status::permission_denied(
                "join token refused: it is not a current token of this cluster (rotated, or mistyped)",
            ));
        }
        if !allowed.contains(&role) {
            return Err(Status::permission_denied(format!(
                "this token cannot join as {role}: the worker token joins workers and proxies, the manager token any node"
            )));
        }
        let revoked = state::revoked(&self.store).await?;
        if revoked.contains(&shoal_tls::creds::revocation_name(role, &r.name)) {
            return Err(Status::permission_denied(format!(
                "{role} {} was removed from the cluster; join with a new data dir",
                r.name
            )));
        }
        self.claimable(role, &r.name).await?;
        check_sans(role, &r.sans)?;
        let cert_pem = s.issue(&self.kek, &r.csr_pem, role, &r.name, &r.sans)?;
        let (kek, raft_token) = match role {
            Role::Manager => (self.kek.as_bytes().to_vec(), s.raft_token(&self.kek)?),
            _ => (Vec::new(), String::new()),
        };
        tracing::info!(peer = %remote, %role, name = %r.name, "issued a certificate to a joining node");
        Ok(Response::new(pb::Issued {
            cert_pem,
            roots_pem: s.roots_pem.clone(),
            kek,
            raft_token,
        }))
    }

    async fn renew(
        &self,
        req: Request<pb::CaRenewRequest>,
    ) -> Result<Response<pb::Issued>, Status> {
        let id = self.authorize(&req, Method::CaRenew)?;
        let r = req.into_inner();
        check_sans(id.role, &r.sans)?;
        let s = self.state().await?;
        let cert_pem = s.issue(&self.kek, &r.csr_pem, id.role, &id.name, &r.sans)?;
        Ok(Response::new(pb::Issued {
            cert_pem,
            roots_pem: s.roots_pem.clone(),
            kek: Vec::new(),
            raft_token: String::new(),
        }))
    }

    async fn token(
        &self,
        req: Request<pb::CaTokenRequest>,
    ) -> Result<Response<pb::CaTokenResponse>, Status> {
        self.authorize(&req, Method::CaToken)?;
        let r = req.into_inner();
        let role: Role = r
            .role
            .parse()
            .map_err(|e: shoal_tls::TlsError| Status::invalid_argument(e.to_string()))?;
        let s = if r.rotate {
            let kek = &self.kek;
            state::update(&self.store, |s| s.rotate_token(kek, role))
                .await?
                .0
        } else {
            self.state().await?
        };
        Ok(Response::new(pb::CaTokenResponse {
            token: s.token(&self.kek, role)?.to_string(),
        }))
    }

    async fn issue_client(
        &self,
        req: Request<pb::IssueClientRequest>,
    ) -> Result<Response<pb::Issued>, Status> {
        let by = self.authorize(&req, Method::CaIssueClient)?;
        let r = req.into_inner();
        let s = self.state().await?;
        let name = if r.name.is_empty() {
            "admin".to_string()
        } else {
            r.name
        };
        let cert_pem = s.issue(&self.kek, &r.csr_pem, Role::Client, &name, &[])?;
        tracing::info!(by = %by.name, %name, "issued a client certificate");
        Ok(Response::new(pb::Issued {
            cert_pem,
            roots_pem: s.roots_pem.clone(),
            kek: Vec::new(),
            raft_token: String::new(),
        }))
    }

    async fn rotate(
        &self,
        req: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        self.authorize(&req, Method::CaRotate)?;
        let kek = &self.kek;
        let (s, ()) = state::update(&self.store, |s| {
            s.start_rotation(kek, crate::host::now_ms())
        })
        .await?;
        tracing::info!(generation = s.generation, "root CA rotation started");
        Ok(Response::new(pb::RotateResponse {
            generation: s.generation,
        }))
    }
}
