//! Assignment-shaped secrets: a key whose name says "secret" given a literal value, in the
//! syntaxes of common languages and config files (`=`, `:`, `:=`, `=>`, `?=`, YAML, JSON,
//! TOML, `.env`, shell `export`, Java properties, XML elements and attributes), and
//! passwords in URLs (`scheme://user:password@host`).
//!
//! The value is judged before it is redacted, because the model needs the real code:
//! references (`user.password`, `process.env.X`, `env!("X")`), types (`token: String`),
//! placeholders (`changeme`, `<your-token>`, `${VAR}`), templates, numbers, booleans and
//! prose stay as they are. Without knowing the file's language, a bare word is a value only
//! where the syntax says so (`KEY=value` at the start of a line) or where it does not read
//! like an identifier (digits or symbols in it).

use std::ops::Range;

/// What a line leaves open for the next ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Opens {
    Nothing,
    /// A YAML block scalar (`key: |`) under a secret key: more-indented lines are its value.
    YamlBlock {
        indent: usize,
    },
    /// A triple-quoted string (`key = """`) under a secret key, closed by this delimiter.
    Triple(&'static str),
}

/// How strongly a key's name says that its value is a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strength {
    /// `password`, `token`, `api_key`, …: any literal that is not a placeholder.
    Strong,
    /// `auth`, `authorization`, `db_pass`: the value must also look like a credential (a
    /// digit or a symbol in it), since these keys often hold scheme names (`auth: "basic"`).
    Weak,
}

/// Last words of a key that name a credential (a camel or snake compound ending in one counts).
const STRONG_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "credentials",
];
/// `<word> key` pairs (and `<word>key` compounds) that name a credential; `key` alone does not.
const KEY_QUALIFIERS: &[&str] = &[
    "api",
    "access",
    "secret",
    "private",
    "signing",
    "encryption",
    "master",
    "client",
    "app",
    "account",
    "hmac",
    "auth",
];

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

/// Lower-case words of an identifier: split at separators and at camel-case humps
/// (`dbPassword`, `APIKey`, `api-key`, `db.password` all end in the word that matters).
pub(super) fn words(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in key.split(|c: char| !c.is_ascii_alphanumeric()) {
        let chars: Vec<char> = part.chars().collect();
        let mut word = String::new();
        for (i, &c) in chars.iter().enumerate() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let hump = c.is_ascii_uppercase()
                && prev.is_some_and(|p| {
                    p.is_ascii_lowercase()
                        || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()))
                });
            if hump && !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            word.push(c.to_ascii_lowercase());
        }
        if !word.is_empty() {
            out.push(word);
        }
    }
    out
}

fn strength(key: &str) -> Option<Strength> {
    // Most identifiers name nothing secret; skip splitting them into words.
    let lower = key.to_ascii_lowercase();
    if ![
        "pass",
        "pwd",
        "secret",
        "token",
        "credential",
        "key",
        "auth",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        return None;
    }
    let words = words(key);
    let last = words.last()?.trim_end_matches(|c: char| c.is_ascii_digit());
    let before = words
        .len()
        .checked_sub(2)
        .map(|i| words[i].as_str())
        .unwrap_or("");
    if last == "pwd" || STRONG_SUFFIXES.iter().any(|s| last.ends_with(s)) {
        return Some(Strength::Strong);
    }
    if last == "key" && KEY_QUALIFIERS.contains(&before) {
        return Some(Strength::Strong);
    }
    if KEY_QUALIFIERS
        .iter()
        .any(|q| last.len() > q.len() && last.strip_prefix(q) == Some("key"))
    {
        return Some(Strength::Strong);
    }
    if last == "auth" || last == "authorization" || (last == "pass" && words.len() > 1) {
        return Some(Strength::Weak);
    }
    None
}

/// Values that are never a credential, whatever the key: placeholders, switches and the
/// names of authentication schemes.
const NOT_CREDENTIALS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "pass",
    "pwd",
    "none",
    "null",
    "nil",
    "undefined",
    "true",
    "false",
    "yes",
    "no",
    "on",
    "off",
    "empty",
    "default",
    "string",
    "value",
    "test",
    "basic",
    "bearer",
    "digest",
    "oauth",
    "oauth1",
    "oauth2",
    "oidc",
    "saml",
    "ldap",
    "jwt",
    "hmac",
    "ntlm",
    "kerberos",
    "negotiate",
    "apikey",
    "api_key",
    "api-key",
    "session",
    "cookie",
    "header",
    "query",
    "required",
    "optional",
    "disabled",
    "enabled",
    "include",
    "omit",
    "same-origin",
    "anonymous",
    "mtls",
    "sigv4",
];

/// Words that mark a value as a stand-in for the real thing.
const PLACEHOLDER_MARKS: &[&str] = &[
    "changeme",
    "change_me",
    "change-me",
    "changeit",
    "replace",
    "your_",
    "your-",
    "yourpass",
    "yoursecret",
    "yourtoken",
    "mypass",
    "mysecret",
    "mytoken",
    "example",
    "placeholder",
    "dummy",
    "fake",
    "redacted",
    "notasecret",
    "not-a-secret",
    "not_a_secret",
];

/// Words that make a value the name of a credential rather than one.
const NAMING_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "credentials",
    "apikey",
    "api_key",
];

/// Marks of a stand-in anywhere in `value` (also used for random-looking strings:
/// `…EXAMPLEKEY` is documentation).
pub(super) fn has_placeholder_mark(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    PLACEHOLDER_MARKS.iter().any(|m| lower.contains(m))
}

fn is_placeholder(value: &str) -> bool {
    let v = value.trim();
    let lower = v.to_ascii_lowercase();
    v.chars().count() < 4
        // `#cccccc`: colours, anchors and comments.
        || v.starts_with('#')
        // `username:`, `Password:`: a label or a prefix that a value is appended to.
        || v.ends_with(':')
        || is_uuid(v)
        || v.starts_with('$')
        || v.starts_with('%')
        || v.starts_with('<')
        || (v.starts_with('@') && v.ends_with('@'))
        || v.contains("${")
        || v.contains("{{")
        || v.contains("#{")
        || v.contains("<%")
        || (v.contains('{') && v.contains('}'))
        // Numbers, versions, OIDs, addresses and dates are configuration.
        || v.chars().all(|c| c.is_ascii_digit() || ".:-/".contains(c))
        || v.chars().all(|c| "xX*.-_#0 :".contains(c))
        || NOT_CREDENTIALS.contains(&lower.as_str())
        || has_placeholder_mark(v)
        // A name that mentions what it names (`userPassword`, `my-secret`,
        // `sha256_password`) is a reference or a label.
        || (!v.chars().any(|c| c.is_ascii_digit())
            && NAMING_WORDS.iter().any(|w| lower.contains(w)))
        || (is_identifier(v) && words(v).iter().any(|w| NAMING_WORDS.contains(&w.as_str())))
}

/// UUIDs identify things (`ChangeToken: "abcd12f2-…"` is a request id); a service that
/// uses one as a key still has it caught under a secret-named key with any other shape.
pub(super) fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Regular expressions (`r'[^\W\d]\w*'`) describe values, they are not one.
fn is_regex(v: &str) -> bool {
    v.contains("[^")
        || ["\\w", "\\d", "\\s", "\\W", "\\D", "\\S", "\\b"]
            .iter()
            .any(|e| v.contains(e))
}

/// `next_marker`, `NextPageMarker`, `NativePrivateKey`: a name with structure (separators or
/// camel-case humps) and no digits names something; a credential is not spelled that way.
fn is_structured_name(v: &str) -> bool {
    // `?NonExpressionParenEnd`, `@scope/name`: a sigil before a name.
    let v = v.trim_start_matches(|c: char| c.is_ascii_punctuation());
    let humps = v
        .as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
    is_identifier(v) && !has_digit(v) && (v.contains('_') || humps)
}

fn is_identifier(v: &str) -> bool {
    let mut chars = v.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `ENV_NAME`, `CONSTANT`: the name of where a secret lives, not the secret.
fn is_constant_name(v: &str) -> bool {
    is_identifier(v)
        && !v.chars().any(|c| c.is_ascii_lowercase())
        && (v.contains('_') || !v.chars().any(|c| c.is_ascii_digit()))
}

/// `user.password`, `settings::TOKEN`, `self->key`: a path to a value.
fn is_reference(v: &str) -> bool {
    let parts: Vec<&str> = v.split(['.', ':']).filter(|p| !p.is_empty()).collect();
    // `serverlessrepo:applicationId` too; `user:pass1` (digits) stays a possible credential.
    let separated = v.contains('.')
        || v.contains("::")
        || v.contains("->")
        || (v.contains(':') && !has_digit(v));
    separated
        && parts.len() > 1
        && parts
            .iter()
            .all(|p| is_identifier(p.trim_start_matches('>').trim_end_matches('-')))
}

fn is_path_or_url(v: &str) -> bool {
    v.starts_with('/')
        || v.starts_with("./")
        || v.starts_with("../")
        || v.starts_with("~/")
        || v.contains("://")
}

fn has_digit(v: &str) -> bool {
    v.chars().any(|c| c.is_ascii_digit())
}

/// Looks like a credential rather than a word: a digit or a symbol in it.
fn looks_random(v: &str) -> bool {
    has_digit(v)
        || v.chars()
            .any(|c| c.is_ascii_punctuation() && c != '_' && c != '-')
}

/// A literal written between quotes (or as XML text): the syntax says it is a value.
fn literal_is_credential(v: &str, strength: Strength) -> bool {
    if is_placeholder(v)
        || v.trim() != v
        || is_path_or_url(v)
        || is_constant_name(v.trim_start_matches(|c: char| c.is_ascii_punctuation()))
        || is_structured_name(v)
        || is_regex(v)
    {
        return false;
    }
    if v.contains(char::is_whitespace) {
        // Prose (labels, prompts, messages) is words of letters; a credential with spaces
        // (`Bearer 7f3k…`) has a word that is not.
        let prose = v.split_whitespace().all(|w| {
            let w = w.trim_matches(|c: char| ".,:;!?'()".contains(c));
            w.chars().all(|c| c.is_alphabetic() || c == '-')
                || w.chars().all(|c| c.is_ascii_digit())
        });
        return !prose;
    }
    let letters_only = v.chars().all(|c| c.is_ascii_alphabetic());
    // `Passwort`, `Jeton`: a capitalised word is a label; short plain words are enum-like
    // settings (`"include"`, `"strict"`), long ones are passphrases.
    let capitalised = v.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && v.chars().skip(1).all(|c| c.is_ascii_lowercase());
    if capitalised || (letters_only && v.len() < 12) {
        return false;
    }
    if strength == Strength::Weak && !looks_random(v) {
        return false;
    }
    !is_reference(v)
}

/// Type names a declaration gives a secret-named field (`token: String`).
fn is_type_name(v: &str) -> bool {
    matches!(
        v,
        "str" | "string" | "bytes" | "int" | "bool" | "boolean" | "number" | "any" | "object"
    ) || (v.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && v.chars().all(|c| c.is_ascii_alphabetic()))
}

/// A bare (unquoted) value. `config_line`: `KEY=value` at the start of a line (`.env`,
/// shell, properties), where a bare word can only be a literal.
fn bare_is_credential(key: &str, v: &str, config_line: bool, strength: Strength) -> bool {
    if is_placeholder(v) || is_path_or_url(v) || v.contains(['"', '\'', '`', '\\']) {
        return false;
    }
    if config_line {
        return !is_constant_name(v) && !is_reference(v);
    }
    if v.contains(['(', ')', '[', ']', '{', '}', '<', '>', '&', '*', '?'])
        || v.starts_with('!')
        || is_reference(v)
    {
        return false;
    }
    if is_identifier(v) {
        let same = words(v) == words(key);
        if same || is_constant_name(v) || is_type_name(v) || !has_digit(v) {
            return false;
        }
    }
    strength == Strength::Strong || looks_random(v)
}

/// A quoted literal at `at`: the range of its content and where it ends, or the triple
/// quote it leaves open. Handles `r"…"`/`r#"…"#`, `b"…"`, `f"…"`, `u"…"` and backticks.
fn quoted(line: &str, at: usize) -> Option<Result<(Range<usize>, usize), &'static str>> {
    let b = line.as_bytes();
    let mut i = at;
    while i < b.len()
        && i < at + 2
        && matches!(b[i], b'r' | b'R' | b'b' | b'B' | b'f' | b'F' | b'u' | b'U')
    {
        i += 1;
    }
    let raw = b[at..i].iter().any(|c| matches!(c, b'r' | b'R'));
    let mut hashes = 0;
    while raw && i < b.len() && b[i] == b'#' {
        hashes += 1;
        i += 1;
    }
    let quote = *b.get(i).filter(|q| matches!(q, b'"' | b'\'' | b'`'))?;
    for triple in ["\"\"\"", "'''"] {
        if line[i..].starts_with(triple) {
            let start = i + 3;
            return Some(match line[start..].find(triple) {
                Some(end) => Ok((start..start + end, start + end + 3)),
                None => Err(triple),
            });
        }
    }
    let start = i + 1;
    let mut j = start;
    while j < b.len() {
        if b[j] == b'\\' && !raw {
            j += 2;
            continue;
        }
        if b[j] == quote
            && b[j + 1..]
                .iter()
                .take(hashes)
                .filter(|c| **c == b'#')
                .count()
                == hashes
        {
            return Some(Ok((start..j, j + 1 + hashes)));
        }
        j += 1;
    }
    None
}

/// `String::from("…")`, `SecretStr("…")`, `new String("…")`, `Buffer.from("…")`: a
/// constructor or conversion of one literal. Ordinary function calls are not followed: their
/// argument is usually the name of a secret (`os.getenv("TOKEN")`), not the secret.
fn constructed_literal(line: &str, at: usize) -> Option<(Range<usize>, usize)> {
    let rest = &line[at..];
    let rest_at = at + (rest.len() - rest.trim_start_matches("new ").len());
    let open = line[rest_at..].find('(')? + rest_at;
    let callee = &line[rest_at..open];
    let last = callee.rsplit([':', '.']).next().unwrap_or(callee);
    let constructor = !callee.is_empty()
        && callee
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_:.<>".contains(c))
        && (last.starts_with(|c: char| c.is_ascii_uppercase())
            || matches!(last, "from" | "new" | "of" | "valueOf"));
    if !constructor {
        return None;
    }
    let (range, end) = quoted(line, open + 1)?.ok()?;
    line[end..].starts_with(')').then_some((range, end + 1))
}

/// After `key:` — `&'static str = "…"`, `string = "…"`: where the value of a typed
/// declaration starts, if this is one.
fn after_type(line: &str, at: usize) -> Option<usize> {
    let rest = &line[at..];
    // ` = `: a bare YAML value may hold `=` itself (base64 padding), a declaration spaces it.
    let eq = rest.find(" =")? + 1;
    let next = rest.as_bytes().get(eq + 1);
    if matches!(next, None | Some(b'=') | Some(b'>')) {
        return None;
    }
    let ty = rest[..eq].trim();
    let typelike = !ty.is_empty()
        && ty.len() <= 60
        && ty
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_&'<>[]:, .?|*".contains(c));
    typelike.then(|| at + eq + 1 + (rest[eq + 1..].len() - rest[eq + 1..].trim_start().len()))
}

/// Authorization schemes stay readable; only what follows them is the credential.
fn after_scheme(line: &str, range: Range<usize>) -> Range<usize> {
    for scheme in ["Bearer ", "Basic ", "Token ", "token ", "Bot ", "Digest "] {
        if line[range.clone()].starts_with(scheme) {
            return range.start + scheme.len()..range.end;
        }
    }
    range
}

/// Redactions of assignment-shaped secrets in one line (without its line break), and what
/// the line leaves open.
pub(super) fn find(line: &str) -> (Vec<Range<usize>>, Opens) {
    let b = line.as_bytes();
    let mut spans = Vec::new();
    let mut opens = Opens::Nothing;
    let indent = line.len() - line.trim_start().len();
    let mut i = 0;
    while i < b.len() {
        if !key_char(b[i]) || (i > 0 && key_char(b[i - 1])) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < b.len() && key_char(b[end]) {
            end += 1;
        }
        let key = line[i..end].trim_start_matches(['-', '.']);
        let run_start = i;
        i = end;
        let Some(strength) = strength(key) else {
            continue;
        };
        let before = run_start.checked_sub(1).map(|p| b[p]);
        // XML element: `<password>value</password>`, closed on the same line (so that a
        // generic type, `Option<Credential>`, is not taken for one).
        if before == Some(b'<') && b.get(end) == Some(&b'>') {
            let start = end + 1;
            let close = format!("</{}>", &line[run_start..end]);
            if let Some(stop) = line[start..].find(&close).map(|e| start + e) {
                if literal_is_credential(&line[start..stop], strength) {
                    spans.push(start..stop);
                }
                i = stop;
            }
            continue;
        }
        let mut p = end;
        // The closing quote of a quoted key: `"api-key": …`, `'password' => …`.
        if let Some(q) = before.filter(|q| matches!(q, b'"' | b'\''))
            && b.get(p) == Some(&q)
        {
            p += 1;
        }
        let spaced_before = b.get(p).is_some_and(|c| *c == b' ' || *c == b'\t');
        while p < b.len() && (b[p] == b' ' || b[p] == b'\t') {
            p += 1;
        }
        let rest = &line[p..];
        let two = rest.starts_with(":=") || rest.starts_with("=>") || rest.starts_with("?=");
        let equals = rest.starts_with('=') && !rest.starts_with("==") && !rest.starts_with("=~");
        let colon_op = rest.starts_with(':') && !rest.starts_with("::");
        let op = match (two, equals || colon_op) {
            (true, _) => 2,
            (false, true) => 1,
            (false, false) => continue,
        };
        let colon = rest.starts_with(':') && op == 1;
        p += op;
        let spaced_after = b.get(p).is_some_and(|c| *c == b' ' || *c == b'\t');
        while p < b.len() && (b[p] == b' ' || b[p] == b'\t') {
            p += 1;
        }
        if p >= b.len() {
            continue;
        }
        // `KEY=value` opening a line (or after `export`/`set`): `.env`, shell, properties,
        // where a bare value is always a literal.
        let lead = line[..run_start].trim_start();
        let lead = lead
            .strip_prefix("export ")
            .or_else(|| lead.strip_prefix("set "))
            .unwrap_or(lead)
            .trim();
        let config_line = lead.is_empty() && !colon && !spaced_before && !spaced_after;
        let mut value_at = p;
        if colon && !matches!(b[p], b'"' | b'\'' | b'`') {
            let block = line[p..].trim_end();
            let indicator = block.starts_with(['|', '>'])
                && block[1..].chars().all(|c| "+-0123456789".contains(c));
            if indicator {
                opens = Opens::YamlBlock { indent };
                break;
            }
            if let Some(v) = after_type(line, p) {
                value_at = v;
            }
        }
        if value_at >= b.len() {
            continue;
        }
        match quoted(line, value_at) {
            Some(Ok((range, after))) => {
                if literal_is_credential(&line[range.clone()], strength) {
                    spans.push(after_scheme(line, range));
                }
                i = after;
                continue;
            }
            Some(Err(triple)) => {
                let start = line[value_at..]
                    .find(triple)
                    .map_or(line.len(), |t| value_at + t + 3);
                if start < line.len() && super::is_blob(&line[start..]) {
                    spans.push(start..line.len());
                }
                opens = Opens::Triple(triple);
                break;
            }
            None => {}
        }
        if let Some((range, after)) = constructed_literal(line, value_at) {
            if literal_is_credential(&line[range.clone()], strength) {
                spans.push(range);
            }
            i = after;
            continue;
        }
        // A bare value: one word, alone on the line but for a comment or a closing `,`/`;`.
        let mut word_end = line[value_at..]
            .find(char::is_whitespace)
            .map_or(line.len(), |e| value_at + e);
        let mut after_word = line[word_end..].trim_start();
        // `Authorization: Bearer 7f3k…`: a scheme and its credential are one value.
        let scheme = matches!(
            &line[value_at..word_end],
            "Bearer" | "Basic" | "Token" | "Bot"
        );
        if scheme && !after_word.is_empty() && !after_word.trim_end().contains(char::is_whitespace)
        {
            word_end = line.trim_end().len();
            after_word = "";
        }
        let alone =
            after_word.is_empty() || after_word.starts_with('#') || after_word.starts_with("//");
        let value_end = word_end;
        let value = &line[value_at..value_end];
        // A trailing `,` or `;` ends a statement or an argument: code, not configuration.
        let code = value.ends_with([',', ';']);
        if alone && !code && bare_is_credential(key, value, config_line, strength) {
            spans.push(after_scheme(line, value_at..value_end));
        }
        i = value_end.max(i);
    }
    (spans, opens)
}

/// Passwords in URLs: `scheme://user:password@host` → the password part.
pub(super) fn url_passwords(line: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(found) = line[from..].find("://") {
        let start = from + found + 3;
        from = start;
        let scheme_ok = line[..start - 3]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let authority_end = line[start..]
            .find(|c: char| {
                c == '/' || c == '?' || c == '#' || c.is_whitespace() || "\"'`<>".contains(c)
            })
            .map_or(line.len(), |e| start + e);
        let Some(at) = line[start..authority_end].rfind('@') else {
            continue;
        };
        let userinfo = &line[start..start + at];
        // `host:port,user:pass@host`: several hosts, not one set of credentials.
        if userinfo.contains(',') {
            continue;
        }
        let Some(colon) = userinfo.find(':') else {
            continue;
        };
        let password = start + colon + 1..start + at;
        let value = &line[password.clone()];
        // Templates (`{pass}`, `[:password]`) and short stand-ins (`u:p@host`) included.
        let placeholder = is_placeholder(value) || value.contains(['{', '[', ']']);
        if scheme_ok && !placeholder {
            spans.push(password);
        }
    }
    spans
}
