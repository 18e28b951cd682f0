//! `shoal.v1.Ca` on every manager: joins by token, renewals, tokens, client certificates and
//! root rotations, all from the CA state in the store opened with this manager's KEK.

use std::collections::BTreeSet;
use std::net::IpAddr;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_server::Ca;
use shoal_raft::Store;
use shoal_tls::seal::Kek;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::clients;
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

    /// `check_sans` against the managers' addresses in the store (read only when it matters).
    async fn claimable_sans(
        &self,
        role: Role,
        sans: &[String],
        from: Option<IpAddr>,
    ) -> Result<(), Status> {
        let managers = match role {
            Role::Manager => BTreeSet::new(),
            _ => state::manager_addresses(&self.store).await?,
        };
        check_sans(role, sans, &managers, from.map(|ip| ip.to_canonical()))
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

/// The names a certificate may carry besides its subject. A manager's are its own (it holds the
/// CA's key anyway). A worker's or a proxy's: IP addresses only, never a host name (a Docker
/// client checks those, and managers' certificates carry them), at most 16, and none that a
/// manager's certificate names (`managers`) unless it is a loopback address (reached only from
/// the same machine) or the address the request comes from (`from`: the node shares that
/// manager's host). So no node can pose as a manager to a Docker or HTTP client that checks the
/// address it dialled.
fn check_sans(
    role: Role,
    sans: &[String],
    managers: &BTreeSet<IpAddr>,
    from: Option<IpAddr>,
) -> Result<(), Status> {
    if matches!(role, Role::Manager) {
        return Ok(());
    }
    if sans.len() > 16 {
        return Err(Status::invalid_argument(format!(
            "a {role} certificate names at most 16 addresses, not {}",
            sans.len()
        )));
    }
    for name in sans {
        let Ok(ip) = name.parse::<IpAddr>() else {
            return Err(Status::invalid_argument(format!(
                "a {role} certificate names IP addresses only, not {name:?}"
            )));
        };
        let ip = ip.to_canonical();
        if managers.contains(&ip) && !ip.is_loopback() && from != Some(ip) {
            return Err(Status::invalid_argument(format!(
                "a {role} certificate cannot name {ip}: a manager's certificate names it, and this request does not come from it"
            )));
        }
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
        let from = req
            .extensions()
            .get::<shoal_tls::PeerInfo>()
            .map(|p| p.remote);
        let remote = peer(from);
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
        self.claimable_sans(role, &r.sans, from.map(|a| a.ip()))
            .await?;
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
        // This manager's revocation set may be a second behind the store: a certificate revoked
        // meanwhile (a root rotation asks every holder to renew) gets nothing new.
        if state::is_revoked_now(&self.store, id.role, &id.name).await? {
            return Err(Status::permission_denied(format!(
                "certificate of {} {} is revoked (removed from the cluster); it is not renewed",
                id.role, id.name
            )));
        }
        let from = req
            .extensions()
            .get::<shoal_tls::PeerInfo>()
            .map(|p| p.remote.ip());
        let r = req.into_inner();
        self.claimable_sans(id.role, &r.sans, from).await?;
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
        clients::check_name(&name)?;
        // A certificate is revoked by its name: one issued under a revoked name would be dead.
        if clients::is_revoked(&self.store, &name).await? {
            return Err(Status::permission_denied(format!(
                "client certificate name {name} is revoked; issue one under another name (--name)"
            )));
        }
        let cert_pem = s.issue(&self.kek, &r.csr_pem, Role::Client, &name, &[])?;
        let expires_ms = shoal_tls::PeerIdentity::from_pem(&cert_pem)
            .map_err(SecurityError::from)?
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        clients::record(
            &self.store,
            &name,
            &by.name,
            crate::host::now_ms(),
            expires_ms,
        )
        .await?;
        tracing::info!(by = %by.name, %name, "issued a client certificate");
        Ok(Response::new(pb::Issued {
            cert_pem,
            roots_pem: s.roots_pem.clone(),
            kek: Vec::new(),
            raft_token: String::new(),
        }))
    }

    async fn clients(
        &self,
        req: Request<pb::ClientsRequest>,
    ) -> Result<Response<pb::ClientsResponse>, Status> {
        self.authorize(&req, Method::CaClients)?;
        Ok(Response::new(pb::ClientsResponse {
            clients: clients::list(&self.store).await?,
        }))
    }

    async fn revoke_client(
        &self,
        req: Request<pb::RevokeClientRequest>,
    ) -> Result<Response<pb::RevokeClientResponse>, Status> {
        let by = self.authorize(&req, Method::CaRevokeClient)?;
        let name = req.into_inner().name;
        let known = clients::revoke(&self.store, &name).await?;
        tracing::info!(by = %by.name, %name, "revoked client certificates");
        Ok(Response::new(pb::RevokeClientResponse { known }))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_node_names_its_own_addresses_only() {
        let managers: BTreeSet<IpAddr> = ["127.0.0.1", "10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let from = Some("10.0.0.7".parse().unwrap());
        for role in [Role::Worker, Role::Proxy] {
            // Its own address, a loopback one (a manager's included), another node's.
            assert!(check_sans(role, &sans(&["10.0.0.7", "127.0.0.1"]), &managers, from).is_ok());
            assert!(check_sans(role, &sans(&["10.0.0.8"]), &managers, from).is_ok());
            // A manager's address, from elsewhere: refused, naming it.
            let e =
                check_sans(role, &sans(&["10.0.0.7", "10.0.0.1"]), &managers, from).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(
                e.message().contains("cannot name 10.0.0.1"),
                "{}",
                e.message()
            );
            // ... but from that manager's own host (an agent beside a manager): its address.
            let beside = Some("10.0.0.1".parse().unwrap());
            assert!(check_sans(role, &sans(&["10.0.0.1"]), &managers, beside).is_ok());
            // A host name, never (a manager's or any).
            let e = check_sans(role, &sans(&["m1.example"]), &managers, from).unwrap_err();
            assert!(e.message().contains("IP addresses only"), "{}", e.message());
            let many: Vec<String> = (0..17).map(|i| format!("10.1.0.{i}")).collect();
            assert!(check_sans(role, &many, &managers, from).is_err());
        }
        // IPv4 written as IPv6 is the same address.
        let e = check_sans(Role::Worker, &sans(&["::ffff:10.0.0.2"]), &managers, from);
        assert!(e.is_err());
        // A manager's certificate names what its listeners need.
        assert!(check_sans(
            Role::Manager,
            &sans(&["m1.example", "10.0.0.1"]),
            &managers,
            None
        )
        .is_ok());
    }
}
