//! Credentials for remotes, and redaction of their secrets from any text.

use crate::GitError;
use crate::url::{is_plain_http_off_loopback, redact_url, strip_userinfo};
use base64::Engine;
use std::fmt;

/// How to authenticate to a remote. `Debug` never prints a secret.
#[derive(Clone, PartialEq, Eq)]
pub enum GitCredential {
    None,
    /// An access token over https; the username defaults to `x-access-token`.
    Token {
        token: String,
        username: Option<String>,
    },
    /// Username and password over https.
    Basic {
        username: String,
        password: String,
    },
    /// A private key (OpenSSH or PEM text) for ssh remotes.
    SshKey {
        private_key: String,
    },
}

pub(crate) const DEFAULT_TOKEN_USERNAME: &str = "x-access-token";
const REDACTED: &str = "[REDACTED]";

impl fmt::Debug for GitCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GitCredential::None => f.write_str("None"),
            GitCredential::Token { username, .. } => f
                .debug_struct("Token")
                .field("token", &REDACTED)
                .field("username", username)
                .finish(),
            GitCredential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &REDACTED)
                .finish(),
            GitCredential::SshKey { .. } => f
                .debug_struct("SshKey")
                .field("private_key", &REDACTED)
                .finish(),
        }
    }
}

impl GitCredential {
    /// The username/password pair an https remote gets through askpass, if any.
    pub(crate) fn http_pair(&self) -> Option<(&str, &str)> {
        match self {
            GitCredential::Token { token, username } => Some((
                username.as_deref().unwrap_or(DEFAULT_TOKEN_USERNAME),
                token.as_str(),
            )),
            GitCredential::Basic { username, password } => {
                Some((username.as_str(), password.as_str()))
            }
            GitCredential::None | GitCredential::SshKey { .. } => None,
        }
    }

    /// Every form in which this credential's secrets could show up in git's output: as
    /// given, URL-encoded, and as the base64 of an HTTP basic `Authorization` header.
    pub(crate) fn secret_forms(&self) -> Vec<String> {
        let mut forms = Vec::new();
        match self {
            GitCredential::None => {}
            GitCredential::SshKey { private_key } => {
                forms.push(private_key.trim().to_owned());
                // Any single line of the key is secret too (multi-line text gets split).
                forms.extend(
                    private_key
                        .lines()
                        .map(str::trim)
                        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
                        .map(str::to_owned),
                );
            }
            GitCredential::Token { .. } | GitCredential::Basic { .. } => {
                if let Some((user, secret)) = self.http_pair() {
                    forms.push(secret.to_owned());
                    forms.push(percent_encode(secret));
                    forms.push(
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{user}:{secret}")),
                    );
                }
            }
        }
        forms.retain(|s| !s.is_empty());
        forms.sort_by_key(|s| std::cmp::Reverse(s.len()));
        forms.dedup();
        forms
    }
}

/// Refuses to hand a password or token to git for a plain `http://` remote off this
/// machine: git would send it unencrypted. The API refuses such a registration already;
/// this holds for every caller and for repositories stored before that check existed.
pub(crate) fn check_sent_encrypted(url: &str, cred: &GitCredential) -> Result<(), GitError> {
    if cred.http_pair().is_some() && is_plain_http_off_loopback(url) {
        return Err(GitError::InvalidInput(format!(
            "refusing to send a credential unencrypted to {}: use https:// (plain http:// only to localhost, 127.0.0.0/8 or [::1])",
            redact_url(url)
        )));
    }
    Ok(())
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `text` with every occurrence of each secret replaced by `[REDACTED]` and the userinfo of
/// every URL removed. Empty secrets are ignored; longer secrets are replaced first so one
/// secret containing another is not half-revealed.
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut sorted: Vec<&str> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for secret in sorted {
        if out.contains(secret) {
            out = out.replace(secret, REDACTED);
        }
    }
    strip_userinfo(&out)
}

/// [`redact`] with owned secrets, as held by a running operation.
pub(crate) fn redact_owned(text: &str, secrets: &[String]) -> String {
    let refs: Vec<&str> = secrets.iter().map(String::as_str).collect();
    redact(text, &refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_every_secret() {
        let creds = [
            GitCredential::Token {
                token: "tok-SECRET-1".into(),
                username: Some("bot".into()),
            },
            GitCredential::Basic {
                username: "alice".into(),
                password: "pw-SECRET-2".into(),
            },
            GitCredential::SshKey {
                private_key: "-----BEGIN KEY-----\nKEY-SECRET-3\n-----END KEY-----\n".into(),
            },
        ];
        for cred in &creds {
            let shown = format!("{cred:?} {cred:#?}");
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains(REDACTED), "{shown}");
        }
        assert!(format!("{:?}", creds[0]).contains("bot"));
    }

    #[test]
    fn redact_replaces_secrets_and_userinfo() {
        let text = "token abc123 and abc1234 at https://u:abc123@host/r";
        let out = redact(text, &["abc123", "abc1234", ""]);
        assert_eq!(
            out, "token [REDACTED] and [REDACTED] at https://host/r",
            "{out}"
        );
        assert_eq!(redact("nothing", &[]), "nothing");
    }

    #[test]
    fn passwords_and_tokens_only_go_encrypted_or_to_this_machine() {
        let token = GitCredential::Token {
            token: "tok-SECRET".into(),
            username: None,
        };
        let basic = GitCredential::Basic {
            username: "al".into(),
            password: "pw-SECRET".into(),
        };
        for cred in [&token, &basic] {
            let err = check_sent_encrypted("http://git.example/r.git", cred).unwrap_err();
            assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
            assert!(err.to_string().contains("https://"), "{err}");
            assert!(!err.to_string().contains("SECRET"), "{err}");
            assert!(check_sent_encrypted("https://git.example/r.git", cred).is_ok());
            assert!(check_sent_encrypted("http://127.0.0.1:9/r.git", cred).is_ok());
        }
        let key = GitCredential::SshKey {
            private_key: "k".into(),
        };
        for cred in [&GitCredential::None, &key] {
            assert!(check_sent_encrypted("http://git.example/r.git", cred).is_ok());
        }
    }

    #[test]
    fn secret_forms_cover_encodings() {
        let cred = GitCredential::Basic {
            username: "al".into(),
            password: "p@ss word".into(),
        };
        let forms = cred.secret_forms();
        assert!(forms.contains(&"p@ss word".to_owned()));
        assert!(forms.contains(&"p%40ss%20word".to_owned()));
        let header = base64::engine::general_purpose::STANDARD.encode("al:p@ss word");
        assert!(forms.contains(&header));
        let token = GitCredential::Token {
            token: "t0k".into(),
            username: None,
        };
        let header = base64::engine::general_purpose::STANDARD.encode("x-access-token:t0k");
        assert!(token.secret_forms().contains(&header));
        assert!(GitCredential::None.secret_forms().is_empty());
    }
}
