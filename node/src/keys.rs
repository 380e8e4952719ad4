//! The node's ed25519 identity on disk.
//!
//! One secret key serves as the node's libp2p identity (its PeerId), the author key of the
//! events it signs, and, wrapped as an OpenPGP key, the repository signing key. The file is
//! text so it survives copy-paste between machines:
//!
//! ```text
//! -----BEGIN PACMESH ED25519 SECRET KEY-----
//! <base64 of the 32-byte ed25519 seed>
//! -----END PACMESH ED25519 SECRET KEY-----
//! ```
//!
//! It is created with mode 0600 and never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use ed25519_dalek::{SigningKey, VerifyingKey};

const BEGIN: &str = "-----BEGIN PACMESH ED25519 SECRET KEY-----";
const END: &str = "-----END PACMESH ED25519 SECRET KEY-----";
/// A key file is a few lines; anything larger is not one of ours.
const MAX_KEY_FILE: u64 = 4096;

/// A node's secret key and the identities derived from it.
pub struct NodeKey {
    signing: SigningKey,
}

/// Shows the public half only: a secret never reaches a log line.
impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness from the OS: {e}"))?;
        Ok(Self::from_seed(&seed))
    }

    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(seed),
        }
    }

    pub fn seed(&self) -> &[u8; 32] {
        self.signing.as_bytes()
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The public key as 64 lower-case hex digits (how policies and the CLI name keys).
    pub fn public_hex(&self) -> String {
        hex::encode(self.verifying_key().as_bytes())
    }

    /// The libp2p PeerId of this key (same ed25519 key, libp2p's protobuf framing).
    pub fn peer_id(&self) -> libp2p::identity::PeerId {
        self.keypair().public().to_peer_id()
    }

    /// The key as a libp2p identity keypair (the node's libp2p identity is its ed25519 key).
    pub fn keypair(&self) -> libp2p::identity::Keypair {
        let mut seed = *self.seed();
        let secret = libp2p::identity::ed25519::SecretKey::try_from_bytes(&mut seed)
            .expect("32 bytes is always a valid ed25519 secret key");
        libp2p::identity::ed25519::Keypair::from(secret).into()
    }

    /// Parses the text form; the error says what is wrong without echoing secret material.
    pub fn from_text(text: &str) -> Result<Self> {
        let body: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if body.first() != Some(&BEGIN) || body.last() != Some(&END) || body.len() < 3 {
            bail!("not a pacmesh secret key file (expected a '{BEGIN}' block)");
        }
        let b64: String = body[1..body.len() - 1].concat();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| anyhow!("the key file's base64 body is damaged"))?;
        let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow!(
                "the key file holds {} bytes, an ed25519 seed has 32",
                bytes.len()
            )
        })?;
        Ok(Self::from_seed(&seed))
    }

    pub fn to_text(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.seed());
        format!("{BEGIN}\n{b64}\n{END}\n")
    }

    /// Reads a key file, refusing files other users can read (like ssh does for its keys).
    pub fn load(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        if !meta.is_file() {
            bail!("key file {} is not a regular file", path.display());
        }
        if meta.len() > MAX_KEY_FILE {
            bail!(
                "key file {} is too large to be a pacmesh key",
                path.display()
            );
        }
        if meta.permissions().mode() & 0o077 != 0 {
            bail!(
                "key file {} is readable by other users (mode {:o}); run: chmod 600 {}",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read key file {}", path.display()))?;
        Self::from_text(&text).with_context(|| format!("key file {}", path.display()))
    }

    /// Writes the key with mode 0600; never replaces an existing file.
    pub fn save_new(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    anyhow!(
                        "{} already exists; refusing to overwrite a key",
                        path.display()
                    )
                } else {
                    anyhow!("cannot create key file {}: {e}", path.display())
                }
            })?;
        f.write_all(self.to_text().as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("cannot write key file {}", path.display()))
    }
}

/// `$XDG_DATA_HOME/pacmesh`, falling back to `~/.local/share/pacmesh`.
pub fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("pacmesh");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
    PathBuf::from(home).join(".local/share/pacmesh")
}

/// Where `key gen` writes and every command reads the node key unless told otherwise.
pub fn default_key_path() -> PathBuf {
    default_data_dir().join("node.key")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_ids() {
        let k = NodeKey::from_seed(&[7u8; 32]);
        let back = NodeKey::from_text(&k.to_text()).unwrap();
        assert_eq!(back.seed(), k.seed());
        assert_eq!(back.public_hex(), k.public_hex());
        // The PeerId of an ed25519 key is the identity multihash of its protobuf encoding,
        // which in base58 always starts with "12D3KooW".
        assert!(
            k.peer_id().to_string().starts_with("12D3KooW"),
            "{}",
            k.peer_id()
        );
    }

    #[test]
    fn damaged_files_are_rejected_with_reason() {
        let err = NodeKey::from_text("hello").unwrap_err().to_string();
        assert!(err.contains("not a pacmesh secret key file"), "{err}");
        let short = format!("{BEGIN}\nAAAA\n{END}\n");
        let err = NodeKey::from_text(&short).unwrap_err().to_string();
        assert!(err.contains("3 bytes"), "{err}");
        let bad = format!("{BEGIN}\n!!!!\n{END}\n");
        assert!(NodeKey::from_text(&bad).is_err());
    }

    #[test]
    fn save_refuses_overwrite_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/node.key");
        let k = NodeKey::generate().unwrap();
        k.save_new(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let err = NodeKey::generate()
            .unwrap()
            .save_new(&p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(NodeKey::load(&p).unwrap().seed(), k.seed());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            NodeKey::load(&p)
                .unwrap_err()
                .to_string()
                .contains("chmod 600")
        );
    }
}

/// The libp2p PeerId of a node's public key (`None` if the bytes are not an ed25519 point
/// libp2p accepts).
pub fn peer_id_of(key: &pacmesh_protocol::PublicKey) -> Option<libp2p::identity::PeerId> {
    let pk = libp2p::identity::ed25519::PublicKey::try_from_bytes(key.as_bytes()).ok()?;
    Some(libp2p::identity::PublicKey::from(pk).to_peer_id())
}
