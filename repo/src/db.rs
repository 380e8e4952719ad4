//! Repository databases: `NAME.db.tar.*` (sync) and `NAME.files.tar.*`
//! (files), the `repo-add`/`repo-remove` replacement.
//!
//! A [`Database`] is the set of [`DescEntry`]s keyed by package name. It is
//! loaded from an existing database without touching the package files (the
//! `desc` and `files` texts are parsed back), changed with [`Database::add`]
//! / [`Database::remove`], and written with [`Database::write`]. The
//! high-level [`repo_add`] and [`repo_remove`] do load + change + write under
//! repo-add's lock file, like the shell tools.
//!
//! # Deterministic output
//!
//! The same set of entries always gives the same bytes: entries sorted by
//! package name, each as a directory `NAME-VERSION/` (mode 0755) followed by
//! `desc` (and `files` in the files database; mode 0644), ustar headers with
//! mtime 0, uid/gid 0, owner `root:root`, long paths in PAX headers; the
//! compression is single-threaded at a fixed level (zstd 3, xz 6, gzip 6
//! without name or time). So databases can be content-addressed
//! ([`WriteReport::db_blake3`]).
//!
//! # Atomic replacement, and the order of the renames
//!
//! Everything is prepared first: both archives are built, signed (when a
//! [`DetachedSigner`] is given) and written to temporary files in the target
//! directory, each `fsync`ed. Any error up to that point removes the
//! temporary files, and nothing visible has changed. Then the files are
//! renamed into place in this order:
//!
//! 1. new package signatures (`PKG.sig`, when [`repo_add`] signed packages),
//! 2. for the files database, then for the sync database:
//!    1. the signature `NAME.db.tar.zst.sig` (or, when writing unsigned, the
//!       removal of a stale one), then its `NAME.db.sig` symlink,
//!    2. the database `NAME.db.tar.zst`, then its `NAME.db` symlink,
//! 3. an `fsync` of the directory.
//!
//! Why the signature goes *before* the database: pacman downloads
//! `NAME.db` first and `NAME.db.sig` second. With the signature renamed
//! first, a reader that fetches the database after the database rename
//! necessarily fetches the signature later still, so it gets the new
//! signature: it can never see a new database with an old signature. The
//! only mismatch left is a reader that fetched the old database before the
//! switch and the signature after it; that reader straddles the update and
//! would get a mismatched pair even if both files could be swapped in one
//! instant, so no ordering of two files avoids it (pacman then fails that
//! one sync and succeeds on the next). The opposite order (database first)
//! would add a second window in which a new database is served with the old
//! signature. Readers that need a consistent pair with no retry must read a
//! whole generation directory switched by one rename, which is what pacmesh
//! mirrors do. Symlinks are created under a temporary name and renamed over
//! the old ones, so `NAME.db` always resolves. Renames within one directory
//! do not fail in practice; if one did, the step reports the error and the
//! already renamed files stay (each of them is complete and valid).

use crate::desc::{DescEntry, DescError, is_plain_file_name};
use crate::package::{
    Compression, PackageError, PackageInfo, encode_signature, read_package, signature_path,
};
use crate::version::Version;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Signs data with a detached signature (pacmesh implements it for OpenPGP
/// in [`crate::sign`]). The output is written as-is to `*.sig`, so it must be
/// a binary (not armored) OpenPGP signature for pacman.
pub trait DetachedSigner {
    /// A detached signature over `data`.
    fn sign_detached(
        &self,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Largest single member (`desc`/`files`) accepted when loading (64 MiB).
pub const MAX_MEMBER_SIZE: u64 = 64 * 1024 * 1024;
/// Largest total decompressed size accepted when loading (1 GiB).
pub const MAX_DB_SIZE: u64 = 1024 * 1024 * 1024;

/// Errors from database operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The database path is not `DIR/NAME.db.tar{,.gz,.xz,.zst}` (or an
    /// existing `NAME.db` link).
    #[error("{path}: not a valid database file name: {reason}")]
    InvalidPath {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No database at that path (for operations that need one).
    #[error("{path}: database not found")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The database archive is not a pacman database or is damaged.
    #[error("{path}: not a proper pacman database: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One entry of the database is unusable.
    #[error("{path}: entry {entry}: {source}")]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry directory.
        entry: String,
        /// What is wrong.
        #[source]
        source: DescError,
    },
    /// A package could not be read.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The database has a newer version of the package.
    #[error("refusing to downgrade {name} from {existing} to {new} (allow_downgrade to force)")]
    Downgrade {
        /// Package name.
        name: String,
        /// Version in the database.
        existing: String,
        /// Version offered.
        new: String,
    },
    /// The database has this very version, built differently.
    #[error(
        "{name} {version} is already in the database with different contents (a rebuild needs a new pkgrel; allow_downgrade to force)"
    )]
    SameVersion {
        /// Package name.
        name: String,
        /// The version.
        version: String,
    },
    /// `remove` of a name that is not in the database.
    #[error("package {name} is not in the database")]
    NoSuchPackage {
        /// Package name.
        name: String,
    },
    /// The signer failed.
    #[error("signing {what} failed: {source}")]
    Sign {
        /// What was being signed.
        what: String,
        /// The signer's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Another process holds the lock file.
    #[error("cannot lock the database: {path} exists (another repo-add or pacmesh running?)")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DbError + '_ {
    move |source| DbError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The files that make up one repository database, derived from the
/// database path like repo-add does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DbPaths {
    /// Directory holding everything.
    pub dir: PathBuf,
    /// Repository name (`NAME`).
    pub name: String,
    /// Compression chosen from the file name.
    pub compression: Compression,
    /// `DIR/NAME.db.tar.EXT`
    pub db: PathBuf,
    /// `DIR/NAME.files.tar.EXT`
    pub files: PathBuf,
    /// `DIR/NAME.db` (symlink)
    pub db_link: PathBuf,
    /// `DIR/NAME.files` (symlink)
    pub files_link: PathBuf,
    /// `DIR/NAME.db.tar.EXT.lck` (repo-add's lock file)
    pub lock: PathBuf,
}

impl DbPaths {
    /// From `DIR/NAME.db.tar{,.gz,.xz,.zst}`. An existing `DIR/NAME.db`
    /// symlink is followed to its target name; a `NAME.db` that does not
    /// exist means `NAME.db.tar.zst`.
    pub fn new(db_path: &Path) -> Result<Self, DbError> {
        let invalid = |reason: &str| DbError::InvalidPath {
            path: db_path.to_owned(),
            reason: reason.to_owned(),
        };
        let dir = match db_path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let fname = db_path
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| invalid("not a UTF-8 file name"))?;
        let fname: String = if let Some(name) = fname.strip_suffix(".db") {
            match fs::read_link(db_path) {
                Ok(target) => {
                    let t = target
                        .file_name()
                        .and_then(|f| f.to_str())
                        .ok_or_else(|| invalid("link target is not a UTF-8 file name"))?;
                    t.to_owned()
                }
                Err(_) => format!("{name}.db.tar.zst"),
            }
        } else {
            fname.to_owned()
        };
        let i = fname.rfind(".db.").ok_or_else(|| {
            invalid("expected NAME.db.tar, NAME.db.tar.gz, NAME.db.tar.xz or NAME.db.tar.zst")
        })?;
        let name = &fname[..i];
        let suffix = &fname[i + 4..];
        if name.is_empty() {
            return Err(invalid("empty repository name"));
        }
        let compression = match suffix {
            "tar" => Compression::None,
            "tar.gz" => Compression::Gzip,
            "tar.xz" => Compression::Xz,
            "tar.zst" => Compression::Zstd,
            _ => {
                return Err(invalid(
                    "unsupported extension (expected .db.tar, .db.tar.gz, .db.tar.xz or .db.tar.zst)",
                ));
            }
        };
        Ok(DbPaths {
            db: dir.join(format!("{name}.db.{suffix}")),
            files: dir.join(format!("{name}.files.{suffix}")),
            db_link: dir.join(format!("{name}.db")),
            files_link: dir.join(format!("{name}.files")),
            lock: dir.join(format!("{name}.db.{suffix}.lck")),
            name: name.to_owned(),
            compression,
            dir,
        })
    }
}

/// How [`Database::add`] and [`repo_add`] treat existing entries.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct AddOptions {
    /// Accept an older version or a different build of the same version.
    pub allow_downgrade: bool,
    /// After a successful write, delete the replaced package files and their
    /// `.sig` (repo-add `-R`). Otherwise they are kept on disk.
    pub remove_old_files: bool,
    /// With a signer, [`repo_add`] signs packages that have no `.sig` yet
    /// (default false; the CLI's `--key` turns it on).
    pub sign_packages: bool,
}

/// What [`Database::add`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub enum AddOutcome {
    /// No entry of that name existed.
    New,
    /// An entry of that name was replaced.
    Replaced {
        /// Its `%FILENAME%`.
        old_filename: String,
        /// Its version.
        old_version: Version,
    },
    /// The very same entry was already there: nothing changed.
    Unchanged,
}

/// A pacman repository database in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    /// Repository name.
    pub name: String,
    /// Entries by package name.
    pub entries: BTreeMap<String, DescEntry>,
}

/// Tiny deterministic ustar writer (with PAX `path` records for long names).
pub(crate) struct TarWriter {
    pub(crate) buf: Vec<u8>,
}

/// Zero-padded octal, NUL-terminated (the ustar numeric field format).
fn octal(field: &mut [u8], mut v: u64) {
    let n = field.len() - 1;
    field[n] = 0;
    for i in (0..n).rev() {
        field[i] = b'0' + (v & 7) as u8;
        v >>= 3;
    }
}

impl TarWriter {
    #[cfg(feature = "testutil")]
    pub(crate) fn new() -> Self {
        TarWriter { buf: Vec::new() }
    }

    pub(crate) fn with_capacity(n: usize) -> Self {
        TarWriter {
            buf: Vec::with_capacity(n),
        }
    }

    fn header(&mut self, name: &[u8], mode: u32, size: u64, typeflag: u8, mtime: u64) {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], mtime);
        h[148..156].copy_from_slice(b"        ");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        octal(&mut h[329..337], 0);
        octal(&mut h[337..345], 0);
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        octal(&mut h[148..155], sum as u64);
        h[155] = b' ';
        self.buf.extend_from_slice(&h);
    }

    fn data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.resize(self.buf.len() + pad, 0);
    }

    fn name<'p>(&mut self, path: &'p [u8], mtime: u64) -> std::borrow::Cow<'p, [u8]> {
        if path.len() <= 100 {
            return std::borrow::Cow::Borrowed(path);
        }
        // PAX extended header with the full path.
        let body_len = " path=\n".len() + path.len();
        let mut n = body_len + 1;
        while n.to_string().len() + body_len != n {
            n = n.to_string().len() + body_len;
        }
        let mut rec = format!("{n} path=").into_bytes();
        rec.extend_from_slice(path);
        rec.push(b'\n');
        self.header(b"././@PaxHeader", 0o644, rec.len() as u64, b'x', mtime);
        self.data(&rec);
        // The header keeps the first 100 bytes; the PAX path wins.
        std::borrow::Cow::Borrowed(&path[..100])
    }

    /// A directory entry (`path` should end with `/`).
    pub(crate) fn dir(&mut self, path: &str, mode: u32, mtime: u64) {
        let name = self.name(path.as_bytes(), mtime);
        self.header(&name, mode, 0, b'5', mtime);
    }

    /// A regular file.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8], mtime: u64) {
        let name = self.name(path.as_bytes(), mtime);
        self.header(&name, mode, data.len() as u64, b'0', mtime);
        self.data(data);
    }

    /// A symlink.
    #[allow(dead_code)]
    pub(crate) fn symlink(&mut self, path: &str, target: &str, mtime: u64) {
        let name = self.name(path.as_bytes(), mtime);
        let mut h_target = [0u8; 100];
        let t = target.as_bytes();
        let l = t.len().min(100);
        h_target[..l].copy_from_slice(&t[..l]);
        self.header(&name, 0o777, 0, b'2', mtime);
        // Patch the link name in the header just written and fix the checksum.
        let start = self.buf.len() - 512;
        let h = &mut self.buf[start..start + 512];
        h[157..257].copy_from_slice(&h_target);
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        octal(&mut h[148..155], sum as u64);
        h[155] = b' ';
    }

    /// End-of-archive marker.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.buf.resize(self.buf.len() + 1024, 0);
        self.buf
    }
}

/// Read all members of a database archive: `(path, contents)` of regular
/// files, with size limits.
fn read_archive_members(
    path: &Path,
    bytes: &[u8],
    skip_desc: bool,
) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let corrupt = |reason: String| DbError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    let comp = match Compression::detect(bytes) {
        Some(c) => c,
        // An empty plain tar is all zeros (no "ustar" magic).
        None if bytes.len() >= 1024 && bytes.iter().all(|&b| b == 0) => return Ok(Vec::new()),
        None => {
            return Err(corrupt(
                "unknown format (not a tar, .tar.zst, .tar.xz or .tar.gz)".into(),
            ));
        }
    };
    let dec = comp.decoder(bytes).map_err(|e| corrupt(e.to_string()))?;
    // The tar reader does many small reads; batch them.
    let mut ar = tar::Archive::new(io::BufReader::with_capacity(256 * 1024, dec));
    let mut out = Vec::new();
    let mut total = 0u64;
    for entry in ar.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry
            .header()
            .entry_size()
            .map_err(|e| corrupt(e.to_string()))?;
        if size > MAX_MEMBER_SIZE {
            return Err(corrupt(format!(
                "member larger than {MAX_MEMBER_SIZE} bytes"
            )));
        }
        total += size;
        if total > MAX_DB_SIZE {
            return Err(corrupt(format!(
                "more than {MAX_DB_SIZE} bytes uncompressed"
            )));
        }
        let p = String::from_utf8(entry.path_bytes().into_owned())
            .map_err(|_| corrupt("member path is not UTF-8".into()))?;
        // The files database repeats each desc; only its file lists are used.
        if skip_desc && p.ends_with("/desc") {
            continue;
        }
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(MAX_MEMBER_SIZE)
            .read_to_end(&mut data)
            .map_err(|e| corrupt(e.to_string()))?;
        out.push((p, data));
    }
    Ok(out)
}

#[derive(Default)]
struct EntryParts {
    desc: Option<String>,
    depends: Option<String>,
    files: Option<String>,
}

/// Is `dir` exactly `NAME-VERSION` of the entry?
fn dir_matches(dir: &str, e: &DescEntry) -> bool {
    let (n, v) = (e.name.as_str(), e.version.as_str());
    dir.len() == n.len() + 1 + v.len()
        && dir.starts_with(n)
        && dir.as_bytes()[n.len()] == b'-'
        && dir.ends_with(v)
}

fn group_members(
    path: &Path,
    members: Vec<(String, Vec<u8>)>,
) -> Result<BTreeMap<String, EntryParts>, DbError> {
    let mut map: BTreeMap<String, EntryParts> = BTreeMap::new();
    for (p, data) in members {
        let p = p.strip_prefix("./").unwrap_or(&p);
        let Some((dir, member)) = p.split_once('/') else {
            return Err(DbError::Corrupt {
                path: path.to_owned(),
                reason: format!("unexpected top-level file {p:?}"),
            });
        };
        let text = String::from_utf8(data).map_err(|_| DbError::Corrupt {
            path: path.to_owned(),
            reason: format!("{p} is not UTF-8"),
        })?;
        let parts = map.entry(dir.to_owned()).or_default();
        match member {
            "desc" => parts.desc = Some(text),
            "depends" => parts.depends = Some(text),
            "files" => parts.files = Some(text),
            _ => {} // unknown members (e.g. mtree) are ignored, like pacman
        }
    }
    Ok(map)
}

impl Database {
    /// An empty database.
    pub fn new(name: impl Into<String>) -> Self {
        Database {
            name: name.into(),
            entries: BTreeMap::new(),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries?
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for a package name.
    pub fn get(&self, pkgname: &str) -> Option<&DescEntry> {
        self.entries.get(pkgname)
    }

    /// Load `NAME.db.tar.*` (and `NAME.files.tar.*` beside it when present,
    /// for the file lists). Fails with [`DbError::NotFound`] when the
    /// database does not exist.
    pub fn load(db_path: &Path) -> Result<Self, DbError> {
        let paths = DbPaths::new(db_path)?;
        Self::load_paths(&paths)?.ok_or(DbError::NotFound { path: paths.db })
    }

    /// Like [`Self::load`], but a missing database gives an empty one.
    pub fn load_or_new(db_path: &Path) -> Result<Self, DbError> {
        let paths = DbPaths::new(db_path)?;
        Ok(Self::load_paths(&paths)?.unwrap_or_else(|| Database::new(paths.name.clone())))
    }

    /// Load from resolved paths; `None` when the sync database is missing.
    pub fn load_paths(paths: &DbPaths) -> Result<Option<Self>, DbError> {
        let read = |p: &Path| -> Result<Option<Vec<u8>>, DbError> {
            match fs::read(p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(DbError::Io {
                    path: p.to_owned(),
                    source,
                }),
            }
        };
        let Some(db) = read(&paths.db)? else {
            return Ok(None);
        };
        let files = read(&paths.files)?;
        let mut d = Self::from_archives_at(
            &paths.name,
            &paths.db,
            &db,
            files.as_deref().map(|f| (&*paths.files, f)),
        )?;
        d.name = paths.name.clone();
        Ok(Some(d))
    }

    /// Parse database archive bytes (any supported compression; the files
    /// database is optional).
    pub fn from_archives(name: &str, db: &[u8], files: Option<&[u8]>) -> Result<Self, DbError> {
        Self::from_archives_at(
            name,
            Path::new(name),
            db,
            files.map(|f| (Path::new(name), f)),
        )
    }

    fn from_archives_at(
        name: &str,
        db_path: &Path,
        db: &[u8],
        files: Option<(&Path, &[u8])>,
    ) -> Result<Self, DbError> {
        let (db_members, files_members) = match files {
            Some((fp, fb)) => {
                let (a, b) = rayon::join(
                    || read_archive_members(db_path, db, false),
                    || read_archive_members(fp, fb, true),
                );
                (a?, Some((fp, b?)))
            }
            None => (read_archive_members(db_path, db, false)?, None),
        };
        let groups = group_members(db_path, db_members)?;
        let mut files_map = match files_members {
            Some((fp, m)) => group_members(fp, m)?,
            None => BTreeMap::new(),
        };
        let files_path = files.map(|f| f.0.to_owned()).unwrap_or_default();
        let work: Vec<(String, EntryParts, Option<String>)> = groups
            .into_iter()
            .map(|(dir, parts)| {
                let ft = files_map.remove(&dir).and_then(|fp| fp.files);
                (dir, parts, ft)
            })
            .collect();
        let parse_one = |(dir, parts, ft): &(String, EntryParts, Option<String>)| -> Result<DescEntry, DbError> {
            let mut texts: Vec<&str> = Vec::new();
            if let Some(d) = &parts.desc {
                texts.push(d);
            }
            if let Some(d) = &parts.depends {
                texts.push(d);
            }
            if texts.is_empty() {
                return Err(DbError::Corrupt {
                    path: db_path.to_owned(),
                    reason: format!("entry {dir} has no desc"),
                });
            }
            let mut e = DescEntry::parse_desc_parts(&texts).map_err(|source| DbError::Entry {
                path: db_path.to_owned(),
                entry: dir.clone(),
                source,
            })?;
            if !dir_matches(dir, &e) {
                return Err(DbError::Corrupt {
                    path: db_path.to_owned(),
                    reason: format!("entry {dir} describes {}", e.dir_name()),
                });
            }
            e.files = match ft {
                Some(ft) => Some(crate::desc::parse_files(ft).map_err(|source| DbError::Entry {
                    path: files_path.clone(),
                    entry: dir.clone(),
                    source,
                })?),
                None => None,
            };
            Ok(e)
        };
        let parsed: Vec<Result<DescEntry, DbError>> = if work.len() >= 256 {
            use rayon::prelude::*;
            work.par_iter().map(parse_one).collect()
        } else {
            work.iter().map(parse_one).collect()
        };
        let mut entries = BTreeMap::new();
        for e in parsed {
            let e = e?;
            if entries.contains_key(&e.name) {
                return Err(DbError::Corrupt {
                    path: db_path.to_owned(),
                    reason: format!("two entries for package {}", e.name),
                });
            }
            entries.insert(e.name.clone(), e);
        }
        Ok(Database {
            name: name.to_owned(),
            entries,
        })
    }

    /// Add (or replace) the entry for a package that was read with
    /// [`crate::package::read_package`]. A newer version replaces an older
    /// one of the same name; an older version, or the same version with
    /// different contents, is refused unless `allow_downgrade`. Re-adding the
    /// identical entry changes nothing ([`AddOutcome::Unchanged`]).
    pub fn add(&mut self, pkg: &PackageInfo, allow_downgrade: bool) -> Result<AddOutcome, DbError> {
        self.add_entry(DescEntry::from_package(pkg), allow_downgrade)
    }

    /// [`Self::add`] for a prepared entry.
    pub fn add_entry(
        &mut self,
        entry: DescEntry,
        allow_downgrade: bool,
    ) -> Result<AddOutcome, DbError> {
        let outcome = match self.entries.get(&entry.name) {
            None => AddOutcome::New,
            Some(old) if *old == entry => return Ok(AddOutcome::Unchanged),
            // The same package, but the database had no file list for it
            // (no files database): take the new entry, which has one.
            Some(old)
                if old.files.is_none()
                    && DescEntry {
                        files: None,
                        ..entry.clone()
                    } == *old =>
            {
                AddOutcome::Replaced {
                    old_filename: old.filename.clone(),
                    old_version: old.version.clone(),
                }
            }
            Some(old) => {
                match crate::version::vercmp(old.version.as_str(), entry.version.as_str()) {
                    std::cmp::Ordering::Greater if !allow_downgrade => {
                        return Err(DbError::Downgrade {
                            name: entry.name,
                            existing: old.version.to_string(),
                            new: entry.version.to_string(),
                        });
                    }
                    std::cmp::Ordering::Equal if !allow_downgrade => {
                        return Err(DbError::SameVersion {
                            name: entry.name,
                            version: entry.version.to_string(),
                        });
                    }
                    _ => {}
                }
                AddOutcome::Replaced {
                    old_filename: old.filename.clone(),
                    old_version: old.version.clone(),
                }
            }
        };
        self.entries.insert(entry.name.clone(), entry);
        Ok(outcome)
    }

    /// Remove the entry for `pkgname`, returning it.
    pub fn remove(&mut self, pkgname: &str) -> Result<DescEntry, DbError> {
        self.entries
            .remove(pkgname)
            .ok_or_else(|| DbError::NoSuchPackage {
                name: pkgname.to_owned(),
            })
    }

    fn rendered(&self) -> Vec<(String, String, Option<String>)> {
        use rayon::prelude::*;
        let v: Vec<&DescEntry> = self.entries.values().collect();
        let work = |e: &&DescEntry| {
            (
                e.dir_name(),
                e.to_desc(),
                e.files.as_ref().map(|_| e.to_files()),
            )
        };
        if v.len() >= 256 {
            v.par_iter().map(work).collect()
        } else {
            v.iter().map(work).collect()
        }
    }

    fn tars(&self) -> (Vec<u8>, Vec<u8>) {
        let rendered = self.rendered();
        let pad = |n: usize| n.div_ceil(512) * 512;
        let (mut db_cap, mut files_cap) = (1024, 1024);
        for (_, desc, f) in &rendered {
            db_cap += 1024 + pad(desc.len()) + 1024;
            if let Some(f) = f {
                files_cap += 1536 + pad(desc.len()) + pad(f.len()) + 1024;
            }
        }
        let mut db = TarWriter::with_capacity(db_cap);
        let mut files = TarWriter::with_capacity(files_cap);
        let mut path = String::new();
        for (dir, desc, f) in &rendered {
            path.clear();
            path.push_str(dir);
            path.push('/');
            db.dir(&path, 0o755, 0);
            if f.is_some() {
                files.dir(&path, 0o755, 0);
            }
            path.push_str("desc");
            db.file(&path, 0o644, desc.as_bytes(), 0);
            if let Some(f) = f {
                files.file(&path, 0o644, desc.as_bytes(), 0);
                path.truncate(path.len() - 4);
                path.push_str("files");
                files.file(&path, 0o644, f.as_bytes(), 0);
            }
        }
        (db.finish(), files.finish())
    }

    /// The sync database archive (`NAME.db.tar.*`) as bytes.
    pub fn db_archive(&self, compression: Compression) -> io::Result<Vec<u8>> {
        compression.compress(&self.tars().0)
    }

    /// The files database archive (`NAME.files.tar.*`) as bytes. Entries
    /// without a known file list are left out (as repo-add does when the
    /// files database was missing).
    pub fn files_archive(&self, compression: Compression) -> io::Result<Vec<u8>> {
        compression.compress(&self.tars().1)
    }

    /// Both archives, compressed in parallel.
    pub fn archives(&self, compression: Compression) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let (db, files) = self.tars();
        let (a, b) = rayon::join(
            || compression.compress(&db),
            || compression.compress(&files),
        );
        Ok((a?, b?))
    }

    /// Write the sync and files databases, their links and (with a signer)
    /// their signatures, atomically as described in the [module docs](self).
    /// The compression comes from the file name of `db_path`.
    pub fn write(
        &self,
        db_path: &Path,
        signer: Option<&dyn DetachedSigner>,
    ) -> Result<WriteReport, DbError> {
        let paths = DbPaths::new(db_path)?;
        self.write_paths(&paths, signer, Vec::new())
    }

    fn write_paths(
        &self,
        paths: &DbPaths,
        signer: Option<&dyn DetachedSigner>,
        extra: Vec<(Vec<u8>, PathBuf)>,
    ) -> Result<WriteReport, DbError> {
        let (db_bytes, files_bytes) = self
            .archives(paths.compression)
            .map_err(io_err(&paths.db))?;
        let sign = |what: &Path, data: &[u8]| -> Result<Option<Vec<u8>>, DbError> {
            match signer {
                None => Ok(None),
                Some(s) => s
                    .sign_detached(data)
                    .map(Some)
                    .map_err(|source| DbError::Sign {
                        what: what.display().to_string(),
                        source,
                    }),
            }
        };
        let db_sig = sign(&paths.db, &db_bytes)?;
        let files_sig = sign(&paths.files, &files_bytes)?;

        let mut tx = Staging::new(&paths.dir);
        for (bytes, dest) in &extra {
            tx.file(bytes, dest)?;
        }
        for (bytes, sig, file, link) in [
            (&files_bytes, &files_sig, &paths.files, &paths.files_link),
            (&db_bytes, &db_sig, &paths.db, &paths.db_link),
        ] {
            let sig_path = signature_path(file);
            let sig_link = signature_path(link);
            let target = file.file_name().expect("has a file name");
            match sig {
                Some(sig) => {
                    tx.file(sig, &sig_path)?;
                    let mut t = target.to_owned();
                    t.push(".sig");
                    tx.symlink(Path::new(&t), &sig_link)?;
                }
                None => {
                    tx.remove(&sig_path);
                    tx.remove(&sig_link);
                }
            }
            tx.file(bytes, file)?;
            tx.symlink(Path::new(target), link)?;
        }
        tx.commit()?;
        Ok(WriteReport {
            db: paths.db.clone(),
            files: paths.files.clone(),
            db_sig: db_sig.map(|_| signature_path(&paths.db)),
            files_sig: files_sig.map(|_| signature_path(&paths.files)),
            db_blake3: blake3::hash(&db_bytes).to_hex().to_string(),
            files_blake3: blake3::hash(&files_bytes).to_hex().to_string(),
            db_size: db_bytes.len() as u64,
            files_size: files_bytes.len() as u64,
        })
    }
}

/// What [`Database::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct WriteReport {
    /// The sync database file.
    pub db: PathBuf,
    /// The files database file.
    pub files: PathBuf,
    /// Its signature, when signed.
    pub db_sig: Option<PathBuf>,
    /// The files database signature, when signed.
    pub files_sig: Option<PathBuf>,
    /// BLAKE3 of the sync database bytes.
    pub db_blake3: String,
    /// BLAKE3 of the files database bytes.
    pub files_blake3: String,
    /// Size of the sync database.
    pub db_size: u64,
    /// Size of the files database.
    pub files_size: u64,
}

enum Step<'a> {
    Pending(&'a [u8], PathBuf),
    Rename(tempfile::TempPath, PathBuf),
    Remove(PathBuf),
}

/// Temporary files in the target directory, renamed into place in order by
/// [`Staging::commit`]; dropped (and deleted) on any earlier error.
struct Staging<'a> {
    dir: PathBuf,
    steps: Vec<Step<'a>>,
}

impl<'a> Staging<'a> {
    fn new(dir: &Path) -> Self {
        Staging {
            dir: dir.to_owned(),
            steps: Vec::new(),
        }
    }

    /// Queue `data` for `dest`; the temporary files are written (and
    /// fsynced, in parallel) by [`Self::commit`] before any rename.
    fn file(&mut self, data: &'a [u8], dest: &Path) -> Result<(), DbError> {
        self.steps.push(Step::Pending(data, dest.to_owned()));
        Ok(())
    }

    fn write_temp(&self, data: &[u8], dest: &Path) -> Result<tempfile::TempPath, DbError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&self.dir);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp.pacmesh.")
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(dir)
            .map_err(io_err(dir))?;
        // The umask may have narrowed the mode.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(io_err(tmp.path()))?;
        tmp.write_all(data).map_err(io_err(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        Ok(tmp.into_temp_path())
    }

    /// Write every queued file to its temporary name, concurrently (the
    /// fsyncs overlap). On error, the temporary files are removed on drop.
    fn stage_all(&mut self) -> Result<(), DbError> {
        use rayon::prelude::*;
        let mut steps = std::mem::take(&mut self.steps);
        let this = &*self;
        let res = steps.par_iter_mut().try_for_each(|step| {
            if let Step::Pending(data, dest) = step {
                let tmp = this.write_temp(data, dest)?;
                *step = Step::Rename(tmp, dest.clone());
            }
            Ok::<(), DbError>(())
        });
        self.steps = steps;
        res
    }

    fn symlink(&mut self, target: &Path, link: &Path) -> Result<(), DbError> {
        if fs::read_link(link).is_ok_and(|t| t == target) {
            return Ok(());
        }
        let dir = link
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(&self.dir);
        // Reserve a unique name, then put a symlink there.
        let tmp = tempfile::Builder::new()
            .prefix(".tmp.pacmesh.")
            .tempfile_in(dir)
            .map_err(io_err(dir))?
            .into_temp_path();
        fs::remove_file(&tmp).map_err(io_err(&tmp))?;
        std::os::unix::fs::symlink(target, &tmp).map_err(io_err(&tmp))?;
        self.steps.push(Step::Rename(tmp, link.to_owned()));
        Ok(())
    }

    fn remove(&mut self, path: &Path) {
        if fs::symlink_metadata(path).is_ok() {
            self.steps.push(Step::Remove(path.to_owned()));
        }
    }

    fn commit(mut self) -> Result<(), DbError> {
        self.stage_all()?;
        for step in self.steps {
            match step {
                Step::Pending(..) => unreachable!("staged above"),
                Step::Rename(tmp, dest) => {
                    tmp.persist(&dest).map_err(|e| DbError::Io {
                        path: dest.clone(),
                        source: e.error,
                    })?;
                }
                Step::Remove(p) => match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(DbError::Io { path: p, source }),
                },
            }
        }
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// repo-add's lock file (`NAME.db.tar.EXT.lck`, created exclusively, removed
/// on drop), so pacmesh and repo-add never write the same database at once.
#[derive(Debug)]
pub struct DbLock {
    path: PathBuf,
}

impl DbLock {
    /// Take the lock, failing with [`DbError::Locked`] if it is held.
    pub fn acquire(paths: &DbPaths) -> Result<Self, DbError> {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&paths.lock)
        {
            Ok(mut f) => {
                let _ = writeln!(f, "{}", std::process::id());
                Ok(DbLock {
                    path: paths.lock.clone(),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(DbError::Locked {
                path: paths.lock.clone(),
            }),
            Err(source) => Err(DbError::Io {
                path: paths.lock.clone(),
                source,
            }),
        }
    }
}

impl Drop for DbLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// One package handled by [`repo_add`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AddedPackage {
    /// Package name.
    pub name: String,
    /// Its version.
    pub version: Version,
    /// The package file.
    pub path: PathBuf,
    /// What happened to the database entry.
    pub outcome: AddOutcome,
    /// The `.sig` pacmesh created for it, if any.
    pub signed: Option<PathBuf>,
}

/// Result of [`repo_add`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AddReport {
    /// Per package, in argument order.
    pub packages: Vec<AddedPackage>,
    /// Replaced package files (and `.sig`s) deleted (with `remove_old_files`).
    pub removed_files: Vec<PathBuf>,
    /// Replaced files that could not be deleted, with the reason (the
    /// database was written anyway).
    pub remove_failures: Vec<(PathBuf, String)>,
    /// The database files written; `None` when nothing changed.
    pub written: Option<WriteReport>,
}

/// A detached signature over a package file (binary, for `PKG.sig`).
pub fn sign_package_bytes(pkg: &Path, signer: &dyn DetachedSigner) -> Result<Vec<u8>, DbError> {
    let data = fs::read(pkg).map_err(io_err(pkg))?;
    signer.sign_detached(&data).map_err(|source| DbError::Sign {
        what: pkg.display().to_string(),
        source,
    })
}

/// Sign a package file that has no `PKG.sig` yet, writing the signature
/// atomically. Returns the new `.sig` path, or `None` if one already existed.
pub fn sign_package_file(
    pkg: &Path,
    signer: &dyn DetachedSigner,
) -> Result<Option<PathBuf>, DbError> {
    let sig = signature_path(pkg);
    if fs::symlink_metadata(&sig).is_ok() {
        return Ok(None);
    }
    let bytes = sign_package_bytes(pkg, signer)?;
    let dir = pkg
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tx = Staging::new(dir);
    tx.file(&bytes, &sig)?;
    tx.commit()?;
    Ok(Some(sig))
}

/// `repo-add` in one call: lock, load (or create) the database at `db_path`,
/// read `packages` (in parallel; only these are read and hashed), add them in
/// order, write everything atomically, then delete replaced files if asked.
/// If any package cannot be read or is refused, nothing on disk changes.
pub fn repo_add<P: AsRef<Path> + Sync>(
    db_path: &Path,
    packages: &[P],
    opts: &AddOptions,
    signer: Option<&dyn DetachedSigner>,
) -> Result<AddReport, DbError> {
    use rayon::prelude::*;
    let paths = DbPaths::new(db_path)?;
    let _lock = DbLock::acquire(&paths)?;
    let mut db = Database::load_paths(&paths)?.unwrap_or_else(|| Database::new(paths.name.clone()));
    let mut infos = packages
        .par_iter()
        .map(|p| read_package(p.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut extra = Vec::new();
    let mut signed = vec![None; infos.len()];
    if let (Some(s), true) = (signer, opts.sign_packages) {
        for (i, info) in infos.iter_mut().enumerate() {
            if info.pgpsig.is_none() {
                let bytes = sign_package_bytes(&info.path, s)?;
                let sig_path = signature_path(&info.path);
                info.pgpsig = Some(encode_signature(&sig_path, &bytes)?);
                extra.push((bytes, sig_path.clone()));
                signed[i] = Some(sig_path);
            }
        }
    }
    let mut report = AddReport {
        packages: Vec::new(),
        removed_files: Vec::new(),
        remove_failures: Vec::new(),
        written: None,
    };
    let mut changed = !extra.is_empty();
    for (info, signed) in infos.iter().zip(signed) {
        let outcome = db.add(info, opts.allow_downgrade)?;
        changed |= outcome != AddOutcome::Unchanged;
        report.packages.push(AddedPackage {
            name: info.pkginfo.pkgname.clone(),
            version: info.pkginfo.pkgver.clone(),
            path: info.path.clone(),
            outcome,
            signed,
        });
    }
    // Like repo-add, always (re)write, so a first run creates the files.
    let exists =
        fs::symlink_metadata(&paths.db).is_ok() && fs::symlink_metadata(&paths.files).is_ok();
    // A signer and an unsigned database: sign it even if no entry changed.
    let needs_sig = signer.is_some() && !signature_path(&paths.db).exists();
    if changed || !exists || needs_sig {
        report.written = Some(db.write_paths(&paths, signer, extra)?);
    }
    if opts.remove_old_files {
        let current: std::collections::HashSet<&str> =
            db.entries.values().map(|e| e.filename.as_str()).collect();
        for (p, info) in report.packages.iter().zip(&infos) {
            let AddOutcome::Replaced { old_filename, .. } = &p.outcome else {
                continue;
            };
            if !is_plain_file_name(old_filename) || current.contains(old_filename.as_str()) {
                continue;
            }
            let dir = info
                .path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let old = dir.join(old_filename);
            for f in [signature_path(&old), old] {
                match fs::remove_file(&f) {
                    Ok(()) => report.removed_files.push(f),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => report.remove_failures.push((f, e.to_string())),
                }
            }
        }
    }
    Ok(report)
}

/// Result of [`repo_remove`].
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RemoveReport {
    /// The removed entries.
    pub removed: Vec<DescEntry>,
    /// The database files written.
    pub written: WriteReport,
}

/// `repo-remove` in one call: the database must exist and every name must
/// be in it, otherwise nothing changes. Package files are not deleted.
pub fn repo_remove<S: AsRef<str>>(
    db_path: &Path,
    names: &[S],
    signer: Option<&dyn DetachedSigner>,
) -> Result<RemoveReport, DbError> {
    let paths = DbPaths::new(db_path)?;
    let _lock = DbLock::acquire(&paths)?;
    let mut db = Database::load_paths(&paths)?.ok_or_else(|| DbError::NotFound {
        path: paths.db.clone(),
    })?;
    let mut removed = Vec::new();
    for n in names {
        removed.push(db.remove(n.as_ref())?);
    }
    let written = db.write_paths(&paths, signer, Vec::new())?;
    Ok(RemoveReport { removed, written })
}

/// Group helper for callers that want entries by package base.
pub fn entries_by_base(db: &Database) -> HashMap<&str, Vec<&DescEntry>> {
    let mut m: HashMap<&str, Vec<&DescEntry>> = HashMap::new();
    for e in db.entries.values() {
        m.entry(e.base.as_deref().unwrap_or(&e.name))
            .or_default()
            .push(e);
    }
    m
}
