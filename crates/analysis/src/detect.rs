//! Language, build-command and test-command detection.
//!
//! Precedence, per command: a non-empty registration field, then `.builder.toml`'s
//! `[commands]`, then detection from root-level manifests.
//!
//! Detection priority when several ecosystems are present at the root: Rust, Go, Node,
//! Python — the first of them that yields a test command supplies both commands (failing
//! that, the first that yields a build command). Compiled-language manifests usually define
//! the project, while a `package.json` next to them tends to be tooling or a front end and a
//! `pyproject.toml` is often just linter configuration.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::walk::{self, Entry};
use crate::{AnalysisError, CommandSource, Commands, ProjectProfile, TestFramework};

/// The repository's own command configuration, at the root of the working copy.
pub const REPO_CONFIG_FILE: &str = ".builder.toml";

const MANIFEST_MAX_BYTES: u64 = 256 * 1024;

/// Excludes environments and generated trees, which may hold code for another Python.
const PY_BUILD: &str = "python3 -m compileall -q -x '(^|/)(\\.git|\\.venv|venv|\\.tox|node_modules|build|dist)(/|$)' .";
/// No cache provider: `.pytest_cache` would otherwise land in the working copy. The JUnit
/// file gives per-test results; builder sets `BUILDER_REPORT_DIR` for every sandboxed
/// command (and `${…:-.}` keeps the command usable by hand).
const PY_TEST: &str = "python3 -m pytest -q -p no:cacheprovider --junitxml=\"${BUILDER_REPORT_DIR:-.}/pytest-junit.xml\"";

/// What one ecosystem's root manifest says.
#[derive(Debug, Clone, PartialEq)]
struct Candidate {
    language: &'static str,
    build: Option<String>,
    test: Option<String>,
    framework: TestFramework,
}

#[derive(Debug, Default, Deserialize)]
struct RepoConfig {
    #[serde(default)]
    commands: Option<RepoCommands>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepoCommands {
    build: Option<String>,
    test: Option<String>,
    test_framework: Option<String>,
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
        .or_else(|| candidates.iter().find(|c| c.build.is_some()));

    let repo = read_repo_config(workdir)?;
    let reg = |v: &Option<String>| v.as_ref().filter(|s| !s.trim().is_empty()).cloned();

    let mut source = CommandSource::Detected;
    let mut pick =
        |registered: Option<String>, file: Option<&String>, detected: Option<&String>| {
            if let Some(r) = registered {
                source = CommandSource::Registration;
                return Some(r);
            }
            if let Some(f) = file {
                if source == CommandSource::Detected {
                    source = CommandSource::RepositoryFile;
                }
                // An empty string in the file explicitly switches the step off.
                return (!f.trim().is_empty()).then(|| f.clone());
            }
            detected.cloned()
        };
    let build_command = pick(
        reg(&registration_override.build),
        repo.build.as_ref(),
        chosen.and_then(|c| c.build.as_ref()),
    );
    let test_registered = reg(&registration_override.test);
    let test_from_detection = test_registered.is_none() && repo.test.is_none();
    let test_command = pick(
        test_registered,
        repo.test.as_ref(),
        chosen.and_then(|c| c.test.as_ref()),
    );

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
    })
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
        out.push(Candidate {
            language: "rust",
            build: Some("cargo build --offline".into()),
            test: Some("cargo test --offline".into()),
            framework: TestFramework::Cargo,
        });
    }
    if at_root("go.mod") {
        out.push(Candidate {
            language: "go",
            build: Some("go build ./...".into()),
            test: Some("go test ./...".into()),
            framework: TestFramework::Go,
        });
    }
    if at_root("package.json") {
        let (build, test) = npm_scripts(root)?;
        out.push(Candidate {
            language: "javascript",
            build: build.then(|| "npm run build".to_string()),
            test: test.then(|| "npm test".to_string()),
            framework: TestFramework::Npm,
        });
    }
    let py_markers = [
        "pyproject.toml",
        "setup.py",
        "setup.cfg",
        "pytest.ini",
        "tox.ini",
        "conftest.py",
    ];
    let py_tests = files.iter().any(|e| {
        (e.rel.starts_with("tests/") || e.rel.starts_with("test/")) && e.rel.ends_with(".py")
    });
    if py_markers.iter().any(|m| at_root(m)) || py_tests {
        out.push(Candidate {
            language: "python",
            build: Some(PY_BUILD.into()),
            test: Some(PY_TEST.into()),
            framework: TestFramework::Pytest,
        });
    }
    Ok(out)
}

/// Whether `package.json` has usable `build` and `test` scripts. A malformed file is the
/// repository's problem, reported by npm when it runs; here it just yields no commands.
fn npm_scripts(root: &Path) -> Result<(bool, bool), AnalysisError> {
    let Some(text) = walk::read_text(root, "package.json", MANIFEST_MAX_BYTES)? else {
        return Ok((false, false));
    };
    let json: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "package.json is not valid JSON; no npm commands detected");
            return Ok((false, false));
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
    let test = script("test").is_some_and(|t| !t.contains("no test specified"));
    Ok((script("build").is_some(), test))
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
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        d
    }

    fn profile(files: &[(&str, &str)]) -> ProjectProfile {
        detect(repo(files).path(), &Commands::default()).unwrap()
    }

    #[test]
    fn rust() {
        let p = profile(&[("Cargo.toml", "[package]\nname='x'"), ("src/lib.rs", "")]);
        assert_eq!(p.languages, vec!["rust"]);
        assert_eq!(p.build_command.as_deref(), Some("cargo build --offline"));
        assert_eq!(p.test_command.as_deref(), Some("cargo test --offline"));
        assert_eq!(p.test_framework, TestFramework::Cargo);
        assert_eq!(p.source, CommandSource::Detected);
        assert_eq!(p.file_count, 2);
    }

    #[test]
    fn python_from_manifest_or_tests_dir() {
        for files in [
            &[
                ("pyproject.toml", "[project]\nname='x'"),
                ("x/__init__.py", ""),
            ][..],
            &[("tests/test_a.py", "def test_a(): pass")][..],
            &[("setup.py", "")][..],
        ] {
            let p = profile(files);
            assert_eq!(p.languages[0], "python", "{files:?}");
            assert_eq!(p.test_command.as_deref(), Some(PY_TEST));
            assert_eq!(p.build_command.as_deref(), Some(PY_BUILD));
            assert_eq!(p.test_framework, TestFramework::Pytest);
        }
    }

    #[test]
    fn node_scripts() {
        let p = profile(&[(
            "package.json",
            r#"{"scripts": {"test": "node --test", "build": "tsc"}}"#,
        )]);
        assert_eq!(p.languages, vec!["javascript"]);
        assert_eq!(p.test_command.as_deref(), Some("npm test"));
        assert_eq!(p.build_command.as_deref(), Some("npm run build"));
        assert_eq!(p.test_framework, TestFramework::Npm);

        let placeholder = profile(&[(
            "package.json",
            r#"{"scripts": {"test": "echo \"Error: no test specified\" && exit 1"}}"#,
        )]);
        assert_eq!(placeholder.test_command, None);
        assert_eq!(placeholder.build_command, None);
        assert_eq!(placeholder.test_framework, TestFramework::Unknown);

        let broken = profile(&[("package.json", "{ not json")]);
        assert_eq!(broken.languages, vec!["javascript"]);
        assert_eq!(broken.test_command, None);
    }

    #[test]
    fn go() {
        let p = profile(&[
            ("go.mod", "module example.com/x\n"),
            ("main.go", "package main"),
        ]);
        assert_eq!(p.languages, vec!["go"]);
        assert_eq!(p.build_command.as_deref(), Some("go build ./..."));
        assert_eq!(p.test_command.as_deref(), Some("go test ./..."));
        assert_eq!(p.test_framework, TestFramework::Go);
    }

    #[test]
    fn priority_with_several_ecosystems() {
        let p = profile(&[
            ("package.json", r#"{"scripts": {"test": "jest"}}"#),
            ("Cargo.toml", ""),
            ("pyproject.toml", ""),
            ("web/a.ts", ""),
            ("web/b.ts", ""),
        ]);
        assert_eq!(
            p.languages,
            vec!["rust", "javascript", "python", "typescript"]
        );
        assert_eq!(p.test_command.as_deref(), Some("cargo test --offline"));

        // A package.json without a test script does not shadow the Python test suite.
        let p = profile(&[
            ("package.json", r#"{"scripts": {"lint": "eslint ."}}"#),
            ("pyproject.toml", ""),
        ]);
        assert_eq!(p.test_command.as_deref(), Some(PY_TEST));
        assert_eq!(p.test_framework, TestFramework::Pytest);
    }

    #[test]
    fn nothing_detected() {
        let p = profile(&[("README.md", "hi"), ("notes/a.txt", "x")]);
        assert!(p.languages.is_empty());
        assert_eq!((p.build_command, p.test_command), (None, None));
        assert_eq!(p.test_framework, TestFramework::Unknown);
        assert_eq!(p.file_count, 2);
    }

    #[test]
    fn repository_file_overrides_detection() {
        let p = profile(&[
            ("Cargo.toml", ""),
            (
                ".builder.toml",
                "[commands]\ntest = \"make check\"\nbuild = \"\"\n",
            ),
        ]);
        assert_eq!(p.test_command.as_deref(), Some("make check"));
        assert_eq!(p.build_command, None, "empty string switches the step off");
        assert_eq!(p.source, CommandSource::RepositoryFile);
        assert_eq!(p.test_framework, TestFramework::Unknown);

        let p = profile(&[
            ("go.mod", ""),
            (
                ".builder.toml",
                "[commands]\ntest = \"./ci.sh\"\ntest_framework = \"go\"\n",
            ),
        ]);
        assert_eq!(p.test_command.as_deref(), Some("./ci.sh"));
        assert_eq!(
            p.build_command.as_deref(),
            Some("go build ./..."),
            "not overridden"
        );
        assert_eq!(p.test_framework, TestFramework::Go);

        let p = profile(&[(
            ".builder.toml",
            "[commands]\ntest = \"python -m pytest tests\"\n",
        )]);
        assert_eq!(
            p.test_framework,
            TestFramework::Pytest,
            "inferred from the command"
        );
    }

    #[test]
    fn malformed_repository_file_is_an_error() {
        for bad in [
            "[commands\n",
            "[commands]\ntests = \"typo\"\n",
            "[commands]\ntest_framework = \"maven\"\ntest = \"x\"\n",
        ] {
            let d = repo(&[(".builder.toml", bad)]);
            assert!(
                matches!(
                    detect(d.path(), &Commands::default()),
                    Err(AnalysisError::RepoConfig { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn repository_file_behind_a_symlink_is_ignored() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("cfg"), "[commands]\ntest = \"evil\"\n").unwrap();
        let d = repo(&[("Cargo.toml", "")]);
        std::os::unix::fs::symlink(outside.path().join("cfg"), d.path().join(".builder.toml"))
            .unwrap();
        let p = detect(d.path(), &Commands::default()).unwrap();
        assert_eq!(p.test_command.as_deref(), Some("cargo test --offline"));
    }

    #[test]
    fn registration_overrides_file_and_detection() {
        let d = repo(&[
            ("Cargo.toml", ""),
            (
                ".builder.toml",
                "[commands]\ntest = \"make check\"\nbuild = \"make\"\n",
            ),
        ]);
        let reg = Commands {
            build: Some("  ".into()),
            test: Some("cargo nextest run".into()),
        };
        let p = detect(d.path(), &reg).unwrap();
        assert_eq!(p.test_command.as_deref(), Some("cargo nextest run"));
        assert_eq!(
            p.build_command.as_deref(),
            Some("make"),
            "blank registration field is unset"
        );
        assert_eq!(p.source, CommandSource::Registration);
        assert_eq!(p.test_framework, TestFramework::Cargo);
    }

    #[test]
    fn not_a_directory() {
        let d = repo(&[("f", "")]);
        assert!(matches!(
            detect(&d.path().join("f"), &Commands::default()),
            Err(AnalysisError::NotADirectory(_))
        ));
    }
}
