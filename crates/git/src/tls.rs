//! Extra trust for git's https: an operator's private CA is added to — never substituted for
//! — the platform's roots, in one bundle file that every network invocation gets as
//! `GIT_SSL_CAINFO`. Verification itself is never weakened (`http.sslVerify` is forced on).

use crate::GitError;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where distributions keep their CA bundle (the list openssl-probe searches).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/usr/local/share/certs/ca-root-nss.crt",
];

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// The `CERTIFICATE` blocks of a PEM text, each ending in a newline. Anything else (keys,
/// comments) is left out, so a private key pasted by mistake never spreads further.
fn certificates(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        out.push(format!("{}\n", &rest[start..end]));
        rest = &rest[end..];
    }
    out
}

/// The bundle git would have used without us: the operator's `GIT_SSL_CAINFO` or
/// `SSL_CERT_FILE` (both passed through to git), else the distribution's.
fn base_bundle() -> Option<PathBuf> {
    ["GIT_SSL_CAINFO", "SSL_CERT_FILE"]
        .iter()
        .filter_map(std::env::var_os)
        .map(PathBuf::from)
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from))
        .find(|p| p.is_file())
}

/// Writes `<private_dir>/ca-bundle.pem`: the platform's bundle followed by the certificates
/// of `extra_ca_file`. Refuses a file without any certificate.
pub(crate) fn write_bundle(private_dir: &Path, extra_ca_file: &Path) -> Result<PathBuf, GitError> {
    let shown = extra_ca_file.display();
    let extra = std::fs::read_to_string(extra_ca_file)
        .map_err(GitError::io(format!("reading the CA file {shown}")))?;
    let extra = certificates(&extra);
    if extra.is_empty() {
        return Err(GitError::InvalidInput(format!(
            "the CA file {shown} holds no PEM CERTIFICATE"
        )));
    }
    let mut bundle = String::new();
    match base_bundle() {
        Some(base) => {
            let text = std::fs::read_to_string(&base)
                .map_err(GitError::io(format!("reading {}", base.display())))?;
            for cert in certificates(&text) {
                bundle.push_str(&cert);
            }
        }
        None => tracing::warn!(
            "no system CA bundle found: git's https will trust only the extra CA file"
        ),
    }
    for cert in extra {
        bundle.push_str(&cert);
    }
    let path = private_dir.join("ca-bundle.pem");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(GitError::io("creating the CA bundle"))?;
    file.write_all(bundle.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(GitError::io("writing the CA bundle"))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_certificate_blocks() {
        let text = format!(
            "# comment\n{BEGIN}\nAAA\n{END}\n-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n{BEGIN}\nBBB\n{END}"
        );
        let certs = certificates(&text);
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().all(|c| !c.contains("KEY")));
        assert!(certificates("nothing here").is_empty());
    }

    #[test]
    fn refuses_a_file_without_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        let err = write_bundle(dir.path(), &bad).unwrap_err();
        assert!(matches!(err, GitError::InvalidInput(_)), "{err}");
        assert!(write_bundle(dir.path(), &dir.path().join("missing.pem")).is_err());
    }
}
