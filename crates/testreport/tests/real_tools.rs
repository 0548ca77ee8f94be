//! The parsers fed with real output, produced here by each test runner installed on the
//! machine: cargo test, cargo nextest, pytest, node --test, jest, vitest and mocha.
//! `./scripts/setup` installs pytest and the pinned JavaScript tools; a missing tool fails
//! the test and says so.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use builder_testreport::{
    Diagnostic, Outcome, ReportFormat, Severity, TestCase, TestReport, detect_and_parse,
    extract_diagnostics, parse_cargo, parse_jest_json, parse_junit_xml, parse_mocha_json,
};

fn write(dir: &Path, rel: &str, contents: &str) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, contents).expect("write");
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

/// Runs with stdout and stderr into one file, in arrival order, as the sandbox captures them.
fn run_combined(cmd: &mut Command, log: &Path) -> (bool, String) {
    let file = std::fs::File::create(log).expect("log file");
    let err = file.try_clone().expect("clone log file");
    let status = cmd
        .stdout(file)
        .stderr(err)
        .status()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    let bytes = std::fs::read(log).expect("read log");
    (
        status.success(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn case<'a>(report: &'a TestReport, name: &str) -> &'a TestCase {
    report
        .cases
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name:?} in {:#?}", report.cases))
}

fn outcomes(report: &TestReport) -> Vec<(String, Outcome)> {
    let mut v: Vec<(String, Outcome)> = report
        .cases
        .iter()
        .map(|c| (c.name.clone(), c.outcome))
        .collect();
    v.sort();
    v
}

fn pairs(v: &[(&str, Outcome)]) -> Vec<(String, Outcome)> {
    let mut v: Vec<(String, Outcome)> = v.iter().map(|(n, o)| (n.to_string(), *o)).collect();
    v.sort();
    v
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo_cmd(dir: &Path) -> Command {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTC_WRAPPER");
    cmd
}

const SAMPLE_LIB: &str = r#"pub fn add(a: i32, b: i32) -> i32 {
    a + b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes() {
        assert_eq!(add(1, 1), 2);
    }

    #[test]
    fn fails() {
        assert_eq!(add(1, 1), 3, "math is broken");
    }

    #[test]
    #[ignore = "slow"]
    fn ignored() {}
}
"#;

fn sample_crate(dir: &Path, lib: &str) {
    write(
        dir,
        "Cargo.toml",
        "[package]\nname = \"sample\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    write(dir, "src/lib.rs", lib);
}

#[test]
fn cargo_test_and_nextest_real_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    sample_crate(dir, SAMPLE_LIB);

    let (ok, out) = run_combined(
        cargo_cmd(dir).args(["test", "--offline", "--lib"]),
        &dir.join("test.log"),
    );
    assert!(!ok, "one test fails: {out}");
    let report = parse_cargo(&out);
    assert_eq!(report.format, ReportFormat::CargoLibtest);
    assert_eq!(
        outcomes(&report),
        pairs(&[
            ("tests::passes", Outcome::Passed),
            ("tests::fails", Outcome::Failed),
            ("tests::ignored", Outcome::Skipped),
        ]),
        "{out}"
    );
    let failed = case(&report, "tests::fails");
    assert_eq!(failed.suite.as_deref(), Some("unittests src/lib.rs"));
    assert_eq!(failed.file.as_deref(), Some("src/lib.rs"));
    assert_eq!(failed.line, Some(16));
    let message = failed.message.as_deref().unwrap_or_default();
    assert!(
        message.starts_with(
            "panicked at src/lib.rs:16:9:\nassertion `left == right` failed: math is broken\n  left: 2\n right: 3"
        ),
        "{message}"
    );
    assert!(!message.contains("stack backtrace"), "{message}");
    assert_eq!(
        case(&report, "tests::ignored").message.as_deref(),
        Some("slow")
    );
    let counts = report.counts();
    assert_eq!((counts.passed, counts.failed, counts.skipped), (1, 1, 1));
    assert_eq!(detect_and_parse(&out, &[], None).as_ref(), Some(&report));

    let version = run(Command::new(cargo()).args(["nextest", "--version"]));
    assert!(
        version.status.success(),
        "cargo-nextest is part of this machine's image: {}",
        text(&version)
    );
    let (ok, out) = run_combined(
        cargo_cmd(dir).args(["nextest", "run", "--offline", "--no-fail-fast"]),
        &dir.join("nextest.log"),
    );
    assert!(!ok, "one test fails: {out}");
    let report = parse_cargo(&out);
    assert_eq!(report.format, ReportFormat::Nextest, "{out}");
    // nextest does not list skipped tests at its default status level
    assert_eq!(
        outcomes(&report),
        pairs(&[
            ("tests::passes", Outcome::Passed),
            ("tests::fails", Outcome::Failed),
        ]),
        "{out}"
    );
    let failed = case(&report, "tests::fails");
    assert_eq!(failed.suite.as_deref(), Some("sample"));
    assert_eq!(
        (failed.file.as_deref(), failed.line),
        (Some("src/lib.rs"), Some(16))
    );
    assert!(failed.duration_ms.is_some());
    assert_eq!(
        failed.message.as_deref(),
        Some(
            "panicked at src/lib.rs:16:9:\nassertion `left == right` failed: math is broken\n  left: 2\n right: 3"
        ),
        "{out}"
    );

    let (_, out) = run_combined(
        cargo_cmd(dir).args([
            "nextest",
            "run",
            "--offline",
            "--no-fail-fast",
            "--status-level",
            "all",
        ]),
        &dir.join("nextest-all.log"),
    );
    let report = parse_cargo(&out);
    assert_eq!(
        case(&report, "tests::ignored").outcome,
        Outcome::Skipped,
        "{out}"
    );
    assert_eq!(report.cases.len(), 3);
}

#[test]
fn rustc_compile_errors_real_output() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    sample_crate(
        dir,
        "pub fn f() -> i32 {\n    let x: i32 = \"hello\";\n    x\n}\n\npub fn g() {\n    undefined_fn();\n}\n",
    );
    let out = run(cargo_cmd(dir).args(["build", "--offline"]));
    assert!(!out.status.success());
    let diags = extract_diagnostics(&text(&out));
    let error = |line, column, code: &str, message: &str| Diagnostic {
        file: "src/lib.rs".into(),
        line: Some(line),
        column: Some(column),
        severity: Severity::Error,
        code: Some(code.into()),
        message: message.into(),
    };
    assert_eq!(
        diags,
        [
            error(2, 18, "E0308", "mismatched types"),
            error(
                7,
                5,
                "E0425",
                "cannot find function `undefined_fn` in this scope"
            ),
        ],
        "{}",
        text(&out)
    );
    assert!(diags.iter().all(|d| d.severity == Severity::Error));
}

fn require(cmd: &mut Command, what: &str) {
    match cmd.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("{what} is missing ({}): run ./scripts/setup", text(&out)),
        Err(e) => panic!("{what} is missing ({e}): run ./scripts/setup"),
    }
}

const PYTEST_FILE: &str = r#"import pytest


def test_pass():
    assert 1 + 1 == 2


def test_fail():
    assert 1 + 1 == 3, "math is broken"


@pytest.mark.skip(reason="not now")
def test_skip():
    pass


@pytest.fixture
def broken():
    raise RuntimeError("fixture exploded")


def test_error(broken):
    pass


@pytest.mark.parametrize("x", [1, "ü [2]"])
def test_param(x):
    assert x == 1


class TestGroup:
    def test_in_class(self):
        assert "ü" == "ü"
"#;

#[test]
fn pytest_junit_real_output() {
    require(
        Command::new("python3").args(["-m", "pytest", "--version"]),
        "pytest",
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "test_sample.py", PYTEST_FILE);
    let out = run(Command::new("python3")
        .current_dir(dir)
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--junitxml=report.xml",
            "test_sample.py",
        ])
        .env("PYTHONDONTWRITEBYTECODE", "1"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let xml = std::fs::read_to_string(dir.join("report.xml")).expect("report.xml");
    let report = parse_junit_xml(&xml).expect("parses");
    assert_eq!(
        outcomes(&report),
        pairs(&[
            ("test_pass", Outcome::Passed),
            ("test_fail", Outcome::Failed),
            ("test_skip", Outcome::Skipped),
            ("test_error", Outcome::Errored),
            ("test_param[1]", Outcome::Passed),
            // pytest escapes non-ASCII in parameter ids
            ("test_param[\\xfc [2]]", Outcome::Failed),
            ("test_in_class", Outcome::Passed),
        ]),
        "{xml}"
    );
    let fail = case(&report, "test_fail");
    assert_eq!(fail.suite.as_deref(), Some("test_sample"));
    assert_eq!(
        (fail.file.as_deref(), fail.line),
        (Some("test_sample.py"), Some(9))
    );
    let m = fail.message.as_deref().unwrap_or_default();
    assert!(m.starts_with("AssertionError: math is broken"), "{m}");
    assert_eq!(
        case(&report, "test_in_class").suite.as_deref(),
        Some("test_sample.TestGroup")
    );
    assert_eq!(
        case(&report, "test_skip").message.as_deref(),
        Some("not now")
    );
    assert!(
        case(&report, "test_error")
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("fixture exploded")
    );
    let counts = report.counts();
    assert_eq!((counts.passed, counts.failed, counts.skipped), (3, 3, 1));
    // as the worker will call it: stdout plus the file the command wrote
    let detected = detect_and_parse(&text(&out), &[("report.xml", &xml)], None);
    assert_eq!(detected.as_ref(), Some(&report));
}

const NODE_TEST: &str = r#"const test = require('node:test');
const assert = require('node:assert');

test('adds', () => {
  assert.strictEqual(1 + 1, 2);
});
test('fails <&>', () => {
  assert.strictEqual(1 + 1, 3, 'math is broken');
});
test('skipped', { skip: 'not now' }, () => {});
test.describe('suite ünï', () => {
  test.it('nested ok', () => {});
  test.it('nested bad', () => {
    throw new Error('boom');
  });
});
"#;

#[test]
fn node_test_junit_real_output() {
    require(Command::new("node").arg("--version"), "node");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    write(dir, "a.test.js", NODE_TEST);
    let out = run(Command::new("node").current_dir(dir).args([
        "--test",
        "--test-reporter=junit",
        "--test-reporter-destination=junit.xml",
        "a.test.js",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    let xml = std::fs::read_to_string(dir.join("junit.xml")).expect("junit.xml");
    let report = parse_junit_xml(&xml).expect("parses");
    assert_eq!(
        outcomes(&report),
        pairs(&[
            ("adds", Outcome::Passed),
            ("fails <&>", Outcome::Failed),
            ("skipped", Outcome::Skipped),
            ("nested ok", Outcome::Passed),
            ("nested bad", Outcome::Failed),
        ]),
        "{xml}"
    );
    let fails = case(&report, "fails <&>");
    assert_eq!(fails.suite, None);
    assert!(
        fails
            .file
            .as_deref()
            .unwrap_or_default()
            .ends_with("a.test.js"),
        "{fails:?}"
    );
    assert_eq!(fails.line, Some(8));
    assert!(
        fails
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("math is broken")
    );
    let nested = case(&report, "nested bad");
    assert_eq!(nested.suite.as_deref(), Some("suite ünï"));
    assert_eq!(nested.line, Some(14));
    assert_eq!(case(&report, "skipped").message.as_deref(), Some("not now"));

    // the junit reporter on stdout, the way a bare `node --test --test-reporter=junit` prints it
    let out = run(Command::new("node").current_dir(dir).args([
        "--test",
        "--test-reporter=junit",
        "a.test.js",
    ]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let from_stdout = detect_and_parse(&stdout, &[], None).expect("junit on stdout");
    assert_eq!(from_stdout.format, ReportFormat::JUnitXml);
    assert_eq!(outcomes(&from_stdout), outcomes(&report));
}

fn js_tool(name: &str) -> PathBuf {
    let root = std::env::var_os("BUILDER_JS_TOOLS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/builder-js-tools"))
        })
        .expect("BUILDER_JS_TOOLS or HOME is set");
    let bin = root.join("node_modules/.bin").join(name);
    assert!(
        bin.exists(),
        "{name} is not installed at {}: run ./scripts/setup (it installs the pinned jest, mocha \
         and vitest into $BUILDER_JS_TOOLS, default ~/.cache/builder-js-tools)",
        bin.display()
    );
    bin
}

const JS_SPEC: &str = r#"describe('math', () => {
  test('adds', () => {
    expect(1 + 1).toBe(2);
  });
  test('fails', () => {
    expect(1 + 1).toBe(3);
  });
  test.skip('skipped', () => {});
  describe('deep [1]', () => {
    test('ünïcode', () => {});
  });
});
"#;

fn check_jest_like(report: &TestReport, dir: &Path) {
    assert_eq!(report.format, ReportFormat::JestJson);
    let spec = dir.join("sum.test.js").to_string_lossy().to_string();
    let broken = dir.join("broken.test.js").to_string_lossy().to_string();
    assert_eq!(
        outcomes(report),
        pairs(&[
            ("math › adds", Outcome::Passed),
            ("math › fails", Outcome::Failed),
            ("math › skipped", Outcome::Skipped),
            ("math › deep [1] › ünïcode", Outcome::Passed),
            (broken.as_str(), Outcome::Errored),
        ]),
        "{report:#?}"
    );
    assert!(case(report, &broken).message.is_some());
    let fails = case(report, "math › fails");
    assert_eq!(fails.suite.as_deref(), Some(spec.as_str()));
    assert_eq!(fails.file.as_deref(), Some(spec.as_str()));
    assert_eq!(fails.line, Some(7));
    let m = fails.message.as_deref().unwrap_or_default();
    assert!(m.contains("to be 3") || m.contains("Expected: 3"), "{m}");
    let counts = report.counts();
    assert_eq!((counts.passed, counts.failed, counts.skipped), (2, 2, 1));
}

#[test]
fn jest_json_real_output() {
    let jest = js_tool("jest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    write(&dir, "package.json", "{}\n");
    write(
        &dir,
        "sum.test.js",
        &format!("console.log('noise');\n{JS_SPEC}"),
    );
    write(&dir, "broken.test.js", "syntax error here(\n");
    let out = run(Command::new(&jest).current_dir(&dir).args([
        "--json",
        "--ci",
        "--no-watchman",
        "--cacheDirectory",
        "jest-cache",
        "--rootDir",
        ".",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    // the JSON is on stdout
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = parse_jest_json(&stdout).expect("jest json");
    check_jest_like(&report, &dir);
    assert_eq!(
        detect_and_parse(&text(&out), &[], None).as_ref(),
        Some(&report)
    );
}

#[test]
fn vitest_json_real_output() {
    let vitest = js_tool("vitest");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    write(&dir, "package.json", "{\"type\":\"module\"}\n");
    write(
        &dir,
        "sum.test.js",
        &format!("import {{ describe, test, expect }} from 'vitest';\n{JS_SPEC}"),
    );
    write(&dir, "broken.test.js", "syntax error here(\n");
    let out = run(Command::new(&vitest).current_dir(&dir).args([
        "run",
        "--reporter=json",
        "--outputFile=vitest.json",
        "--root",
        ".",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    let json = std::fs::read_to_string(dir.join("vitest.json")).expect("vitest.json");
    let report = parse_jest_json(&json).expect("vitest json");
    check_jest_like(&report, &dir);
    let detected = detect_and_parse("", &[("vitest.json", &json)], None);
    assert_eq!(detected.as_ref(), Some(&report));
}

const MOCHA_SPEC: &str = r#"const assert = require('node:assert');
describe('math', function () {
  it('adds', function () {
    assert.strictEqual(1 + 1, 2);
  });
  it('fails', function () {
    assert.strictEqual(1 + 1, 3, 'math is broken');
  });
  it.skip('skipped', function () {});
  it('pending without body');
  describe('deep [1]', function () {
    it('ünïcode', function () {});
  });
  describe('hooks', function () {
    before(function () {
      throw new Error('hook boom');
    });
    it('never runs', function () {});
  });
});
"#;

#[test]
fn mocha_json_real_output() {
    let mocha = js_tool("mocha");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    write(&dir, "package.json", "{}\n");
    write(&dir, "sum.spec.js", MOCHA_SPEC);
    let out = run(Command::new(&mocha).current_dir(&dir).args([
        "--reporter",
        "json",
        "--reporter-option",
        "output=mocha.json",
        "sum.spec.js",
    ]));
    assert!(!out.status.success(), "{}", text(&out));
    let json = std::fs::read_to_string(dir.join("mocha.json")).expect("mocha.json");
    let report = parse_mocha_json(&json).expect("mocha json");
    assert_eq!(report.format, ReportFormat::MochaJson);
    assert_eq!(
        outcomes(&report),
        pairs(&[
            ("math adds", Outcome::Passed),
            ("math fails", Outcome::Failed),
            ("math skipped", Outcome::Skipped),
            ("math pending without body", Outcome::Skipped),
            ("math deep [1] ünïcode", Outcome::Passed),
            (
                "math hooks \"before all\" hook for \"never runs\"",
                Outcome::Errored
            ),
        ]),
        "{json}"
    );
    let spec = dir.join("sum.spec.js").to_string_lossy().to_string();
    let fails = case(&report, "math fails");
    assert_eq!(fails.suite.as_deref(), Some(spec.as_str()));
    assert_eq!(
        (fails.file.as_deref(), fails.line),
        (Some(spec.as_str()), Some(7))
    );
    assert!(
        fails
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("math is broken")
    );

    // the JSON reporter on stdout, after what the tests printed
    write(
        &dir,
        "noisy.spec.js",
        "console.log('{ not json');\nit('ok', () => {});\n",
    );
    let out =
        run(Command::new(&mocha)
            .current_dir(&dir)
            .args(["--reporter", "json", "noisy.spec.js"]));
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = detect_and_parse(&stdout, &[], None).expect("mocha on stdout");
    assert_eq!(report.format, ReportFormat::MochaJson);
    assert_eq!(outcomes(&report), pairs(&[("ok", Outcome::Passed)]));
}
