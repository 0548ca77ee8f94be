//! A repository credential in clear, as it travels from the API to the encrypted store and
//! from the store to the git layer. Debug never prints a secret; nothing in an event or a
//! projection is ever built from this type.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Credential {
    Token {
        token: String,
        username: Option<String>,
    },
    Basic {
        username: String,
        password: String,
    },
    SshKey {
        private_key: String,
    },
    Oauth {
        token: String,
        refresh_token: Option<String>,
    },
}

impl Credential {
    pub fn type_name(&self) -> &'static str {
        match self {
            Credential::Token { .. } => "TOKEN",
            Credential::Basic { .. } => "BASIC",
            Credential::SshKey { .. } => "SSH_KEY",
            Credential::Oauth { .. } => "OAUTH",
        }
    }

    /// Every secret string in it, for redaction of anything that might echo it back.
    pub fn secrets(&self) -> Vec<&str> {
        match self {
            Credential::Token { token, .. } => vec![token],
            Credential::Basic { password, .. } => vec![password],
            Credential::SshKey { private_key } => vec![private_key],
            Credential::Oauth {
                token,
                refresh_token,
            } => {
                let mut v = vec![token.as_str()];
                if let Some(r) = refresh_token {
                    v.push(r);
                }
                v
            }
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential::{}(<redacted>)", self.type_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_secrets() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.secrets(), vec!["hunter2"]);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Credential>(&json).unwrap(), c);
    }
}
