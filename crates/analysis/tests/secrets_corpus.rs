//! The secrets corpus under `tests/secrets/`: files in the languages and config formats a
//! repository holds, with the secrets each holds listed in `cases.toml`. Every listed secret
//! must be absent from the prompt context and every other line must reach it unchanged: the
//! model needs real code, so a false positive is a failure too.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use builder_analysis::{REDACTED, redact_secrets, repo_context};
use serde::Deserialize;

#[derive(Deserialize)]
struct Cases {
    file: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    path: String,
    secrets: Vec<String>,
    #[serde(default)]
    missed: Vec<String>,
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/secrets")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus().join("cases.toml")).unwrap();
    toml::from_str::<Cases>(&text).unwrap().file
}

/// Every file of the corpus, so none is forgotten in `cases.toml`.
fn corpus_files(dir: &Path, rel: &str, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        if entry.file_type().unwrap().is_dir() {
            corpus_files(&entry.path(), &rel, out);
        } else if rel != "cases.toml" {
            out.insert(rel);
        }
    }
}

#[derive(Default)]
struct Tally {
    positives: usize,
    caught: usize,
    negative_lines: usize,
    changed_negative_lines: usize,
    failures: Vec<String>,
}

fn check(case: &Case, original: &str, shown: &str, tally: &mut Tally) {
    let all: Vec<&String> = case.secrets.iter().chain(&case.missed).collect();
    for secret in &all {
        assert!(
            original.contains(secret.as_str()),
            "{}: `{secret}` is not in the file",
            case.path
        );
        tally.positives += 1;
        if shown.contains(secret.as_str()) {
            if case.secrets.contains(secret) {
                tally
                    .failures
                    .push(format!("{}: `{secret}` reached the context", case.path));
            }
        } else {
            tally.caught += 1;
        }
    }
    let (before, after): (Vec<&str>, Vec<&str>) =
        (original.lines().collect(), shown.lines().collect());
    if before.len() != after.len() {
        tally.failures.push(format!(
            "{}: {} lines became {}:\n{shown}",
            case.path,
            before.len(),
            after.len()
        ));
        return;
    }
    for (line, out) in before.iter().zip(&after) {
        let first = all.iter().filter_map(|s| line.find(s.as_str())).min();
        match first {
            None => {
                if !line.trim().is_empty() {
                    tally.negative_lines += 1;
                }
                if line != out {
                    tally.changed_negative_lines += 1;
                    tally.failures.push(format!(
                        "{}: a line without a secret changed:\n  {line}\n  {out}",
                        case.path
                    ));
                }
            }
            Some(at) => {
                let required = case.secrets.iter().any(|s| line.contains(s.as_str()));
                // The key (everything before the value) stays, so the code still reads.
                if required && !(out.starts_with(&line[..at]) && out.contains(REDACTED)) {
                    tally.failures.push(format!(
                        "{}: the line lost more than its secret:\n  {line}\n  {out}",
                        case.path
                    ));
                }
            }
        }
    }
}

#[test]
fn corpus_secrets_never_reach_the_context_and_other_lines_are_unchanged() {
    let cases = cases();
    let mut listed = BTreeSet::new();
    for case in &cases {
        assert!(
            listed.insert(case.path.clone()),
            "{} listed twice",
            case.path
        );
    }
    let mut present = BTreeSet::new();
    corpus_files(&corpus(), "", &mut present);
    assert_eq!(listed, present, "cases.toml and the corpus files differ");

    // Hinted, so lockfiles and config files are included as a request naming them would.
    let hints: Vec<String> = cases.iter().map(|c| c.path.clone()).collect();
    let ctx = repo_context(&corpus(), &hints, 10_000_000).unwrap();
    let mut tally = Tally::default();
    for case in &cases {
        let original = std::fs::read_to_string(corpus().join(&case.path)).unwrap();
        let Some((_, shown)) = ctx.files.iter().find(|(p, _)| *p == case.path) else {
            panic!("{} is not in the context", case.path);
        };
        // The worker's hinted-file path calls `redact_secrets` itself: same result.
        assert_eq!(&redact_secrets(&original).0, shown, "{}", case.path);
        check(case, &original, shown, &mut tally);
    }
    let recall = tally.caught as f64 / tally.positives as f64;
    let precision = tally.caught as f64 / (tally.caught + tally.changed_negative_lines) as f64;
    eprintln!(
        "secrets corpus: {} files; {}/{} secrets caught (recall {recall:.3}); {} of {} lines \
         without a secret changed (precision {precision:.3})",
        cases.len(),
        tally.caught,
        tally.positives,
        tally.changed_negative_lines,
        tally.negative_lines
    );
    assert!(tally.failures.is_empty(), "{}", tally.failures.join("\n"));
}
