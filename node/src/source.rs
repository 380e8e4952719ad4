//! Fetching a queue entry's PKGBUILD folder into a fresh directory, and making the folder
//! snapshots that `pacmesh queue add --dir` uploads.
//!
//! | source | how | `SOURCE_DATE_EPOCH` default | recorded commit |
//! | --- | --- | --- | --- |
//! | `dir` | unpack the `snapshot` blob (a tar made by [`snapshot_dir`]) | the enqueue event's time | none |
//! | `git` | fetch into a bare mirror `GIT_CACHE/<blake3(url)>`, resolve `rev`, write the commit's tree (or `subdir`) | the commit's committer time | the commit id |
//! | `aur` | like `git` at `AUR_URL/<pkgbase>.git` ([`SourceConfig::aur_url`]), its default branch | the commit's committer time | the commit id |
//! | `tree` naming one folder (what `pacmesh tree sync` enqueues) | like `git` with `subdir` = the folder | the commit's committer time | the commit id |
//! | `tree` naming several or no folders, newer kinds | not supported by this node: [`SourceError::Unsupported`] | | |
//!
//! # Hostile input
//!
//! A snapshot is a blob named in a maintainer-signed event, and a git repository is whatever
//! the URL serves, so both are checked while they are written out:
//!
//! - paths must be relative and made of normal components (no `..`, no absolute paths, no
//!   duplicates); no entry may be written below a symbolic link (links are created last);
//! - a symbolic link's target must be relative, may start with `..` components only (none
//!   after a normal component) and must not climb above the folder root. With that rule and no
//!   entry below a link, every link resolves inside the folder, however links chain;
//! - only regular files, directories and symbolic links (hard links, devices and fifos are
//!   refused); file modes are normalised to 0644 / 0755;
//! - file contents are capped in total ([`SourceLimits::max_bytes`]) and in number of entries
//!   ([`SourceLimits::max_entries`]).
//!
//! A refusal is a [`SourceError::Refused`]; the executor reports it as a failed build.
//!
//! # Snapshot format
//!
//! An uncompressed tar (GNU headers for long names) of the folder: entries sorted by path,
//! mtime 0, uid/gid 0, no user or group names, modes 0755 (directories and executables) or
//! 0644, symbolic links as links. Left out: `src/` and `pkg/` at the top (makepkg's work
//! dirs), `.git/` anywhere, and built packages (`*.pkg.tar*`). The same folder gives the same
//! bytes, hence the same blob hash, on every machine. A zstd-compressed tar is accepted too
//! when unpacking.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once};

use pacmesh_protocol::{Hash, QueueEntry, Source};

use crate::store::{BlobError, BlobStore};

/// Caps applied while a source is written out (and while a snapshot is made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Files, directories and links.
    pub max_entries: usize,
}

impl Default for SourceLimits {
    /// 64 MiB and 10 000 entries: far above any PKGBUILD folder (patches, keys, scripts).
    fn default() -> Self {
        SourceLimits {
            max_bytes: 64 << 20,
            max_entries: 10_000,
        }
    }
}

/// How this node fetches sources.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// Bare git mirrors, one per URL: `DIR/<blake3(url) hex>`.
    pub git_cache: PathBuf,
    /// Accept `file://` URLs and plain paths as git URLs. They let a maintainer's entry read
    /// a repository on the builder's disk; nodes whose disk holds private repositories should
    /// turn this off.
    pub allow_local_git: bool,
    /// Size caps.
    pub limits: SourceLimits,
    /// The AUR base: `aur` sources are fetched from `AUR_URL/<pkgbase>.git`.
    pub aur_url: String,
}

impl SourceConfig {
    /// Git mirrors under `git_cache`, local git URLs allowed, default limits.
    pub fn new(git_cache: impl Into<PathBuf>) -> Self {
        SourceConfig {
            git_cache: git_cache.into(),
            allow_local_git: true,
            limits: SourceLimits::default(),
            aur_url: crate::config::DEFAULT_AUR_URL.to_string(),
        }
    }
}

/// A fetched source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The folder holding the PKGBUILD (the destination, or a subfolder of it).
    pub dir: PathBuf,
    /// The commit built (git sources), full hex id.
    pub commit: Option<String>,
    /// The commit's committer time in seconds (git sources).
    pub commit_time: Option<u64>,
}

/// Why a source could not be fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source kind is not built by this node (yet).
    #[error("source kind {kind:?} is not supported by this node yet")]
    Unsupported {
        /// The kind.
        kind: String,
    },
    /// A `dir` source without a snapshot: only the machine holding the folder could build it.
    #[error(
        "dir source {path:?} has no snapshot; enqueue it with `pacmesh queue add --dir`, which uploads one"
    )]
    NoSnapshot {
        /// The folder on the enqueuing machine.
        path: String,
    },
    /// The snapshot blob is not (yet) in this node's content store.
    #[error("snapshot blob {0} is not in the content store (yet)")]
    SnapshotMissing(Hash),
    /// The content is hostile or too large.
    #[error("refused: {0}")]
    Refused(String),
    /// Local git URLs are turned off.
    #[error("git url {0:?} is local and local git sources are turned off on this node")]
    LocalGitRefused(String),
    /// Fetching or reading the git repository failed.
    #[error("git: {0}")]
    Git(String),
    /// The git transfer failed on the network (may work later).
    #[error("git: {0}")]
    Network(String),
    /// The revision does not name a commit.
    #[error("git rev {rev:?} names no commit in {url}")]
    NoSuchRev {
        /// The URL.
        url: String,
        /// The revision.
        rev: String,
    },
    /// The fetch was cancelled (shutdown).
    #[error("cancelled")]
    Cancelled,
    /// The content store failed.
    #[error("content store: {0}")]
    Blob(#[from] BlobError),
    /// A local file-system error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl SourceError {
    /// Whether trying again later may help: the snapshot may still arrive by replication,
    /// the network may come back, the local disk may have room again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SourceError::SnapshotMissing(_)
                | SourceError::Network(_)
                | SourceError::Io { .. }
                | SourceError::Blob(_)
        )
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SourceError {
    let context = context.into();
    move |source| SourceError::Io { context, source }
}

fn git_err(e: git2::Error) -> SourceError {
    SourceError::Git(e.message().to_string())
}

/// Fetches `entry`'s source into `dest` (created; must not exist or be empty). Setting
/// `cancel` stops a git transfer in progress ([`SourceError::Cancelled`]).
pub fn fetch(
    entry: &QueueEntry,
    blobs: &dyn BlobStore,
    cfg: &SourceConfig,
    dest: &Path,
    cancel: &AtomicBool,
) -> Result<Fetched, SourceError> {
    match &entry.source {
        Source::Dir { path, snapshot } => {
            let Some(h) = snapshot else {
                return Err(SourceError::NoSnapshot { path: path.clone() });
            };
            if !blobs.has(h)? {
                return Err(SourceError::SnapshotMissing(*h));
            }
            let reader = match blobs.open(h) {
                Ok(r) => r,
                Err(BlobError::NotFound(h)) => return Err(SourceError::SnapshotMissing(h)),
                Err(e) => return Err(e.into()),
            };
            unpack_snapshot(reader, dest, &cfg.limits)?;
            Ok(Fetched {
                dir: dest.to_path_buf(),
                commit: None,
                commit_time: None,
            })
        }
        Source::Git { url, rev, subdir } => {
            git_checkout(cfg, url, rev.as_deref(), subdir.as_deref(), dest, cancel)
        }
        Source::Aur { pkgbase } => {
            let url = crate::aur::git_url(&cfg.aur_url, pkgbase.as_str());
            // The AUR answers every name with a repository; an empty one (no commit) means
            // there is no such package base.
            git_checkout(cfg, &url, None, None, dest, cancel).map_err(|e| match e {
                SourceError::NoSuchRev { .. } => SourceError::Refused(format!(
                    "{url} has no commit: {pkgbase} is not (or no longer) in the AUR"
                )),
                e => e,
            })
        }
        Source::Tree { url, rev, pkgbases } if pkgbases.len() == 1 => git_checkout(
            cfg,
            url,
            rev.as_deref(),
            Some(pkgbases[0].as_str()),
            dest,
            cancel,
        ),
        other => Err(SourceError::Unsupported {
            kind: other.kind().to_string(),
        }),
    }
}

/// Whether this node can fetch `source` at all (kinds it knows).
pub fn is_supported(source: &Source) -> bool {
    match source {
        Source::Dir { .. } | Source::Git { .. } | Source::Aur { .. } => true,
        Source::Tree { pkgbases, .. } => pkgbases.len() == 1,
        _ => false,
    }
}

// ---- path rules ---------------------------------------------------------------------------

/// `p` as normal components, or why not. `.` components are dropped; an empty result is
/// `Ok(None)` (the root itself).
fn clean_rel(p: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::CurDir => {}
            Component::ParentDir => return Err(format!("path {} contains '..'", p.display())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {} is absolute", p.display()));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks a symbolic link at `link` (relative to the folder root) pointing at `target`. See
/// the module docs for the rule.
fn check_link(link: &Path, target: &Path) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "symbolic link {} -> {} {why}",
            link.display(),
            target.display()
        ))
    };
    if target.as_os_str().is_empty() {
        return bad("has an empty target");
    }
    let depth = link.components().count().saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_normal = false;
    for c in target.components() {
        match c {
            Component::ParentDir if seen_normal => {
                return bad("has '..' after a folder name (only leading '..' are allowed)");
            }
            Component::ParentDir => ups += 1,
            Component::Normal(_) => seen_normal = true,
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return bad("points to an absolute path"),
        }
    }
    if ups > depth {
        return bad("points outside the folder");
    }
    Ok(())
}

/// Skipped when making a snapshot.
fn skip_in_snapshot(rel: &Path, is_dir: bool) -> bool {
    let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let top = rel.components().count() == 1;
    (name == ".git")
        || (top && is_dir && (name == "src" || name == "pkg"))
        || (!is_dir && name.contains(".pkg.tar"))
}

// ---- writing a tree out ----------------------------------------------------------------------

/// Writes entries below `root`, enforcing the rules of the module docs. Links are collected
/// and created by [`TreeWriter::finish`].
struct TreeWriter<'a> {
    root: PathBuf,
    limits: &'a SourceLimits,
    bytes: u64,
    entries: usize,
    seen: BTreeSet<PathBuf>,
    links: BTreeMap<PathBuf, PathBuf>,
}

impl<'a> TreeWriter<'a> {
    fn new(root: &Path, limits: &'a SourceLimits) -> Result<Self, SourceError> {
        fs::create_dir_all(root).map_err(io_err(format!("cannot create {}", root.display())))?;
        if fs::read_dir(root)
            .map_err(io_err(format!("cannot read {}", root.display())))?
            .next()
            .is_some()
        {
            return Err(SourceError::Io {
                context: format!("{} is not empty", root.display()),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        Ok(TreeWriter {
            root: root.to_path_buf(),
            limits,
            bytes: 0,
            entries: 0,
            seen: BTreeSet::new(),
            links: BTreeMap::new(),
        })
    }

    /// Validates `rel` for a new entry; `None` for the root itself.
    fn admit(&mut self, rel: &Path) -> Result<Option<PathBuf>, SourceError> {
        let Some(rel) = clean_rel(rel).map_err(SourceError::Refused)? else {
            return Ok(None);
        };
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(SourceError::Refused(format!(
                "more than {} entries",
                self.limits.max_entries
            )));
        }
        for anc in rel.ancestors().skip(1) {
            if self.links.contains_key(anc) {
                return Err(SourceError::Refused(format!(
                    "{} lies below the symbolic link {}",
                    rel.display(),
                    anc.display()
                )));
            }
        }
        if !self.seen.insert(rel.clone()) {
            return Err(SourceError::Refused(format!(
                "{} appears twice",
                rel.display()
            )));
        }
        Ok(Some(rel))
    }

    fn dir(&mut self, rel: &Path) -> Result<(), SourceError> {
        if let Some(rel) = self.admit(rel)? {
            let p = self.root.join(&rel);
            fs::create_dir_all(&p).map_err(io_err(format!("cannot create {}", p.display())))?;
        }
        Ok(())
    }

    fn file(
        &mut self,
        rel: &Path,
        executable: bool,
        data: &mut dyn Read,
    ) -> Result<(), SourceError> {
        let Some(rel) = self.admit(rel)? else {
            return Err(SourceError::Refused(
                "a file entry names the folder root".into(),
            ));
        };
        let p = self.root.join(&rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent)
                .map_err(io_err(format!("cannot create {}", parent.display())))?;
        }
        let room = self.limits.max_bytes - self.bytes;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .map_err(io_err(format!("cannot create {}", p.display())))?;
        let n = io::copy(&mut data.take(room + 1), &mut f)
            .map_err(io_err(format!("cannot write {}", p.display())))?;
        if n > room {
            return Err(SourceError::Refused(format!(
                "more than {} bytes of files",
                self.limits.max_bytes
            )));
        }
        self.bytes += n;
        let mode = if executable { 0o755 } else { 0o644 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(io_err(format!("cannot chmod {}", p.display())))?;
        Ok(())
    }

    fn link(&mut self, rel: &Path, target: &Path) -> Result<(), SourceError> {
        let Some(rel) = self.admit(rel)? else {
            return Err(SourceError::Refused(
                "a link entry names the folder root".into(),
            ));
        };
        check_link(&rel, target).map_err(SourceError::Refused)?;
        // An entry already admitted below this path would now be below a link.
        if let Some(below) = self
            .seen
            .range(rel.clone()..)
            .nth(1)
            .filter(|p| p.starts_with(&rel))
        {
            return Err(SourceError::Refused(format!(
                "{} lies below the symbolic link {}",
                below.display(),
                rel.display()
            )));
        }
        self.links.insert(rel, target.to_path_buf());
        Ok(())
    }

    fn finish(self) -> Result<(), SourceError> {
        for (rel, target) in &self.links {
            let p = self.root.join(rel);
            if let Some(parent) = p.parent() {
                fs::create_dir_all(parent)
                    .map_err(io_err(format!("cannot create {}", parent.display())))?;
            }
            std::os::unix::fs::symlink(target, &p)
                .map_err(io_err(format!("cannot create link {}", p.display())))?;
        }
        Ok(())
    }
}

// ---- snapshots ------------------------------------------------------------------------------

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Unpacks a snapshot tar (plain or zstd) into `dest` (created; must be empty), enforcing the
/// rules of the module docs.
pub fn unpack_snapshot(
    reader: impl Read,
    dest: &Path,
    limits: &SourceLimits,
) -> Result<(), SourceError> {
    let mut reader = io::BufReader::new(reader);
    let head = io::BufRead::fill_buf(&mut reader)
        .map_err(io_err("cannot read the snapshot"))?
        .to_vec();
    let refused = |e: io::Error| SourceError::Refused(format!("snapshot is not a valid tar: {e}"));
    let mut w = TreeWriter::new(dest, limits)?;
    let input: Box<dyn Read> = if head.starts_with(&ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader).map_err(refused)?)
    } else {
        Box::new(reader)
    };
    let mut ar = tar::Archive::new(input);
    for entry in ar.entries().map_err(refused)? {
        let mut e = entry.map_err(refused)?;
        let path = e.path().map_err(refused)?.into_owned();
        let kind = e.header().entry_type();
        match kind {
            tar::EntryType::Directory => w.dir(&path)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let exec = e.header().mode().map_err(refused)? & 0o111 != 0;
                w.file(&path, exec, &mut e)?
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(refused)?
                    .ok_or_else(|| {
                        SourceError::Refused(format!("link {} has no target", path.display()))
                    })?
                    .into_owned();
                w.link(&path, &target)?
            }
            tar::EntryType::XGlobalHeader => {}
            other => {
                return Err(SourceError::Refused(format!(
                    "{} is a {other:?} entry (only files, folders and symbolic links are allowed)",
                    path.display()
                )));
            }
        }
    }
    w.finish()
}

/// Makes the deterministic snapshot tar of a PKGBUILD folder (see the module docs), with
/// [`SourceLimits::default`] caps.
pub fn snapshot_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    snapshot_dir_with(dir, &SourceLimits::default())
}

/// [`snapshot_dir`] with explicit caps.
pub fn snapshot_dir_with(dir: &Path, limits: &SourceLimits) -> anyhow::Result<Vec<u8>> {
    use anyhow::{Context, bail};
    enum Kind {
        Dir,
        File { exec: bool, size: u64 },
        Link(PathBuf),
    }
    let mut items: Vec<(String, Kind)> = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for e in fs::read_dir(&abs).with_context(|| format!("cannot read {}", abs.display()))? {
            let e = e.with_context(|| format!("cannot read {}", abs.display()))?;
            let r = rel.join(e.file_name());
            let Some(s) = r.to_str() else {
                bail!("{}: file names must be UTF-8", dir.join(&r).display());
            };
            let ft = e.file_type()?;
            if skip_in_snapshot(&r, ft.is_dir()) {
                continue;
            }
            let kind = if ft.is_symlink() {
                let t = fs::read_link(e.path())?;
                check_link(&r, &t).map_err(|why| anyhow::anyhow!("{}: {why}", dir.display()))?;
                Kind::Link(t)
            } else if ft.is_dir() {
                stack.push(r.clone());
                Kind::Dir
            } else if ft.is_file() {
                let m = e.metadata()?;
                total += m.len();
                if total > limits.max_bytes {
                    bail!(
                        "{} holds more than {} bytes of files (src/, pkg/, .git/ and packages left out)",
                        dir.display(),
                        limits.max_bytes
                    );
                }
                Kind::File {
                    exec: m.permissions().mode() & 0o111 != 0,
                    size: m.len(),
                }
            } else {
                continue; // fifos, sockets, devices
            };
            items.push((s.to_string(), kind));
            if items.len() > limits.max_entries {
                bail!(
                    "{} holds more than {} entries",
                    dir.display(),
                    limits.max_entries
                );
            }
        }
    }
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    for (path, kind) in &items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_username("")?;
        h.set_groupname("")?;
        match kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Kind::File { exec, size } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *exec { 0o755 } else { 0o644 });
                h.set_size(*size);
                let f = fs::File::open(dir.join(path))
                    .with_context(|| format!("cannot read {}", dir.join(path).display()))?;
                // The file may change while it is read: take exactly `size` bytes.
                let mut data = f.take(*size);
                let mut buf = Vec::with_capacity(*size as usize);
                data.read_to_end(&mut buf)?;
                if buf.len() as u64 != *size {
                    bail!("{} changed while it was read", dir.join(path).display());
                }
                b.append_data(&mut h, path, buf.as_slice())?;
            }
            Kind::Link(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, t)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

// ---- git --------------------------------------------------------------------------------------

/// One lock per mirror directory, so that two slots never fetch into one mirror at once (one
/// process owns a data dir: the sled lock). The locks live as long as the process (one small
/// mutex per URL used).
fn mirror_lock(path: &Path) -> &'static Mutex<()> {
    static LOCKS: Mutex<BTreeMap<PathBuf, &'static Mutex<()>>> = Mutex::new(BTreeMap::new());
    let mut m = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    m.entry(path.to_path_buf())
        .or_insert_with(|| Box::leak(Box::new(Mutex::new(()))))
}

fn is_local_url(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') || !url.contains(':')
}

/// The mirror directory of `url`.
pub fn mirror_path(git_cache: &Path, url: &str) -> PathBuf {
    git_cache.join(blake3::hash(url.as_bytes()).to_hex().as_str())
}

/// libgit2's network timeouts: 30 s to connect, 120 s without data.
pub(crate) fn set_git_timeouts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: process-global libgit2 options, set once before this module's first
        // transfer; the node makes no other use of libgit2 options.
        unsafe {
            let _ = git2::opts::set_server_connect_timeout_in_milliseconds(30_000);
            let _ = git2::opts::set_server_timeout_in_milliseconds(120_000);
        }
    });
}

/// Fetches `url` into its bare mirror under [`SourceConfig::git_cache`] (branches, tags and
/// the remote `HEAD` as `refs/pacmesh/remote-head`) and returns it, holding the mirror's lock
/// until the guard is dropped. Setting `cancel` stops the transfer.
pub fn git_mirror(
    cfg: &SourceConfig,
    url: &str,
    cancel: &AtomicBool,
) -> Result<(git2::Repository, MirrorGuard), SourceError> {
    set_git_timeouts();
    if url.starts_with('-') {
        return Err(SourceError::Refused(format!(
            "git url {url:?} starts with '-'"
        )));
    }
    if is_local_url(url) && !cfg.allow_local_git {
        return Err(SourceError::LocalGitRefused(url.to_string()));
    }
    fs::create_dir_all(&cfg.git_cache)
        .map_err(io_err(format!("cannot create {}", cfg.git_cache.display())))?;
    let mirror = mirror_path(&cfg.git_cache, url);
    let lock = mirror_lock(&mirror);
    let guard = MirrorGuard(lock.lock().unwrap_or_else(|p| p.into_inner()));
    let (repo, fresh) = match git2::Repository::open_bare(&mirror) {
        Ok(r) => (r, false),
        Err(_) => {
            let _ = fs::remove_dir_all(&mirror);
            (git2::Repository::init_bare(&mirror).map_err(git_err)?, true)
        }
    };
    let fetched = {
        let mut remote = repo.remote_anonymous(url).map_err(git_err)?;
        let mut cb = git2::RemoteCallbacks::new();
        cb.transfer_progress(|_| !cancel.load(Ordering::Relaxed));
        cb.sideband_progress(|_| !cancel.load(Ordering::Relaxed));
        let mut fo = git2::FetchOptions::new();
        fo.remote_callbacks(cb)
            .download_tags(git2::AutotagOption::None)
            .prune(git2::FetchPrune::On);
        remote
            .fetch(
                &[
                    "+refs/heads/*:refs/heads/*",
                    "+refs/tags/*:refs/tags/*",
                    "+HEAD:refs/pacmesh/remote-head",
                ],
                Some(&mut fo),
                None,
            )
            .map_err(|e| {
                use git2::ErrorClass as C;
                let msg = format!("fetching {url}: {}", e.message());
                if cancel.load(Ordering::Relaxed) {
                    SourceError::Cancelled
                } else if !is_local_url(url)
                    && matches!(e.class(), C::Net | C::Http | C::Ssh | C::Ssl | C::Os)
                {
                    SourceError::Network(msg)
                } else {
                    SourceError::Git(msg)
                }
            })
    };
    if let Err(e) = fetched {
        if fresh {
            // Nothing worth keeping (a typo'd URL must not leave a mirror behind).
            drop(repo);
            let _ = fs::remove_dir_all(&mirror);
        }
        return Err(e);
    }
    Ok((repo, guard))
}

/// Holds a mirror's lock (see [`git_mirror`]).
pub struct MirrorGuard(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);

/// Fetches `url` into its bare mirror (branches, tags and the remote `HEAD`), resolves `rev`
/// (branch, tag, full or abbreviated commit id, `refs/...`; `None`: the remote's `HEAD`) to a
/// commit, and writes that commit's tree — or its `subdir` — into `dest`. Setting `cancel`
/// stops the transfer.
pub fn git_checkout(
    cfg: &SourceConfig,
    url: &str,
    rev: Option<&str>,
    subdir: Option<&str>,
    dest: &Path,
    cancel: &AtomicBool,
) -> Result<Fetched, SourceError> {
    let (repo, _guard) = git_mirror(cfg, url, cancel)?;
    let commit = resolve_rev(&repo, rev).map_err(|e| match e {
        Some(e) => e,
        None => SourceError::NoSuchRev {
            url: url.to_string(),
            rev: rev.unwrap_or("HEAD").to_string(),
        },
    })?;
    let mut tree = commit.tree().map_err(git_err)?;
    if let Some(sub) = subdir {
        let rel = clean_rel(Path::new(sub))
            .map_err(|why| SourceError::Refused(format!("subdir {sub:?}: {why}")))?;
        if let Some(rel) = rel {
            let e = tree.get_path(&rel).map_err(|_| {
                SourceError::Refused(format!(
                    "subdir {sub:?} does not exist in commit {}",
                    commit.id()
                ))
            })?;
            if e.kind() != Some(git2::ObjectType::Tree) {
                return Err(SourceError::Refused(format!(
                    "subdir {sub:?} is not a folder in commit {}",
                    commit.id()
                )));
            }
            tree = repo.find_tree(e.id()).map_err(git_err)?;
        }
    }
    let mut w = TreeWriter::new(dest, &cfg.limits)?;
    write_tree(&repo, &tree, Path::new(""), &mut w)?;
    w.finish()?;
    Ok(Fetched {
        dir: dest.to_path_buf(),
        commit: Some(commit.id().to_string()),
        commit_time: Some(commit.time().seconds().max(0) as u64),
    })
}

/// `Err(None)`: no such revision.
pub(crate) fn resolve_rev<'r>(
    repo: &'r git2::Repository,
    rev: Option<&str>,
) -> Result<git2::Commit<'r>, Option<SourceError>> {
    let peel = |o: git2::Object<'r>| o.peel_to_commit().map_err(|e| Some(git_err(e)));
    let Some(rev) = rev else {
        return match repo.find_reference("refs/pacmesh/remote-head") {
            Ok(r) => peel(
                r.peel(git2::ObjectType::Commit)
                    .map_err(|e| Some(git_err(e)))?,
            ),
            Err(_) => Err(None),
        };
    };
    let candidates = if rev.starts_with("refs/") {
        vec![rev.to_string()]
    } else {
        vec![format!("refs/heads/{rev}"), format!("refs/tags/{rev}")]
    };
    for name in candidates {
        if let Ok(r) = repo.find_reference(&name) {
            return peel(
                r.peel(git2::ObjectType::Commit)
                    .map_err(|e| Some(git_err(e)))?,
            );
        }
    }
    if (4..=40).contains(&rev.len()) && rev.bytes().all(|b| b.is_ascii_hexdigit()) {
        return match repo.find_object_by_prefix(rev, None) {
            Ok(o) => peel(o),
            Err(e) if e.code() == git2::ErrorCode::Ambiguous => Err(Some(SourceError::Git(
                format!("abbreviated commit id {rev:?} is ambiguous; give more digits"),
            ))),
            Err(_) => Err(None),
        };
    }
    Err(None)
}

fn write_tree(
    repo: &git2::Repository,
    tree: &git2::Tree<'_>,
    prefix: &Path,
    w: &mut TreeWriter<'_>,
) -> Result<(), SourceError> {
    for e in tree.iter() {
        let Some(name) = e.name() else {
            return Err(SourceError::Refused(format!(
                "a file name in {} is not UTF-8",
                prefix.display()
            )));
        };
        let rel = prefix.join(name);
        if prefix.as_os_str().is_empty() && name == ".git" {
            continue;
        }
        match e.filemode() {
            0o040000 => {
                w.dir(&rel)?;
                let sub = repo.find_tree(e.id()).map_err(git_err)?;
                write_tree(repo, &sub, &rel, w)?;
            }
            0o100644 | 0o100755 | 0o100664 => {
                let blob = repo.find_blob(e.id()).map_err(git_err)?;
                w.file(&rel, e.filemode() == 0o100755, &mut blob.content())?;
            }
            0o120000 => {
                let blob = repo.find_blob(e.id()).map_err(git_err)?;
                let target = std::str::from_utf8(blob.content()).map_err(|_| {
                    SourceError::Refused(format!("link {} has a non-UTF-8 target", rel.display()))
                })?;
                w.link(&rel, Path::new(target))?;
            }
            0o160000 => {
                tracing::debug!(path = %rel.display(), "git submodule left out");
            }
            other => {
                return Err(SourceError::Refused(format!(
                    "{} has unknown git file mode {other:o}",
                    rel.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(f: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        f(&mut b);
        b.into_inner().unwrap()
    }

    /// A raw header whose path is written byte-for-byte (the tar crate refuses `..` in
    /// `set_path`, an attacker's tar does not).
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        path: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_old();
        {
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
        }
        if let Some(l) = link {
            let ln = &mut h.as_old_mut().linkname;
            ln[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn unpack(bytes: &[u8]) -> Result<tempfile::TempDir, SourceError> {
        let t = tempfile::tempdir().unwrap();
        unpack_snapshot(bytes, &t.path().join("out"), &SourceLimits::default()).map(|()| t)
    }

    fn refused(bytes: &[u8], needle: &str) {
        match unpack(bytes) {
            Err(SourceError::Refused(why)) => assert!(why.contains(needle), "{why}"),
            Err(e) => panic!("expected a refusal containing {needle:?}, got {e}"),
            Ok(_) => panic!("expected a refusal containing {needle:?}, got success"),
        }
    }

    #[test]
    fn snapshot_is_deterministic_and_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pkg-folder");
        fs::create_dir_all(d.join("patches/sub")).unwrap();
        fs::write(d.join("PKGBUILD"), "pkgname=x\n").unwrap();
        fs::write(d.join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(d.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(d.join("patches/sub/a.patch"), "diff\n").unwrap();
        std::os::unix::fs::symlink("patches/sub/a.patch", d.join("link.patch")).unwrap();
        std::os::unix::fs::symlink("../a.patch", d.join("patches/sub/up.patch")).unwrap();
        // Left out:
        for skipped in ["src", "pkg", ".git", "patches/.git"] {
            fs::create_dir_all(d.join(skipped)).unwrap();
            fs::write(d.join(skipped).join("junk"), "x").unwrap();
        }
        fs::write(d.join("x-1-1-any.pkg.tar.zst"), "pkg").unwrap();
        let a = snapshot_dir(&d).unwrap();
        // Touch everything: mtimes and owners do not matter.
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        fs::File::options()
            .write(true)
            .open(d.join("PKGBUILD"))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let b = snapshot_dir(&d).unwrap();
        assert_eq!(a, b, "same folder, same bytes");

        let out = unpack(&a).unwrap();
        let o = out.path().join("out");
        assert_eq!(
            fs::read_to_string(o.join("PKGBUILD")).unwrap(),
            "pkgname=x\n"
        );
        assert_eq!(
            fs::metadata(o.join("run.sh")).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(
            fs::metadata(o.join("PKGBUILD"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
        assert_eq!(fs::read_to_string(o.join("link.patch")).unwrap(), "diff\n");
        assert_eq!(
            fs::read_to_string(o.join("patches/sub/up.patch"))
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            fs::read_link(o.join("patches/sub/up.patch")).unwrap(),
            Path::new("../a.patch")
        );
        for gone in [
            "src",
            "pkg",
            ".git",
            "patches/.git",
            "x-1-1-any.pkg.tar.zst",
        ] {
            assert!(!o.join(gone).exists(), "{gone} should be left out");
        }
        // Entries sorted, owners and times zeroed.
        let mut ar = tar::Archive::new(a.as_slice());
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            assert_eq!(e.header().mtime().unwrap(), 0);
            assert_eq!(e.header().uid().unwrap(), 0);
            names.push(e.path().unwrap().display().to_string());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        // zstd-compressed snapshots unpack too.
        let z = zstd::encode_all(a.as_slice(), 3).unwrap();
        let out = unpack(&z).unwrap();
        assert!(out.path().join("out/PKGBUILD").is_file());
    }

    #[test]
    fn snapshot_refuses_escaping_links_and_caps_size() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("f");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("PKGBUILD"), "x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("evil")).unwrap();
        let e = snapshot_dir(&d).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        fs::remove_file(d.join("evil")).unwrap();
        std::os::unix::fs::symlink("../outside", d.join("evil")).unwrap();
        let e = snapshot_dir(&d).unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        fs::remove_file(d.join("evil")).unwrap();
        fs::write(d.join("big"), vec![0u8; 2000]).unwrap();
        let small = SourceLimits {
            max_bytes: 1000,
            max_entries: 10,
        };
        let e = snapshot_dir_with(&d, &small).unwrap_err().to_string();
        assert!(e.contains("more than 1000 bytes"), "{e}");
    }

    #[test]
    fn unpack_refuses_traversal() {
        use tar::EntryType::*;
        refused(
            &tar_with(|b| raw_entry(b, "../evil", Regular, None, b"x")),
            "'..'",
        );
        refused(
            &tar_with(|b| raw_entry(b, "a/../../evil", Regular, None, b"x")),
            "'..'",
        );
        refused(
            &tar_with(|b| raw_entry(b, "/etc/evil", Regular, None, b"x")),
            "absolute",
        );
        refused(
            &tar_with(|b| raw_entry(b, "l", Symlink, Some("/etc"), b"")),
            "absolute",
        );
        refused(
            &tar_with(|b| raw_entry(b, "l", Symlink, Some("../x"), b"")),
            "outside",
        );
        refused(
            &tar_with(|b| raw_entry(b, "d/l", Symlink, Some("x/../../.."), b"")),
            "after a folder name",
        );
        // Writing through a link, in either order.
        refused(
            &tar_with(|b| {
                raw_entry(b, "l", Symlink, Some("sub"), b"");
                raw_entry(b, "l/x", Regular, None, b"x");
            }),
            "below the symbolic link",
        );
        refused(
            &tar_with(|b| {
                raw_entry(b, "l/x", Regular, None, b"x");
                raw_entry(b, "l", Symlink, Some("sub"), b"");
            }),
            "below the symbolic link",
        );
        refused(
            &tar_with(|b| {
                raw_entry(b, "a", Regular, None, b"x");
                raw_entry(b, "a", Regular, None, b"y");
            }),
            "twice",
        );
        refused(
            &tar_with(|b| raw_entry(b, "h", Link, Some("PKGBUILD"), b"")),
            "Link",
        );
        refused(&tar_with(|b| raw_entry(b, "dev", Char, None, b"")), "Char");
        refused(&[b'x'; 1024], "not a valid tar");
        // The chained-link escape: d/l1 -> .. is fine on its own, l2 -> d/l1/.. is not.
        refused(
            &tar_with(|b| {
                raw_entry(b, "d/l1", Symlink, Some(".."), b"");
                raw_entry(b, "l2", Symlink, Some("d/l1/.."), b"");
            }),
            "after a folder name",
        );
        // Nothing escaped the destination.
        assert!(!Path::new("/tmp/evil").exists() || fs::read("/tmp/evil").unwrap() != b"x");
    }

    #[test]
    fn unpack_caps_bytes_and_entries() {
        let t = tempfile::tempdir().unwrap();
        let tar =
            tar_with(|b| raw_entry(b, "big", tar::EntryType::Regular, None, &vec![1u8; 5000]));
        let small = SourceLimits {
            max_bytes: 4096,
            max_entries: 100,
        };
        match unpack_snapshot(tar.as_slice(), &t.path().join("a"), &small) {
            Err(SourceError::Refused(why)) => {
                assert!(why.contains("more than 4096 bytes"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        let tar = tar_with(|b| {
            for i in 0..20 {
                raw_entry(b, &format!("f{i}"), tar::EntryType::Regular, None, b"x");
            }
        });
        let few = SourceLimits {
            max_bytes: 4096,
            max_entries: 10,
        };
        match unpack_snapshot(tar.as_slice(), &t.path().join("b"), &few) {
            Err(SourceError::Refused(why)) => {
                assert!(why.contains("more than 10 entries"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    fn commit_file(
        repo: &git2::Repository,
        files: &[(&str, &str)],
        msg: &str,
        time: i64,
    ) -> git2::Oid {
        let mut index = repo.index().unwrap();
        let wd = repo.workdir().unwrap().to_path_buf();
        for (p, content) in files {
            let full = wd.join(p);
            fs::create_dir_all(full.parent().unwrap()).unwrap();
            fs::write(&full, content).unwrap();
            index.add_path(Path::new(p)).unwrap();
        }
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig =
            git2::Signature::new("t", "t@example.invalid", &git2::Time::new(time, 0)).unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
            .unwrap()
    }

    #[test]
    fn git_resolves_branches_tags_short_ids_and_subdirs() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upstream");
        let repo = git2::Repository::init(&up).unwrap();
        let c1 = commit_file(
            &repo,
            &[("PKGBUILD", "v1\n"), ("pkgs/foo/PKGBUILD", "foo1\n")],
            "one",
            1_700_000_000,
        );
        repo.tag_lightweight("v1", &repo.find_object(c1, None).unwrap(), false)
            .unwrap();
        let c2 = commit_file(&repo, &[("PKGBUILD", "v2\n")], "two", 1_700_000_100);
        let head_branch = repo.head().unwrap().shorthand().unwrap().to_string();
        let cfg = SourceConfig::new(t.path().join("git"));
        let url = up.display().to_string();

        let mut n = 0;
        let mut get = |rev: Option<&str>, sub: Option<&str>| {
            n += 1;
            git_checkout(
                &cfg,
                &url,
                rev,
                sub,
                &t.path().join(format!("out{n}")),
                &AtomicBool::new(false),
            )
        };
        let f = get(None, None).unwrap();
        assert_eq!(f.commit.as_deref(), Some(c2.to_string().as_str()));
        assert_eq!(f.commit_time, Some(1_700_000_100));
        assert_eq!(fs::read_to_string(f.dir.join("PKGBUILD")).unwrap(), "v2\n");
        assert!(!f.dir.join(".git").exists());
        let f = get(Some(&head_branch), None).unwrap();
        assert_eq!(f.commit, Some(c2.to_string()));
        let f = get(Some("v1"), None).unwrap();
        assert_eq!(f.commit, Some(c1.to_string()));
        assert_eq!(fs::read_to_string(f.dir.join("PKGBUILD")).unwrap(), "v1\n");
        let short = &c1.to_string()[..8];
        let f = get(Some(short), Some("pkgs/foo")).unwrap();
        assert_eq!(f.commit, Some(c1.to_string()));
        assert_eq!(
            fs::read_to_string(f.dir.join("PKGBUILD")).unwrap(),
            "foo1\n"
        );
        let f = get(Some(&c2.to_string()), None).unwrap();
        assert_eq!(f.commit_time, Some(1_700_000_100));

        assert!(matches!(
            get(Some("nope"), None),
            Err(SourceError::NoSuchRev { .. })
        ));
        // A local repository that does not exist is not a network problem: no retry.
        let missing = git_checkout(
            &cfg,
            &t.path().join("no-such-repo").display().to_string(),
            None,
            None,
            &t.path().join("missing"),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            matches!(missing, SourceError::Git(_)) && !missing.is_transient(),
            "{missing:?}"
        );
        assert!(matches!(
            get(Some("deadbeef"), None),
            Err(SourceError::NoSuchRev { .. })
        ));
        assert!(matches!(
            get(None, Some("missing")),
            Err(SourceError::Refused(_))
        ));
        assert!(matches!(
            get(None, Some("PKGBUILD")),
            Err(SourceError::Refused(_))
        ));
        assert!(matches!(
            get(None, Some("../x")),
            Err(SourceError::Refused(_))
        ));

        // The mirror is reused: a new commit upstream is seen by the next fetch.
        let c3 = commit_file(&repo, &[("PKGBUILD", "v3\n")], "three", 1_700_000_200);
        let f = get(None, None).unwrap();
        assert_eq!(f.commit, Some(c3.to_string()));
        assert_eq!(fs::read_dir(t.path().join("git")).unwrap().count(), 1);

        let off = SourceConfig {
            allow_local_git: false,
            ..SourceConfig::new(t.path().join("git"))
        };
        assert!(matches!(
            git_checkout(
                &off,
                &url,
                None,
                None,
                &t.path().join("off"),
                &AtomicBool::new(false)
            ),
            Err(SourceError::LocalGitRefused(_))
        ));
    }

    #[test]
    fn git_fetch_can_be_cancelled() {
        let t = tempfile::tempdir().unwrap();
        let up = t.path().join("upstream");
        let repo = git2::Repository::init(&up).unwrap();
        commit_file(&repo, &[("PKGBUILD", "v1\n")], "one", 1_700_000_000);
        let cfg = SourceConfig::new(t.path().join("git"));
        let r = git_checkout(
            &cfg,
            &format!("file://{}", up.display()),
            None,
            None,
            &t.path().join("out"),
            &AtomicBool::new(true),
        );
        assert!(matches!(r, Err(SourceError::Cancelled)), "{r:?}");
        assert!(!t.path().join("out").exists());
    }

    #[test]
    fn unsupported_kinds_are_errors_not_panics() {
        let t = tempfile::tempdir().unwrap();
        let blobs = crate::store::MemStore::new();
        let cfg = SourceConfig::new(t.path().join("git"));
        let tree = QueueEntry::new(
            pacmesh_protocol::Name::new("extra").unwrap(),
            Source::Unknown {
                kind: "from-the-future".into(),
            },
        );
        let e = fetch(
            &tree,
            &blobs,
            &cfg,
            &t.path().join("a"),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("not supported by this node yet"),
            "{e}"
        );
        let dir = QueueEntry::new(
            pacmesh_protocol::Name::new("extra").unwrap(),
            Source::Dir {
                path: "/x".into(),
                snapshot: Some(Hash::new(b"absent")),
            },
        );
        let e = fetch(
            &dir,
            &blobs,
            &cfg,
            &t.path().join("b"),
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(e.is_transient(), "{e}");
    }
}
