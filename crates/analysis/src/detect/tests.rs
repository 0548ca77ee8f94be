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
    assert_eq!(p.build_command.as_deref(), Some("cargo build --workspace"));
    assert_eq!(
        p.test_command.as_deref(),
        Some("cargo test --workspace --no-fail-fast")
    );
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
    assert_eq!(
        p.test_command.as_deref(),
        Some("cargo test --workspace --no-fail-fast")
    );

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
    std::os::unix::fs::symlink(outside.path().join("cfg"), d.path().join(".builder.toml")).unwrap();
    let p = detect(d.path(), &Commands::default()).unwrap();
    assert_eq!(
        p.test_command.as_deref(),
        Some("cargo test --workspace --no-fail-fast")
    );
}

/// The line `reasons` holds for one command (`deps: `, `build: `, `test: `).
fn reason<'a>(p: &'a ProjectProfile, what: &str) -> &'a str {
    let prefix = format!("{what}: ");
    p.reasons
        .iter()
        .find(|r| r.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {what} reason in {:?}", p.reasons))
}

#[test]
fn rust_runs_every_target_and_fetches_first() {
    let p = profile(&[("Cargo.toml", "[package]\nname = \"x\"\n")]);
    assert_eq!(p.deps_command.as_deref(), Some("cargo fetch"));
    assert_eq!(p.ecosystems, vec![Ecosystem::Cargo]);
    assert_eq!(
        reason(&p, "test"),
        "test: cargo test --workspace --no-fail-fast (Cargo.toml at the root; every package and test binary, past failing ones)"
    );
    assert!(reason(&p, "deps").starts_with("deps: cargo fetch (Cargo.toml at the root"));
    assert_eq!(p.reasons.len(), 3, "one line per command: {:?}", p.reasons);
}

#[test]
fn python_tests_without_configuration_are_what_pytest_collects() {
    let p = profile(&[
        ("calc.py", "def add(a, b):\n    return a + b\n"),
        ("test_calc.py", "from calc import add\n"),
        ("pkg/util_test.py", ""),
        ("pkg/deep/er/test_more.py", ""),
        // pytest's default norecursedirs, and trees the walk never enters.
        (".github/scripts/test_ci.py", ""),
        ("build/lib/test_copy.py", ""),
        ("x.egg/test_egg.py", ""),
        ("node_modules/p/test_n.py", ""),
        (".venv/lib/test_v.py", ""),
        // Not test files by pytest's default patterns.
        ("tests/helpers.py", ""),
        ("testing.py", ""),
    ]);
    assert_eq!(p.languages[0], "python");
    assert_eq!(p.ecosystems, vec![Ecosystem::Pip]);
    assert_eq!(p.test_command.as_deref(), Some(PY_TEST));
    assert_eq!(p.test_framework, TestFramework::Pytest);
    assert!(
        reason(&p, "test")
            .contains("(3 test_*.py / *_test.py file(s) found, no configuration file"),
        "{:?}",
        p.reasons
    );
    assert!(reason(&p, "build").contains("Python has no build step"));
    assert_eq!(p.deps_command, None);
    assert!(reason(&p, "deps").starts_with("deps: none (no requirements.txt"));

    // Test files only where pytest would not look are no Python project.
    let hidden = profile(&[
        (".github/test_ci.py", ""),
        ("dist/test_x.py", ""),
        ("tests/helpers.py", ""),
    ]);
    assert_eq!(hidden.test_command, None);
    assert!(hidden.ecosystems.is_empty());
}

#[test]
fn python_dependencies_are_downloaded_not_installed() {
    let p = profile(&[
        ("pyproject.toml", ""),
        ("requirements.txt", "requests==2.32.0\n"),
        ("tests/test_a.py", ""),
    ]);
    assert_eq!(p.deps_command.as_deref(), Some(PY_DEPS));
    assert!(
        !PY_DEPS.contains("-d wheels") && PY_DEPS.contains("PIP_CACHE_DIR"),
        "never into the working copy"
    );
    let deps = reason(&p, "deps");
    assert!(deps.contains("not installed"), "{deps}");
    assert!(reason(&p, "test").contains("(pyproject.toml at the root; 1 test_*.py"));

    let p = profile(&[("setup.cfg", "")]);
    assert!(
        reason(&p, "test").contains("pytest may collect nothing"),
        "{:?}",
        p.reasons
    );
}

#[test]
fn node_dependencies_never_run_package_scripts() {
    let locked = profile(&[
        ("package.json", r#"{"scripts": {"test": "jest"}}"#),
        ("package-lock.json", "{}"),
    ]);
    assert_eq!(locked.deps_command.as_deref(), Some(NPM_CI));
    assert_eq!(locked.ecosystems, vec![Ecosystem::Npm]);
    assert!(reason(&locked, "test").contains("up to that script"));
    assert_eq!(
        reason(&locked, "build"),
        "build: none (package.json has no build script)"
    );

    // No scripts at all: nothing to build or test, but a declared command may still need
    // the packages.
    let bare = profile(&[("package.json", r#"{"name": "x"}"#)]);
    assert_eq!(bare.deps_command.as_deref(), Some(NPM_INSTALL));
    assert_eq!(bare.test_command, None);
    assert_eq!(
        reason(&bare, "test"),
        "test: none (package.json has no test script)"
    );
    for cmd in [NPM_CI, NPM_INSTALL] {
        assert!(cmd.contains("--ignore-scripts"), "{cmd}");
    }
    assert!(NPM_INSTALL.contains("--no-package-lock"));

    let broken = profile(&[("package.json", "{ not json")]);
    assert!(
        reason(&broken, "test").contains("not valid JSON"),
        "{:?}",
        broken.reasons
    );
}

#[test]
fn go_downloads_modules() {
    let p = profile(&[("go.mod", "module example.com/x\n")]);
    assert_eq!(p.deps_command.as_deref(), Some("go mod download"));
    assert_eq!(p.ecosystems, vec![Ecosystem::Go]);
    assert!(reason(&p, "test").contains("carries on past failing ones"));
}

#[test]
fn several_ecosystems_say_which_supplied_the_commands() {
    let p = profile(&[
        ("package.json", r#"{"scripts": {"test": "jest"}}"#),
        ("go.mod", ""),
        ("pyproject.toml", ""),
    ]);
    assert_eq!(
        p.ecosystems,
        vec![Ecosystem::Go, Ecosystem::Npm, Ecosystem::Pip],
        "priority order"
    );
    assert_eq!(p.deps_command.as_deref(), Some("go mod download"));
    assert!(
        p.reasons[0].starts_with("detected go and javascript, python; commands are taken from go"),
        "{:?}",
        p.reasons
    );
    assert_eq!(
        Ecosystem::Cargo.as_str(),
        "cargo",
        "the names the worker's registry table uses"
    );
    assert_eq!(
        [Ecosystem::Npm, Ecosystem::Pip, Ecosystem::Go].map(|e| e.as_str()),
        ["npm", "pip", "go"]
    );
}

#[test]
fn nothing_detected_says_what_was_looked_for() {
    let p = profile(&[("README.md", "hi")]);
    assert!(p.ecosystems.is_empty());
    assert_eq!(p.deps_command, None);
    for what in ["deps", "build", "test"] {
        assert_eq!(reason(&p, what), format!("{what}: none — {NOTHING_FOUND}"));
    }
}

#[test]
fn declared_commands_that_stop_at_the_first_failure_are_reported() {
    for (declared, note) in [
        ("cargo test", Some("--no-fail-fast")),
        ("cargo test --workspace --no-fail-fast", None),
        ("cargo nextest run", Some("--no-fail-fast")),
        ("make check", Some("make -k")),
        ("make -k check", None),
        ("make --keep-going test", None),
        ("python3 -m pytest -x tests", Some("-x")),
        ("pytest --maxfail=2", Some("--maxfail")),
        ("pytest -q", None),
        ("go test -failfast ./...", Some("-failfast")),
        ("go test ./...", None),
        ("./ci.sh", None),
    ] {
        let file = format!("[commands]\ntest = \"{declared}\"\n");
        let p = profile(&[(".builder.toml", file.as_str())]);
        assert_eq!(
            reason(&p, "test"),
            format!("test: {declared} (from .builder.toml)")
        );
        let extra: Vec<&String> = p
            .reasons
            .iter()
            .filter(|r| r.starts_with("test: the declared"))
            .collect();
        match note {
            Some(n) => assert!(
                extra.len() == 1 && extra[0].contains(n),
                "{declared}: {:?}",
                p.reasons
            ),
            None => assert!(extra.is_empty(), "{declared}: {:?}", p.reasons),
        }
    }
}

#[test]
fn dependency_command_can_be_declared_or_switched_off() {
    let p = profile(&[
        ("Cargo.toml", ""),
        (
            ".builder.toml",
            "[commands]\ndeps = \"cargo fetch --locked\"\n",
        ),
    ]);
    assert_eq!(p.deps_command.as_deref(), Some("cargo fetch --locked"));
    assert_eq!(p.source, CommandSource::RepositoryFile);
    assert_eq!(
        reason(&p, "deps"),
        "deps: cargo fetch --locked (from .builder.toml)"
    );

    let off = profile(&[
        ("Cargo.toml", ""),
        (".builder.toml", "[commands]\ndeps = \"\"\n"),
    ]);
    assert_eq!(off.deps_command, None);
    assert_eq!(
        reason(&off, "deps"),
        "deps: none (switched off in .builder.toml); builds run offline with an empty cargo \
         cache, so only crates that are vendored or in the repository resolve"
    );

    let d = repo(&[
        ("Cargo.toml", ""),
        (".builder.toml", "[commands]\ndeps = \"make deps\"\n"),
    ]);
    let reg = Commands {
        deps: Some("./fetch.sh".into()),
        ..Commands::default()
    };
    let p = detect(d.path(), &reg).unwrap();
    assert_eq!(p.deps_command.as_deref(), Some("./fetch.sh"));
    assert_eq!(p.source, CommandSource::Registration);
    assert_eq!(
        reason(&p, "deps"),
        "deps: ./fetch.sh (from the repository's registration)"
    );
    assert_eq!(
        p.test_command.as_deref(),
        Some("cargo test --workspace --no-fail-fast"),
        "the other commands are still detected"
    );
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
        ..Commands::default()
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
