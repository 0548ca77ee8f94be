//! Small helpers shared by the parsers.

use std::borrow::Cow;

use serde_json::Value;

use crate::MESSAGE_LIMIT;

const CUT_MARK: &str = "\n… [truncated]";

/// Removes ANSI escape sequences (colours, cursor moves, OSC hyperlinks).
pub(crate) fn strip_ansi(s: &str) -> Cow<'_, str> {
    if !s.contains('\u{1b}') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        match chars.peek() {
            Some('[') => {
                chars.next();
                // CSI: parameters and intermediates, then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            Some(']') => {
                chars.next();
                // OSC: up to BEL or ESC \
                while let Some(c) = chars.next() {
                    if c == '\u{7}' {
                        break;
                    }
                    if c == '\u{1b}' {
                        if chars.peek() == Some(&'\\') {
                            chars.next();
                        }
                        break;
                    }
                }
            }
            Some(_) => {
                chars.next();
            }
            None => {}
        }
    }
    Cow::Owned(out)
}

/// Cuts `s` to at most [`MESSAGE_LIMIT`] bytes on a character boundary, marking the cut.
pub(crate) fn cap_message(s: &str) -> String {
    if s.len() <= MESSAGE_LIMIT {
        return s.to_string();
    }
    let mut end = MESSAGE_LIMIT - CUT_MARK.len();
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(MESSAGE_LIMIT);
    out.push_str(&s[..end]);
    out.push_str(CUT_MARK);
    out
}

/// The trimmed, capped message, or `None` when there is nothing in it.
pub(crate) fn message(s: &str) -> Option<String> {
    let t = s.trim_matches(|c: char| c == '\n' || c == '\r' || c == ' ' || c == '\t');
    if t.is_empty() {
        None
    } else {
        Some(cap_message(t))
    }
}

/// Parses `path:line` or `path:line:col` (a trailing `:` is allowed).
pub(crate) fn parse_location(s: &str) -> Option<(String, u32, Option<u32>)> {
    let s = s.trim().trim_end_matches(':');
    let (rest, last) = s.rsplit_once(':')?;
    let last: u32 = last.parse().ok()?;
    if let Some((path, line)) = rest.rsplit_once(':')
        && let Ok(line) = line.parse::<u32>()
        && !path.is_empty()
    {
        return Some((path.to_string(), line, Some(last)));
    }
    if rest.is_empty() {
        return None;
    }
    Some((rest.to_string(), last, None))
}

/// Whether `path` looks like a source file: no blanks, and a short alphanumeric extension.
pub(crate) fn looks_like_source_path(path: &str) -> bool {
    if path.is_empty() || path.len() > 1024 || path.chars().any(char::is_whitespace) {
        return false;
    }
    let file = path.rsplit(['/', '\\']).next().unwrap_or(path);
    match file.rsplit_once('.') {
        Some((stem, ext)) => {
            !stem.is_empty()
                && !ext.is_empty()
                && ext.len() <= 10
                && ext.chars().all(|c| c.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// The first frame of a JavaScript stack trace (`at fn (path:line:col)` or `at path:line:col`)
/// that is not inside node itself or `node_modules`.
pub(crate) fn js_stack_location(text: &str) -> Option<(String, u32)> {
    for line in text.lines() {
        let Some(frame) = line.trim_start().strip_prefix("at ") else {
            continue;
        };
        let frame = frame.trim_end();
        let loc = match (frame.rfind('('), frame.ends_with(')')) {
            (Some(open), true) => &frame[open + 1..frame.len() - 1],
            _ => frame,
        };
        let loc = loc.strip_prefix("file://").unwrap_or(loc);
        if loc.starts_with("node:") || loc.contains("node_modules") || loc.starts_with('<') {
            continue;
        }
        // JavaScript frames carry a column; Java's `(File.java:12)` do not
        if let Some((path, line, Some(_))) = parse_location(loc)
            && looks_like_source_path(&path)
        {
            return Some((path, line));
        }
    }
    None
}

/// The first line shaped `path:line: text` (pytest's traceback entries), as a location.
pub(crate) fn line_location(text: &str) -> Option<(String, u32)> {
    for line in text.lines() {
        let Some((head, _)) = line.split_once(": ") else {
            continue;
        };
        if let Some((path, line, None)) = parse_location(head)
            && looks_like_source_path(&path)
        {
            return Some((path, line));
        }
    }
    None
}

/// Seconds (as a runner prints them) to whole milliseconds.
pub(crate) fn seconds_to_ms(seconds: f64) -> Option<u64> {
    millis(seconds * 1000.0)
}

/// Fractional milliseconds to whole ones; `None` for negative or non-finite values.
pub(crate) fn millis(ms: f64) -> Option<u64> {
    if ms.is_finite() && ms >= 0.0 {
        // `as` saturates at u64::MAX.
        Some(ms.round() as u64)
    } else {
        None
    }
}

/// How many places in the input are tried as the start of a JSON report.
const JSON_START_ATTEMPTS: usize = 64;

/// The first JSON object in `text` that `accept` takes: the whole text, or one starting at
/// the beginning of a line (a runner's JSON may follow other output on stdout).
pub(crate) fn find_json_object(text: &str, accept: impl Fn(&Value) -> bool) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(value) = serde_json::from_str::<Value>(trimmed)
        && accept(&value)
    {
        return Some(value);
    }
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.starts_with('{') {
            starts.push(offset);
            if starts.len() >= JSON_START_ATTEMPTS {
                break;
            }
        }
        offset += line.len();
    }
    for start in starts {
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(value)) = stream.next()
            && accept(&value)
        {
            return Some(value);
        }
    }
    None
}

/// A JSON number or numeric string as f64.
pub(crate) fn json_f64(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn json_str(v: Option<&Value>) -> Option<&str> {
    v?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_colours_and_links() {
        let s = "\u{1b}[1m\u{1b}[32mPASS\u{1b}[0m x \u{1b}]8;;http://a\u{7}link\u{1b}]8;;\u{1b}\\";
        assert_eq!(strip_ansi(s), "PASS x link");
        assert_eq!(strip_ansi("trailing \u{1b}"), "trailing ");
        assert_eq!(strip_ansi("\u{1b}[31"), "");
    }

    #[test]
    fn caps_on_a_char_boundary() {
        let s = "é".repeat(5000);
        let c = cap_message(&s);
        assert!(c.len() <= MESSAGE_LIMIT);
        assert!(c.ends_with("[truncated]"));
        assert_eq!(cap_message("short"), "short");
        assert_eq!(message(" \n "), None);
    }

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("src/lib.rs:10:5:"),
            Some(("src/lib.rs".into(), 10, Some(5)))
        );
        assert_eq!(parse_location("a.py:7"), Some(("a.py".into(), 7, None)));
        assert_eq!(parse_location(":7"), None);
        assert_eq!(parse_location("nothing"), None);
        assert_eq!(
            js_stack_location(
                "Error: x\n    at Object.<anonymous> (node:internal/x.js:1:1)\n    at Object.toBe (/tmp/a.test.js:3:39)"
            ),
            Some(("/tmp/a.test.js".into(), 3))
        );
        assert_eq!(
            js_stack_location("    at file:///tmp/b.test.ts:9:1"),
            Some(("/tmp/b.test.ts".into(), 9))
        );
        assert_eq!(
            line_location("E  assert 1\n\ntest_a.py:7: AssertionError"),
            Some(("test_a.py".into(), 7))
        );
        assert!(!looks_like_source_path("12"));
        assert!(!looks_like_source_path("a b.rs"));
        assert!(looks_like_source_path("C:\\x\\a.cpp"));
    }

    #[test]
    fn finds_json_after_noise() {
        let text = "console output\n{\"a\": 1}\n{\"stats\": {}}\ntrailing";
        let v = find_json_object(text, |v| v.get("stats").is_some());
        assert!(v.is_some());
        assert!(find_json_object("{{{{", |_| true).is_none());
    }
}
