//! The certificate authority: root certificates, signing requests, node certificates, and
//! reading who a certificate names.

use std::time::Duration;
use std::time::SystemTime;

use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::CertificateSigningRequestParams;
use rcgen::DistinguishedName;
use rcgen::DnType;
use rcgen::ExtendedKeyUsagePurpose;
use rcgen::IsCa;
use rcgen::Issuer;
use rcgen::KeyPair;
use rcgen::KeyUsagePurpose;
use rcgen::SanType;
use rcgen::SerialNumber;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use sha2::Digest;
use time::OffsetDateTime;

use crate::Role;
use crate::TlsError;

/// How long a root certificate is valid: rotated by hand, long before this.
const ROOT_LIFETIME: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
const SUBJECT_PREFIX: &str = "shoal:";

/// A root CA: its certificate and signing key, both PEM. Lives on managers only, and in the
/// store only sealed.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCa")
            .field("digest", &digest_pem(&self.cert_pem).ok())
            .finish_non_exhaustive()
    }
}

fn cert_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn to_offset(t: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(t)
}

impl RootCa {
    /// A new self-signed root for `cluster_id`; `generation` tells successive roots apart.
    pub fn generate(cluster_id: &str, generation: u64) -> Result<RootCa, TlsError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::OrganizationName,
            format!("{SUBJECT_PREFIX}{cluster_id}"),
        );
        dn.push(
            DnType::CommonName,
            format!("shoal root CA {cluster_id} #{generation}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = to_offset(now - Duration::from_secs(3600));
        params.not_after = to_offset(now + ROOT_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).map_err(cert_err)?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The root's digest, as join tokens pin it.
    pub fn digest(&self) -> String {
        digest_pem(&self.cert_pem).unwrap_or_default()
    }

    /// Signs `csr_pem` for `role` and `name` of `cluster_id`. Only the request's public key is
    /// used: subject, usages, names and lifetime are the CA's decision.
    pub fn issue(&self, csr_pem: &str, request: &Issue) -> Result<String, TlsError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| TlsError::BadInput(format!("bad certificate signing request: {e}")))?;
        let key = KeyPair::from_pem(&self.key_pem).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(cert_err)?;
        let params = request.params()?;
        let cert = params
            .signed_by(&csr.public_key, &issuer)
            .map_err(cert_err)?;
        Ok(cert.pem())
    }
}

/// What a node certificate is issued for.
#[derive(Debug, Clone)]
pub struct Issue {
    pub cluster_id: String,
    pub role: Role,
    pub name: String,
    /// Host names and IPs the holder serves on (Docker clients check them).
    pub sans: Vec<String>,
    pub lifetime: Duration,
}

impl Issue {
    fn params(&self) -> Result<CertificateParams, TlsError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::OrganizationName,
            format!("{SUBJECT_PREFIX}{}", self.cluster_id),
        );
        dn.push(DnType::OrganizationalUnitName, self.role.as_str());
        dn.push(DnType::CommonName, self.name.clone());
        params.distinguished_name = dn;
        let mut sans = Vec::new();
        for s in &self.sans {
            let san = match s.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    s.clone()
                        .try_into()
                        .map_err(|e| TlsError::BadInput(format!("bad host name {s:?}: {e}")))?,
                ),
            };
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        // A little slack for clocks behind ours, never more than a tenth of the lifetime.
        let now = SystemTime::now();
        let slack = (self.lifetime / 10).min(Duration::from_secs(300));
        params.not_before = to_offset(now - slack);
        params.not_after = to_offset(now + self.lifetime);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A fresh key pair and a signing request for it: `(key_pem, csr_pem)`.
pub fn signing_request() -> Result<(String, String), TlsError> {
    let key = KeyPair::generate().map_err(cert_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(cert_err)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_err)?))
}

/// SHA-256 of a certificate's DER, hex.
pub fn digest_der(der: &[u8]) -> String {
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 of the first certificate in `pem`, hex.
pub fn digest_pem(pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(cert_err)?;
    Ok(digest_der(&der))
}

/// Every certificate in a PEM bundle.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(cert_err)?;
    if certs.is_empty() {
        return Err(TlsError::Certificate("no certificate in PEM".into()));
    }
    Ok(certs)
}

/// Who a certificate names, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub cluster_id: String,
    pub role: Role,
    pub name: String,
    /// The issuing root's common name (which generation of the CA signed it).
    pub issuer: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl PeerIdentity {
    /// Reads a node certificate's subject. A certificate that is not a shoal node certificate
    /// (no cluster, no role) is an error.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, TlsError> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| TlsError::Certificate(format!("unparsable certificate: {e}")))?;
        let subject = cert.subject();
        let first = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
            it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
        };
        let org = first(&mut subject.iter_organization()).unwrap_or_default();
        let cluster_id = org
            .strip_prefix(SUBJECT_PREFIX)
            .ok_or_else(|| TlsError::Certificate("not a shoal certificate (no cluster)".into()))?
            .to_string();
        let role: Role = first(&mut subject.iter_organizational_unit())
            .ok_or_else(|| TlsError::Certificate("not a shoal node certificate (no role)".into()))?
            .parse()?;
        let name = first(&mut subject.iter_common_name()).unwrap_or_default();
        let issuer = first(&mut cert.issuer().iter_common_name()).unwrap_or_default();
        let validity = cert.validity();
        let at = |t: &x509_parser::time::ASN1Time| {
            let secs = t.timestamp();
            if secs >= 0 {
                SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
            } else {
                SystemTime::UNIX_EPOCH
            }
        };
        Ok(PeerIdentity {
            cluster_id,
            role,
            name,
            issuer,
            serial: cert.raw_serial_as_string(),
            not_before: at(&validity.not_before),
            not_after: at(&validity.not_after),
        })
    }

    pub fn from_pem(pem: &str) -> Result<PeerIdentity, TlsError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(cert_err)?;
        PeerIdentity::from_der(&der)
    }

    /// When to renew: a random point between 50% and 80% of the lifetime, as SwarmKit does, so
    /// that a fleet issued together does not renew together.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        let fraction = 0.5 + 0.3 * rand::random::<f64>();
        self.not_before + life.mul_f64(fraction)
    }
}

/// The common name of a root certificate (what [`PeerIdentity::issuer`] is compared with).
pub fn root_name(cert_pem: &str) -> Result<String, TlsError> {
    use x509_parser::prelude::FromDer;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(cert_err)?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|e| TlsError::Certificate(format!("unparsable certificate: {e}")))?;
    Ok(common_name(&cert))
}

/// A certificate's subject common name ("" if it has none).
fn common_name(cert: &x509_parser::certificate::X509Certificate) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The common name and expiry of each certificate in `pem` (the cluster's roots, for metrics);
/// one that does not parse is left out.
pub fn expiries(pem: &str) -> Vec<(String, SystemTime)> {
    use x509_parser::prelude::FromDer;
    let Ok(certs) = certs_from_pem(pem) else {
        return Vec::new();
    };
    certs
        .iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
            let name = common_name(&cert);
            let secs = cert.validity().not_after.timestamp();
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
            Some((name, at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_its_cluster_role_and_issuer() {
        let ca = RootCa::generate("c0ffee", 1).unwrap();
        let (_key, csr) = signing_request().unwrap();
        let pem = ca
            .issue(
                &csr,
                &Issue {
                    cluster_id: "c0ffee".into(),
                    role: Role::Worker,
                    name: "node-7".into(),
                    sans: vec!["127.0.0.1".into(), "localhost".into()],
                    lifetime: Duration::from_secs(100),
                },
            )
            .unwrap();
        let id = PeerIdentity::from_pem(&pem).unwrap();
        assert_eq!(id.cluster_id, "c0ffee");
        assert_eq!(id.role, Role::Worker);
        assert_eq!(id.name, "node-7");
        assert_eq!(id.issuer, root_name(&ca.cert_pem).unwrap());
        let life = id.not_after.duration_since(id.not_before).unwrap();
        assert!(life >= Duration::from_secs(100) && life <= Duration::from_secs(111));
        let renew = id.renew_at();
        assert!(renew > id.not_before + life / 2 - Duration::from_secs(1));
        assert!(renew < id.not_before + life.mul_f64(0.8) + Duration::from_secs(1));
    }

    #[test]
    fn garbage_requests_and_root_certificates_are_refused() {
        let ca = RootCa::generate("c0ffee", 1).unwrap();
        let issue = Issue {
            cluster_id: "c0ffee".into(),
            role: Role::Client,
            name: "x".into(),
            sans: vec![],
            lifetime: Duration::from_secs(10),
        };
        assert!(ca.issue("not a csr", &issue).is_err());
        // A root has no role: it is never taken for a peer.
        assert!(PeerIdentity::from_pem(&ca.cert_pem).is_err());
        assert_eq!(ca.digest().len(), 64);
    }
}
