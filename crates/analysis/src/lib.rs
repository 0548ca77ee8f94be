//! builder-analysis: looks at a working copy and says what it is — languages, the build and
//! test commands (detected, from the repository's `.builder.toml`, or from the registration)
//! and which files an LLM should see for a request, under a byte budget.
//!
//! Reads files only; never runs anything (commands run in builder-sandbox) and never follows
//! a symlink, since the repository is untrusted. Must not depend on the store, the bus, git,
//! the LLM client or any network; its only builder dependency is builder-testreport, for the
//! `TestFramework` it hands to the test-report parser.

mod context;
mod detect;
mod secrets;
mod walk;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use builder_testreport::TestFramework;
pub use context::{
    MAX_CONTEXT_FILE_BYTES, MAX_TREE_ENTRIES, RepoContext, TREE_SHARE_DIVISOR, estimate_tokens,
    repo_context,
};
pub use detect::{REPO_CONFIG_FILE, detect};
pub use secrets::{REDACTED, is_secret_path, redact_secrets};

/// A dependency, a build and a test command; `None` (or, from a registration, blank) means
/// "not given". `Default` is all `None`, so callers can name only what they override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commands {
    pub build: Option<String>,
    pub test: Option<String>,
    /// Fetches the dependencies (run with only the package registries reachable).
    #[serde(default)]
    pub deps: Option<String>,
}

/// A package ecosystem: which registries a dependency phase may have to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ecosystem {
    Cargo,
    Npm,
    Pip,
    Go,
}

impl Ecosystem {
    pub fn as_str(&self) -> &'static str {
        match self {
            Ecosystem::Cargo => "cargo",
            Ecosystem::Npm => "npm",
            Ecosystem::Pip => "pip",
            Ecosystem::Go => "go",
        }
    }
}

impl std::fmt::Display for Ecosystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the commands of a profile came from: the highest-precedence source that supplied at
/// least one of them (registration > repository file > detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSource {
    Detected,
    RepositoryFile,
    Registration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectProfile {
    /// Lower-case language names: those with a build manifest first, in detection priority
    /// order, then others seen by file extension, most files first.
    pub languages: Vec<String>,
    pub build_command: Option<String>,
    pub test_command: Option<String>,
    pub test_framework: TestFramework,
    pub source: CommandSource,
    /// Regular files in the working copy, not counting skipped directories.
    pub file_count: usize,
    /// Every ecosystem found (a manifest at the root or, for Python, test files pytest
    /// collects), in detection priority order — not only the one the commands came from: a
    /// dependency command the repository declares may need any of their registries.
    pub ecosystems: Vec<Ecosystem>,
    /// What fetches the dependencies into the caches, without building or running
    /// repository code (`cargo fetch`, `npm ci --ignore-scripts`, `go mod download`, or for
    /// a `requirements.txt` a `pip download`, which does not install).
    pub deps_command: Option<String>,
    /// Why each command was or was not chosen, one short line per decision, for people
    /// reading the `codebase.analyzed` event.
    pub reasons: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error("`{0}` is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot read `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {file}: {message}")]
    RepoConfig { file: &'static str, message: String },
}
