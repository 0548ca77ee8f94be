//! `apply_edits` on real directories.

use crate::edits::{EditError, apply_edits};
use crate::types::{Edit, EditAction};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;

fn edit(path: &str, action: EditAction) -> Edit {
    Edit {
        path: path.into(),
        action,
        content: None,
        search: None,
        replace: None,
    }
}

fn create(path: &str, content: &str) -> Edit {
    Edit {
        content: Some(content.into()),
        ..edit(path, EditAction::Create)
    }
}

fn replace_file(path: &str, content: &str) -> Edit {
    Edit {
        content: Some(content.into()),
        ..edit(path, EditAction::ReplaceFile)
    }
}

fn search_replace(path: &str, search: &str, replace: &str) -> Edit {
    Edit {
        search: Some(search.into()),
        replace: Some(replace.into()),
        ..edit(path, EditAction::SearchReplace)
    }
}

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap()
}

#[test]
fn create_replace_and_delete_report_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("old.txt"), "old\n").unwrap();
    fs::write(root.join("gone.txt"), "bye\n").unwrap();

    let applied = apply_edits(
        root,
        &[
            create("src/deep/new.rs", "fn f() {}\n"),
            replace_file("old.txt", "new\n"),
            edit("gone.txt", EditAction::Delete),
        ],
    )
    .unwrap();

    assert_eq!(read(root, "src/deep/new.rs"), "fn f() {}\n");
    assert_eq!(read(root, "old.txt"), "new\n");
    assert!(!root.join("gone.txt").exists());
    assert_eq!(applied.len(), 3);
    assert_eq!(applied[0].path, "src/deep/new.rs");
    assert_eq!(applied[0].before_sha256, None);
    assert_eq!(applied[0].after_sha256, Some(hash("fn f() {}\n")));
    assert_eq!(applied[1].before_sha256, Some(hash("old\n")));
    assert_eq!(applied[1].after_sha256, Some(hash("new\n")));
    assert_eq!(applied[2].action, EditAction::Delete);
    assert_eq!(applied[2].before_sha256, Some(hash("bye\n")));
    assert_eq!(applied[2].after_sha256, None);
}

#[cfg(unix)]
#[test]
fn replace_keeps_the_file_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("run.sh");
    fs::write(&script, "#!/bin/sh\necho a\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    apply_edits(dir.path(), &[search_replace("run.sh", "echo a", "echo b")]).unwrap();
    assert_eq!(read(dir.path(), "run.sh"), "#!/bin/sh\necho b\n");
    let mode = fs::metadata(&script).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn search_replace_exact_and_in_sequence() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.py"), "x = 1\ny = 2\nz = 3\n").unwrap();
    apply_edits(
        dir.path(),
        &[
            search_replace("a.py", "y = 2\n", "y = 20\n"),
            // Sees the result of the edit before it.
            search_replace("a.py", "y = 20\nz = 3", "y = 20\nz = 30"),
        ],
    )
    .unwrap();
    assert_eq!(read(dir.path(), "a.py"), "x = 1\ny = 20\nz = 30\n");
}

#[test]
fn search_replace_tolerates_indentation_drift_and_reindents() {
    let dir = tempfile::tempdir().unwrap();
    let original = "impl S {\n    fn f(&self) {\n        let a = 1;\n        call(a);\n    }\n}\n";
    fs::write(dir.path().join("s.rs"), original).unwrap();
    // The model dropped the file's indentation and spacing.
    let search = "let a = 1;\ncall(a);\n";
    let replace = "let a = 2;\nif a > 1 {\n    call(a);\n}\n";
    apply_edits(dir.path(), &[search_replace("s.rs", search, replace)]).unwrap();
    assert_eq!(
        read(dir.path(), "s.rs"),
        "impl S {\n    fn f(&self) {\n        let a = 2;\n        if a > 1 {\n            call(a);\n        }\n    }\n}\n"
    );
}

#[test]
fn search_replace_tolerates_crlf_and_inner_spacing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("w.txt"), "one\r\ntwo  words\r\nthree\r\n").unwrap();
    apply_edits(
        dir.path(),
        &[search_replace("w.txt", "two words\nthree", "2 words\n3")],
    )
    .unwrap();
    assert_eq!(read(dir.path(), "w.txt"), "one\r\n2 words\r\n3\r\n");
}

#[test]
fn ambiguous_search_names_file_block_and_lines_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("m.rs"), "fn a() {\n}\nfn b() {\n}\n").unwrap();
    let err = apply_edits(
        dir.path(),
        &[
            create("first.txt", "x"),
            search_replace("m.rs", "}\n", "};\n"),
        ],
    )
    .unwrap_err();
    assert!(matches!(err, EditError::Ambiguous { index: 1, ref lines, .. } if lines == &[2, 4]));
    let msg = err.to_string();
    assert!(
        msg.contains("m.rs") && msg.contains("edit 1") && msg.contains("lines 2, 4"),
        "{msg}"
    );
    assert!(!dir.path().join("first.txt").exists(), "all or nothing");
    assert_eq!(read(dir.path(), "m.rs"), "fn a() {\n}\nfn b() {\n}\n");
}

#[test]
fn missing_search_block_points_at_the_closest_line() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("c.rs"),
        "use std::io;\n\nfn main() {\n    let total = compute();\n    print(total);\n}\n",
    )
    .unwrap();
    let err = apply_edits(
        dir.path(),
        &[search_replace(
            "c.rs",
            "fn main() {\n    let sum = compute();",
            "x",
        )],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EditError::SearchNotFound { .. }), "{err:?}");
    assert!(
        msg.contains("c.rs") && msg.contains("`fn main() {`"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "line 4 is `let total = compute();` where the search has `let sum = compute();`"
        ),
        "{msg}"
    );

    let err = apply_edits(dir.path(), &[search_replace("c.rs", "fn mian() {", "x")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("the closest line is 3: `fn main() {`"),
        "{err}"
    );
}

#[test]
fn paths_outside_the_root_or_into_git_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    fs::create_dir_all(root.join(".git")).unwrap();
    for (path, why) in [
        ("../escape.txt", "`..`"),
        ("src/../../escape.txt", "`..`"),
        ("/etc/passwd", "absolute"),
        (".git/hooks/pre-commit", ".git"),
        ("sub/.GIT/config", ".git"),
        ("", "empty"),
        (".", "repository root"),
        ("src\\lib.rs", "use `/`"),
    ] {
        let err = apply_edits(&root, &[create(path, "x")]).unwrap_err();
        assert!(
            matches!(err, EditError::InvalidPath { .. }) && err.to_string().contains(why),
            "{path}: {err}"
        );
    }
    assert!(!dir.path().join("escape.txt").exists());
    assert!(!root.join(".git/hooks").exists());
}

#[cfg(unix)]
#[test]
fn symlinks_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    let root = dir.path().join("repo");
    fs::create_dir_all(&outside).unwrap();
    fs::create_dir_all(&root).unwrap();
    fs::write(outside.join("target.txt"), "keep\n").unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    std::os::unix::fs::symlink(outside.join("target.txt"), root.join("file-link")).unwrap();

    let err = apply_edits(&root, &[create("link/new.txt", "x")]).unwrap_err();
    assert!(
        err.to_string().contains("through the symlink link"),
        "{err}"
    );
    let err = apply_edits(&root, &[replace_file("link/target.txt", "pwned")]).unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    let err = apply_edits(&root, &[replace_file("file-link", "pwned")]).unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");
    let err = apply_edits(&root, &[edit("file-link", EditAction::Delete)]).unwrap_err();
    assert!(err.to_string().contains("is a symlink"), "{err}");

    assert_eq!(read(&outside, "target.txt"), "keep\n");
    assert!(!outside.join("new.txt").exists());
    assert!(root.join("file-link").exists());
}

#[test]
fn create_over_an_existing_file_and_edits_of_missing_files_fail() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("here.txt"), "x").unwrap();
    let err = apply_edits(dir.path(), &[create("here.txt", "y")]).unwrap_err();
    assert!(matches!(err, EditError::AlreadyExists { .. }), "{err:?}");
    assert!(err.to_string().contains("REPLACE_FILE"), "{err}");
    for e in [
        replace_file("nope.txt", "y"),
        edit("nope.txt", EditAction::Delete),
        search_replace("nope.txt", "a", "b"),
    ] {
        let err = apply_edits(dir.path(), &[e]).unwrap_err();
        assert!(matches!(err, EditError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.txt"), "{err}");
    }
}

#[test]
fn missing_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f.txt"), "a\n").unwrap();
    for (e, field) in [
        (edit("n.txt", EditAction::Create), "content"),
        (edit("f.txt", EditAction::ReplaceFile), "content"),
        (edit("f.txt", EditAction::SearchReplace), "search"),
        (
            Edit {
                search: Some("a".into()),
                ..edit("f.txt", EditAction::SearchReplace)
            },
            "replace",
        ),
    ] {
        let err = apply_edits(dir.path(), &[e]).unwrap_err();
        assert!(
            err.to_string().contains(&format!("`{field}` is required")),
            "{err}"
        );
    }
}

#[test]
fn delete_then_create_the_same_path_in_one_set() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("x.txt"), "old").unwrap();
    let applied = apply_edits(
        dir.path(),
        &[edit("./x.txt", EditAction::Delete), create("x.txt", "new")],
    )
    .unwrap();
    assert_eq!(read(dir.path(), "x.txt"), "new");
    assert_eq!(applied[0].path, "x.txt");
    assert_eq!(applied[1].before_sha256, None);
}

#[test]
fn search_replace_refuses_binary_files() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("b.bin"), [0xff, 0xfe, 0x00]).unwrap();
    let err = apply_edits(dir.path(), &[search_replace("b.bin", "a", "b")]).unwrap_err();
    assert!(matches!(err, EditError::NotText { .. }), "{err:?}");
}
