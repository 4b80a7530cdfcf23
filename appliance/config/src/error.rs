//! What can be wrong with a configuration: every problem by its field path.

use std::fmt;
use std::path::PathBuf;

use crate::{DEMO_CONFIG, SYSTEM_CONFIG};

/// One thing wrong with a configuration, located by its field path (`camera[1].uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid vigil config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
    #[error(
        "no configuration: {SYSTEM_CONFIG} does not exist. Write one (`vigil default-config` prints an \
         annotated example) or name one with --config FILE; to try vigil, run `vigil demo` in a source checkout"
    )]
    Missing,
    #[error(
        "the demo runs in a vigil source checkout: {DEMO_CONFIG} is not under {dir}; run `make demo` (or \
         `vigil demo`) from the repository's top directory"
    )]
    NoDemo { dir: PathBuf },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}
