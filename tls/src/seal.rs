//! Sealing secrets before they enter the store: the CA's signing keys and the join token
//! secrets are encrypted (ChaCha20-Poly1305) with a key-encryption key that lives in each
//! manager's data dir (`tls/kek`, mode 0600) and travels only inside a manager's join answer over
//! mutual TLS, never through the Raft log. Snapshots and log entries hold ciphertext only.

use std::path::Path;

use chacha20poly1305::aead::Aead;
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::ChaCha20Poly1305;
use chacha20poly1305::Key;
use chacha20poly1305::Nonce;

use crate::TlsError;

const NONCE: usize = 12;

/// The key-encryption key.
#[derive(Clone, PartialEq, Eq)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn generate() -> Kek {
        Kek(rand::random())
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Kek, TlsError> {
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| TlsError::Seal(format!("a key is 32 bytes, not {}", bytes.len())))?;
        Ok(Kek(arr))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `nonce || ciphertext`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        let nonce: [u8; NONCE] = rand::random();
        let mut out = nonce.to_vec();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext)
            .expect("ChaCha20-Poly1305 encryption of an in-memory buffer cannot fail");
        out.extend_from_slice(&ct);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, TlsError> {
        if sealed.len() < NONCE {
            return Err(TlsError::Seal("too short".into()));
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.0));
        cipher
            .decrypt(Nonce::from_slice(&sealed[..NONCE]), &sealed[NONCE..])
            .map_err(|_| TlsError::Seal("wrong key or corrupted data".into()))
    }

    pub fn load(path: &Path) -> Result<Kek, TlsError> {
        let bytes = std::fs::read(path).map_err(|e| TlsError::file(path, e))?;
        Kek::from_bytes(&bytes).map_err(|e| TlsError::file(path, e))
    }

    pub fn save(&self, path: &Path) -> Result<(), TlsError> {
        crate::creds::write_private(path, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_with_its_key() {
        let k = Kek::generate();
        let sealed = k.seal(b"ca key");
        assert!(!sealed.windows(6).any(|w| w == b"ca key"));
        assert_eq!(k.open(&sealed).unwrap(), b"ca key");
        assert!(Kek::generate().open(&sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(k.open(&tampered).is_err());
        assert!(k.open(b"short").is_err());
    }
}
