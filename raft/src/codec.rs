//! Encoding of everything shoal persists or sends between managers: serde + bincode 2, behind a
//! format version byte so a future format can be told apart from a corrupted one.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Version of the on-disk and on-wire encoding. Bump it when a persisted type changes shape.
pub(crate) const FORMAT_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty record")]
    Empty,
    #[error("unsupported format version {0} (this build reads version {FORMAT_VERSION})")]
    Version(u8),
    #[error("corrupted record: {0}")]
    Decode(String),
    #[error("cannot encode record: {0}")]
    Encode(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` with the version byte in front.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes a record written by [`encode`], rejecting unknown versions and trailing garbage.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version(version));
    }
    let (value, read) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if read != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes",
            body.len() - read
        )));
    }
    Ok(value)
}

impl From<CodecError> for std::io::Error {
    fn from(e: CodecError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_bad_input() {
        let bytes = encode(&(7u64, "k".to_string())).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        let back: (u64, String) = decode(&bytes).unwrap();
        assert_eq!(back, (7, "k".to_string()));

        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        let mut wrong = bytes.clone();
        wrong[0] = 99;
        assert!(matches!(
            decode::<(u64, String)>(&wrong),
            Err(CodecError::Version(99))
        ));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            decode::<(u64, String)>(&long),
            Err(CodecError::Decode(_))
        ));
        assert!(decode::<(u64, String)>(&bytes[..bytes.len() - 1]).is_err());
    }
}
