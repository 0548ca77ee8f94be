//! Compiler and type-checker messages from build output.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::text::{cap_message, looks_like_source_path, strip_ansi};

/// The most diagnostics [`extract_diagnostics`] returns.
pub const MAX_DIAGNOSTICS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One compiler message with its location.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The path as the compiler printed it.
    pub file: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    pub severity: Severity,
    /// `E0308`, `TS2322`, `SyntaxError`, … when the tool prints one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub message: String,
}

/// What [`extract_diagnostics_with`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagnosticOptions {
    pub include_warnings: bool,
    pub max: usize,
}

impl Default for DiagnosticOptions {
    fn default() -> Self {
        DiagnosticOptions {
            include_warnings: false,
            max: MAX_DIAGNOSTICS,
        }
    }
}

/// The errors in build output, deduplicated, in order, at most [`MAX_DIAGNOSTICS`].
///
/// Understands rustc/cargo (`error[E0308]: …` then ` --> src/lib.rs:3:5`, and
/// `--message-format short`), gcc/clang/mypy/javac (`path:line[:col]: error: …`), go
/// (`./x.go:3:5: msg`, which has no severity word: a path with line *and* column is enough),
/// tsc (`src/a.ts(3,5): error TS2322: …` and the `--pretty` `src/a.ts:3:5 - error TS2322: …`),
/// Maven's `[ERROR] /p/A.java:[3,5] …`, and Python's `File "x.py", line N` followed by a
/// `SyntaxError`/`IndentationError`/`TabError` line (also inside pytest's `E ` lines).
pub fn extract_diagnostics(output: &str) -> Vec<Diagnostic> {
    extract_diagnostics_with(output, DiagnosticOptions::default())
}

/// [`extract_diagnostics`] with warnings too, or another limit.
pub fn extract_diagnostics_with(output: &str, options: DiagnosticOptions) -> Vec<Diagnostic> {
    let text = strip_ansi(output);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut python_location: Option<(String, u32)> = None;
    for (i, line) in lines.iter().enumerate() {
        if out.len() >= options.max {
            break;
        }
        let found = rustc(line, &lines[i + 1..])
            .or_else(|| tsc_parens(line))
            .or_else(|| maven(line))
            .or_else(|| path_line_col(line))
            .or_else(|| python(line, &mut python_location));
        let Some(d) = found else {
            continue;
        };
        if d.severity == Severity::Warning && !options.include_warnings {
            continue;
        }
        if d.message.is_empty() {
            continue;
        }
        let d = Diagnostic {
            message: cap_message(&d.message),
            ..d
        };
        if seen.insert(d.clone()) {
            out.push(d);
        }
    }
    out
}

/// `error` / `fatal error` / `warning` at the start of `s`, and what follows it.
fn severity_word(s: &str) -> Option<(Option<Severity>, &str)> {
    let s = s.trim_start();
    for (word, sev) in [
        ("fatal error", Some(Severity::Error)),
        ("error", Some(Severity::Error)),
        ("warning", Some(Severity::Warning)),
        ("note", None),
        ("remark", None),
        ("info", None),
        ("help", None),
    ] {
        if let Some(rest) = s.strip_prefix(word)
            && matches!(rest.chars().next(), Some(':' | '[' | ' '))
        {
            return Some((sev, rest));
        }
    }
    None
}

/// After the severity word: `[E0308]: msg`, ` TS2322: msg`, `: msg`.
fn code_and_message(rest: &str) -> (Option<String>, String) {
    if let Some(r) = rest.strip_prefix('[')
        && let Some((code, msg)) = r.split_once("]:")
    {
        return (Some(code.to_string()), msg.trim().to_string());
    }
    if let Some(msg) = rest.strip_prefix(':') {
        return (None, msg.trim().to_string());
    }
    let r = rest.trim_start();
    if let Some((code, msg)) = r.split_once(": ")
        && !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return (Some(code.to_string()), msg.trim().to_string());
    }
    (None, r.to_string())
}

fn rustc(line: &str, next: &[&str]) -> Option<Diagnostic> {
    if line.starts_with(' ') {
        return None;
    }
    let (severity, rest) = severity_word(line)?;
    let severity = severity?;
    let (code, message) = code_and_message(rest);
    for l in next.iter().take(4) {
        let t = l.trim();
        if t.is_empty() || severity_word(l).is_some() {
            break;
        }
        if let Some(loc) = t.strip_prefix("--> ") {
            let (file, line, column) = split_location(loc.trim())?;
            return Some(Diagnostic {
                file,
                line: Some(line),
                column,
                severity,
                code,
                message,
            });
        }
    }
    None
}

fn split_location(loc: &str) -> Option<(String, u32, Option<u32>)> {
    let (rest, last) = loc.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    match rest.rsplit_once(':') {
        Some((path, l)) if l.parse::<u32>().is_ok() && !path.is_empty() => {
            Some((path.to_string(), l.parse().ok()?, Some(last)))
        }
        _ if !rest.is_empty() => Some((rest.to_string(), last, None)),
        _ => None,
    }
}

/// `src/a.ts(3,5): error TS2322: Type 'string' is not assignable to type 'number'.`
fn tsc_parens(line: &str) -> Option<Diagnostic> {
    let t = line.trim_start();
    let close = t.find("): ")?;
    let head = &t[..close];
    let open = head.rfind('(')?;
    let path = &head[..open];
    if !looks_like_source_path(path) {
        return None;
    }
    let (l, c) = head[open + 1..].split_once(',')?;
    let line_no: u32 = l.trim().parse().ok()?;
    let col: u32 = c.trim().parse().ok()?;
    let (severity, rest) = severity_word(&t[close + 3..])?;
    let (code, message) = code_and_message(rest);
    Some(Diagnostic {
        file: path.to_string(),
        line: Some(line_no),
        column: Some(col),
        severity: severity?,
        code,
        message,
    })
}

/// `[ERROR] /p/src/main/java/A.java:[3,5] incompatible types: …`
fn maven(line: &str) -> Option<Diagnostic> {
    let t = line.trim_start();
    let (severity, rest) = if let Some(r) = t.strip_prefix("[ERROR] ") {
        (Severity::Error, r)
    } else if let Some(r) = t.strip_prefix("[WARNING] ") {
        (Severity::Warning, r)
    } else {
        return None;
    };
    let open = rest.find(":[")?;
    let path = &rest[..open];
    if !looks_like_source_path(path) {
        return None;
    }
    let close = open + rest[open..].find(']')?;
    let (l, c) = rest[open + 2..close].split_once(',')?;
    Some(Diagnostic {
        file: path.to_string(),
        line: l.trim().parse().ok(),
        column: c.trim().parse().ok(),
        severity,
        code: None,
        message: rest[close + 1..].trim().to_string(),
    })
}

/// `path:line[:col]: error: msg` (gcc, clang, javac, mypy, rustc short), `path:line:col: msg`
/// (go), `path:line:col - error TS2322: msg` (tsc --pretty).
fn path_line_col(line: &str) -> Option<Diagnostic> {
    let t = line.trim_start();
    // a Windows drive letter is not the line separator
    let skip = match t.as_bytes() {
        [d, b':', b'\\' | b'/', ..] if d.is_ascii_alphabetic() => 2,
        _ => 0,
    };
    let colon = skip + t[skip..].find(':')?;
    let path = &t[..colon];
    if !looks_like_source_path(path) {
        return None;
    }
    let after = &t[colon + 1..];
    let digits = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let line_no: u32 = after[..digits].parse().ok()?;
    let mut rest = &after[digits..];
    let mut column = None;
    if let Some(r) = rest.strip_prefix(':') {
        let d = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
        if d > 0 {
            column = r[..d].parse().ok();
            rest = &r[d..];
        }
    }
    let rest = match rest.strip_prefix(':') {
        Some(r) => r,
        None => rest.strip_prefix(" - ")?,
    };
    let rest = rest.trim();
    let (severity, code, message) = match severity_word(rest) {
        Some((sev, after)) => {
            let (code, message) = code_and_message(after);
            (sev?, code, message)
        }
        // go and friends print no severity; a full location is required then
        None if column.is_some() => (Severity::Error, None, rest.to_string()),
        None => return None,
    };
    Some(Diagnostic {
        file: path.to_string(),
        line: Some(line_no),
        column,
        severity,
        code,
        message,
    })
}

const PYTHON_COMPILE_ERRORS: &[&str] = &["SyntaxError", "IndentationError", "TabError"];

fn python(line: &str, last: &mut Option<(String, u32)>) -> Option<Diagnostic> {
    let mut t = line.trim();
    // pytest's collection errors prefix the traceback with `E   `
    if let Some(r) = t.strip_prefix("E ") {
        t = r.trim_start();
    }
    if let Some(r) = t.strip_prefix("File \"")
        && let Some((path, rest)) = r.split_once('"')
        && let Some(n) = rest.strip_prefix(", line ")
    {
        let digits = n.find(|c: char| !c.is_ascii_digit()).unwrap_or(n.len());
        *last = n[..digits].parse().ok().map(|l| (path.to_string(), l));
        return None;
    }
    let (kind, message) = match t.split_once(':') {
        Some((k, m)) => (k, m.trim()),
        None => (t, ""),
    };
    if !PYTHON_COMPILE_ERRORS.contains(&kind) {
        return None;
    }
    let (file, line_no) = last.take()?;
    Some(Diagnostic {
        file,
        line: Some(line_no),
        column: None,
        severity: Severity::Error,
        code: Some(kind.to_string()),
        message: if message.is_empty() {
            kind.to_string()
        } else {
            message.to_string()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(file: &str, line: u32, column: Option<u32>, code: Option<&str>, msg: &str) -> Diagnostic {
        Diagnostic {
            file: file.into(),
            line: Some(line),
            column,
            severity: Severity::Error,
            code: code.map(str::to_string),
            message: msg.into(),
        }
    }

    #[test]
    fn rustc_human_and_short() {
        let out = "   Compiling ce v0.1.0 (/tmp/ce)\n\
                   error[E0308]: mismatched types\n \
                   --> src/lib.rs:2:18\n  |\n\n\
                   warning: unused variable: `x`\n --> src/lib.rs:3:9\n\n\
                   error: cannot find macro `nope` in this scope\n --> src/main.rs:1:5\n\n\
                   error: could not compile `ce` (lib) due to 2 previous errors\n\
                   src/lib.rs:2:18: error[E0308]: mismatched types\n";
        let got = extract_diagnostics(out);
        assert_eq!(
            got,
            [
                d("src/lib.rs", 2, Some(18), Some("E0308"), "mismatched types"),
                d(
                    "src/main.rs",
                    1,
                    Some(5),
                    None,
                    "cannot find macro `nope` in this scope"
                ),
            ]
        );
        let all = extract_diagnostics_with(
            out,
            DiagnosticOptions {
                include_warnings: true,
                max: 10,
            },
        );
        assert_eq!(all.len(), 3);
        assert_eq!(all[1].severity, Severity::Warning);
    }

    #[test]
    fn gcc_go_javac_tsc_maven_mypy() {
        let out = "a.c: In function ‘main’:\n\
                   a.c:1:21: warning: initialization of ‘int’ [-Wint-conversion]\n\
                   a.c:1:33: error: ‘y’ undeclared (first use in this function)\n\
                   a.c:1:33: note: each undeclared identifier is reported only once\n\
                   C:\\src\\b.cpp:4:2: fatal error: x.h: No such file or directory\n\
                   # example.com/m\n\
                   ./main.go:3:5: undefined: x\n\
                   A.java:1: error: incompatible types: String cannot be converted to int\n\
                   src/a.ts(3,5): error TS2322: Type 'string' is not assignable to type 'number'.\n\
                   src/b.ts:7:1 - error TS1005: ';' expected.\n\
                   [ERROR] /w/src/main/java/App.java:[12,17] cannot find symbol\n\
                   app/x.py:3: error: Incompatible types in assignment  [assignment]\n\
                   test_sample.py:7: AssertionError\n\
                   12:30:45: not a path\n\
                   \x20   at Object.toBe (/tmp/a.test.js:3:39)\n";
        let got = extract_diagnostics(out);
        assert_eq!(
            got,
            [
                d(
                    "a.c",
                    1,
                    Some(33),
                    None,
                    "‘y’ undeclared (first use in this function)"
                ),
                d(
                    "C:\\src\\b.cpp",
                    4,
                    Some(2),
                    None,
                    "x.h: No such file or directory"
                ),
                d("./main.go", 3, Some(5), None, "undefined: x"),
                d(
                    "A.java",
                    1,
                    None,
                    None,
                    "incompatible types: String cannot be converted to int"
                ),
                d(
                    "src/a.ts",
                    3,
                    Some(5),
                    Some("TS2322"),
                    "Type 'string' is not assignable to type 'number'."
                ),
                d("src/b.ts", 7, Some(1), Some("TS1005"), "';' expected."),
                d(
                    "/w/src/main/java/App.java",
                    12,
                    Some(17),
                    None,
                    "cannot find symbol"
                ),
                d(
                    "app/x.py",
                    3,
                    None,
                    None,
                    "Incompatible types in assignment  [assignment]"
                ),
            ]
        );
    }

    #[test]
    fn python_syntax_errors_but_not_runtime_errors() {
        let out = "  File \"/tmp/bad.py\", line 1\n    def f(:\n          ^\nSyntaxError: invalid syntax\n\
                   Traceback (most recent call last):\n  File \"/tmp/rt.py\", line 3, in <module>\n    f()\n\
                   ZeroDivisionError: division by zero\n\
                   E     File \"/w/test_x.py\", line 4\n\
                   E       if True\n\
                   E   IndentationError: expected an indented block\n";
        let got = extract_diagnostics(out);
        assert_eq!(
            got,
            [
                d(
                    "/tmp/bad.py",
                    1,
                    None,
                    Some("SyntaxError"),
                    "invalid syntax"
                ),
                d(
                    "/w/test_x.py",
                    4,
                    None,
                    Some("IndentationError"),
                    "expected an indented block"
                ),
            ]
        );
    }

    #[test]
    fn dedup_and_cap() {
        let mut out = String::new();
        for i in 0..200 {
            out.push_str(&format!("x.go:{i}:1: bad\nx.go:{i}:1: bad\n"));
        }
        let got = extract_diagnostics(&out);
        assert_eq!(got.len(), MAX_DIAGNOSTICS);
        assert_eq!(got[1].line, Some(1));
        let long = format!("x.c:1:1: error: {}", "é".repeat(10_000));
        assert!(extract_diagnostics(&long)[0].message.len() <= crate::MESSAGE_LIMIT);
    }
}
