//! TLS for HTTP and the PostgreSQL wire protocol (`[tls]`), with rustls on aws-lc-rs: TLS 1.3
//! preferred, 1.2 the minimum (`tls.min_version = "1.3"` drops it; 1.1 and older are never
//! spoken), the certificate chain and key from PEM files, optional client certificates (mTLS)
//! against `tls.client_ca`. `moat init --self-signed` writes a development certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use moat_core::MoatError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::TlsConfig;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Acceptors for the two listeners (they differ in ALPN only).
#[derive(Clone)]
pub struct Tls {
    pub http: TlsAcceptor,
    pub pg: TlsAcceptor,
    /// Whether clients must present a certificate.
    pub mutual: bool,
}

fn tls_error(message: String) -> MoatError {
    MoatError::invalid("tls_config", message)
}

fn resolve(root: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() { p.to_path_buf() } else { root.join(p) }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, MoatError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("cannot read certificates from {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_error(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

impl Tls {
    /// The acceptors `cfg` describes (`None` when TLS is off); relative paths are inside `root`.
    pub fn from_config(cfg: &TlsConfig, root: &Path) -> Result<Option<Tls>, MoatError> {
        if !cfg.enabled() {
            return Ok(None);
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version.as_str() {
            "1.3" => &[&rustls::version::TLS13],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let certs = certificates(&resolve(root, &cfg.cert))?;
        let key_path = resolve(root, &cfg.key);
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .map_err(|e| tls_error(format!("cannot read a private key from {}: {e}", key_path.display())))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| tls_error(format!("TLS versions: {e}")))?;
        let mutual = !cfg.client_ca.is_empty();
        let builder = if mutual {
            let mut roots = rustls::RootCertStore::empty();
            for ca in certificates(&resolve(root, &cfg.client_ca))? {
                roots.add(ca).map_err(|e| tls_error(format!("tls.client_ca: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(format!("tls.client_ca: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| tls_error(format!("tls.cert and tls.key do not match: {e}")))?;
        let with_alpn = |alpn: &[u8]| {
            let mut c = config.clone();
            c.alpn_protocols = vec![alpn.to_vec()];
            TlsAcceptor::from(Arc::new(c))
        };
        Ok(Some(Tls { http: with_alpn(b"http/1.1"), pg: with_alpn(b"postgresql"), mutual }))
    }
}

/// An HTTPS listener for `axum::serve`: TCP connections are accepted at once and their
/// handshakes run concurrently (a slow or failing client holds up nobody); only connections
/// whose handshake completed come out of [`axum::serve::Listener::accept`].
pub struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let (socket, addr) = match listener.accept().await {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { local, ready })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept loop ended (it never does while the listener lives): wait forever, as
            // a listener with no more clients would.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Writes a self-signed development certificate for `localhost`, `127.0.0.1` and `::1` into
/// `<root>/tls/` (the key owner-only) and returns the paths of certificate and key, relative
/// to `root`.
pub fn write_self_signed(root: &Path) -> Result<(String, String), MoatError> {
    let dir = root.join("tls");
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    let relative = ("tls/cert.pem".to_owned(), "tls/key.pem".to_owned());
    if cert_path.exists() && key_path.exists() {
        return Ok(relative);
    }
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let cert = rcgen::generate_simple_self_signed(names).map_err(|e| tls_error(format!("cannot make a certificate: {e}")))?;
    crate::bootstrap::create_private_dir(&dir)?;
    let _ = std::fs::remove_file(&key_path);
    crate::bootstrap::write_secret_file(&key_path, cert.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.cert.pem()).map_err(|e| crate::bootstrap::io_err("write", &cert_path, e))?;
    Ok(relative)
}
