//! [`RepoManifest`]: one generation of a published repository: its database
//! files and packages, by hash. Mirrors follow manifests, fetch the blobs,
//! verify them, and switch generations atomically.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Limits, Message, check_len, check_text, invalid};
use crate::{FileName, Hash, Name, PublicKey, Sha256, Timestamp};

/// The newest manifest version this build understands and writes.
pub const MANIFEST_VERSION: u32 = 1;

/// A repository generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoManifest {
    /// Format version ([`MANIFEST_VERSION`]).
    pub version: u32,
    /// Repository name (as in `pacman.conf`).
    pub repo: Name,
    /// Architecture.
    pub arch: Name,
    /// Generation number: 1, 2, 3, … per (repo, arch).
    pub generation: u64,
    /// The [`crate::Signed::id`] of the `Publish` event that carried
    /// generation `generation - 1`; `None` exactly for generation 1.
    pub previous: Option<Hash>,
    /// When it was published.
    pub time: Timestamp,
    /// The publisher; must be the signer (of the event or of the manifest).
    pub publisher: PublicKey,
    /// BLAKE3 of `NAME.db.tar.zst`.
    pub db: Hash,
    /// BLAKE3 of `NAME.files.tar.zst`.
    pub files_db: Hash,
    /// BLAKE3 of `NAME.db.tar.zst.sig` (OpenPGP detached signature).
    pub db_sig: Hash,
    /// BLAKE3 of `NAME.files.tar.zst.sig`, if published.
    pub files_db_sig: Option<Hash>,
    /// Every package file in this generation.
    pub packages: Vec<ManifestPackage>,
}

/// One package file of a generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPackage {
    /// e.g. `hello-1.0-1-x86_64.pkg.tar.zst`.
    pub file_name: FileName,
    /// The package name.
    pub pkgname: Name,
    /// Full version `[epoch:]pkgver-pkgrel`.
    pub version: String,
    /// BLAKE3 of the package file.
    pub blake3: Hash,
    /// SHA-256 of the package file (pacman checks it).
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the package's OpenPGP detached signature (`FILE.sig`).
    pub sig: Hash,
}

impl RepoManifest {
    /// Looks a package up by name.
    pub fn package(&self, pkgname: &str) -> Option<&ManifestPackage> {
        self.packages.iter().find(|p| p.pkgname == pkgname)
    }
}

impl Message for RepoManifest {
    const KIND: &'static str = "manifest";
    const VERSION: u32 = MANIFEST_VERSION;

    fn max_bytes(limits: &Limits) -> usize {
        limits.max_manifest_bytes
    }

    fn claimed_signer(&self) -> Option<&PublicKey> {
        Some(&self.publisher)
    }

    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.generation == 0 {
            return Err(invalid("manifest generation", "generations start at 1"));
        }
        if (self.generation == 1) != self.previous.is_none() {
            return Err(invalid(
                "manifest previous",
                "must be absent exactly for generation 1",
            ));
        }
        check_len(
            "manifest packages",
            self.packages.len(),
            limits.max_packages,
        )?;
        let mut names: Vec<&str> = self.packages.iter().map(|p| p.file_name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid(
                "manifest packages",
                format!("duplicate file name {:?}", w[0]),
            ));
        }
        for p in &self.packages {
            check_text("package version", &p.version, 256)?;
            if p.version.is_empty() || p.version.contains(['/', ' ']) {
                return Err(invalid(
                    "package version",
                    format!("{:?} is not a pacman version", p.version),
                ));
            }
        }
        Ok(())
    }
}
