//! Keeping a repository's own secrets out of prompts. A repository may hold a `.env`, a
//! private key or a token pasted into a config file; none of that may travel to an LLM
//! provider. Files whose names say "secret" are never shown, and in every other file the
//! shapes of well-known credentials are replaced by a marker before a prompt sees them.

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
];

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// Replaces private key blocks and well-known token shapes; returns the text and how many
/// were replaced.
pub fn redact_secrets(text: &str) -> (String, usize) {
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
            let hit = TOKEN_PREFIXES.iter().find_map(|(prefix, min)| {
                let body = tail.strip_prefix(prefix)?;
                let len = body.chars().take_while(|c| token_char(*c)).count();
                (len >= *min).then_some(prefix.len() + len)
            });
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
}
