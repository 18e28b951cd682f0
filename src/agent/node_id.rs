//! The node's identity: chosen once, on the agent's first start, and kept in `DATA_DIR/node_id`, so
//! that every restart registers the same node and adopts its containers.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::error::AgentError;

const FILE: &str = "node_id";
const LEN: usize = 20;

/// The node id kept in `dir`, or a new one written there (the directory is created if missing).
pub(crate) fn load_or_create(dir: &Path) -> Result<String, AgentError> {
    let path = dir.join(FILE);
    let io_error = |source| AgentError::NodeIdFile {
        path: path.clone(),
        source,
    };
    match fs::read_to_string(&path) {
        Ok(found) => {
            let id = found.trim();
            if is_valid(id) {
                Ok(id.to_string())
            } else {
                Err(AgentError::BadNodeId {
                    path: path.clone(),
                    found: found.clone(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(io_error)?;
            let id = generate();
            write_atomically(dir, &path, &id).map_err(io_error)?;
            Ok(id)
        }
        Err(e) => Err(io_error(e)),
    }
}

fn generate() -> String {
    let bytes: [u8; LEN / 2] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_valid(id: &str) -> bool {
    id.len() == LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A crash leaves either no file or the whole id, never a torn one.
fn write_atomically(dir: &Path, path: &Path, id: &str) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(format!("{id}\n").as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("agent-1");
        let id = load_or_create(&data).unwrap();
        assert!(is_valid(&id), "{id}");
        assert_eq!(load_or_create(&data).unwrap(), id);
        assert!(!data.join("node_id.tmp").exists());
        let other = load_or_create(&dir.path().join("agent-2")).unwrap();
        assert_ne!(other, id, "each data dir is its own node");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), "not-an-id\n").unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("not-an-id") && err.contains("node_id"),
            "{err}"
        );
    }
}
