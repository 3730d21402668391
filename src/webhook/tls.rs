//! The serving certificate, re-read when its files change.
//!
//! cert-manager (or the chart) replaces the Secret's files in place; the
//! kubelet swaps a symlink. New TLS handshakes get the new certificate as
//! soon as both files load and match; connections already open keep the
//! session they negotiated, so nothing is dropped. A half-written or
//! mismatched pair keeps the previous certificate in service.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

use super::WebhookError;

/// The certificate every new handshake is given.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert", &self.cert_path)
            .field("key", &self.key_path)
            .finish()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| Arc::clone(&c))
    }
}

/// What a file looked like when last read (inode, mtime, size; through
/// symlinks, as the kubelet swaps them): any change means reload.
type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.ino(), m.modified().ok()?, m.len())))
}

impl ReloadingCert {
    /// Loads the pair now; fails if it does not load.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Arc<Self>, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let current = load_pair(cert_path, key_path, &provider)?;
        Ok(Arc::new(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: RwLock::new(Arc::new(current)),
        }))
    }

    /// A TLS config (HTTP/1.1) that always serves the current certificate.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, WebhookError> {
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Checks the files every `interval` and swaps in a pair that changed
    /// and loads; runs until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut seen = (stamp(&self.cert_path), stamp(&self.key_path));
        let mut failed: Option<(Stamp, Stamp)> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = (stamp(&self.cert_path), stamp(&self.key_path));
            if now == seen {
                continue;
            }
            match load_pair(&self.cert_path, &self.key_path, &self.provider) {
                Ok(pair) => {
                    if let Ok(mut current) = self.current.write() {
                        *current = Arc::new(pair);
                    }
                    seen = now;
                    failed = None;
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                // Retried on every tick (a rotation may be half done); said once.
                Err(e) if failed != Some(now) => {
                    failed = Some(now);
                    tracing::warn!(error = %e, "new serving certificate does not load; keeping the current one");
                }
                Err(_) => {}
            }
        }
    }
}

fn load_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, WebhookError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(WebhookError::Tls(format!(
            "{}: no certificate in it",
            cert_path.display()
        )));
    }
    // The key file's contents never reach an error message.
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|_| {
        WebhookError::Tls(format!("{}: no PEM private key in it", key_path.display()))
    })?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        WebhookError::Tls(format!(
            "{} and {} do not make a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}
