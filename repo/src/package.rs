//! Reading built packages (`*.pkg.tar.{zst,xz,gz}` or plain `.tar`).
//!
//! [`read_package`] streams the archive once: the raw bytes go through MD5,
//! SHA-256 and BLAKE3 while the decompressed tar is walked for `.PKGINFO`
//! and the file list. The compression is detected from magic bytes, not from
//! the file name. A detached signature `PKG.sig` next to the package is read
//! too, with repo-add's rules (binary only, at most 16 KiB), and kept
//! base64-encoded as it goes into `%PGPSIG%`.
//!
//! The file list is what `repo-add` stores in the files database: every
//! archive member path as written in the archive (directories keep their
//! trailing `/`), except members whose path, after any leading `./`, starts
//! with a dot (`.PKGINFO`, `.BUILDINFO`, `.MTREE`, `.INSTALL`, `.CHANGELOG`
//! and anything under a top-level dot directory), sorted bytewise and
//! deduplicated (`bsdtar --exclude='^.*' -tf PKG | LC_ALL=C sort -u`).

use crate::pkginfo::{MAX_PKGINFO_SIZE, PkgInfo, PkgInfoError};
use base64::Engine as _;
use md5::Digest as _;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Largest detached package signature accepted (repo-add's limit).
pub const MAX_SIG_SIZE: u64 = 16384;

/// Largest total length of the member paths of one package (64 MiB).
pub const MAX_FILE_LIST_BYTES: usize = 64 * 1024 * 1024;

/// Memory limit for the xz decoder (256 MiB).
const XZ_MEMLIMIT: u64 = 256 * 1024 * 1024;

/// Compression of a package or database archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Compression {
    /// Plain `.tar`.
    None,
    /// `.tar.gz`
    Gzip,
    /// `.tar.xz`
    Xz,
    /// `.tar.zst`
    Zstd,
}

/// zstd level used for databases (the `zstd` CLI default, as repo-add uses).
pub const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// Detect from the first bytes of a file (at least 262 bytes are needed to
    /// recognise an uncompressed tar).
    pub fn detect(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Some(Compression::Xz)
        } else if head.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if head.len() >= 262 && &head[257..262] == b"ustar" {
            Some(Compression::None)
        } else {
            None
        }
    }

    /// From a file name ending in `.tar`, `.tar.gz`, `.tar.xz` or `.tar.zst`.
    pub fn from_file_name(name: &str) -> Option<Self> {
        if name.ends_with(".tar") {
            Some(Compression::None)
        } else if name.ends_with(".tar.gz") {
            Some(Compression::Gzip)
        } else if name.ends_with(".tar.xz") {
            Some(Compression::Xz)
        } else if name.ends_with(".tar.zst") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }

    /// The archive extension, e.g. `tar.zst`.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "tar.gz",
            Compression::Xz => "tar.xz",
            Compression::Zstd => "tar.zst",
        }
    }

    /// Wrap a reader in the matching decompressor (concatenated streams are
    /// read to the end, as the command-line tools do).
    pub fn decoder<'a, R: BufRead + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(io::Error::other)?;
                Box::new(liblzma::bufread::XzDecoder::new_stream(r, stream))
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
                // 2^27 = 128 MiB, zstd's default limit without --long.
                d.window_log_max(27)?;
                Box::new(d)
            }
        })
    }

    /// Compress `data` deterministically (single-threaded, fixed level, no
    /// timestamps or names in headers).
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        use std::io::Write;
        Ok(match self {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::default());
                e.write_all(data)?;
                e.finish()?
            }
            Compression::Xz => {
                let stream =
                    liblzma::stream::Stream::new_easy_encoder(6, liblzma::stream::Check::Crc64)
                        .map_err(io::Error::other)?;
                let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                e.write_all(data)?;
                e.finish()?
            }
            Compression::Zstd => {
                // Like the zstd CLI (which repo-add and makepkg use): with a
                // content checksum.
                let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
                c.include_checksum(true)?;
                c.compress(data)?
            }
        })
    }
}

/// Why a package could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a (supported) package archive at all.
    #[error("{path} is not a package: {reason}")]
    NotAPackage {
        /// The file.
        path: PathBuf,
        /// What was seen.
        reason: String,
    },
    /// The compression stream or the tar inside is damaged.
    #[error("{path}: corrupt package archive: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A well-formed archive without `.PKGINFO`.
    #[error("{path}: no .PKGINFO in the archive")]
    MissingPkgInfo {
        /// The file.
        path: PathBuf,
    },
    /// `.PKGINFO` is there but unusable.
    #[error("{path}: {source}")]
    PkgInfo {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: PkgInfoError,
    },
    /// The `.sig` beside the package is unusable.
    #[error("{path}: invalid package signature file: {reason}")]
    Signature {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Everything the repository database needs to know about one package file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PackageInfo {
    /// Where it was read from.
    pub path: PathBuf,
    /// File name only, as written to `%FILENAME%`.
    pub filename: String,
    /// Parsed `.PKGINFO`.
    pub pkginfo: PkgInfo,
    /// Compression detected from the magic bytes.
    pub compression: Compression,
    /// File size in bytes (`%CSIZE%`).
    pub csize: u64,
    /// MD5 of the file, lowercase hex (`%MD5SUM%`).
    pub md5sum: String,
    /// SHA-256 of the file, lowercase hex (`%SHA256SUM%`).
    pub sha256sum: String,
    /// BLAKE3 of the file, lowercase hex (pacmesh's content address).
    pub blake3: String,
    /// Detached signature `PATH.sig`, base64 without newlines (`%PGPSIG%`).
    pub pgpsig: Option<String>,
    /// Member paths as the files database lists them (see module docs).
    pub files: Vec<String>,
    /// Whether the archive has a `.BUILDINFO`.
    pub has_buildinfo: bool,
}

/// Options for [`read_package_with`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReadOptions {
    /// Read `PATH.sig` when it exists (default true).
    pub read_signature: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            read_signature: true,
        }
    }
}

/// A reader that hashes every byte passing through it.
struct HashingReader<R> {
    inner: R,
    md5: md5::Md5,
    sha256: sha2::Sha256,
    blake3: blake3::Hasher,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let b = &buf[..n];
        self.md5.update(b);
        sha2::Digest::update(&mut self.sha256, b);
        self.blake3.update(b);
        self.count += n as u64;
        Ok(n)
    }
}

/// Does repo-add leave this member out of the files list? (`bsdtar
/// --exclude='^.*'`: after leading `./`, a leading dot.)
pub fn is_excluded_member(path: &[u8]) -> bool {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
        while let Some(rest) = p.strip_prefix(b"/") {
            p = rest;
        }
    }
    p.first() == Some(&b'.')
}

fn member_name(path: &[u8]) -> &[u8] {
    let mut p = path;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    p
}

/// Read a package file with default options (signature included).
pub fn read_package(path: impl AsRef<Path>) -> Result<PackageInfo, PackageError> {
    read_package_with(path.as_ref(), &ReadOptions::default())
}

/// Read a package file.
pub fn read_package_with(path: &Path, opts: &ReadOptions) -> Result<PackageInfo, PackageError> {
    let io_err = |source| PackageError::Io {
        path: path.to_owned(),
        source,
    };
    let corrupt = |reason: String| PackageError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let filename = match path.file_name().map(|f| f.to_str()) {
        Some(Some(f)) if !f.contains(['\n', '\r']) => f.to_owned(),
        _ => {
            return Err(PackageError::NotAPackage {
                path: path.to_owned(),
                reason: "the file name is not valid UTF-8 text".into(),
            });
        }
    };
    let file = File::open(path).map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if !meta.is_file() {
        return Err(PackageError::NotAPackage {
            path: path.to_owned(),
            reason: "not a regular file".into(),
        });
    }
    let mut hr = HashingReader {
        inner: file,
        md5: md5::Md5::new(),
        sha256: sha2::Sha256::new(),
        blake3: blake3::Hasher::new(),
        count: 0,
    };
    let mut head = Vec::with_capacity(512);
    (&mut hr).take(512).read_to_end(&mut head).map_err(io_err)?;
    let compression = Compression::detect(&head).ok_or_else(|| PackageError::NotAPackage {
        path: path.to_owned(),
        reason: if head.starts_with(b"BZh") {
            "bzip2 compression is not supported".into()
        } else {
            "unknown file format (not a tar, .tar.zst, .tar.xz or .tar.gz)".into()
        },
    })?;

    let mut pkginfo_bytes: Option<Vec<u8>> = None;
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut list_bytes = 0usize;
    let mut has_buildinfo = false;
    let mut members = 0usize;
    {
        let chained = io::Cursor::new(&head[..]).chain(&mut hr);
        let dec = compression
            .decoder(BufReader::with_capacity(64 * 1024, chained))
            .map_err(|e| corrupt(e.to_string()))?;
        let mut ar = tar::Archive::new(BufReader::with_capacity(64 * 1024, dec));
        let entries = ar.entries().map_err(|e| corrupt(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
            members += 1;
            let p = entry.path_bytes().into_owned();
            let name = member_name(&p);
            if name == b".PKGINFO" {
                if pkginfo_bytes.is_some() {
                    return Err(corrupt("more than one .PKGINFO".into()));
                }
                let size = entry.header().entry_size().unwrap_or(u64::MAX);
                if size > MAX_PKGINFO_SIZE {
                    return Err(PackageError::PkgInfo {
                        path: path.to_owned(),
                        source: PkgInfoError::TooLarge {
                            size,
                            limit: MAX_PKGINFO_SIZE,
                        },
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(MAX_PKGINFO_SIZE + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| corrupt(e.to_string()))?;
                pkginfo_bytes = Some(buf);
            } else if name == b".BUILDINFO" {
                has_buildinfo = true;
            }
            if !is_excluded_member(&p) {
                list_bytes += p.len() + 1;
                if list_bytes > MAX_FILE_LIST_BYTES {
                    return Err(corrupt("file list too large".into()));
                }
                files.push(p);
            }
        }
        if members == 0 {
            return Err(PackageError::NotAPackage {
                path: path.to_owned(),
                reason: "empty archive".into(),
            });
        }
        // Read the rest of the decompressed stream: this checks the
        // compression trailer (checksums) too.
        let mut dec = ar.into_inner();
        io::copy(&mut dec, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
    }
    // Hash whatever follows the compressed stream.
    io::copy(&mut hr, &mut io::sink()).map_err(io_err)?;
    let pkginfo_bytes = pkginfo_bytes.ok_or_else(|| PackageError::MissingPkgInfo {
        path: path.to_owned(),
    })?;
    let pkginfo = PkgInfo::parse(&pkginfo_bytes).map_err(|source| PackageError::PkgInfo {
        path: path.to_owned(),
        source,
    })?;
    files.sort_unstable();
    files.dedup();
    let files = files
        .into_iter()
        .map(|p| match String::from_utf8(p) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
        .collect();
    let pgpsig = if opts.read_signature {
        read_signature_b64(path)?
    } else {
        None
    };
    let HashingReader {
        md5,
        sha256,
        blake3,
        count,
        ..
    } = hr;
    Ok(PackageInfo {
        path: path.to_owned(),
        filename,
        pkginfo,
        compression,
        csize: count.max(meta.len()),
        md5sum: hex::encode(md5.finalize()),
        sha256sum: hex::encode(sha2::Digest::finalize(sha256)),
        blake3: blake3.finalize().to_hex().to_string(),
        pgpsig,
        files,
        has_buildinfo,
    })
}

/// The `.sig` path beside a package: `PATH.sig`.
pub fn signature_path(pkg: &Path) -> PathBuf {
    let mut s = pkg.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Check detached signature bytes with repo-add's rules and base64 them.
pub fn encode_signature(sig_path: &Path, bytes: &[u8]) -> Result<String, PackageError> {
    if bytes.len() as u64 > MAX_SIG_SIZE {
        return Err(PackageError::Signature {
            path: sig_path.to_owned(),
            reason: format!("larger than {MAX_SIG_SIZE} bytes"),
        });
    }
    if bytes
        .windows(b"BEGIN PGP SIGNATURE".len())
        .any(|w| w == b"BEGIN PGP SIGNATURE")
    {
        return Err(PackageError::Signature {
            path: sig_path.to_owned(),
            reason: "armored signatures cannot be used for packages".into(),
        });
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Read `PKG.sig` if it exists, base64-encoded as for `%PGPSIG%`.
pub fn read_signature_b64(pkg: &Path) -> Result<Option<String>, PackageError> {
    let sig = signature_path(pkg);
    let f = match File::open(&sig) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PackageError::Io { path: sig, source }),
    };
    let mut bytes = Vec::new();
    f.take(MAX_SIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| PackageError::Io {
            path: sig.clone(),
            source,
        })?;
    encode_signature(&sig, &bytes).map(Some)
}

#[cfg(feature = "testutil")]
#[path = "testutil.rs"]
pub mod testutil;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusion_like_bsdtar() {
        assert!(is_excluded_member(b".PKGINFO"));
        assert!(is_excluded_member(b"./.PKGINFO"));
        assert!(is_excluded_member(b".hid/sub/f"));
        assert!(!is_excluded_member(b"usr/.dot"));
        assert!(!is_excluded_member(b"./usr/.dot"));
        assert!(!is_excluded_member(b"./"));
        assert!(!is_excluded_member(b"/abs"));
    }

    #[test]
    fn detect() {
        assert_eq!(
            Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::detect(b"hello"), None);
        assert_eq!(
            Compression::from_file_name("x.db.tar.xz"),
            Some(Compression::Xz)
        );
    }
}
