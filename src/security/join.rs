//! Joining with a token, as a node sees it: fetch the cluster's roots without trusting anyone,
//! keep only the root whose digest the token pins, then ask for a certificate over a connection
//! that root verifies. A rogue manager cannot pass: it holds no certificate of that root.

use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;
use shoal_tls::net::Connector;
use shoal_tls::pki::certs_from_pem;
use shoal_tls::pki::digest_der;
use shoal_tls::token::JoinToken;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use super::SecurityError;
use super::H2;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC channel to the manager at `addr` over mutual TLS with `creds` (the server must be a
/// manager of the cluster). Connects lazily.
pub fn channel(addr: &str, creds: &Credentials) -> Result<Channel, SecurityError> {
    shoal_raft::connect(addr, Some(creds)).map_err(SecurityError::BadInput)
}

fn endpoint(addr: &str) -> Result<Endpoint, SecurityError> {
    Ok(Endpoint::from_shared(shoal_tls::net::endpoint_uri(addr))
        .map_err(|e| SecurityError::BadInput(format!("bad manager address {addr}: {e}")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(CALL_TIMEOUT))
}

/// The root of `token`'s cluster, as the manager at `addr` shows it, checked against the token.
async fn pinned_root(addr: &str, token: &JoinToken) -> Result<String, SecurityError> {
    let connector = Connector::new(shoal_tls::creds::unverified_client_config(H2));
    let ch = endpoint(addr)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| SecurityError::Unreachable(format!("{addr}: {e}")))?;
    let info = CaClient::new(ch)
        .info(pb::CaInfoRequest {})
        .await
        .map_err(|s| SecurityError::Unreachable(format!("{addr}: {}", s.message())))?
        .into_inner();
    if info.cluster_id != token.cluster_id {
        return Err(SecurityError::Refused(format!(
            "the manager at {addr} belongs to cluster {}, the token to {}",
            info.cluster_id, token.cluster_id
        )));
    }
    for der in certs_from_pem(&info.roots_pem)? {
        if digest_der(&der) == token.ca_digest {
            let pem = rustls_pem(&der);
            return Ok(pem);
        }
    }
    Err(SecurityError::Refused(format!(
        "the manager at {addr} does not show the CA the token pins (sha256 {}): a rogue manager, or a token from before a CA rotation",
        token.ca_digest
    )))
}

fn rustls_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// What a join brings back.
pub struct Joined {
    /// The node's credentials: its new certificate and the cluster's roots.
    pub creds: Credentials,
    /// Managers only.
    pub kek: Vec<u8>,
    pub raft_token: String,
}

/// Joins as `role`/`name` with `token` through the first of `managers` that answers.
pub async fn join(
    managers: &[String],
    token: &str,
    role: Role,
    name: &str,
    sans: &[String],
) -> Result<Joined, SecurityError> {
    let token = JoinToken::parse(token)?;
    let mut last = SecurityError::Unreachable("no manager address given".into());
    for addr in managers {
        match join_one(addr, &token, role, name, sans).await {
            Ok(j) => return Ok(j),
            Err(e @ SecurityError::Refused(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn join_one(
    addr: &str,
    token: &JoinToken,
    role: Role,
    name: &str,
    sans: &[String],
) -> Result<Joined, SecurityError> {
    let root = pinned_root(addr, token).await?;
    let anonymous = Credentials::new(&token.cluster_id, &root)?;
    let connector = Connector::new(anonymous.client_config(&[Role::Manager], H2));
    let ch = endpoint(addr)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| SecurityError::Unreachable(format!("{addr}: {e}")))?;
    let (key_pem, csr_pem) = shoal_tls::pki::signing_request()?;
    let issued = CaClient::new(ch)
        .join(pb::CaJoinRequest {
            secret: token.secret.clone(),
            role: role.to_string(),
            name: name.to_string(),
            csr_pem,
            sans: sans.to_vec(),
        })
        .await
        .map_err(|s| match s.code() {
            tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::AlreadyExists
            | tonic::Code::Unauthenticated => SecurityError::Refused(s.message().to_string()),
            _ => SecurityError::Unreachable(format!("{addr}: {}", s.message())),
        })?
        .into_inner();
    let creds = Credentials::with_cert(&issued.roots_pem, &issued.cert_pem, &key_pem)?;
    Ok(Joined {
        creds,
        kek: issued.kek,
        raft_token: issued.raft_token,
    })
}

/// Renews `creds`' certificate through the manager at `addr` (same role and name), and takes
/// the roots the answer carries.
pub async fn renew(addr: &str, creds: &Credentials, sans: &[String]) -> Result<(), SecurityError> {
    let (key_pem, csr_pem) = shoal_tls::pki::signing_request()?;
    let issued = CaClient::new(channel(addr, creds)?)
        .renew(pb::CaRenewRequest {
            csr_pem,
            sans: sans.to_vec(),
        })
        .await
        .map_err(|s| SecurityError::Unreachable(format!("{addr}: {}", s.message())))?
        .into_inner();
    creds.set_roots(&issued.roots_pem)?;
    creds.set_cert(&issued.cert_pem, &key_pem)?;
    Ok(())
}

/// The CA's public state, through the manager at `addr`.
pub async fn info(addr: &str, creds: &Credentials) -> Result<pb::CaInfo, SecurityError> {
    Ok(CaClient::new(channel(addr, creds)?)
        .info(pb::CaInfoRequest {})
        .await
        .map_err(|s| SecurityError::Unreachable(format!("{addr}: {}", s.message())))?
        .into_inner())
}
