//! Property tests of `apply_edits` against what a broken or hostile model may answer:
//! paths that climb out, name `.git`, go through a symlink that leads outside, are absolute
//! or empty; edits that contradict each other; search blocks that are missing or repeated.
//! Whatever the edits, nothing outside the working copy changes; a refused set changes
//! nothing at all; an accepted one leaves every file as its last edit says. Fixed seed;
//! `PROPTEST_CASES` runs more by hand.

use crate::edits::apply_edits;
use crate::types::{Edit, EditAction};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

const PATHS: &[&str] = &[
    "a.txt",
    "src/lib.rs",
    "src/new.rs",
    "./a.txt",
    "src//lib.rs",
    "../outside.txt",
    "src/../../outside.txt",
    "/etc/passwd",
    ".git/config",
    ".GIT/hooks/pre-commit",
    "link/escape.txt",
    "link",
    "",
    " ",
    ".",
    "a\0b",
    "dir/",
    "ünïcödé/ファイル.rs",
];

const TEXTS: &[&str] = &[
    "fn a() {}\n",
    "line\nline\n",
    "",
    "   \n",
    "x",
    "fn main() {\n    println!(\"hi\");\n}\n",
];

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]),
    )
}

fn text() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => (0..TEXTS.len()).prop_map(|i| Some(TEXTS[i].to_owned())),
        1 => any::<String>().prop_map(Some),
        1 => Just(None),
    ]
}

fn one_edit() -> impl Strategy<Value = Edit> {
    (
        prop_oneof![
            4 => (0..PATHS.len()).prop_map(|i| PATHS[i].to_owned()),
            1 => any::<String>(),
        ],
        prop_oneof![
            Just(EditAction::Create),
            Just(EditAction::ReplaceFile),
            Just(EditAction::SearchReplace),
            Just(EditAction::Delete),
        ],
        text(),
        text(),
        text(),
    )
        .prop_map(|(path, action, content, search, replace)| Edit {
            path,
            action,
            content,
            search,
            replace,
        })
}

/// Every file under `dir` (not following symlinks) with the hash of its content.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let kind = entry.file_type().unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            if kind.is_dir() {
                stack.push(path);
                out.insert(rel, "dir".into());
            } else if kind.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&path).unwrap().display()),
                );
            } else {
                out.insert(
                    rel,
                    hex::encode(Sha256::digest(std::fs::read(&path).unwrap())),
                );
            }
        }
    }
    out
}

#[test]
fn edits_never_reach_outside_and_a_refused_set_changes_nothing() {
    runner()
        .run(&prop::collection::vec(one_edit(), 1..6), |edits| {
            let base = tempfile::tempdir().unwrap();
            let root = base.path().join("work");
            let outside = base.path().join("outside");
            std::fs::create_dir_all(root.join("src")).unwrap();
            std::fs::create_dir_all(&outside).unwrap();
            std::fs::write(root.join("a.txt"), "line\nline\n").unwrap();
            std::fs::write(root.join("src/lib.rs"), "fn a() {}\n").unwrap();
            std::fs::create_dir_all(root.join(".git")).unwrap();
            std::fs::write(root.join(".git/config"), "[core]\n").unwrap();
            std::fs::write(outside.join("escape.txt"), "outside\n").unwrap();
            std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
            let before_root = snapshot(&root);
            let before_outside = snapshot(&outside);

            let result = apply_edits(&root, &edits);

            prop_assert_eq!(snapshot(&outside), before_outside);
            prop_assert!(base.path().join("outside.txt").symlink_metadata().is_err());
            let after_root = snapshot(&root);
            prop_assert_eq!(
                &after_root.get(".git/config"),
                &before_root.get(".git/config")
            );
            match result {
                Err(_) => prop_assert_eq!(after_root, before_root),
                Ok(applied) => {
                    // The last edit of each path says what the file is now.
                    let mut last = BTreeMap::new();
                    for a in &applied {
                        last.insert(a.path.clone(), a.after_sha256.clone());
                    }
                    for (path, hash) in last {
                        let full = root.join(&path);
                        match hash {
                            Some(h) => prop_assert_eq!(
                                hex::encode(Sha256::digest(std::fs::read(&full).unwrap())),
                                h
                            ),
                            None => prop_assert!(!full.exists()),
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}
