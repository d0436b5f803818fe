//! TLS for the protocol's connections, with rustls (and its `ring`
//! cryptography): the server's certificate chain and key read once from PEM
//! files (`wasmux serve --tls-cert --tls-key`), and the client side of
//! `wasmux send --tls` and `wasmux bench --tls`, which trusts the system's
//! roots or the CA certificates of a PEM file (`--ca`).
//!
//! The framing is the same over TLS: [`crate::connection`] reads and writes
//! messages over any stream. The guide suggests Python's `ssl` module for
//! the same; `examples/python/app_client.py --tls` does that.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector, client};

use crate::net;

/// Makes ring the process's default rustls provider, for the clients that
/// build their own configuration from it (oci-client's HTTPS, through
/// reqwest built without a provider of its own). Idempotent.
pub fn install_crypto_provider() {
    // An error means a provider is installed already: ring, by an earlier
    // call (it is the only one this program is built with).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS, from a PEM file of its certificate chain (leaf first)
/// and one of its private key.
pub fn acceptor(cert: &Path, key_file: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = read_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("cannot read a private key from {}", key_file.display()))?;
    warn_if_others_can_read(key_file);
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and the key do not go together")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A client's TLS for the server at `addr` (`HOST:PORT`): the certificate
/// must be valid for HOST (a name or an IP address) and signed by a CA of
/// the `ca` PEM file, or by one the system trusts.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("name", &self.name).finish_non_exhaustive()
    }
}

impl TlsClient {
    pub fn new(addr: &str, ca: Option<&Path>) -> anyhow::Result<Self> {
        let host = net::host(addr)?;
        let name = ServerName::try_from(host.to_owned())
            .with_context(|| format!("\"{host}\" is neither a host name nor an IP address, so no certificate can be checked against it"))?;
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                for certificate in read_certificates(path)? {
                    roots.add(certificate).with_context(|| format!("{} holds a certificate that cannot be a CA", path.display()))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    bail!("no trusted CA certificates found on this system; give the server's CA with --ca FILE");
                }
            }
        }
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name })
    }

    /// Runs the TLS handshake over a connected `stream`. A server that
    /// answers without TLS (wasmux says at once that a handshake is not
    /// its protocol) is said to be one, rather than as rustls' "corrupt
    /// message".
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<client::TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), stream).await.map_err(|e| {
            let plain = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
            if matches!(plain, Some(rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType))) {
                std::io::Error::new(e.kind(), "the server answered without TLS: it does not serve TLS on this address")
            } else {
                e
            }
        })
    }
}

/// Both ends of TLS for `localhost`, for unit tests that run the handshake
/// over a stream of their own: the server's self-signed certificate is the
/// client's only root.
#[cfg(test)]
pub(crate) fn test_ends() -> (TlsAcceptor, TlsConnector, ServerName<'static>) {
    let key = rcgen::KeyPair::generate().expect("a key");
    let certificate = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).and_then(|params| params.self_signed(&key)).expect("a certificate");
    let mut roots = RootCertStore::empty();
    roots.add(certificate.der().clone()).expect("a root");
    let key = PrivateKeyDer::try_from(key.serialize_der()).expect("a private key");
    let server = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(vec![certificate.der().clone()], key))
        .expect("the server's configuration");
    let client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("a server name");
    (TlsAcceptor::from(Arc::new(server)), TlsConnector::from(Arc::new(client)), name)
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("cannot read certificates from {}", path.display()))?;
    if certificates.is_empty() {
        bail!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display());
    }
    Ok(certificates)
}

/// A private key that other users can read is no longer private.
fn warn_if_others_can_read(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(metadata) = std::fs::metadata(path) {
            let mode = metadata.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!("the TLS key {} can be read by other users (mode {mode:o}); chmod 600 it", path.display());
            }
        }
    }
}
