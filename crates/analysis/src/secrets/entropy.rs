//! Random-looking strings under any name, in the spirit of detect-secrets' high-entropy
//! plugins: a run of base64 characters of at least 20 with at least 4.5 bits of Shannon
//! entropy per character (and digits, upper and lower case in it), or of 32 to 64 hex
//! digits with at least 3.0 bits. Only runs where a value stands count (in quotes, after
//! `=` or `:`, alone on a line, a URL path segment): elsewhere a long run is an identifier.
//!
//! Random-looking is not secret when the context says what it is, and those contexts are
//! common enough that redacting them would cost the model real content:
//! - integrity hashes and checksums: `sha512-…`/`sha256:…`/`h1:…` prefixes, values of keys
//!   named `checksum`, `integrity`, `hash`, `digest`, `rev`, `commit`, `signature`…
//!   (Cargo.lock, package-lock.json, yarn.lock, go.sum, poetry.lock, flake.lock, SRI);
//! - hex on a line that says it is a hash, a commit or hex-encoded data (`EMPTY_SHA256 =
//!   "e3b0…"`, `assert_eq!(sha256(x), "…")`, `from_hex("…")`), hex of exactly 40, 56 or 64
//!   digits (commit ids and digests), pins after `@` (`actions/checkout@<sha>`), `#`
//!   fragments (`…tgz#<sha1>`), hex in URL paths (commit links);
//! - UUIDs (also 32-digit version-4 ones), `data:…;base64,` payloads, SSH public keys,
//!   alphabets (`ABC…xyz0123…`), identifiers (`kCFAbsoluteTimeIntervalSince1904`,
//!   `claude-sonnet-4-5`) and documentation stand-ins (`…EXAMPLEKEY`).
//!
//! What is still redacted without being a credential: crypto test vectors (keys, IVs and
//! ciphertexts in hex), base64 test data and encrypted CI variables. A hex secret of a
//! digest's length, or shorter than 32 digits, is caught only under a secret-named key
//! (the assignment rules).

use std::ops::Range;

const BASE64_MIN_LEN: usize = 20;
const BASE64_MIN_BITS: f64 = 4.5;
const HEX_MIN_LEN: usize = 32;
const HEX_MIN_BITS: f64 = 3.0;
/// See `mean_class_run`: at 2.5 a random string of 20 characters is very rarely taken for
/// an identifier.
const MAX_MEAN_CLASS_RUN: f64 = 2.5;
/// Longer hex runs are data (big-number literals, binary dumps), not credentials.
const HEX_MAX_LEN: usize = 64;
/// SHA-1, SHA-224 and SHA-256 in hex: commit ids and digests, far more common in code than a
/// credential of the same length without a secret-named key (which `assign` catches).
const DIGEST_HEX_LENS: [usize; 3] = [40, 56, 64];

/// Keys whose values are hashes, revisions or identifiers by name.
const SAFE_KEY_WORDS: &[&str] = &[
    "checksum",
    "checksums",
    "shasum",
    "integrity",
    "hash",
    "hashes",
    "digest",
    "sha",
    "sha1",
    "sha256",
    "sha384",
    "sha512",
    "md5",
    "rev",
    "revision",
    "commit",
    "ref",
    "reference",
    "etag",
    "uuid",
    "guid",
    "id",
    "fingerprint",
    "resolved",
    "version",
    "signature",
];

/// Words that, anywhere on a line, say its hex strings are hashes, revisions or data
/// decoded from hex (test vectors: `from_hex("0011…")`, `hex!("…")`, `bytes.fromhex`).
const HASH_WORD_PREFIXES: &[&str] = &[
    "sha",
    "hash",
    "digest",
    "checksum",
    "md5",
    "blake",
    "crc",
    "integrity",
    "commit",
    "rev",
    "fingerprint",
    "etag",
    "uuid",
    "guid",
    "oid",
    "hex",
    "fromhex",
    "unhexlify",
];

fn run_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-')
}

/// Shannon entropy of `s` in bits per character.
pub(super) fn shannon(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Five characters in a row that climb by one (`abcde`, `01234`): an alphabet or a
/// counting sequence, written by a person rather than drawn at random.
fn has_sequence(s: &str) -> bool {
    s.as_bytes()
        .windows(5)
        .any(|w| w.windows(2).all(|p| p[1] == p[0].wrapping_add(1)))
}

/// `claude-sonnet-4-5`, `NPM_CONFIG_REGISTRY`, `NCC_Group_MobileCoin_…`: mostly words,
/// numbers and camel-case humps between separators is a name, however varied its letters.
/// Random base64url has few separators, and the pieces between them are not words.
fn is_words(s: &str) -> bool {
    let segments: Vec<&str> = s
        .split(['_', '-', '/', '+'])
        .filter(|p| !p.is_empty())
        .collect();
    let wordlike = segments
        .iter()
        .filter(|seg| {
            let digits = seg.bytes().all(|c| c.is_ascii_digit());
            let upper = seg.bytes().all(|c| c.is_ascii_uppercase());
            // A camel-case word: an optional capital, then humps of capital + lower case.
            let camel = seg
                .split(|c: char| c.is_ascii_uppercase())
                .skip(1)
                .all(|hump| !hump.is_empty() && hump.bytes().all(|c| c.is_ascii_lowercase()))
                && seg.bytes().all(|c| c.is_ascii_alphabetic());
            digits || upper || camel
        })
        .count();
    segments.len() > 1 && wordlike * 3 >= segments.len() * 2
}

/// Whether `range` stands where a value does: in quotes, after `=`, `:` or an
/// authorization scheme, alone on its line (a continued literal), or as a URL path
/// segment. Elsewhere a long run is an identifier or prose in code and comments.
fn in_value_position(line: &str, range: &Range<usize>, in_url: bool) -> bool {
    let before = &line[..range.start];
    let after = line[range.end..].chars().next();
    let closes = after.is_none_or(|c| c.is_whitespace() || "\"'`,;)]}\\&#".contains(c));
    let opens = match before.chars().next_back() {
        None => true,
        Some('"' | '\'' | '`' | '=' | ':' | '(' | '[' | ',') => true,
        Some('/') => in_url,
        Some(c) if c.is_whitespace() => {
            let head = before.trim_end();
            head.is_empty()
                || head.ends_with(['=', ':', ',', '(', '[', '{', '>'])
                || ["Bearer", "Basic", "Token", "token"]
                    .iter()
                    .any(|s| head.ends_with(s))
        }
        Some(_) => false,
    };
    opens && closes
}

/// Mean length of the runs of one character class (lower case, upper case, digits,
/// symbols). Random base64 changes class every 1.6 characters on average; identifiers
/// (`kCFAbsoluteTimeIntervalSince1904`) change at word boundaries, every 3 or more.
fn mean_class_run(s: &str) -> f64 {
    let class = |b: u8| match b {
        b'a'..=b'z' => 0,
        b'A'..=b'Z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let bytes = s.as_bytes();
    let runs = 1 + bytes
        .windows(2)
        .filter(|w| class(w[0]) != class(w[1]))
        .count();
    bytes.len() as f64 / runs as f64
}

/// A UUID, with dashes or in the 32-digit "simple" form of a version-4 one (a random
/// 32-digit secret has that form one time in 64).
fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() == 32 && b.iter().all(u8::is_ascii_hexdigit) {
        return b[12] == b'4' && matches!(b[16].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b');
    }
    super::assign::is_uuid(s)
}

/// Where the last character of `s` matching `pred` ends (0 if none does); characters may
/// be wider than a byte (a no-break space).
fn end_of_last(s: &str, pred: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .rev()
        .find(|(_, c)| pred(*c))
        .map_or(0, |(i, c)| i + c.len_utf8())
}

/// The key a value at `at` belongs to: the identifier before the nearest `:` or `=`.
fn key_before(line: &str, at: usize) -> Option<&str> {
    let head = line[..at].trim_end_matches(['"', '\'', ' ', '\t', '{', '[', '\\']);
    let head = head.strip_suffix([':', '='])?;
    let head = head.trim_end_matches(['"', '\'', ' ', '\t']);
    let start = end_of_last(head, |c| !(c.is_ascii_alphanumeric() || "_.-".contains(c)));
    Some(&head[start..])
}

fn safe_prefix(before: &str) -> bool {
    let lower = before.to_ascii_lowercase();
    lower.ends_with('@')
        || lower.ends_with('#')
        || lower.ends_with("base64,")
        || lower.ends_with("h1:")
        || ["sha1", "sha256", "sha384", "sha512", "md5"]
            .iter()
            .any(|h| {
                [":", "=", "-"]
                    .iter()
                    .any(|s| lower.ends_with(&format!("{h}{s}")))
            })
}

/// Random-looking runs in `line` that no span in `taken` already covers.
pub(super) fn find(line: &str, taken: &[Range<usize>]) -> Vec<Range<usize>> {
    let lower = line.to_ascii_lowercase();
    if ["ssh-rsa ", "ssh-ed25519 ", "ssh-dss ", "ecdsa-sha2-"]
        .iter()
        .any(|k| lower.contains(k))
    {
        return Vec::new();
    }
    // Splitting a line into words costs allocations: done once, and only when needed.
    let hash_line = std::cell::OnceCell::new();
    let hash_line = || {
        *hash_line.get_or_init(|| {
            super::assign::words(line)
                .iter()
                .any(|w| HASH_WORD_PREFIXES.iter().any(|p| w.starts_with(p)))
        })
    };
    let b = line.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !run_char(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && run_char(b[i]) {
            // `=` inside a run is an assignment (`KEY=value`); base64 has it only as padding.
            if b[i] == b'=' && b.get(i + 1).is_some_and(|n| *n != b'=' && run_char(*n)) {
                break;
            }
            i += 1;
        }
        if i < b.len() && b[i] == b'=' && i == start {
            i += 1;
            continue;
        }
        if i - start < BASE64_MIN_LEN || taken.iter().any(|t| t.start < i && start < t.end) {
            continue;
        }
        // In a URL the path segments are separate values (a commit id in a link).
        let token_start = end_of_last(&line[..start], |c| c.is_whitespace() || "\"'`(".contains(c));
        let in_url = line[token_start..start].contains("://");
        // A URL's fragment (`#code/…` share links) is state for a page, not a credential.
        if in_url && line[token_start..start].contains('#') {
            continue;
        }
        let pieces = if in_url {
            split_at_slashes(line, start..i)
        } else {
            std::iter::once(start..i).collect()
        };
        for piece in pieces {
            if in_value_position(line, &piece, in_url)
                && is_secret(line, piece.clone(), || in_url || hash_line())
            {
                spans.push(piece);
            }
        }
    }
    spans
}

fn split_at_slashes(line: &str, run: Range<usize>) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut from = run.start;
    for (offset, c) in line[run.clone()].char_indices() {
        if c == '/' {
            out.push(from..run.start + offset);
            from = run.start + offset + 1;
        }
    }
    out.push(from..run.end);
    out
}

fn is_secret(line: &str, range: Range<usize>, hex_is_hash: impl Fn() -> bool) -> bool {
    let s = &line[range.clone()];
    if s.len() < BASE64_MIN_LEN
        || is_uuid(s)
        || super::assign::has_placeholder_mark(s)
        || is_words(s)
        || has_sequence(s)
        || safe_prefix(&line[..range.start])
    {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    if ["sha1-", "sha256-", "sha384-", "sha512-", "md5-"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return false;
    }
    if let Some(key) = key_before(line, range.start) {
        let words = super::assign::words(key);
        let joined = words.concat();
        if words
            .iter()
            .chain([&joined])
            .any(|w| SAFE_KEY_WORDS.contains(&w.as_str()))
        {
            return false;
        }
    }
    let digit = s.bytes().any(|c| c.is_ascii_digit());
    if s.bytes().all(|c| c.is_ascii_hexdigit()) {
        // Random hex of 32 digits has a dozen letters; a number with an exponent
        // (`6213…368e0`) has one.
        let letter = s.bytes().filter(|c| c.is_ascii_alphabetic()).count() >= 4;
        return (HEX_MIN_LEN..=HEX_MAX_LEN).contains(&s.len())
            && !DIGEST_HEX_LENS.contains(&s.len())
            && digit
            && letter
            && shannon(s) >= HEX_MIN_BITS
            && !hex_is_hash();
    }
    let upper = s.bytes().any(|c| c.is_ascii_uppercase());
    let lower_case = s.bytes().any(|c| c.is_ascii_lowercase());
    digit
        && upper
        && lower_case
        && mean_class_run(s) < MAX_MEAN_CLASS_RUN
        && shannon(s) >= BASE64_MIN_BITS
}
