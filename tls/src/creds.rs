//! Live credentials: the roots a process trusts, the certificate and key it presents, and the
//! names the cluster has revoked. Renewal and CA rotation swap them in place: every connection
//! made or accepted afterwards uses the new ones; established ones stay as they are.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::RwLock;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::danger::ServerCertVerified;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::server::danger::ClientCertVerified;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::ClientHello;
use rustls::server::ParsedCertificate;
use rustls::server::ResolvesServerCert;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::CertificateError;
use rustls::DigitallySignedStruct;
use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::SignatureScheme;

use crate::pki::certs_from_pem;
use crate::pki::PeerIdentity;
use crate::provider;
use crate::Role;
use crate::TlsError;

/// File names in a credentials directory (the layout `docker --tlsverify` reads too).
pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

/// Reads of a credentials dir that a renewal may be rewriting: 10 × 20 ms.
const LOAD_ATTEMPTS: u32 = 10;

/// A process's credentials; clones share them.
#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster_id", &self.inner.cluster_id)
            .field("identity", &self.identity())
            .finish_non_exhaustive()
    }
}

struct Inner {
    cluster_id: String,
    state: RwLock<State>,
    revoked: RwLock<HashSet<String>>,
    /// Bumped whenever `revoked` changes, for open streams to check their caller again.
    revocations: tokio::sync::watch::Sender<u64>,
}

struct State {
    roots_pem: String,
    roots: Arc<RootCertStore>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    own: Option<Own>,
}

#[derive(Clone)]
struct Own {
    cert_pem: String,
    key_pem: String,
    key: Arc<CertifiedKey>,
    identity: PeerIdentity,
}

fn roots_state(
    roots_pem: &str,
) -> Result<(Arc<RootCertStore>, Arc<dyn ClientCertVerifier>), TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs_from_pem(roots_pem)? {
        store
            .add(cert)
            .map_err(|e| TlsError::Certificate(format!("bad root certificate: {e}")))?;
    }
    let store = Arc::new(store);
    let verifier = WebPkiClientVerifier::builder_with_provider(store.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((store, verifier))
}

fn own(cert_pem: &str, key_pem: &str) -> Result<Own, TlsError> {
    let chain = certs_from_pem(cert_pem)?;
    let identity = PeerIdentity::from_der(&chain[0])?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Certificate(format!("bad private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsError::Certificate(format!("certificate and key do not match: {e}")))?;
    Ok(Own {
        cert_pem: cert_pem.to_string(),
        key_pem: key_pem.to_string(),
        key: Arc::new(key),
        identity,
    })
}

impl Credentials {
    /// Trusts `roots_pem` (one or more root certificates) for cluster `cluster_id`, presenting
    /// nothing yet.
    pub fn new(cluster_id: &str, roots_pem: &str) -> Result<Credentials, TlsError> {
        let (roots, client_verifier) = roots_state(roots_pem)?;
        Ok(Credentials {
            inner: Arc::new(Inner {
                cluster_id: cluster_id.to_string(),
                state: RwLock::new(State {
                    roots_pem: roots_pem.to_string(),
                    roots,
                    client_verifier,
                    own: None,
                }),
                revoked: RwLock::new(HashSet::new()),
                revocations: tokio::sync::watch::Sender::new(0),
            }),
        })
    }

    /// Trusts `roots_pem` and presents `cert_pem` with `key_pem`; the cluster is the one the
    /// certificate names.
    pub fn with_cert(
        roots_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Credentials, TlsError> {
        let own = own(cert_pem, key_pem)?;
        let creds = Credentials::new(&own.identity.cluster_id, roots_pem)?;
        creds.inner.state.write().expect("credentials lock").own = Some(own);
        Ok(creds)
    }

    /// Reads `ca.pem`, `cert.pem` and `key.pem` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Credentials, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| TlsError::file(&path, e))
        };
        // A running manager renews by writing key.pem, then cert.pem (`save_dir`): a reader in
        // between holds a key and a certificate that do not belong together. Read again for a
        // moment before calling the files bad.
        let mut attempts = 0;
        loop {
            let (ca, cert, key) = (read(CA_FILE)?, read(CERT_FILE)?, read(KEY_FILE)?);
            match Credentials::with_cert(&ca, &cert, &key) {
                Ok(creds) => return Ok(creds),
                Err(_) if attempts < LOAD_ATTEMPTS => {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(TlsError::file(dir, e)),
            }
        }
    }

    /// Writes `ca.pem`, `cert.pem` and `key.pem` (0600) to `dir`, each atomically and synced.
    pub fn save_dir(&self, dir: &Path) -> Result<(), TlsError> {
        std::fs::create_dir_all(dir).map_err(|e| TlsError::file(dir, e))?;
        let (roots, own) = {
            let s = self.inner.state.read().expect("credentials lock");
            (s.roots_pem.clone(), s.own.clone())
        };
        write_private(&dir.join(CA_FILE), roots.as_bytes())?;
        if let Some(own) = own {
            write_private(&dir.join(KEY_FILE), own.key_pem.as_bytes())?;
            write_private(&dir.join(CERT_FILE), own.cert_pem.as_bytes())?;
        }
        Ok(())
    }

    pub fn cluster_id(&self) -> &str {
        &self.inner.cluster_id
    }

    /// Who this process is, once it has a certificate.
    pub fn identity(&self) -> Option<PeerIdentity> {
        let s = self.inner.state.read().expect("credentials lock");
        s.own.as_ref().map(|o| o.identity.clone())
    }

    pub fn roots_pem(&self) -> String {
        self.inner
            .state
            .read()
            .expect("credentials lock")
            .roots_pem
            .clone()
    }

    pub fn cert_pem(&self) -> Option<String> {
        let s = self.inner.state.read().expect("credentials lock");
        s.own.as_ref().map(|o| o.cert_pem.clone())
    }

    pub fn key_pem(&self) -> Option<String> {
        let s = self.inner.state.read().expect("credentials lock");
        s.own.as_ref().map(|o| o.key_pem.clone())
    }

    /// Trusts exactly `roots_pem` from now on.
    pub fn set_roots(&self, roots_pem: &str) -> Result<(), TlsError> {
        let (roots, client_verifier) = roots_state(roots_pem)?;
        let mut s = self.inner.state.write().expect("credentials lock");
        s.roots_pem = roots_pem.to_string();
        s.roots = roots;
        s.client_verifier = client_verifier;
        Ok(())
    }

    /// Presents `cert_pem` with `key_pem` from now on (a renewal).
    pub fn set_cert(&self, cert_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let own = own(cert_pem, key_pem)?;
        if own.identity.cluster_id != self.inner.cluster_id {
            return Err(TlsError::Certificate(format!(
                "certificate for cluster {}, not {}",
                own.identity.cluster_id, self.inner.cluster_id
            )));
        }
        self.inner.state.write().expect("credentials lock").own = Some(own);
        Ok(())
    }

    /// Refuses certificates naming any of `names` (see [`revocation_name`]) from now on; a
    /// change wakes [`Credentials::until_revoked`].
    pub fn set_revoked(&self, names: HashSet<String>) {
        let mut revoked = self.inner.revoked.write().expect("credentials lock");
        if *revoked != names {
            *revoked = names;
            drop(revoked);
            self.inner.revocations.send_modify(|n| *n += 1);
        }
    }

    /// Resolves once `identity` is revoked (at once if it is already): open streams end on it.
    pub async fn until_revoked(&self, identity: &PeerIdentity) {
        // Subscribed before the check, so a change between the two is not missed.
        let mut changes = self.inner.revocations.subscribe();
        while !self.is_revoked(identity) {
            if changes.changed().await.is_err() {
                // Never: the sender lives as long as `self`.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn is_revoked(&self, identity: &PeerIdentity) -> bool {
        self.inner
            .revoked
            .read()
            .expect("credentials lock")
            .contains(&revocation_name(identity.role, &identity.name))
    }

    /// Checks a peer's certificate beyond its chain: our cluster, not revoked.
    fn check_peer(&self, der: &CertificateDer<'_>) -> Result<PeerIdentity, rustls::Error> {
        let id = PeerIdentity::from_der(der).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        if id.cluster_id != self.inner.cluster_id {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        if self.is_revoked(&id) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(id)
    }

    /// For servers. With `require` None every client is asked for a certificate, and one
    /// without may connect but reach only what services allow anonymously (the CA's join); with
    /// `Some(roles)` a certificate of one of those roles is required at the handshake. A bad
    /// certificate is refused either way.
    pub fn server_config(
        &self,
        require: Option<&[Role]>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_client_cert_verifier(Arc::new(ClusterClientVerifier {
                creds: self.clone(),
                require: require.map(<[Role]>::to_vec),
            }))
            .with_cert_resolver(Arc::new(OwnCert {
                creds: self.clone(),
            }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// For clients: the server must chain to our roots, be of our cluster and hold one of the
    /// `expect` roles (host names are not checked: a peer is who its certificate says).
    pub fn client_config(&self, expect: &[Role], alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        self.client_config_with(
            Arc::new(ClusterServerVerifier {
                creds: self.clone(),
                expect: expect.to_vec(),
                name: None,
            }),
            alpn,
        )
    }

    /// For clients that mean one holder: as [`Credentials::client_config`], and the server's
    /// certificate must be `role`'s named `name` (a worker's name is its node id), else the
    /// handshake fails with [`WrongPeer`]. Sessions are not resumed: every connection shows
    /// its certificate again, checked against the revocations of the moment.
    pub fn client_config_for(
        &self,
        role: Role,
        name: &str,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut config = self.client_config_with(
            Arc::new(ClusterServerVerifier {
                creds: self.clone(),
                expect: vec![role],
                name: Some(name.to_string()),
            }),
            alpn,
        );
        Arc::make_mut(&mut config).resumption = rustls::client::Resumption::disabled();
        config
    }

    fn client_config_with(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(OwnCert {
                creds: self.clone(),
            }));
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A client config that accepts any server certificate: only for fetching the cluster's roots
/// before a join, whose digest the join token then checks.
pub fn unverified_client_config(alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// The key under which a holder's revocation is recorded.
pub fn revocation_name(role: Role, name: &str) -> String {
    format!("{role}/{name}")
}

/// Writes `bytes` to `path` readable by the owner only, atomically and synced.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| TlsError::file(path, e);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
    }
    Ok(())
}

/// The handshake-signature checks every verifier here shares: the provider's algorithms, as
/// rustls' own verifiers use them.
macro_rules! handshake_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &provider().signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &provider().signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}

/// Presents the current certificate, on both sides of a connection.
#[derive(Debug)]
struct OwnCert {
    creds: Credentials,
}

impl OwnCert {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        let s = self.creds.inner.state.read().expect("credentials lock");
        s.own.as_ref().map(|o| o.key.clone())
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for OwnCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// Checks client certificates against the current roots, cluster and revocations.
#[derive(Debug)]
struct ClusterClientVerifier {
    creds: Credentials,
    require: Option<Vec<Role>>,
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.require.is_some()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verifier = self
            .creds
            .inner
            .state
            .read()
            .expect("credentials lock")
            .client_verifier
            .clone();
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        let id = self.creds.check_peer(end_entity)?;
        match &self.require {
            Some(roles) if !roles.contains(&id.role) => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ClientCertVerified::assertion()),
        }
    }

    handshake_signatures!();
}

/// A server showed a valid certificate of the cluster, but not the one of the holder the
/// client meant to reach (another node answering at that node's address).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the server presents the certificate of {presented_role} {presented}, not of {expected_role} {expected}")]
pub struct WrongPeer {
    pub expected_role: Role,
    pub expected: String,
    pub presented_role: Role,
    pub presented: String,
}

impl WrongPeer {
    /// The `WrongPeer` behind a failed handshake's error, if that is why it failed.
    pub fn of<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a WrongPeer> {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(wrong) = e.downcast_ref::<WrongPeer>() {
                return Some(wrong);
            }
            if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
                e.downcast_ref::<rustls::Error>()
            {
                next = Some(other.0.as_ref() as &(dyn std::error::Error + 'static));
                continue;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                next = io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static));
                continue;
            }
            next = e.source();
        }
        None
    }
}

/// Checks a server's certificate against the current roots, cluster, revocations and role (and
/// name, when the client means one holder).
#[derive(Debug)]
struct ClusterServerVerifier {
    creds: Credentials,
    expect: Vec<Role>,
    name: Option<String>,
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self
            .creds
            .inner
            .state
            .read()
            .expect("credentials lock")
            .roots
            .clone();
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let id = self.creds.check_peer(end_entity)?;
        let wrong = match &self.name {
            Some(name) => *name != id.name || !self.expect.contains(&id.role),
            None => false,
        };
        if wrong {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongPeer {
                    expected_role: self.expect[0],
                    expected: self.name.clone().unwrap_or_default(),
                    presented_role: id.role,
                    presented: id.name,
                })),
            )));
        }
        if !self.expect.contains(&id.role) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}

/// Accepts any server certificate (the handshake's signature is still checked).
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    handshake_signatures!();
}
