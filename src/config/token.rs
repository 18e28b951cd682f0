//! The join token of `--token` or `--token-file`: the one place the processes read it, so that a
//! change of the token's shape or source touches this file only.

use std::path::Path;
use std::time::Duration;

use super::ConfigError;

/// How long `--token-file` waits for its file: long enough for a first manager started at the
/// same time (compose, systemd) to bootstrap and write `DATA_DIR/token`.
pub const TOKEN_FILE_WAIT: Duration = Duration::from_secs(60);

/// The token given by `--token`, or read from `--token-file` (waiting up to [`TOKEN_FILE_WAIT`]
/// for the file to appear); None when neither was given.
pub async fn join_token(
    token: Option<String>,
    token_file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (token, token_file) {
        (Some(_), Some(_)) => Err(ConfigError::TwoTokens),
        (Some(token), None) => Ok(Some(token)),
        (None, Some(path)) => read_token_file(path, TOKEN_FILE_WAIT).await.map(Some),
        (None, None) => Ok(None),
    }
}

/// The file's content, trimmed, once the file exists and is not empty (a manager writes it by
/// rename, but an operator's `echo > file` may be caught half-way). Errors other than a missing
/// file fail at once.
pub async fn read_token_file(path: &Path, wait: Duration) -> Result<String, ConfigError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut told = false;
    loop {
        match tokio::fs::read_to_string(path).await {
            Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ConfigError::TokenFile {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ConfigError::TokenFileMissing {
                path: path.to_path_buf(),
                waited: wait,
            });
        }
        if !told {
            tracing::info!(path = %path.display(), "waiting for the join token file");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
