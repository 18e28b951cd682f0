//! Checkers: each reads a finished history and says valid, illegal or unknown, with the numbers
//! behind its verdict and, for an illegal history, the operations that show it.

pub mod lock;
pub mod scheduler;
pub mod set;
pub mod watch;
pub mod wgl;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::history::Op;

/// Ordered by severity: the verdict of a run is the worst of its checkers'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Unknown,
    Illegal,
}

impl Validity {
    /// The process exit code the issue asks for: 0 valid, 1 illegal, 2 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Validity::Valid => 0,
            Validity::Illegal => 1,
            Validity::Unknown => 2,
        }
    }
}

/// One checker's verdict, written to `<checker>.json` in the results directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub checker: String,
    pub validity: Validity,
    /// Operations the checker looked at (completed invokes).
    pub ops: usize,
    /// One line a person reads first.
    pub summary: String,
    /// Checker-specific figures (lost elements, keys checked, ...).
    #[serde(default)]
    pub details: Value,
    /// For an illegal history: the smallest set of operations found that shows it.
    #[serde(default)]
    pub witness: Vec<Op>,
}

impl Verdict {
    pub fn new(checker: &str, validity: Validity, ops: usize, summary: String) -> Verdict {
        Verdict {
            checker: checker.to_string(),
            validity,
            ops,
            summary,
            details: Value::Null,
            witness: Vec::new(),
        }
    }
}

/// The worst validity of several verdicts (valid when there are none).
pub fn overall(verdicts: &[Verdict]) -> Validity {
    verdicts
        .iter()
        .map(|v| v.validity)
        .max()
        .unwrap_or(Validity::Valid)
}
