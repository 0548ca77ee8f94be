//! Who the forge HTTP client trusts: the platform's roots (rustls-platform-verifier, which on
//! Linux reads the system CA store) plus, optionally, extra CA certificates an operator gives
//! for a self-hosted forge behind a private CA. Verification is never switched off.

use crate::ForgeError;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Extra CA certificates trusted on top of the platform's roots.
#[derive(Clone, Default)]
pub struct ExtraRoots {
    certs: Arc<Vec<reqwest::Certificate>>,
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExtraRoots")
            .field("certificates", &self.certs.len())
            .finish()
    }
}

impl ExtraRoots {
    /// No extra roots: the platform's only.
    pub fn none() -> ExtraRoots {
        ExtraRoots::default()
    }

    /// Every `CERTIFICATE` block of a PEM bundle. A bundle without any is refused, since an
    /// operator who configured one expects it to count.
    pub fn from_pem(pem: &[u8]) -> Result<ExtraRoots, ForgeError> {
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
            ForgeError::InvalidInput(format!("the extra CA bundle is not valid PEM: {e}"))
        })?;
        if certs.is_empty() {
            return Err(ForgeError::InvalidInput(
                "the extra CA bundle holds no PEM CERTIFICATE".into(),
            ));
        }
        Ok(ExtraRoots {
            certs: Arc::new(certs),
        })
    }

    /// [`ExtraRoots::from_pem`] of a file's contents.
    pub fn from_pem_file(path: &Path) -> Result<ExtraRoots, ForgeError> {
        let pem = std::fs::read(path).map_err(|e| {
            ForgeError::InvalidInput(format!("reading the CA file {}: {e}", path.display()))
        })?;
        ExtraRoots::from_pem(&pem).map_err(|e| match e {
            ForgeError::InvalidInput(msg) => {
                ForgeError::InvalidInput(format!("{}: {msg}", path.display()))
            }
            other => other,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    pub(crate) fn apply(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        if self.certs.is_empty() {
            return builder;
        }
        // Merge, not replace: the public forges must keep working next to a private one.
        builder.tls_certs_merge(self.certs.iter().cloned())
    }
}

static DEFAULT_ROOTS: OnceLock<ExtraRoots> = OnceLock::new();

/// Sets the extra roots every [`crate::forge_for`] client trusts, once per process (the
/// `serve` start-up, from `BUILDER_EXTRA_CA_FILE`). A process-wide setting keeps the
/// operator's trust decision in one place instead of threading it through every caller.
pub fn install_extra_roots(roots: ExtraRoots) -> Result<(), ForgeError> {
    DEFAULT_ROOTS.set(roots).map_err(|_| {
        ForgeError::InvalidInput("the forge client's extra CA roots were already set".into())
    })
}

/// The roots set with [`install_extra_roots`], or none.
pub(crate) fn default_roots() -> ExtraRoots {
    DEFAULT_ROOTS.get().cloned().unwrap_or_default()
}

/// Whether a failed request's error chain says the server's certificate was refused (by
/// rustls' verifier), which no retry can fix.
pub(crate) fn is_certificate_error(chain: &str) -> bool {
    let lower = chain.to_ascii_lowercase();
    [
        "invalid peer certificate",
        "unknownissuer",
        "notvalidforname",
        "certificate expired",
        "certificate verify failed",
    ]
    .iter()
    .any(|n| lower.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bundles_without_certificates() {
        assert!(ExtraRoots::from_pem(b"").is_err());
        assert!(ExtraRoots::from_pem(b"not pem at all").is_err());
        let err = ExtraRoots::from_pem_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        assert!(ExtraRoots::none().is_empty());
    }

    #[test]
    fn recognises_certificate_failures() {
        assert!(is_certificate_error(
            "client error (Connect): invalid peer certificate: UnknownIssuer"
        ));
        assert!(!is_certificate_error("connection refused"));
    }
}
