//! Errors of the configuration boundary: a `--config` file that cannot be used, a join token that
//! cannot be read. Each is one line naming the file (and the section and key) at fault.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },

    /// TOML syntax; `at` is `line L, column C`.
    #[error("config file {path}: {at}: {message}")]
    Syntax {
        path: PathBuf,
        at: String,
        message: String,
    },

    #[error(
        "config file {path}: unknown section [{section}] (expected [manager], [agent] or [proxy])"
    )]
    UnknownSection { path: PathBuf, section: String },

    #[error("config file {path}: `{key}` is outside any section (put it under [manager], [agent] or [proxy])")]
    NotASection { path: PathBuf, key: String },

    #[error("config file {path}: unknown key `{key}` in [{section}] (keys are the long flags of `shoal {section}`: {known})")]
    UnknownKey {
        path: PathBuf,
        section: String,
        key: String,
        known: String,
    },

    #[error("config file {path}: `{key}` in [{section}] can only be given on the command line")]
    CommandLineOnly {
        path: PathBuf,
        section: String,
        key: String,
    },

    #[error("config file {path}: `{key}` in [{section}] {expected}")]
    BadValue {
        path: PathBuf,
        section: String,
        key: String,
        expected: &'static str,
    },

    #[error("give either --token or --token-file, not both")]
    TwoTokens,

    #[error("reading the join token from {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },

    #[error("the join token file {path} did not appear within {waited:?}")]
    TokenFileMissing { path: PathBuf, waited: Duration },
}
