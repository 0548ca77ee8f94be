//! Keeping a repository's own secrets out of prompts. A repository may hold a `.env`, a
//! private key or a token pasted into a config file; none of that may travel to an LLM
//! provider. Files whose names say "secret" are never shown, and in every other file these
//! are replaced by a marker before a prompt sees them:
//! - private key blocks (PEM) and tokens with the prefixes of well-known services or the
//!   shape of a JWT;
//! - values assigned to keys whose names say "secret", and passwords in URLs
//!   (`assign`);
//! - long random-looking strings under any name (`entropy`).
//!
//! Each rule leaves alone what the model needs to read the code: references, types,
//! placeholders, hashes and lockfile checksums (see the modules). The detector works on text
//! alone, without the file's name, so that every path that puts repository content into a
//! prompt gives the same result.

mod assign;
mod entropy;

use std::ops::Range;

/// Shown instead of a credential.
pub const REDACTED: &str = "[REDACTED: looked like a credential]";

/// File names that hold secrets by convention. Examples and templates stay visible.
pub fn is_secret_path(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel).to_ascii_lowercase();
    let template = [".example", ".sample", ".template", ".dist"]
        .iter()
        .any(|s| name.ends_with(s));
    if template {
        return false;
    }
    name == ".env"
        || name.starts_with(".env.")
        || name.ends_with(".env")
        || matches!(
            name.as_str(),
            ".netrc"
                | "_netrc"
                | ".npmrc"
                | ".pypirc"
                | ".git-credentials"
                | ".htpasswd"
                | "credentials"
                | "credentials.json"
                | "secrets.json"
                | "secrets.yaml"
                | "secrets.yml"
                | "secrets.toml"
                | "service-account.json"
        )
        || name.starts_with("id_rsa")
        || name.starts_with("id_dsa")
        || name.starts_with("id_ecdsa")
        || name.starts_with("id_ed25519")
        || [".pem", ".key", ".p12", ".pfx", ".jks", ".keystore", ".kdbx"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Token prefixes of well-known services, each followed by at least `min` token characters.
const TOKEN_PREFIXES: &[(&str, usize)] = &[
    ("ghp_", 20),
    ("gho_", 20),
    ("ghu_", 20),
    ("ghs_", 20),
    ("ghr_", 20),
    ("github_pat_", 20),
    ("glpat-", 16),
    ("xoxb-", 10),
    ("xoxp-", 10),
    ("xoxa-", 10),
    ("sk-ant-", 20),
    ("sk-proj-", 20),
    ("sk_live_", 16),
    ("rk_live_", 16),
    ("AKIA", 16),
    ("ASIA", 16),
    ("AIza", 30),
    ("npm_", 30),
    ("pypi-", 30),
    ("xoxs-", 10),
    ("xapp-", 10),
    ("sk-", 32),
    ("hf_", 30),
    ("shpat_", 30),
    ("shpss_", 30),
    ("dop_v1_", 60),
];

/// `npm_install_reaches_the_registry`, `npm_config_VITE_DEPS`, `sk-button-primary-…`: an
/// identifier made of lower- or upper-case words after a token prefix, not a token (those are random characters).
fn snake_words(body: &str) -> bool {
    let mut segments = body.split(['_', '-']).filter(|s| !s.is_empty());
    let first = segments.next();
    first.is_some()
        && segments.clone().next().is_some()
        && first.into_iter().chain(segments).all(|s| {
            s.bytes().all(|c| c.is_ascii_lowercase()) || s.bytes().all(|c| c.is_ascii_uppercase())
        })
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Replaces private key blocks, well-known token shapes, secret-named assignments and
/// random-looking strings; returns the text and how many were replaced. Line breaks are
/// kept, except inside a private key block, which is replaced whole.
pub fn redact_secrets(text: &str) -> (String, usize) {
    let (text, keys_and_tokens) = redact_keys_and_tokens(text);
    let (text, in_lines) = redact_lines(&text);
    (text, keys_and_tokens + in_lines)
}

/// A JWT (`eyJ…` header, `.`, `eyJ…` payload, `.`, signature) starting at `tail`: its length.
fn jwt_len(tail: &str) -> Option<usize> {
    let segment = |s: &str| {
        s.bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            .count()
    };
    let header = segment(tail);
    let payload_at = header + 1;
    if !tail.starts_with("eyJ") || header < 10 || !tail[header..].starts_with(".eyJ") {
        return None;
    }
    let payload = segment(&tail[payload_at..]);
    let signature_at = payload_at + payload;
    if payload < 10 || !tail[signature_at..].starts_with('.') {
        return None;
    }
    Some(signature_at + 1 + segment(&tail[signature_at + 1..]))
}

fn redact_keys_and_tokens(text: &str) -> (String, usize) {
    let mut count = 0;
    // PEM private keys: the whole block, however it ends (a truncated block is still a key).
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let header_end = rest[start..].find("-----\n").map(|i| start + i);
        let is_private = header_end.is_some_and(|h| rest[start..h].contains("PRIVATE KEY"));
        if !is_private {
            out.push_str(&rest[..start + 11]);
            rest = &rest[start + 11..];
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        count += 1;
        rest = match rest[start..].find("-----END ") {
            Some(end) => {
                let after = start + end + 9;
                match rest[after..].find("-----") {
                    Some(close) => &rest[after + close + 5..],
                    None => "",
                }
            }
            None => "",
        };
    }
    out.push_str(rest);

    // Token shapes, only at a token boundary so ordinary words are left alone.
    let mut result = String::with_capacity(out.len());
    let chars: Vec<(usize, char)> = out.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let boundary = i == 0 || !token_char(chars[i - 1].1);
        if boundary && token_char(c) {
            let tail = &out[at..];
            let hit = TOKEN_PREFIXES
                .iter()
                .find_map(|(prefix, min)| {
                    let body = tail.strip_prefix(prefix)?;
                    let len = body.chars().take_while(|c| token_char(*c)).count();
                    (len >= *min && !snake_words(&body[..len])).then_some(prefix.len() + len)
                })
                .or_else(|| jwt_len(tail));
            if let Some(len) = hit {
                result.push_str(REDACTED);
                count += 1;
                let end = at + len;
                while i < chars.len() && chars[i].0 < end {
                    i += 1;
                }
                continue;
            }
        }
        result.push(c);
        i += 1;
    }
    (result, count)
}

/// A line of key material under a secret key (`private_key: |`, `key = """`): one run of
/// at least 16 base64 or hex characters. Anything else in such a block (a config template,
/// prose) goes through the ordinary line rules instead of being redacted whole.
fn is_blob(s: &str) -> bool {
    s.len() >= 16
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'_' | b'-'))
}

/// Assignments, URL passwords and random-looking strings in one line (without its line
/// break), and what the line leaves open.
fn line_rules(body: &str) -> (Vec<Range<usize>>, assign::Opens) {
    let (mut spans, opens) = assign::find(body);
    for span in assign::url_passwords(body) {
        if !spans
            .iter()
            .any(|s| s.start < span.end && span.start < s.end)
        {
            spans.push(span);
        }
    }
    let random = entropy::find(body, &spans);
    spans.extend(random);
    (spans, opens)
}

/// The line-by-line rules (assignments, URL passwords, entropy), with what a line leaves
/// open for the next: a YAML block or a triple-quoted string under a secret key, or a
/// public PEM block (certificates are public and would otherwise read as random).
fn redact_lines(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len());
    let mut count = 0;
    let mut open = assign::Opens::Nothing;
    let mut public_pem = false;
    for raw in text.split_inclusive('\n') {
        let body = raw.trim_end_matches(['\n', '\r']);
        let ending = &raw[body.len()..];
        let indent = body.len() - body.trim_start().len();
        let mut spans: Vec<Range<usize>> = Vec::new();
        if let assign::Opens::YamlBlock { indent: key } = open
            && !body.trim().is_empty()
            && indent <= key
        {
            open = assign::Opens::Nothing;
        }
        match open {
            assign::Opens::YamlBlock { .. } => {
                let content = indent..body.len();
                if is_blob(&body[content.clone()]) {
                    spans.push(content);
                } else {
                    spans = line_rules(body).0;
                }
            }
            assign::Opens::Triple(close) => {
                let end = body.find(close).unwrap_or(body.len());
                if is_blob(&body[indent..end]) {
                    spans.push(indent..end);
                } else {
                    spans = line_rules(&body[..end]).0;
                }
                if end < body.len() {
                    open = assign::Opens::Nothing;
                }
            }
            _ if public_pem => public_pem = !body.contains("-----END "),
            _ if body.contains("-----BEGIN ") => public_pem = !body.contains("-----END "),
            _ => (spans, open) = line_rules(body),
        }
        spans.sort_by_key(|s| s.start);
        let mut at = 0;
        for span in spans {
            if span.start < at || span.is_empty() {
                continue;
            }
            out.push_str(&body[at..span.start]);
            out.push_str(REDACTED);
            count += 1;
            at = span.end;
        }
        out.push_str(&body[at..]);
        out.push_str(ending);
    }
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_recognised_and_templates_are_not() {
        for p in [
            ".env",
            "config/.env.production",
            "prod.env",
            "deploy/id_rsa",
            "keys/id_ed25519.pub",
            "certs/server.key",
            "tls/cert.pem",
            ".npmrc",
            "home/.netrc",
            "gcp/service-account.json",
            "secrets.yaml",
        ] {
            assert!(is_secret_path(p), "{p}");
        }
        for p in [
            ".env.example",
            "config/.env.sample",
            "src/env.rs",
            "README.md",
            "src/keys.rs",
            "docs/secrets.md",
        ] {
            assert!(!is_secret_path(p), "{p}");
        }
    }

    #[test]
    fn keys_and_tokens_are_redacted_words_are_not() {
        let text = "token = \"ghp_abcdefghijklmnopqrstuvwxyz0123\"\n\
                    aws = AKIAIOSFODNN7EXAMPLE\n\
                    key: sk-ant-api03-abcdefghijklmnopqrstuvwx\n\
                    -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                    the word ghp_ alone, ASIA as a continent, skeleton keys.\n";
        let (out, n) = redact_secrets(text);
        assert_eq!(n, 4, "{out}");
        for secret in [
            "ghp_abcdefghijklmnopqrstuvwxyz0123",
            "AKIAIOSFODNN7EXAMPLE",
            "sk-ant-api03",
            "b3BlbnNzaC1rZXktdjEAAAA",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("-----BEGIN CERTIFICATE-----\nMIIB"), "{out}");
        assert!(
            out.contains("the word ghp_ alone, ASIA as a continent"),
            "{out}"
        );
        // A private key cut off by truncation is still removed.
        let (out, n) = redact_secrets("x\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA");
        assert_eq!(
            (out.as_str(), n),
            ("x\n[REDACTED: looked like a credential]", 1)
        );
        // Non-ASCII text around a token survives intact.
        let (out, _) = redact_secrets("clé: glpat-abcdefghijklmnopqrst ✓");
        assert_eq!(out, format!("clé: {REDACTED} ✓"));
    }

    fn redacted(text: &str) -> String {
        redact_secrets(text).0
    }

    #[test]
    fn assigned_secrets_lose_their_value_and_keep_their_key() {
        let r = REDACTED;
        for (input, expected) in [
            (
                r#"DB_PASSWORD = "hunter2-x""#,
                format!(r#"DB_PASSWORD = "{r}""#),
            ),
            (
                "dbPassword := \"s3cret-go\"",
                format!("dbPassword := \"{r}\""),
            ),
            (
                r#"  "api-key": "ak-9d8s7f","#,
                format!(r#"  "api-key": "{r}","#),
            ),
            (
                "export API_TOKEN=tok-81hd7s",
                format!("export API_TOKEN={r}"),
            ),
            (
                "  password: hunter2-yaml  # prod",
                format!("  password: {r}  # prod"),
            ),
            (
                "'password' => 'ph9-secret',",
                format!("'password' => '{r}',"),
            ),
            (
                "<password>x9-Pa55!</password>",
                format!("<password>{r}</password>"),
            ),
            (
                "const API_KEY: &str = \"r8Kq2LmZ7vX1\";",
                format!("const API_KEY: &str = \"{r}\";"),
            ),
            (
                "Authorization: \"Bearer 7f3kq9xv2m\"",
                format!("Authorization: \"Bearer {r}\""),
            ),
            (
                "url = \"postgres://app:pg-Pa55@db/app\"",
                format!("url = \"postgres://app:{r}@db/app\""),
            ),
        ] {
            assert_eq!(redacted(input), expected, "{input}");
        }
        // The model needs real code: references, types, placeholders and labels stay.
        for unchanged in [
            "password = os.environ[\"DB_PASSWORD\"]",
            "const token = process.env.API_TOKEN;",
            "let password = env!(\"DB_PASSWORD\");",
            "password = user.password",
            "    pub token: String,",
            "fn connect(password: &str) -> Result<Option<Credential>, Error> {",
            "API_TOKEN=changeme",
            "token: ${API_TOKEN}",
            "api_key = \"<your-api-key>\"",
            "secret = \"\"",
            "auth = \"basic\"",
            "{\"password\": \"Passwort\", \"token\": \"Jeton\"}",
            "PASSWORD_PROMPT = \"Enter your password: \"",
            "if token == \"s3cret-compare\" {",
            "authkey=self._authkey, exposed=exp",
            "url = \"https://{user}:{pass}@host/r.git\"",
        ] {
            assert_eq!(redacted(unchanged), unchanged);
        }
    }

    #[test]
    fn key_material_under_a_secret_key_is_redacted_line_by_line() {
        let text = "tls:\n  private_key: |\n    MIIEvQIBADANBgkqhkiG9w0BAQEF\n    \
                    k3Jd8sL2pQ9vX7mZ1nB4cR6t\n  cert_file: /etc/tls/cert.pem\n\
                    signing_key = \"\"\"\nc3VwZXItc2VjcmV0LWtleS1t\n\"\"\"\nport = 8080\n";
        let out = redacted(text);
        let r = REDACTED;
        assert_eq!(
            out,
            format!(
                "tls:\n  private_key: |\n    {r}\n    {r}\n  cert_file: /etc/tls/cert.pem\n\
                 signing_key = \"\"\"\n{r}\n\"\"\"\nport = 8080\n"
            )
        );
        // A template under a secret-named constant is text, not key material.
        let template =
            "PYPIRC_PASSWORD = \"\"\"\\\n[distutils]\nindex-servers =\n    server1\n\"\"\"\n";
        assert_eq!(redacted(template), template);
    }

    #[test]
    fn random_strings_go_unless_the_context_says_what_they_are() {
        let r = REDACTED;
        for (input, expected) in [
            (
                "WEBHOOK_SIGNING = \"q8Zr1vT4xK9mB2nW7pL5sD3fG6hJ0cV8\"",
                format!("WEBHOOK_SIGNING = \"{r}\""),
            ),
            (
                "seed: 8f14e45fceea167a5a36dedd4bea2543",
                format!("seed: {r}"),
            ),
            (
                "jwt = \"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w\"",
                format!("jwt = \"{r}\""),
            ),
            // Characters wider than a byte right before a key or a value.
            (
                "💥seed: q8Zr1vT4xK9mB2nW7pL5sD3fG6hJ0cV8",
                format!("💥seed: {r}"),
            ),
            (
                "seed:\u{a0}q8Zr1vT4xK9mB2nW7pL5sD3fG6hJ0cV8",
                format!("seed:\u{a0}{r}"),
            ),
        ] {
            assert_eq!(redacted(input), expected, "{input}");
        }
        for unchanged in [
            "checksum = \"5f0e2c6ed6606019b4e29e69dbaba95b11854410e5347d525002456dbbb786b6\"",
            "  \"integrity\": \"sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXPs17LhbZVGedAJv8XZ1tvj5FvSg==\"",
            "github.com/google/uuid v1.6.0 h1:NIvaJDMOsjHA8n1jAhLSgzrAzy1Hgr+hNrb57e+94F0=",
            "      - uses: actions/checkout@b4ffde65f46336ab88eb53be808477a3936bae11",
            "EMPTY_SHA256 = \"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"",
            "id = \"550e8400-e29b-41d4-a716-446655440000\"",
            "ALPHABET = \"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\"",
            "pub static kCFAbsoluteTimeIntervalSince1904: CFTimeInterval;",
            "export BAML_CLIENT_PROVIDER=anthropic BAML_CLIENT_MODEL=claude-sonnet-4-5",
            "  \"ETag\": \"\\\"6805f2cfc46c0f04559748bb039d69ae\\\"\",",
        ] {
            assert_eq!(redacted(unchanged), unchanged);
        }
        // Certificates are public: their lines stay although they read as random.
        let cert = "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIEAgAAuTANBgkqhkiG9w0BAQUFADBaMQswCQYDVQQGEwJJ\n-----END CERTIFICATE-----\n";
        assert_eq!(redacted(cert), cert);
    }

    #[test]
    fn words_after_a_token_prefix_are_an_identifier_not_a_token() {
        let line = "async fn npm_install_reaches_the_npm_registry_through_the_proxy() {";
        assert_eq!(redacted(line), line);
        let env = "process.env.npm_config_VITE_NODE_DEPS_MODULE_DIRECTORIES";
        assert_eq!(redacted(env), env);
        let token = "NPM_TOKEN=npm_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8";
        assert_eq!(redacted(token), format!("NPM_TOKEN={REDACTED}"));
    }
}
