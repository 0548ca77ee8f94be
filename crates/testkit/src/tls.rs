//! TLS for test servers: a throwaway CA and a server certificate for `localhost` and
//! `127.0.0.1`, generated at test time (rcgen), and a listener that lets `axum::serve`
//! speak https with it (rustls). Nothing here is trusted by anyone who does not load
//! [`TestCa::ca_pem`] on purpose.

use crate::{Result, TestkitError, io_err};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A certificate authority made for one test, and the loopback server certificate it signed.
pub struct TestCa {
    ca_pem: String,
    server_config: Arc<rustls::ServerConfig>,
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> TestkitError {
    TestkitError::InvalidInput(format!("{what}: {e}"))
}

impl TestCa {
    /// A fresh CA (`CN=builder test CA`) and a server certificate for `localhost` and
    /// `127.0.0.1` signed by it.
    pub fn new() -> Result<TestCa> {
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| tls_err("CA params", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "builder test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().map_err(|e| tls_err("CA key", e))?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)
            .map_err(|e| tls_err("CA certificate", e))?;

        // rcgen turns the IP literal into an IP-address SAN, which is what clients verify
        // for https://127.0.0.1 URLs.
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .map_err(|e| tls_err("server params", e))?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().map_err(|e| tls_err("server key", e))?;
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca)
            .map_err(|e| tls_err("server certificate", e))?;

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_err("TLS versions", e))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls_err("server TLS config", e))?;
        // git's libcurl and reqwest both speak HTTP/1.1 here; the servers are HTTP/1.1 too.
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TestCa {
            ca_pem: ca.pem(),
            server_config: Arc::new(server_config),
        })
    }

    /// The CA certificate, PEM: what a client must trust to accept this CA's servers.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate to `dir/name` and returns the path.
    pub fn write_ca_file(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, &self.ca_pem)
            .map_err(io_err(format!("writing {}", path.display())))?;
        Ok(path)
    }

    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server_config.clone())
    }
}

/// A TCP listener that completes a TLS handshake before handing a connection to
/// `axum::serve`. A failed handshake (a client that does not trust the CA hangs up) is
/// dropped and the next connection accepted, so one refusing client never stops the server.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    /// Serves TLS with `ca`'s server certificate on an already bound listener.
    pub fn new(tcp: TcpListener, ca: &TestCa) -> TlsListener {
        TlsListener::with_acceptor(tcp, ca.acceptor())
    }

    pub(crate) fn with_acceptor(tcp: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        TlsListener { tcp, acceptor }
    }

    /// Binds `127.0.0.1:0`.
    pub async fn bind(ca: &TestCa) -> Result<TlsListener> {
        let tcp = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io_err("binding 127.0.0.1:0"))?;
        Ok(TlsListener::new(tcp, ca))
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                // e.g. EMFILE: back off briefly instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            // Bounded, so a client that connects and says nothing cannot stall the server.
            let handshake =
                tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(stream)).await;
            if let Ok(Ok(tls)) = handshake {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_a_ca_and_a_server_config() {
        let ca = TestCa::new().unwrap();
        assert!(ca.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let other = TestCa::new().unwrap();
        assert_ne!(ca.ca_pem(), other.ca_pem(), "each CA is fresh");
        let dir = tempfile::tempdir().unwrap();
        let path = ca.write_ca_file(dir.path(), "ca.pem").unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), ca.ca_pem());
    }
}
