//! The content store: blobs (packages, build logs, repository databases,
//! source snapshots) named by their BLAKE3 hash.
//!
//! # Goals
//!
//! - **Never hand out wrong bytes.** Every read re-hashes the content and
//!   compares it with the name ([`BlobError::Corrupt`] otherwise); a corrupt
//!   file is moved aside and forgotten so that replication can fetch a good
//!   copy again.
//! - **Never half a blob.** An import streams into a temporary file in the
//!   same file system while hashing, `fsync`s it, renames it into place and
//!   `fsync`s the directory; only then is the index updated. A crash leaves at
//!   worst a temporary file (removed at the next open) or a complete blob file
//!   without an index entry (adopted at the next open after re-hashing).
//! - **Bounded disk use.** Blobs are kept while something *pins* them (a
//!   named root: an event id, a repo generation, "want" lists); [`BlobStore::gc`]
//!   deletes the rest once they are older than a grace period.
//!
//! # Non-goals
//!
//! Partial/range verification (that would need BLAKE3 verified streaming,
//! e.g. `bao`), deduplication below the blob level, compression.
//!
//! # Layout of [`FsStore`]
//!
//! ```text
//! DIR/blobs/ab/abcdef…(64 hex)   the content, named by its full hash
//! DIR/blobs/tmp/                 imports in progress (cleared at open)
//! DIR/blobs/corrupt/             files that failed verification on read
//! sled tree "blobs"              hash(32) → size u64 BE ‖ added ms u64 BE
//! sled tree "blob_pins"          hash(32) ‖ tag (utf-8) → ""
//! ```
//!
//! [`MemStore`] keeps the same semantics in memory; the tests in this module
//! are written once over `&dyn BlobStore` and run against both.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use pacmesh_protocol::{Hash, Timestamp};

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The store does not hold the blob.
    #[error("blob {0} is not in the store")]
    NotFound(Hash),
    /// The stored content does not hash to its name. The copy has been moved
    /// aside (it no longer counts as present); fetch it again.
    #[error("blob {hash} is corrupt (content hashes to {actual}); it was moved aside")]
    Corrupt {
        /// The name of the blob.
        hash: Hash,
        /// What the content hashes to.
        actual: Hash,
    },
    /// An import was given an expected hash and the content differs: nothing
    /// was stored.
    #[error("expected blob {expected}, received content hashing to {actual}; not stored")]
    Mismatch {
        /// The hash the caller asked for.
        expected: Hash,
        /// What the content hashes to.
        actual: Hash,
    },
    /// A file-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The sled index failed.
    #[error("blob index: {0}")]
    Index(#[from] sled::Error),
    /// An index record could not be read.
    #[error("blob index record for {0} is malformed")]
    BadIndex(Hash),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BlobError {
    let context = context.into();
    move |source| BlobError::Io { context, source }
}

/// Metadata of a stored blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobInfo {
    /// Size in bytes.
    pub size: u64,
    /// When it was added to this store.
    pub added: Timestamp,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Blobs deleted.
    pub removed: u64,
    /// Bytes freed.
    pub bytes: u64,
    /// Unpinned blobs kept because they are younger than the grace period.
    pub kept_young: u64,
}

/// A store of blobs named by BLAKE3. See the [module docs](self).
///
/// Pins are named roots: `pin(hash, "event:<id>")`. A blob with at least one
/// pin is never collected. A hash may be pinned before the blob is present
/// (a "want"), and pins survive a corrupt copy being moved aside.
pub trait BlobStore: Send + Sync {
    /// Streams `reader` into the store while hashing it. With `expected`,
    /// content hashing to anything else is refused ([`BlobError::Mismatch`])
    /// and nothing is stored. Importing content that is already present is a
    /// no-op that returns its hash.
    fn import_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Hash>,
    ) -> Result<Hash, BlobError>;

    /// Imports `data`.
    fn import_bytes(&self, data: &[u8]) -> Result<Hash, BlobError> {
        let mut r = data;
        self.import_reader(&mut r, None)
    }

    /// Imports the file at `path` (copied, not moved).
    fn import_file(&self, path: &Path) -> Result<Hash, BlobError> {
        let mut f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
        self.import_reader(&mut f, None)
    }

    /// Whether the blob is present (according to the index; the content is
    /// checked when read).
    fn has(&self, hash: &Hash) -> Result<bool, BlobError> {
        Ok(self.info(hash)?.is_some())
    }

    /// Size and age of a present blob.
    fn info(&self, hash: &Hash) -> Result<Option<BlobInfo>, BlobError>;

    /// The whole content, verified.
    fn read(&self, hash: &Hash) -> Result<Vec<u8>, BlobError>;

    /// A reader over the content. The content has been verified in full
    /// before this returns (so a stream costs two reads of the file).
    fn open(&self, hash: &Hash) -> Result<Box<dyn Read + Send>, BlobError>;

    /// Writes the verified content to `dest` atomically (temporary file in
    /// `dest`'s directory, then rename). Returns the size.
    fn export(&self, hash: &Hash, dest: &Path) -> Result<u64, BlobError> {
        let mut src = self.open(hash)?;
        let dir = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(format!(
            "create a temporary file in {}",
            dir.display()
        )))?;
        let n = io::copy(&mut src, tmp.as_file_mut())
            .map_err(io_err(format!("export blob {}", hash.fmt_short())))?;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(io_err("chmod export"))?;
        tmp.as_file().sync_all().map_err(io_err("fsync export"))?;
        tmp.persist(dest).map_err(|e| BlobError::Io {
            context: format!("rename into {}", dest.display()),
            source: e.error,
        })?;
        Ok(n)
    }

    /// Number of blobs present (may scan the index).
    fn len(&self) -> Result<usize, BlobError>;

    /// Whether the store holds no blob.
    fn is_empty(&self) -> Result<bool, BlobError> {
        Ok(self.len()? == 0)
    }

    /// Every present blob, in hash order.
    fn list(&self) -> Result<Vec<Hash>, BlobError>;

    /// Adds the named root `tag` to `hash` (idempotent).
    fn pin(&self, hash: &Hash, tag: &str) -> Result<(), BlobError>;

    /// Removes the named root; returns whether it existed.
    fn unpin(&self, hash: &Hash, tag: &str) -> Result<bool, BlobError>;

    /// The roots pinning `hash`, sorted.
    fn pins(&self, hash: &Hash) -> Result<Vec<String>, BlobError>;

    /// Deletes every blob without a pin that was added more than `grace` ago
    /// (`Duration::ZERO`: every unpinned blob). The grace period protects a
    /// blob between its import and its caller's `pin`.
    fn gc(&self, grace: Duration) -> Result<GcStats, BlobError>;
}

/// Hashes `reader` into `sink`, returning the hash and the length.
fn copy_hashing(reader: &mut dyn Read, sink: &mut dyn Write) -> io::Result<(Hash, u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..k]);
        sink.write_all(&buf[..k])?;
        n += k as u64;
    }
    Ok((Hash::from(hasher.finalize()), n))
}

fn older_than(added: Timestamp, grace: Duration, now: Timestamp) -> bool {
    added.saturating_add(grace) <= now
}

// ---- MemStore ---------------------------------------------------------------

/// An in-memory [`BlobStore`] (tests, ephemeral nodes).
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Default)]
struct MemInner {
    blobs: BTreeMap<Hash, (Vec<u8>, Timestamp)>,
    pins: BTreeMap<Hash, BTreeSet<String>>,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Flips a bit of a stored blob (for tests of corruption handling).
    #[doc(hidden)]
    pub fn corrupt_for_test(&self, hash: &Hash) {
        let mut g = self.inner.lock().unwrap();
        if let Some((data, _)) = g.blobs.get_mut(hash) {
            if data.is_empty() {
                data.push(0);
            } else {
                data[0] ^= 1;
            }
        }
    }

    fn verified(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        let mut g = self.inner.lock().unwrap();
        let (data, _) = g.blobs.get(hash).ok_or(BlobError::NotFound(*hash))?;
        let actual = Hash::new(data);
        if actual != *hash {
            g.blobs.remove(hash);
            return Err(BlobError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(data.clone())
    }
}

impl BlobStore for MemStore {
    fn import_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Hash>,
    ) -> Result<Hash, BlobError> {
        let mut data = Vec::new();
        let (hash, _) = copy_hashing(reader, &mut data).map_err(io_err("read blob content"))?;
        if let Some(e) = expected
            && *e != hash
        {
            return Err(BlobError::Mismatch {
                expected: *e,
                actual: hash,
            });
        }
        let mut g = self.inner.lock().unwrap();
        // Present already: only `added` is refreshed (see FsStore).
        g.blobs.entry(hash).or_insert((data, Timestamp::now())).1 = Timestamp::now();
        Ok(hash)
    }

    fn info(&self, hash: &Hash) -> Result<Option<BlobInfo>, BlobError> {
        let g = self.inner.lock().unwrap();
        Ok(g.blobs.get(hash).map(|(d, t)| BlobInfo {
            size: d.len() as u64,
            added: *t,
        }))
    }

    fn read(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        self.verified(hash)
    }

    fn open(&self, hash: &Hash) -> Result<Box<dyn Read + Send>, BlobError> {
        Ok(Box::new(io::Cursor::new(self.verified(hash)?)))
    }

    fn len(&self) -> Result<usize, BlobError> {
        Ok(self.inner.lock().unwrap().blobs.len())
    }

    fn list(&self) -> Result<Vec<Hash>, BlobError> {
        Ok(self.inner.lock().unwrap().blobs.keys().copied().collect())
    }

    fn pin(&self, hash: &Hash, tag: &str) -> Result<(), BlobError> {
        self.inner
            .lock()
            .unwrap()
            .pins
            .entry(*hash)
            .or_default()
            .insert(tag.to_owned());
        Ok(())
    }

    fn unpin(&self, hash: &Hash, tag: &str) -> Result<bool, BlobError> {
        let mut g = self.inner.lock().unwrap();
        let Some(set) = g.pins.get_mut(hash) else {
            return Ok(false);
        };
        let had = set.remove(tag);
        if set.is_empty() {
            g.pins.remove(hash);
        }
        Ok(had)
    }

    fn pins(&self, hash: &Hash) -> Result<Vec<String>, BlobError> {
        let g = self.inner.lock().unwrap();
        Ok(g.pins
            .get(hash)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }

    fn gc(&self, grace: Duration) -> Result<GcStats, BlobError> {
        let now = Timestamp::now();
        let mut g = self.inner.lock().unwrap();
        let mut stats = GcStats::default();
        let MemInner { blobs, pins } = &mut *g;
        blobs.retain(|h, (data, added)| {
            if pins.contains_key(h) {
                return true;
            }
            if !older_than(*added, grace, now) {
                stats.kept_young += 1;
                return true;
            }
            stats.removed += 1;
            stats.bytes += data.len() as u64;
            false
        });
        Ok(stats)
    }
}

// ---- FsStore ----------------------------------------------------------------

/// Sled tree of blob metadata.
pub const BLOBS_TREE: &str = "blobs";
/// Sled tree of pins.
pub const PINS_TREE: &str = "blob_pins";

/// A [`BlobStore`] of files named by hash plus a sled index. See the
/// [module docs](self) for the layout and the crash-safety argument.
pub struct FsStore {
    root: PathBuf,
    db: sled::Db,
    index: sled::Tree,
    pins: sled::Tree,
    /// Imports take it shared, `gc` exclusively: a collection never deletes a
    /// blob that an import just found already present.
    gc_lock: RwLock<()>,
    /// Batched durability ([`FsStore::set_deferred_durability`]).
    deferred: std::sync::atomic::AtomicBool,
}

/// What [`FsStore::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FsRepair {
    /// Leftover temporary files removed.
    pub temp_removed: u64,
    /// Complete blob files without an index entry, verified and indexed.
    pub adopted: u64,
    /// Files without an index entry whose content does not match their name,
    /// moved to `corrupt/`.
    pub quarantined: u64,
}

fn encode_info(i: BlobInfo) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&i.size.to_be_bytes());
    v[8..].copy_from_slice(&i.added.as_millis().to_be_bytes());
    v
}

fn decode_info(hash: &Hash, v: &[u8]) -> Result<BlobInfo, BlobError> {
    if v.len() != 16 {
        return Err(BlobError::BadIndex(*hash));
    }
    let size = u64::from_be_bytes(v[..8].try_into().unwrap());
    let added = u64::from_be_bytes(v[8..].try_into().unwrap());
    Ok(BlobInfo {
        size,
        added: Timestamp::from_millis(added),
    })
}

fn hash_key(k: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(k).ok().map(Hash::from_bytes)
}

fn fsync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

impl FsStore {
    /// Opens (creating) the store under `dir/blobs`, with its index in the
    /// sled database `db` (shared with the event store). Clears leftover
    /// temporary files and adopts complete blob files that a crash left
    /// without an index entry.
    pub fn open(dir: &Path, db: &sled::Db) -> Result<(Self, FsRepair), BlobError> {
        let root = dir.join("blobs");
        for d in [root.clone(), root.join("tmp"), root.join("corrupt")] {
            fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        }
        let store = FsStore {
            root,
            db: db.clone(),
            index: db.open_tree(BLOBS_TREE)?,
            pins: db.open_tree(PINS_TREE)?,
            gc_lock: RwLock::new(()),
            deferred: std::sync::atomic::AtomicBool::new(false),
        };
        let repair = store.repair()?;
        Ok((store, repair))
    }

    /// Batched durability: with `on`, imports ([`BlobStore::import_reader`],
    /// [`FsStore::adopt_verified`]) skip their per-blob file `fsync`, directory `fsync` and
    /// index flush; the caller makes everything durable at once with [`FsStore::make_durable`]
    /// before it relies on the blobs surviving a power loss (a mirror: before it switches to a
    /// generation naming them). Until then a crash may leave an index entry whose file is
    /// empty or short; reads still verify every byte, and a mirror re-verifies such blobs at
    /// its next start.
    pub fn set_deferred_durability(&self, on: bool) {
        self.deferred.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_deferred(&self) -> bool {
        self.deferred.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Makes every import so far durable: one `syncfs(2)` of the file system holding the blobs
    /// (file contents and directory entries) and one index flush.
    pub fn make_durable(&self) -> Result<(), BlobError> {
        use std::os::fd::AsRawFd;
        let d = File::open(&self.root).map_err(io_err(format!("open {}", self.root.display())))?;
        // SAFETY: a valid open file descriptor, owned by `d` for the call.
        if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
            return Err(io_err(format!("syncfs {}", self.root.display()))(
                io::Error::last_os_error(),
            ));
        }
        self.db.flush()?;
        Ok(())
    }

    /// Reads `hash` in full and checks it against its name; a blob that does not verify (or
    /// whose file is gone) is moved aside and forgotten, so that it is fetched again. Returns
    /// whether it is present and good.
    pub fn verify(&self, hash: &Hash) -> Result<bool, BlobError> {
        match self.open_verified(hash) {
            Ok(_) => Ok(true),
            Err(BlobError::NotFound(_) | BlobError::Corrupt { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The directory holding the blob files (`DIR/blobs`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `hash` lives.
    pub fn path_of(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    fn repair(&self) -> Result<FsRepair, BlobError> {
        let mut r = FsRepair::default();
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err(format!("list {}", tmp.display())))? {
            let e = e.map_err(io_err("list tmp"))?;
            if fs::remove_file(e.path()).is_ok() {
                r.temp_removed += 1;
            }
        }
        // Files without an index entry: a crash between rename and index
        // insert. The prefix directories are few (≤ 256), the files many, so
        // this costs one readdir per prefix.
        for e in fs::read_dir(&self.root).map_err(io_err("list blobs"))? {
            let e = e.map_err(io_err("list blobs"))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.len() != 2 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            for f in fs::read_dir(e.path()).map_err(io_err("list blobs"))? {
                let f = f.map_err(io_err("list blobs"))?;
                let Some(hash) = f.file_name().to_str().and_then(|s| s.parse::<Hash>().ok()) else {
                    continue;
                };
                if self.index.contains_key(hash.as_bytes())? {
                    continue;
                }
                let mut file = File::open(f.path()).map_err(io_err("open blob"))?;
                let (actual, size) =
                    copy_hashing(&mut file, &mut io::sink()).map_err(io_err("hash blob"))?;
                if actual == hash {
                    let info = BlobInfo {
                        size,
                        added: Timestamp::now(),
                    };
                    self.index.insert(hash.as_bytes(), &encode_info(info))?;
                    r.adopted += 1;
                } else {
                    self.quarantine(&hash);
                    r.quarantined += 1;
                }
            }
        }
        if r.adopted > 0 || r.quarantined > 0 {
            self.db.flush()?;
        }
        Ok(r)
    }

    /// Moves a bad file aside and forgets it (pins stay).
    fn quarantine(&self, hash: &Hash) {
        let src = self.path_of(hash);
        let dst = self.root.join("corrupt").join(format!(
            "{}.{}",
            hash.to_hex(),
            Timestamp::now().as_millis()
        ));
        if fs::rename(&src, &dst).is_err() {
            let _ = fs::remove_file(&src);
        }
        let _ = self.index.remove(hash.as_bytes());
        let _ = self.db.flush();
        tracing::warn!(hash = %hash.fmt_short(), moved_to = %dst.display(), "corrupt blob moved aside");
    }

    /// Opens the file and verifies it in full; leaves the cursor at 0.
    fn open_verified(&self, hash: &Hash) -> Result<(File, u64), BlobError> {
        if !self.index.contains_key(hash.as_bytes())? {
            return Err(BlobError::NotFound(*hash));
        }
        let path = self.path_of(hash);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Indexed but gone (deleted behind our back): forget it.
                self.index.remove(hash.as_bytes())?;
                return Err(BlobError::NotFound(*hash));
            }
            Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
        };
        let (actual, size) = copy_hashing(&mut f, &mut io::sink())
            .map_err(io_err(format!("read {}", path.display())))?;
        if actual != *hash {
            drop(f);
            self.quarantine(hash);
            return Err(BlobError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        f.rewind().map_err(io_err("seek blob"))?;
        Ok((f, size))
    }
}

impl FsStore {
    /// Moves the complete file at `path`, whose content the caller has verified to be `hash`
    /// (the fetch engine checks every segment against the blob's BLAKE3 tree), into the store:
    /// read-only, `fsync`ed, renamed into place, indexed. The file must hold exactly `len`
    /// bytes. Falls back to a hashing copy when `path` is on another file system.
    pub fn adopt_verified(&self, path: &Path, hash: &Hash, len: u64) -> Result<(), BlobError> {
        let actual_len = fs::metadata(path)
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        if actual_len != len {
            return Err(BlobError::Io {
                context: format!("adopt {}", path.display()),
                source: io::Error::other(format!("{actual_len} bytes, expected {len}")),
            });
        }
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let dest = self.path_of(hash);
        if self.index.contains_key(hash.as_bytes())? && dest.exists() {
            let _ = fs::remove_file(path);
            return Ok(());
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o444))
            .map_err(io_err("chmod adopted blob"))?;
        let parent = dest.parent().expect("blob paths have a prefix directory");
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        if let Err(e) = fs::rename(path, &dest) {
            if e.raw_os_error() == Some(libc::EXDEV) {
                drop(_shared);
                let mut f = File::open(path).map_err(io_err("open adopted blob"))?;
                self.import_reader(&mut f, Some(hash))?;
                let _ = fs::remove_file(path);
                return Ok(());
            }
            return Err(io_err(format!("rename into {}", dest.display()))(e));
        }
        let deferred = self.is_deferred();
        if !deferred {
            fsync_dir(parent)?;
        }
        let now = encode_info(BlobInfo {
            size: len,
            added: Timestamp::now(),
        });
        self.index.insert(hash.as_bytes(), &now)?;
        if !deferred {
            self.db.flush()?;
        }
        Ok(())
    }

    /// Deletes `hash` now if nothing pins it, whatever its age (builder retention releases a
    /// replicated blob this way); `Ok(true)` if it was removed.
    pub fn remove_unpinned(&self, hash: &Hash) -> Result<bool, BlobError> {
        let _exclusive = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        if self.pins.scan_prefix(hash.as_bytes()).next().is_some() {
            return Ok(false);
        }
        // Index first, as in `gc`.
        if self.index.remove(hash.as_bytes())?.is_none() {
            return Ok(false);
        }
        match fs::remove_file(self.path_of(hash)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("remove blob")(e)),
        }
        self.db.flush()?;
        Ok(true)
    }

    /// Pins every hash in `hashes` with `tag`, with one flush (a generation pins thousands).
    pub fn pin_all<'a>(
        &self,
        hashes: impl IntoIterator<Item = &'a Hash>,
        tag: &str,
    ) -> Result<(), BlobError> {
        let mut batch = sled::Batch::default();
        for h in hashes {
            let mut k = h.as_bytes().to_vec();
            k.extend_from_slice(tag.as_bytes());
            batch.insert(k, &[] as &[u8]);
        }
        self.pins.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes `tag` from every hash in `hashes`, with one flush.
    pub fn unpin_all<'a>(
        &self,
        hashes: impl IntoIterator<Item = &'a Hash>,
        tag: &str,
    ) -> Result<(), BlobError> {
        let mut batch = sled::Batch::default();
        for h in hashes {
            let mut k = h.as_bytes().to_vec();
            k.extend_from_slice(tag.as_bytes());
            batch.remove(k);
        }
        self.pins.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
}

impl BlobStore for FsStore {
    fn import_reader(
        &self,
        reader: &mut dyn Read,
        expected: Option<&Hash>,
    ) -> Result<Hash, BlobError> {
        let tmp_dir = self.root.join("tmp");
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_err(format!(
            "create a temporary file in {}",
            tmp_dir.display()
        )))?;
        let (hash, size) = {
            let mut w = io::BufWriter::with_capacity(256 * 1024, tmp.as_file_mut());
            let r = copy_hashing(reader, &mut w).map_err(io_err("import blob"))?;
            w.flush().map_err(io_err("import blob"))?;
            r
        };
        if let Some(e) = expected
            && *e != hash
        {
            return Err(BlobError::Mismatch {
                expected: *e,
                actual: hash,
            });
        }
        // From here to the index insert, a collection must not run: it could
        // delete the blob this import found present. (Streaming above runs
        // without the lock, so a slow sender never holds up `gc`.)
        let _shared = self.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let now = encode_info(BlobInfo {
            size,
            added: Timestamp::now(),
        });
        if self.index.contains_key(hash.as_bytes())? && self.path_of(&hash).exists() {
            // Present already: refresh `added` so that the grace period of
            // `gc` protects it until the caller pins it. Not flushed: only
            // the running process relies on it.
            self.index.insert(hash.as_bytes(), &now)?;
            return Ok(hash); // the temporary file is removed on drop
        }
        // Read-only: blobs are immutable, and an accidental write should
        // fail loudly rather than be caught later by verification.
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o444))
            .map_err(io_err("chmod imported blob"))?;
        let deferred = self.is_deferred();
        if !deferred {
            tmp.as_file()
                .sync_all()
                .map_err(io_err("fsync imported blob"))?;
        }
        let dest = self.path_of(&hash);
        let parent = dest.parent().expect("blob paths have a prefix directory");
        fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        tmp.persist(&dest).map_err(|e| BlobError::Io {
            context: format!("rename into {}", dest.display()),
            source: e.error,
        })?;
        if !deferred {
            fsync_dir(parent)?;
        }
        self.index.insert(hash.as_bytes(), &now)?;
        if !deferred {
            self.db.flush()?;
        }
        Ok(hash)
    }

    fn info(&self, hash: &Hash) -> Result<Option<BlobInfo>, BlobError> {
        self.index
            .get(hash.as_bytes())?
            .map(|v| decode_info(hash, &v))
            .transpose()
    }

    fn read(&self, hash: &Hash) -> Result<Vec<u8>, BlobError> {
        // One pass: read into memory, then hash what was read.
        if !self.index.contains_key(hash.as_bytes())? {
            return Err(BlobError::NotFound(*hash));
        }
        let path = self.path_of(hash);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.index.remove(hash.as_bytes())?;
                return Err(BlobError::NotFound(*hash));
            }
            Err(e) => return Err(io_err(format!("read {}", path.display()))(e)),
        };
        let actual = Hash::new(&data);
        if actual != *hash {
            self.quarantine(hash);
            return Err(BlobError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(data)
    }

    fn open(&self, hash: &Hash) -> Result<Box<dyn Read + Send>, BlobError> {
        let (f, _) = self.open_verified(hash)?;
        Ok(Box::new(f))
    }

    fn len(&self) -> Result<usize, BlobError> {
        Ok(self.index.len())
    }

    fn list(&self) -> Result<Vec<Hash>, BlobError> {
        let mut out = Vec::new();
        for k in self.index.iter().keys() {
            let k = k?;
            if let Some(h) = hash_key(&k) {
                out.push(h);
            }
        }
        Ok(out)
    }

    fn pin(&self, hash: &Hash, tag: &str) -> Result<(), BlobError> {
        let mut k = hash.as_bytes().to_vec();
        k.extend_from_slice(tag.as_bytes());
        if self.pins.insert(k, &[])?.is_none() {
            self.db.flush()?;
        }
        Ok(())
    }

    fn unpin(&self, hash: &Hash, tag: &str) -> Result<bool, BlobError> {
        let mut k = hash.as_bytes().to_vec();
        k.extend_from_slice(tag.as_bytes());
        let had = self.pins.remove(k)?.is_some();
        if had {
            self.db.flush()?;
        }
        Ok(had)
    }

    fn pins(&self, hash: &Hash) -> Result<Vec<String>, BlobError> {
        let mut out = Vec::new();
        for k in self.pins.scan_prefix(hash.as_bytes()).keys() {
            let k = k?;
            out.push(String::from_utf8_lossy(&k[32..]).into_owned());
        }
        Ok(out)
    }

    fn gc(&self, grace: Duration) -> Result<GcStats, BlobError> {
        let _exclusive = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        let mut stats = GcStats::default();
        for kv in self.index.iter() {
            let (k, v) = kv?;
            let Some(hash) = hash_key(&k) else { continue };
            if self.pins.scan_prefix(hash.as_bytes()).next().is_some() {
                continue;
            }
            let info = decode_info(&hash, &v)?;
            if !older_than(info.added, grace, now) {
                stats.kept_young += 1;
                continue;
            }
            // Index first: a crash after this leaves an orphan file, which
            // the next open adopts again (harmless) rather than an index
            // entry pointing at nothing.
            self.index.remove(hash.as_bytes())?;
            match fs::remove_file(self.path_of(&hash)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove blob")(e)),
            }
            stats.removed += 1;
            stats.bytes += info.size;
        }
        if stats.removed > 0 {
            self.db.flush()?;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs_store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::open_db(&dir.path().join("db"), &Default::default()).unwrap();
        let (s, _) = FsStore::open(dir.path(), &db).unwrap();
        (dir, s)
    }

    /// Runs `f` against a MemStore and an FsStore.
    fn both(f: impl Fn(&dyn BlobStore)) {
        f(&MemStore::new());
        let (_dir, s) = fs_store();
        f(&s);
    }

    #[test]
    fn import_read_round_trip_and_idempotent() {
        both(|s| {
            let h = s.import_bytes(b"hello").unwrap();
            assert_eq!(h, Hash::new(b"hello"));
            assert_eq!(s.import_bytes(b"hello").unwrap(), h);
            assert_eq!(s.len().unwrap(), 1);
            assert!(s.has(&h).unwrap());
            assert_eq!(s.read(&h).unwrap(), b"hello");
            let mut v = Vec::new();
            s.open(&h).unwrap().read_to_end(&mut v).unwrap();
            assert_eq!(v, b"hello");
            assert_eq!(s.info(&h).unwrap().unwrap().size, 5);
            let e = s.import_bytes(b"").unwrap();
            assert_eq!(e, Hash::EMPTY);
            assert_eq!(s.read(&e).unwrap(), b"");
            let mut l = vec![h, e];
            l.sort();
            assert_eq!(s.list().unwrap(), l);
        });
    }

    #[test]
    fn missing_blob_is_not_found() {
        both(|s| {
            let h = Hash::new(b"nope");
            assert!(!s.has(&h).unwrap());
            assert!(matches!(s.read(&h), Err(BlobError::NotFound(x)) if x == h));
            assert!(matches!(s.open(&h), Err(BlobError::NotFound(_))));
        });
    }

    #[test]
    fn import_with_expected_hash_refuses_other_content() {
        both(|s| {
            let want = Hash::new(b"right");
            let err = s
                .import_reader(&mut &b"wrong"[..], Some(&want))
                .unwrap_err();
            assert!(matches!(err, BlobError::Mismatch { expected, .. } if expected == want));
            assert_eq!(s.len().unwrap(), 0);
            assert_eq!(
                s.import_reader(&mut &b"right"[..], Some(&want)).unwrap(),
                want
            );
        });
    }

    #[test]
    fn deferred_durability_imports_then_one_sync_and_verify_forgets_a_torn_file() {
        let (_d, s) = fs_store();
        s.set_deferred_durability(true);
        let a = s.import_bytes(b"first blob").unwrap();
        let b = s.import_bytes(b"second blob").unwrap();
        assert!(s.has(&a).unwrap() && s.has(&b).unwrap());
        s.make_durable().unwrap();
        assert!(s.verify(&a).unwrap());
        // What a power loss before `make_durable` can leave: an indexed file that is short.
        let p = s.path_of(&b);
        let mut perm = fs::metadata(&p).unwrap().permissions();
        perm.set_mode(0o644);
        fs::set_permissions(&p, perm).unwrap();
        fs::write(&p, b"second").unwrap();
        assert!(!s.verify(&b).unwrap(), "a torn blob does not verify");
        assert!(!s.has(&b).unwrap(), "and is forgotten, to be fetched again");
        assert!(s.verify(&a).unwrap());
        // Gone files too.
        fs::remove_file(s.path_of(&a)).unwrap();
        assert!(!s.verify(&a).unwrap());
        assert!(!s.has(&a).unwrap());
    }

    #[test]
    fn large_blob_streams() {
        both(|s| {
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
            let h = s.import_reader(&mut &data[..], None).unwrap();
            assert_eq!(h, Hash::new(&data));
            assert_eq!(s.read(&h).unwrap(), data);
        });
    }

    #[test]
    fn import_file_and_export() {
        both(|s| {
            let dir = tempfile::tempdir().unwrap();
            let src = dir.path().join("pkg");
            fs::write(&src, b"package bytes").unwrap();
            let h = s.import_file(&src).unwrap();
            let dst = dir.path().join("out");
            assert_eq!(s.export(&h, &dst).unwrap(), 13);
            assert_eq!(fs::read(&dst).unwrap(), b"package bytes");
            let mode = fs::metadata(&dst).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o644);
        });
    }

    #[test]
    fn gc_removes_only_unpinned() {
        both(|s| {
            let a = s.import_bytes(b"a").unwrap();
            let b = s.import_bytes(b"bb").unwrap();
            let c = s.import_bytes(b"ccc").unwrap();
            s.pin(&a, "event:1").unwrap();
            s.pin(&a, "gen:extra/x86_64/1").unwrap();
            s.pin(&b, "event:2").unwrap();
            // Young blobs survive a collection with a grace period.
            let st = s.gc(Duration::from_secs(3600)).unwrap();
            assert_eq!((st.removed, st.kept_young), (0, 1));
            // A blob re-imported just before a collection survives it
            // (its grace period restarts), so the importer can pin it.
            std::thread::sleep(Duration::from_millis(30));
            s.import_bytes(b"ccc").unwrap();
            let st = s.gc(Duration::from_millis(20)).unwrap();
            assert_eq!((st.removed, st.kept_young), (0, 1));
            let st = s.gc(Duration::ZERO).unwrap();
            assert_eq!((st.removed, st.bytes), (1, 3));
            assert!(!s.has(&c).unwrap());
            assert!(s.has(&a).unwrap() && s.has(&b).unwrap());
            assert_eq!(s.pins(&a).unwrap(), vec!["event:1", "gen:extra/x86_64/1"]);
            assert!(s.unpin(&a, "event:1").unwrap());
            assert!(!s.unpin(&a, "event:1").unwrap());
            assert_eq!(s.gc(Duration::ZERO).unwrap().removed, 0);
            assert!(s.unpin(&a, "gen:extra/x86_64/1").unwrap());
            assert_eq!(s.gc(Duration::ZERO).unwrap().removed, 1);
            assert_eq!(s.list().unwrap(), vec![b]);
            // Pinning before the blob exists (a "want") protects it on arrival.
            let d = Hash::new(b"dddd");
            s.pin(&d, "want").unwrap();
            s.import_bytes(b"dddd").unwrap();
            assert_eq!(s.gc(Duration::ZERO).unwrap().removed, 0);
            assert_eq!(s.read(&d).unwrap(), b"dddd");
        });
    }

    #[test]
    fn corrupt_mem_blob_is_detected() {
        let s = MemStore::new();
        let h = s.import_bytes(b"payload").unwrap();
        s.corrupt_for_test(&h);
        assert!(matches!(s.read(&h), Err(BlobError::Corrupt { hash, .. }) if hash == h));
        assert!(!s.has(&h).unwrap());
        s.import_bytes(b"payload").unwrap();
        assert_eq!(s.read(&h).unwrap(), b"payload");
    }

    #[test]
    fn corrupt_fs_blob_is_detected_on_read_and_open() {
        /// Overwrites a (read-only) blob file.
        fn overwrite(p: &Path, data: &[u8]) {
            fs::set_permissions(p, fs::Permissions::from_mode(0o644)).unwrap();
            fs::write(p, data).unwrap();
        }
        let (_dir, s) = fs_store();
        let h = s.import_bytes(b"payload").unwrap();
        let mode = fs::metadata(s.path_of(&h)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444, "blob files are read-only");
        s.pin(&h, "keep").unwrap();
        overwrite(&s.path_of(&h), b"paYload");
        assert!(matches!(s.read(&h), Err(BlobError::Corrupt { hash, .. }) if hash == h));
        assert!(
            !s.has(&h).unwrap(),
            "a corrupt copy no longer counts as present"
        );
        assert_eq!(s.pins(&h).unwrap(), vec!["keep"], "pins survive");
        assert_eq!(fs::read_dir(s.root().join("corrupt")).unwrap().count(), 1);
        // Fetch again: good.
        s.import_bytes(b"payload").unwrap();
        overwrite(&s.path_of(&h), b"xxxxxxx");
        assert!(matches!(s.open(&h), Err(BlobError::Corrupt { .. })));
        // Truncated file.
        s.import_bytes(b"payload").unwrap();
        overwrite(&s.path_of(&h), b"pay");
        assert!(matches!(s.read(&h), Err(BlobError::Corrupt { .. })));
        // Deleted behind the store's back: not found, and forgotten.
        s.import_bytes(b"payload").unwrap();
        fs::remove_file(s.path_of(&h)).unwrap();
        assert!(matches!(s.read(&h), Err(BlobError::NotFound(_))));
        assert!(!s.has(&h).unwrap());
    }

    #[test]
    fn fs_store_survives_reopen_and_repairs() {
        let dir = tempfile::tempdir().unwrap();
        let dbp = dir.path().join("db");
        let h;
        {
            let db = super::super::open_db(&dbp, &Default::default()).unwrap();
            let (s, _) = FsStore::open(dir.path(), &db).unwrap();
            h = s.import_bytes(b"kept").unwrap();
            s.pin(&h, "root").unwrap();
        }
        // Simulate crashes: a stray temp file, an unindexed complete blob,
        // an unindexed file with wrong content.
        fs::write(dir.path().join("blobs/tmp/.tmpXYZ"), b"half").unwrap();
        let orphan = Hash::new(b"orphan");
        let ohex = orphan.to_hex();
        fs::create_dir_all(dir.path().join("blobs").join(&ohex[..2])).unwrap();
        fs::write(
            dir.path().join("blobs").join(&ohex[..2]).join(&ohex),
            b"orphan",
        )
        .unwrap();
        let liar = Hash::new(b"liar");
        let lhex = liar.to_hex();
        fs::create_dir_all(dir.path().join("blobs").join(&lhex[..2])).unwrap();
        fs::write(
            dir.path().join("blobs").join(&lhex[..2]).join(&lhex),
            b"not liar",
        )
        .unwrap();

        let db = super::super::open_db(&dbp, &Default::default()).unwrap();
        let (s, rep) = FsStore::open(dir.path(), &db).unwrap();
        assert_eq!(
            rep,
            FsRepair {
                temp_removed: 1,
                adopted: 1,
                quarantined: 1
            }
        );
        assert_eq!(s.read(&h).unwrap(), b"kept");
        assert_eq!(s.pins(&h).unwrap(), vec!["root"]);
        assert_eq!(s.read(&orphan).unwrap(), b"orphan");
        assert!(!s.has(&liar).unwrap());
    }
}
