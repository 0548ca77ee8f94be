//! Language, dependency-, build- and test-command detection, and why each was chosen.
//!
//! Precedence, per command: a non-empty registration field, then `.builder.toml`'s
//! `[commands]`, then detection from root-level manifests (and, for Python, from the test
//! files pytest would collect).
//!
//! Detection priority when several ecosystems are present at the root: Rust, Go, Node,
//! Python — the first of them that yields a test command supplies all three commands
//! (failing that, the first that yields a build command, failing that the first found).
//! Compiled-language manifests usually define the project, while a `package.json` next to
//! them tends to be tooling or a front end and a `pyproject.toml` is often just linter
//! configuration.
//!
//! Detected test commands run every test target and carry on past failing ones: a run that
//! stops at the first failing binary, package or file cannot say what else the change broke.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::walk::{self, Entry};
use crate::{AnalysisError, CommandSource, Commands, Ecosystem, ProjectProfile, TestFramework};

/// The repository's own command configuration, at the root of the working copy.
pub const REPO_CONFIG_FILE: &str = ".builder.toml";

const MANIFEST_MAX_BYTES: u64 = 256 * 1024;

/// Excludes environments and generated trees, which may hold code for another Python.
const PY_BUILD: &str = "python3 -m compileall -q -x '(^|/)(\\.git|\\.venv|venv|\\.tox|node_modules|build|dist)(/|$)' .";
/// No cache provider: `.pytest_cache` would otherwise land in the working copy. The JUnit
/// file gives per-test results; builder sets `BUILDER_REPORT_DIR` for every sandboxed
/// command (and `${…:-.}` keeps the command usable by hand).
const PY_TEST: &str = "python3 -m pytest -q -p no:cacheprovider --junitxml=\"${BUILDER_REPORT_DIR:-.}/pytest-junit.xml\"";
/// Wheels go to the pip cache (set by builder for every sandboxed command; pip's own
/// default by hand), never into the working copy, where they would be committed.
const PY_DEPS: &str = "python3 -m pip download -q -d \"${PIP_CACHE_DIR:-$HOME/.cache/pip}/wheels\" -r requirements.txt";
/// Lifecycle scripts are repository code: never run while fetching.
const NPM_CI: &str = "npm ci --ignore-scripts --no-audit --no-fund";
/// Without a lock file npm would write a fresh `package-lock.json` into the working copy,
/// and it would end up in the feature's commit.
const NPM_INSTALL: &str = "npm install --ignore-scripts --no-audit --no-fund --no-package-lock";

/// Files at the root that make a directory a Python project, or configure pytest.
const PY_MARKERS: &[&str] = &[
    "pyproject.toml",
    "setup.py",
    "setup.cfg",
    "pytest.ini",
    "tox.ini",
    "conftest.py",
];

/// Said of each command when no ecosystem at all was recognised.
const NOTHING_FOUND: &str = "no Cargo.toml, go.mod, package.json, Python project or pytest configuration file, nor any test_*.py / *_test.py file";

/// What one ecosystem's root manifest says, and why, per command.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    language: &'static str,
    ecosystem: Ecosystem,
    deps: Option<String>,
    build: Option<String>,
    test: Option<String>,
    framework: TestFramework,
    /// Why `deps`, `build` and `test` are what they are (shown in parentheses).
    why_deps: String,
    why_build: String,
    why_test: String,
}

#[derive(Debug, Default, Deserialize)]
struct RepoConfig {
    #[serde(default)]
    commands: Option<RepoCommands>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoCommands {
    deps: Option<String>,
    build: Option<String>,
    test: Option<String>,
    test_framework: Option<String>,
}

/// Where one command came from, for its reason line.
#[derive(Clone, Copy)]
enum Origin {
    Registration,
    RepositoryFile,
    Detected,
}

/// Profiles the working copy at `workdir`. `registration_override` fields that are `Some`
/// and not blank win over everything else.
pub fn detect(
    workdir: &Path,
    registration_override: &Commands,
) -> Result<ProjectProfile, AnalysisError> {
    if !workdir.is_dir() {
        return Err(AnalysisError::NotADirectory(workdir.to_path_buf()));
    }
    let files = walk::files(workdir)?;
    let candidates = candidates(workdir, &files)?;
    let chosen = candidates
        .iter()
        .find(|c| c.test.is_some())
        .or_else(|| candidates.iter().find(|c| c.build.is_some()))
        .or_else(|| candidates.first());

    let repo = read_repo_config(workdir)?;
    let reg = |v: &Option<String>| v.as_ref().filter(|s| !s.trim().is_empty()).cloned();

    let mut source = CommandSource::Detected;
    let mut pick = |registered: Option<String>,
                    file: Option<&String>,
                    detected: Option<&String>|
     -> (Option<String>, Origin) {
        if let Some(r) = registered {
            source = CommandSource::Registration;
            return (Some(r), Origin::Registration);
        }
        if let Some(f) = file {
            if source == CommandSource::Detected {
                source = CommandSource::RepositoryFile;
            }
            // An empty string in the file explicitly switches the step off.
            return (
                (!f.trim().is_empty()).then(|| f.clone()),
                Origin::RepositoryFile,
            );
        }
        (detected.cloned(), Origin::Detected)
    };
    let (deps_command, deps_origin) = pick(
        reg(&registration_override.deps),
        repo.deps.as_ref(),
        chosen.and_then(|c| c.deps.as_ref()),
    );
    let (build_command, build_origin) = pick(
        reg(&registration_override.build),
        repo.build.as_ref(),
        chosen.and_then(|c| c.build.as_ref()),
    );
    let (test_command, test_origin) = pick(
        reg(&registration_override.test),
        repo.test.as_ref(),
        chosen.and_then(|c| c.test.as_ref()),
    );

    let mut reasons = Vec::new();
    if let Some(c) = chosen
        && candidates.len() > 1
    {
        let others: Vec<&str> = candidates
            .iter()
            .filter(|o| o.language != c.language)
            .map(|o| o.language)
            .collect();
        let basis = if c.test.is_some() {
            "the first with a test command"
        } else if c.build.is_some() {
            "none has a test command; the first with a build command"
        } else {
            "none has a build or test command; the first found"
        };
        reasons.push(format!(
            "detected {} and {}; commands are taken from {} (priority rust, go, javascript, python: {basis})",
            c.language,
            others.join(", "),
            c.language,
        ));
    }
    let detected_why = |why: fn(&Candidate) -> &String| -> String {
        chosen.map_or_else(|| format!("— {NOTHING_FOUND}"), |c| format!("({})", why(c)))
    };
    for (what, command, origin, why) in [
        (
            "deps",
            &deps_command,
            deps_origin,
            detected_why(|c| &c.why_deps),
        ),
        (
            "build",
            &build_command,
            build_origin,
            detected_why(|c| &c.why_build),
        ),
        (
            "test",
            &test_command,
            test_origin,
            detected_why(|c| &c.why_test),
        ),
    ] {
        let shown = command.as_deref().unwrap_or("none");
        reasons.push(match origin {
            Origin::Registration => {
                format!("{what}: {shown} (from the repository's registration)")
            }
            // Build and tests run offline against the dependency cache only the
            // dependency phase fills: say what switching it off costs.
            Origin::RepositoryFile if command.is_none() && what == "deps" => format!(
                "deps: none (switched off in {REPO_CONFIG_FILE}){}",
                match chosen.map(|c| c.language) {
                    Some("rust") => "; builds run offline with an empty cargo cache, so only crates that are vendored or in the repository resolve",
                    Some("go") => "; builds run offline with an empty module cache, so only vendored modules resolve",
                    Some("javascript") => "; node_modules must already be in the repository",
                    Some("python") => "; the sandbox has no network, so only what the image or the repository provides imports",
                    _ => "",
                }
            ),
            Origin::RepositoryFile if command.is_none() => {
                format!("{what}: none (switched off in {REPO_CONFIG_FILE})")
            }
            Origin::RepositoryFile => format!("{what}: {shown} (from {REPO_CONFIG_FILE})"),
            Origin::Detected => format!("{what}: {shown} {why}"),
        });
    }
    if let Some(t) = &test_command {
        reasons.extend(stops_early(t).map(|note| format!("test: {note}")));
    }

    let test_from_detection = matches!(test_origin, Origin::Detected);
    let test_framework = match (&test_command, test_from_detection, &repo.test_framework) {
        (None, _, _) => TestFramework::Unknown,
        (Some(_), true, _) => chosen.map_or(TestFramework::Unknown, |c| c.framework),
        (Some(_), false, Some(explicit)) => {
            explicit
                .parse()
                .map_err(|e: builder_testreport::UnknownTestFramework| {
                    AnalysisError::RepoConfig {
                        file: REPO_CONFIG_FILE,
                        message: e.to_string(),
                    }
                })?
        }
        (Some(cmd), false, None) => framework_of_command(cmd),
    };

    Ok(ProjectProfile {
        languages: languages(&candidates, &files),
        build_command,
        test_command,
        test_framework,
        source,
        file_count: files.len(),
        ecosystems: candidates.iter().map(|c| c.ecosystem).collect(),
        deps_command,
        reasons,
    })
}

/// Why a declared test command may not run every test: it stops at the first failure.
/// Detected commands never do; these notes are for what a repository or registration
/// declared, which builder runs as written.
fn stops_early(cmd: &str) -> Option<String> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    let has = |w: &str| words.contains(&w);
    let runs = |a: &str, b: &str| words.windows(2).any(|p| p[0] == a && p[1] == b);
    if runs("cargo", "test") && !has("--no-fail-fast") {
        return Some(
            "the declared cargo test stops at the first failing test binary; add --no-fail-fast so every test target runs".into(),
        );
    }
    if runs("cargo", "nextest") && !has("--no-fail-fast") {
        return Some(
            "the declared cargo nextest run stops scheduling tests after the first failure unless --no-fail-fast is given".into(),
        );
    }
    if words.iter().any(|w| *w == "make" || w.ends_with("/make"))
        && !words.iter().any(|w| {
            *w == "--keep-going" || (w.starts_with('-') && !w.starts_with("--") && w.contains('k'))
        })
    {
        return Some(
            "the declared make stops at the first failing target; make -k carries on with the others".into(),
        );
    }
    if words.iter().any(|w| w.contains("pytest"))
        && words
            .iter()
            .any(|w| *w == "-x" || *w == "--exitfirst" || w.starts_with("--maxfail"))
    {
        return Some(
            "the declared pytest stops after the first failures (-x / --maxfail); without it every collected test runs".into(),
        );
    }
    if runs("go", "test") && has("-failfast") {
        return Some("the declared go test -failfast stops at the first failing test".into());
    }
    None
}

fn read_repo_config(workdir: &Path) -> Result<RepoCommands, AnalysisError> {
    let Some(text) = walk::read_text(workdir, REPO_CONFIG_FILE, MANIFEST_MAX_BYTES)? else {
        return Ok(RepoCommands::default());
    };
    let cfg: RepoConfig = toml::from_str(&text).map_err(|e| AnalysisError::RepoConfig {
        file: REPO_CONFIG_FILE,
        message: e.to_string(),
    })?;
    Ok(cfg.commands.unwrap_or_default())
}

/// Root-level ecosystems, in detection priority order.
fn candidates(root: &Path, files: &[Entry]) -> Result<Vec<Candidate>, AnalysisError> {
    let at_root = |name: &str| files.iter().any(|e| e.rel == name);
    let mut out = Vec::new();
    if at_root("Cargo.toml") {
        // The network is the worker's business (this dependency phase, then
        // CARGO_NET_OFFLINE for build and test), so no --offline here.
        out.push(Candidate {
            language: "rust",
            ecosystem: Ecosystem::Cargo,
            deps: Some("cargo fetch".into()),
            build: Some("cargo build --workspace".into()),
            test: Some("cargo test --workspace --no-fail-fast".into()),
            framework: TestFramework::Cargo,
            why_deps: "Cargo.toml at the root; downloads crates without building anything".into(),
            why_build: "Cargo.toml at the root; every package of the workspace".into(),
            why_test: "Cargo.toml at the root; every package and test binary, past failing ones"
                .into(),
        });
    }
    if at_root("go.mod") {
        out.push(Candidate {
            language: "go",
            ecosystem: Ecosystem::Go,
            deps: Some("go mod download".into()),
            build: Some("go build ./...".into()),
            test: Some("go test ./...".into()),
            framework: TestFramework::Go,
            why_deps: "go.mod at the root".into(),
            why_build: "go.mod at the root; every package".into(),
            why_test: "go.mod at the root; every package, and go test carries on past failing ones"
                .into(),
        });
    }
    if at_root("package.json") {
        out.push(node(root, at_root("package-lock.json"))?);
    }
    if let Some(python) = python(files, at_root("requirements.txt"), |m| at_root(m)) {
        out.push(python);
    }
    Ok(out)
}

fn node(root: &Path, locked: bool) -> Result<Candidate, AnalysisError> {
    let scripts = npm_scripts(root)?;
    let why_script = |name: &str, present: bool| match (&scripts.invalid, present) {
        (Some(e), _) => format!("package.json is not valid JSON: {e}"),
        (None, true) => format!("package.json has a {name} script"),
        (None, false) => format!("package.json has no {name} script"),
    };
    let why_test = if scripts.test {
        "package.json has a test script; npm runs it as written, so whether it carries on past a failing file is up to that script".to_string()
    } else if scripts.placeholder_test {
        "package.json's test script is npm init's placeholder, which only fails".to_string()
    } else {
        why_script("test", false)
    };
    Ok(Candidate {
        language: "javascript",
        ecosystem: Ecosystem::Npm,
        deps: Some(if locked { NPM_CI } else { NPM_INSTALL }.to_string()),
        build: scripts.build.then(|| "npm run build".to_string()),
        test: scripts.test.then(|| "npm test".to_string()),
        framework: TestFramework::Npm,
        why_deps: if locked {
            "package-lock.json at the root; no package script runs".into()
        } else {
            "package.json without package-lock.json: versions are resolved afresh and no lock file is written; no package script runs".into()
        },
        why_build: why_script("build", scripts.build),
        why_test,
    })
}

/// Python is recognised from a project or pytest configuration file at the root, or from
/// the test files pytest would collect without one.
fn python(
    files: &[Entry],
    has_requirements: bool,
    at_root: impl Fn(&str) -> bool,
) -> Option<Candidate> {
    let test_files = files.iter().filter(|e| pytest_collects(&e.rel)).count();
    let marker = PY_MARKERS.iter().find(|m| at_root(m));
    let why_test = match (marker, test_files) {
        (None, 0) => return None,
        (None, n) => format!(
            "{n} test_*.py / *_test.py file(s) found, no configuration file; pytest runs every test it collects, past failing ones"
        ),
        (Some(m), 0) => format!(
            "{m} at the root; no test_*.py / *_test.py file found, so pytest may collect nothing unless configured to"
        ),
        (Some(m), n) => format!("{m} at the root; {n} test_*.py / *_test.py file(s)"),
    };
    Some(Candidate {
        language: "python",
        ecosystem: Ecosystem::Pip,
        deps: has_requirements.then(|| PY_DEPS.to_string()),
        build: Some(PY_BUILD.into()),
        test: Some(PY_TEST.into()),
        framework: TestFramework::Pytest,
        why_deps: if has_requirements {
            "requirements.txt at the root; downloaded into the pip cache only, not installed: the tests see only the packages the sandbox's Python already has".into()
        } else {
            "no requirements.txt at the root: Python dependencies are not fetched".into()
        },
        why_build: "Python has no build step; byte-compiling every .py file catches syntax errors"
            .into(),
        why_test,
    })
}

/// Whether pytest, with no configuration, collects `rel`: a `test_*.py` or `*_test.py` file
/// outside the directories its default `norecursedirs` skips (hidden ones, `build`, `dist`,
/// `*.egg`, …). Environments and vendored trees are not even walked.
fn pytest_collects(rel: &str) -> bool {
    let mut parts = rel.split('/').rev();
    let Some(name) = parts.next() else {
        return false;
    };
    let skipped = |d: &str| {
        d.starts_with('.')
            || d.ends_with(".egg")
            || matches!(
                d,
                "build" | "dist" | "_darcs" | "CVS" | "{arch}" | "node_modules" | "venv"
            )
    };
    name.ends_with(".py")
        && (name.starts_with("test_") || name.ends_with("_test.py"))
        && !parts.any(skipped)
}

/// What `package.json` says about its scripts.
#[derive(Default)]
struct NpmScripts {
    build: bool,
    /// A usable test script (not `npm init`'s placeholder).
    test: bool,
    placeholder_test: bool,
    /// Why the file could not be read as JSON.
    invalid: Option<String>,
}

/// A malformed `package.json` is the repository's problem, reported by npm when it runs;
/// here it just yields no commands.
fn npm_scripts(root: &Path) -> Result<NpmScripts, AnalysisError> {
    let Some(text) = walk::read_text(root, "package.json", MANIFEST_MAX_BYTES)? else {
        return Ok(NpmScripts {
            invalid: Some("not a readable text file".into()),
            ..NpmScripts::default()
        });
    };
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "package.json is not valid JSON; no npm commands detected");
            return Ok(NpmScripts {
                invalid: Some(e.to_string()),
                ..NpmScripts::default()
            });
        }
    };
    let script = |name: &str| {
        json.get("scripts")
            .and_then(|s| s.get(name))
            .and_then(|v| v.as_str())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    // `npm init`'s placeholder fails by design; it is not a test suite.
    let test = script("test");
    let placeholder_test = test
        .as_deref()
        .is_some_and(|t| t.contains("no test specified"));
    Ok(NpmScripts {
        build: script("build").is_some(),
        test: test.is_some() && !placeholder_test,
        placeholder_test,
        invalid: None,
    })
}

/// Best guess of the runner behind a configured test command.
fn framework_of_command(cmd: &str) -> TestFramework {
    let c = cmd.to_ascii_lowercase();
    let has = |needle: &str| c.contains(needle);
    if has("cargo test") || has("cargo nextest") {
        TestFramework::Cargo
    } else if has("pytest") {
        TestFramework::Pytest
    } else if has("go test") {
        TestFramework::Go
    } else if [
        "npm",
        "yarn",
        "pnpm",
        "npx",
        "node --test",
        "jest",
        "vitest",
        "mocha",
    ]
    .iter()
    .any(|n| has(n))
    {
        TestFramework::Npm
    } else {
        TestFramework::Unknown
    }
}

pub(crate) fn language_of_extension(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "rs" => "rust",
        "py" => "python",
        "js" | "mjs" | "cjs" | "jsx" => "javascript",
        "ts" | "tsx" | "mts" | "cts" => "typescript",
        "go" => "go",
        "java" => "java",
        "kt" | "kts" => "kotlin",
        "rb" => "ruby",
        "c" | "h" => "c",
        "cc" | "cpp" | "cxx" | "hpp" | "hh" => "c++",
        "cs" => "c#",
        "php" => "php",
        "swift" => "swift",
        "scala" => "scala",
        "sh" | "bash" => "shell",
        _ => return None,
    })
}

fn languages(candidates: &[Candidate], files: &[Entry]) -> Vec<String> {
    let mut out: Vec<String> = candidates.iter().map(|c| c.language.to_string()).collect();
    let mut counts: HashMap<&'static str, usize> = HashMap::new();
    for e in files {
        if let Some(lang) = e
            .rel
            .rsplit_once('.')
            .and_then(|(_, ext)| language_of_extension(ext))
        {
            *counts.entry(lang).or_default() += 1;
        }
    }
    let mut by_count: Vec<_> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (lang, _) in by_count {
        if !out.iter().any(|l| l == lang) {
            out.push(lang.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests;
