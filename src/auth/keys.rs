//! The server's root key: loaded from `OPSYNC_ROOT_KEY`, a key file, or generated
//! into the data directory on first start.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use biscuit_auth::builder::Algorithm;
use biscuit_auth::{KeyPair, PrivateKey, PublicKey};

/// Why the root key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key text is not a private key.
    #[error("the root key in {origin} is not valid: expected `ed25519-private/<64 hex digits>` ({reason})")]
    Invalid {
        /// Where it came from.
        origin: String,
        /// The parser's word.
        reason: String,
    },
    /// Reading or writing the key file failed.
    #[error("root key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The server's root key pair. Its `Debug` shows only the public half.
pub struct RootKey {
    pair: KeyPair,
    /// Where it came from, for logs.
    origin: String,
    /// Whether this call generated it.
    generated: bool,
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootKey").field("public", &self.public_hex()).field("origin", &self.origin).finish()
    }
}

impl RootKey {
    /// Parses a private key: `ed25519-private/HEX` or bare hex.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let parsed = if text.contains('/') {
            text.parse::<PrivateKey>()
        } else {
            PrivateKey::from_bytes_hex(text, Algorithm::Ed25519)
        };
        let private = parsed.map_err(|e| KeyError::Invalid { origin: origin.to_owned(), reason: e.to_string() })?;
        Ok(Self { pair: KeyPair::from(&private), origin: origin.to_owned(), generated: false })
    }

    /// Loads the key file, or creates it with a new key (mode 0600) if it does not
    /// exist and `create` is set.
    pub fn load_or_generate(path: &Path, create: bool) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.to_owned(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_text(&text, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let pair = super::generate_root();
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(io)?;
                }
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                match options.open(path) {
                    Ok(mut file) => {
                        let text = format!("{}\n", pair.private().to_prefixed_string());
                        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io)?;
                        Ok(Self { pair, origin: path.display().to_string(), generated: true })
                    }
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Self::load_or_generate(path, false),
                    Err(e) => Err(io(e)),
                }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The key pair, for minting.
    pub fn pair(&self) -> &KeyPair {
        &self.pair
    }

    /// The public key, for verifying.
    pub fn public(&self) -> PublicKey {
        self.pair.public()
    }

    /// The public key as `ed25519/HEX`.
    pub fn public_hex(&self) -> String {
        self.pair.public().to_string()
    }

    /// Where the key came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Whether it was generated just now.
    pub fn generated(&self) -> bool {
        self.generated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_private_mode_then_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/root.key");
        let first = RootKey::load_or_generate(&path, true).unwrap();
        assert!(first.generated());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = RootKey::load_or_generate(&path, true).unwrap();
        assert!(!again.generated());
        assert_eq!(first.public_hex(), again.public_hex());
    }

    #[test]
    fn missing_file_without_create_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(RootKey::load_or_generate(&dir.path().join("none"), false).is_err());
    }

    #[test]
    fn parses_prefixed_and_bare_hex() {
        let pair = crate::auth::generate_root();
        let prefixed = pair.private().to_prefixed_string();
        let bare = pair.private().to_bytes_hex();
        let a = RootKey::from_text(&prefixed, "env").unwrap();
        let b = RootKey::from_text(&bare, "env").unwrap();
        assert_eq!(a.public_hex(), b.public_hex());
        assert!(RootKey::from_text("nope", "env").is_err());
    }
}
