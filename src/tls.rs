//! Native HTTPS and WSS with rustls: the certificate chain and private key from
//! PEM files, re-read when they change on disk (a renewed certificate takes effect
//! without a restart).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::default_provider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the files are checked for a change.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(30);

/// The certificate and key files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// A certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("the certificate and key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The server side of TLS: a rustls config whose certificate follows the files.
#[derive(Debug)]
pub struct Tls {
    resolver: Arc<Reloading>,
    config: rustls::ServerConfig,
}

impl Tls {
    /// Loads the files (failing now if they are unusable) and builds the config:
    /// TLS 1.2 and 1.3, HTTP/1.1 over ALPN, no client certificates.
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let resolver = Arc::new(Reloading::new(files.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self { resolver, config })
    }

    /// The rustls config for the listener.
    pub fn server_config(&self) -> rustls::ServerConfig {
        self.config.clone()
    }

    /// Re-reads the files every `interval` on a background thread, for as long as
    /// the process lives. A pair that fails to load is logged and the previous one
    /// kept.
    pub fn watch(&self, interval: Duration) {
        let resolver = Arc::downgrade(&self.resolver);
        let spawned = std::thread::Builder::new().name("opsync-tls-reload".into()).spawn(move || {
            loop {
                std::thread::sleep(interval);
                let Some(resolver) = resolver.upgrade() else { return };
                match resolver.reload_if_changed() {
                    Ok(true) => tracing::info!(cert = %resolver.files.cert.display(), "TLS certificate reloaded"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the current one"),
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the TLS reload thread; certificates load only at start");
        }
    }

    /// Reloads now if a file changed; whether it did (for tests and SIGHUP-style use).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        self.resolver.reload_if_changed()
    }
}

/// The current certificate, replaced when the files' modification times change.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl Reloading {
    fn new(files: TlsFiles) -> Result<Self, TlsError> {
        let stamp = stamp(&files);
        let key = Arc::new(certified_key(&files)?);
        Ok(Self { files, current: RwLock::new(Current { key, stamp }) })
    }

    fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let stamp = stamp(&self.files);
        let unchanged = self.current.read().map(|c| c.stamp == stamp).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let key = Arc::new(certified_key(&self.files)?);
        let mut current = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *current = Current { key, stamp };
        Ok(true)
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.key.clone())
    }
}

fn stamp(files: &TlsFiles) -> (Option<SystemTime>, Option<SystemTime>) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (modified(&files.cert), modified(&files.key))
}

/// Reads and checks the pair: the chain is non-empty and the key matches its leaf.
fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source });
    let pem_error = |path: &Path, reason: String| TlsError::Pem { path: path.to_owned(), reason };
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(&files.cert, format!("not a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(&files.cert, "no CERTIFICATE in the file".into()));
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem_error(&files.key, format!("no usable private key: {e}")))?;
    let signing = default_provider().key_provider.load_private_key(key)?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match()?;
    Ok(certified)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let files = TlsFiles { cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.cert, cert.cert.pem()).unwrap();
        std::fs::write(&files.key, cert.key_pair.serialize_pem()).unwrap();
        files
    }

    fn leaf(tls: &Tls) -> Vec<u8> {
        tls.resolver.current.read().unwrap().key.cert[0].to_vec()
    }

    #[test]
    fn loads_a_pair_and_reloads_it_when_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "first.test");
        let tls = Tls::load(&files).unwrap();
        let before = leaf(&tls);
        assert!(!tls.reload_if_changed().unwrap(), "nothing changed yet");
        // Modification times can be coarse: make sure the new files look newer.
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "second.test");
        let later = SystemTime::now() + Duration::from_secs(2);
        for path in [&files.cert, &files.key] {
            std::fs::File::options().write(true).open(path).unwrap().set_modified(later).unwrap();
        }
        assert!(tls.reload_if_changed().unwrap());
        assert_ne!(leaf(&tls), before, "the new certificate is served");
    }

    #[test]
    fn a_broken_replacement_keeps_the_current_pair() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "ok.test");
        let tls = Tls::load(&files).unwrap();
        let before = leaf(&tls);
        std::fs::write(&files.key, "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n").unwrap();
        let later = SystemTime::now() + Duration::from_secs(2);
        std::fs::File::options().write(true).open(&files.key).unwrap().set_modified(later).unwrap();
        assert!(tls.reload_if_changed().is_err());
        assert_eq!(leaf(&tls), before);
    }

    #[test]
    fn refuses_a_key_of_another_certificate_and_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "a.test");
        let other = tempfile::tempdir().unwrap();
        let other_files = write_pair(other.path(), "b.test");
        let mismatched = TlsFiles { cert: files.cert.clone(), key: other_files.key };
        assert!(matches!(Tls::load(&mismatched), Err(TlsError::Rustls(_))));
        std::fs::write(&files.cert, "").unwrap();
        assert!(matches!(Tls::load(&files), Err(TlsError::Pem { .. })));
        let missing = TlsFiles { cert: dir.path().join("nope.pem"), key: files.key };
        assert!(matches!(Tls::load(&missing), Err(TlsError::Read { .. })));
    }
}
