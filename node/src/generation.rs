//! Repository generations on disk: a [`RepoManifest`] materialised from the
//! content store into a directory, and the atomic switch of the served one.
//!
//! Used by the publisher after every accepted `publish`, by
//! [`ensure_current`] at start-up, and (later) by mirrors: nothing here
//! depends on publisher state, only on a manifest and a [`BlobStore`].
//!
//! # Layout
//!
//! ```text
//! DATA/repos/NAME/ARCH/
//!   current -> gen/G                 symlink, switched by rename (served dir)
//!   gen/G/                           one complete generation
//!     PKGFILE, PKGFILE.sig           every package of the manifest
//!     NAME.db.tar.zst[.sig]          sync database and its signature
//!     NAME.db -> NAME.db.tar.zst     NAME.db.sig -> NAME.db.tar.zst.sig
//!     NAME.files.tar.zst[.sig]       files database (signature if published)
//!     NAME.files -> …, NAME.files.sig -> …
//!     .pacmesh-manifest.json         the manifest this directory holds
//!   gen/.tmp-G-xxxx/                 a generation being built (removed at the next install)
//!   gen/.trash-G-xxxx/               a pruned generation being deleted
//! ```
//!
//! # Crash safety
//!
//! A generation is built in `gen/.tmp-G-xxxx`, made durable (one
//! `syncfs(2)` for all its files, then an `fsync` of the directory), then
//! renamed to `gen/G` (and `gen/` `fsync`ed): a
//! `gen/G` directory is always complete. The served generation changes by
//! creating a temporary symlink and renaming it over `current`, so `current`
//! always names a complete generation, the old one or the new one. Readers
//! that need a consistent database + signature pair should resolve `current`
//! once (`read_link`) and read both files from that generation.
//!
//! # Verification and sharing
//!
//! Every file is checked on disk against the manifest after it is placed:
//! BLAKE3, and for packages also size and SHA-256; any mismatch fails the
//! materialisation and the served generation stays. A package (or package
//! signature) already present under the same name in one of the three newest
//! other generations is hard-linked from there instead of exported, and kept
//! only if it checks out, so unchanged packages cost one read and kept
//! generations share their disk space.
//!
//! # Blob pins
//!
//! Every blob a materialised generation holds is pinned in the store with
//! the tag [`pin_tag`] (`gen:NAME/ARCH/G`) before it is exported. Pruning a
//! generation removes its directory and those pins, so a blob that nothing
//! else pins (no event, no newer generation) can be collected by
//! [`BlobStore::gc`].

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail, ensure};
use pacmesh_protocol::{Hash, Name, RepoManifest, Sha256};
use sha2::Digest;

use crate::core::Core;
use crate::store::BlobStore;

/// Generations kept on disk by default (the served one is always kept).
pub const DEFAULT_KEEP: usize = 10;

/// Name of the manifest copy inside a generation directory.
pub const MANIFEST_FILE: &str = ".pacmesh-manifest.json";

/// Serialises installs in this process (publisher and start-up repair).
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// `DATA/repos/NAME/ARCH`.
pub fn repo_dir(data_dir: &Path, repo: &str, arch: &str) -> PathBuf {
    data_dir.join("repos").join(repo).join(arch)
}

/// The served directory of (repo, arch): the `current` symlink. The HTTP
/// layer serves `/NAME/os/ARCH/FILE` from it.
pub fn served_dir(data_dir: &Path, repo: &str, arch: &str) -> PathBuf {
    repo_dir(data_dir, repo, arch).join("current")
}

/// `DATA/repos/NAME/ARCH/gen/G`.
pub fn generation_dir(data_dir: &Path, repo: &str, arch: &str, generation: u64) -> PathBuf {
    repo_dir(data_dir, repo, arch)
        .join("gen")
        .join(generation.to_string())
}

/// The blob pin tag of a materialised generation: `gen:NAME/ARCH/G`.
pub fn pin_tag(repo: &str, arch: &str, generation: u64) -> String {
    format!("gen:{repo}/{arch}/{generation}")
}

/// The generation `current` points to, if it points to a `gen/G` directory
/// that exists.
pub fn served_generation(data_dir: &Path, repo: &str, arch: &str) -> Option<u64> {
    let link = served_dir(data_dir, repo, arch);
    let target = fs::read_link(&link).ok()?;
    let g = parse_gen_target(&target)?;
    generation_dir(data_dir, repo, arch, g)
        .is_dir()
        .then_some(g)
}

fn parse_gen_target(target: &Path) -> Option<u64> {
    let mut comps = target.components();
    if comps.next()?.as_os_str() != "gen" {
        return None;
    }
    let g = comps.next()?.as_os_str().to_str()?.parse().ok()?;
    comps.next().is_none().then_some(g)
}

/// The manifest stored in a materialised generation directory, if readable.
pub fn read_materialised(dir: &Path) -> Option<RepoManifest> {
    let bytes = fs::read(dir.join(MANIFEST_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Generation numbers present under `gen/`, ascending.
pub fn list_generations(data_dir: &Path, repo: &str, arch: &str) -> Result<Vec<u64>> {
    let dir = repo_dir(data_dir, repo, arch).join("gen");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("Failed to list {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("Failed to list {}", dir.display()))?;
        if let Some(g) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok())
            && e.file_type().is_ok_and(|t| t.is_dir())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The file names of the database files of repository `repo`:
/// `(db, db link, files, files link)`.
pub(crate) fn db_names(repo: &str) -> [String; 4] {
    [
        format!("{repo}.db.tar.zst"),
        format!("{repo}.db"),
        format!("{repo}.files.tar.zst"),
        format!("{repo}.files"),
    ]
}

/// Every blob a manifest names (what a generation pins).
pub fn manifest_blobs(m: &RepoManifest) -> BTreeSet<Hash> {
    let mut out: BTreeSet<Hash> = [m.db, m.files_db, m.db_sig].into_iter().collect();
    out.extend(m.files_db_sig);
    for p in &m.packages {
        out.insert(p.blake3);
        out.insert(p.sig);
    }
    out
}

/// Checks that the manifest's file names cannot clash with each other or
/// with the database files and signatures.
pub(crate) fn check_names(m: &RepoManifest) -> Result<()> {
    let reserved: BTreeSet<String> = db_names(&m.repo)
        .into_iter()
        .flat_map(|n| [format!("{n}.sig"), n])
        .collect();
    let mut seen = BTreeSet::new();
    for p in &m.packages {
        let f = p.file_name.as_str();
        if reserved.contains(f) || f.ends_with(".sig") || !seen.insert(f) {
            bail!(
                "manifest {}/{} generation {}: package file name {f:?} clashes with a repository file",
                m.repo,
                m.arch,
                m.generation
            );
        }
    }
    Ok(())
}

/// Exports `hash` to `dest` and checks it again on disk: BLAKE3 (the name),
/// and when given the size and SHA-256 the manifest states.
fn export_checked(
    blobs: &dyn BlobStore,
    hash: &Hash,
    dest: &Path,
    size: Option<u64>,
    sha256: Option<&Sha256>,
) -> Result<()> {
    copy_out(blobs, hash, dest)?;
    check_file(hash, dest, size, sha256)
}

/// Writes the (store-verified) content of `hash` to a new file `dest`, mode
/// 0644, without `fsync` (callers make the whole directory durable at once
/// with [`sync_fs`], or do not need durability).
pub(crate) fn copy_out(blobs: &dyn BlobStore, hash: &Hash, dest: &Path) -> Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = blobs
        .open(hash)
        .with_context(|| format!("Failed to read blob {hash}"))?;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dest)
        .with_context(|| format!("Failed to create {}", dest.display()))?;
    let n = io::copy(&mut src, &mut f)
        .with_context(|| format!("Failed to write blob {hash} to {}", dest.display()))?;
    // The umask may have narrowed the mode.
    fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("Failed to chmod {}", dest.display()))?;
    Ok(n)
}

/// Makes everything written to the file system holding `dir` durable: one
/// `syncfs(2)` instead of an `fsync` per file.
pub(crate) fn sync_fs(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let d = File::open(dir).with_context(|| format!("Failed to open {}", dir.display()))?;
    // SAFETY: a valid open file descriptor, owned by `d` for the call.
    if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("Failed to syncfs {}", dir.display()));
    }
    Ok(())
}

/// Like [`export_checked`], but first tries to hard-link the file of the
/// same name from one of the `donors` (other generation directories) and
/// keeps the link only if its content checks out: an unchanged package costs
/// one read instead of a copy, and kept generations share the disk space.
fn place(
    blobs: &dyn BlobStore,
    hash: &Hash,
    dest: &Path,
    size: Option<u64>,
    sha256: Option<&Sha256>,
    donors: &[PathBuf],
) -> Result<()> {
    if let Some(name) = dest.file_name() {
        for d in donors {
            let src = d.join(name);
            if !fs::symlink_metadata(&src).is_ok_and(|m| m.is_file()) {
                continue;
            }
            if fs::hard_link(&src, dest).is_ok() {
                if check_file(hash, dest, size, sha256).is_ok() {
                    return Ok(());
                }
                let _ = fs::remove_file(dest);
            }
        }
    }
    export_checked(blobs, hash, dest, size, sha256)
}

/// Checks the file at `dest` against the manifest: BLAKE3, size, SHA-256.
pub(crate) fn check_file(
    hash: &Hash,
    dest: &Path,
    size: Option<u64>,
    sha256: Option<&Sha256>,
) -> Result<()> {
    let mut f = File::open(dest).with_context(|| format!("Failed to open {}", dest.display()))?;
    let mut b3 = blake3::Hasher::new();
    let mut sha = sha2::Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("Failed to read {}", dest.display())),
        };
        b3.update(&buf[..k]);
        sha.update(&buf[..k]);
        n += k as u64;
    }
    let actual = Hash::from(b3.finalize());
    ensure!(
        actual == *hash,
        "{}: content hashes to {actual}, the manifest says {hash}",
        dest.display()
    );
    if let Some(size) = size {
        ensure!(
            n == size,
            "{}: {n} bytes, the manifest says {size}",
            dest.display()
        );
    }
    if let Some(want) = sha256 {
        let got = Sha256::from(<[u8; 32]>::from(sha.finalize()));
        ensure!(
            got == *want,
            "{}: SHA-256 {got}, the manifest says {want}",
            dest.display()
        );
    }
    // No fsync here: the caller syncs the whole directory once.
    Ok(())
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("Failed to fsync directory {}", dir.display()))
}

/// Creates a symlink `link -> target` atomically (temporary name, rename).
pub(crate) fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let dir = link.parent().context("symlink without a parent")?;
    let name = link
        .file_name()
        .and_then(|n| n.to_str())
        .context("symlink name")?;
    let tmp = dir.join(format!(".{name}.tmp-{}", unique()));
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("Failed to create symlink {}", tmp.display()))?;
    if let Err(e) = fs::rename(&tmp, link) {
        let _ = fs::remove_file(&tmp);
        return Err(e)
            .with_context(|| format!("Failed to rename a symlink onto {}", link.display()));
    }
    Ok(())
}

pub(crate) fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds generation `m.generation` of (m.repo, m.arch) under `data_dir`
/// unless a complete directory for exactly this manifest is there already.
/// Does not switch `current`. Every blob is pinned with [`pin_tag`] first.
/// Returns the generation directory.
///
/// Fails (leaving the served generation untouched) if a blob is missing or
/// its content, size or SHA-256 differs from the manifest.
pub fn materialise(blobs: &dyn BlobStore, data_dir: &Path, m: &RepoManifest) -> Result<PathBuf> {
    check_names(m)?;
    let (repo, arch, g) = (m.repo.as_str(), m.arch.as_str(), m.generation);
    let final_dir = generation_dir(data_dir, repo, arch, g);
    if final_dir.is_dir() {
        if read_materialised(&final_dir).as_ref() == Some(m) {
            return Ok(final_dir);
        }
        tracing::warn!(
            repo,
            arch,
            generation = g,
            "generation directory holds another manifest; rebuilding it"
        );
    }
    let tag = pin_tag(repo, arch, g);
    for h in manifest_blobs(m) {
        blobs
            .pin(&h, &tag)
            .with_context(|| format!("Failed to pin blob {h}"))?;
    }
    let gen_root = repo_dir(data_dir, repo, arch).join("gen");
    fs::create_dir_all(&gen_root)
        .with_context(|| format!("Failed to create {}", gen_root.display()))?;
    let tmp = gen_root.join(format!(".tmp-{g}-{}", unique()));
    fs::create_dir(&tmp).with_context(|| format!("Failed to create {}", tmp.display()))?;
    // Newest other generations first: where unchanged packages are found.
    let donors: Vec<PathBuf> = list_generations(data_dir, repo, arch)?
        .into_iter()
        .rev()
        .filter(|&d| d != g)
        .take(3)
        .map(|d| generation_dir(data_dir, repo, arch, d))
        .collect();
    let built = (|| -> Result<()> {
        for p in &m.packages {
            let file = tmp.join(p.file_name.as_str());
            place(
                blobs,
                &p.blake3,
                &file,
                Some(p.size),
                Some(&p.sha256),
                &donors,
            )?;
            let sig = tmp.join(format!("{}.sig", p.file_name));
            place(blobs, &p.sig, &sig, None, None, &donors)?;
        }
        let [db, db_link, files, files_link] = db_names(repo);
        export_checked(blobs, &m.db, &tmp.join(&db), None, None)?;
        export_checked(blobs, &m.db_sig, &tmp.join(format!("{db}.sig")), None, None)?;
        std::os::unix::fs::symlink(&db, tmp.join(&db_link))?;
        std::os::unix::fs::symlink(format!("{db}.sig"), tmp.join(format!("{db_link}.sig")))?;
        export_checked(blobs, &m.files_db, &tmp.join(&files), None, None)?;
        std::os::unix::fs::symlink(&files, tmp.join(&files_link))?;
        if let Some(s) = &m.files_db_sig {
            export_checked(blobs, s, &tmp.join(format!("{files}.sig")), None, None)?;
            std::os::unix::fs::symlink(
                format!("{files}.sig"),
                tmp.join(format!("{files_link}.sig")),
            )?;
        }
        let json = serde_json::to_vec_pretty(m).context("Failed to encode the manifest")?;
        let mpath = tmp.join(MANIFEST_FILE);
        fs::write(&mpath, json).with_context(|| format!("Failed to write {}", mpath.display()))?;
        // Every file and the directory itself durable before the rename.
        sync_fs(&tmp)?;
        fsync_dir(&tmp)?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "Failed to materialise {repo}/{arch} generation {g}"
        )));
    }
    if final_dir.exists() {
        // Another manifest under the same number (two publishers raced):
        // move it aside first (a directory cannot be renamed over a full
        // one) and release the pins only it needed.
        if let Some(old) = read_materialised(&final_dir) {
            let keep = manifest_blobs(m);
            for h in manifest_blobs(&old).difference(&keep) {
                let _ = blobs.unpin(h, &tag);
            }
        }
        let trash = gen_root.join(format!(".trash-{g}-{}", unique()));
        fs::rename(&final_dir, &trash)
            .with_context(|| format!("Failed to move {} aside", final_dir.display()))?;
        let _ = fs::remove_dir_all(&trash);
    }
    fs::rename(&tmp, &final_dir)
        .with_context(|| format!("Failed to rename {} into place", tmp.display()))?;
    fsync_dir(&gen_root)?;
    tracing::info!(repo, arch, generation = g, packages = m.packages.len(), dir = %final_dir.display(), "generation materialised");
    Ok(final_dir)
}

/// Points `current` of (repo, arch) at `gen/G` atomically.
pub fn switch_current(data_dir: &Path, repo: &str, arch: &str, generation: u64) -> Result<()> {
    let dir = repo_dir(data_dir, repo, arch);
    let target = PathBuf::from("gen").join(generation.to_string());
    ensure!(
        dir.join(&target).is_dir(),
        "generation {generation} of {repo}/{arch} is not materialised"
    );
    let link = dir.join("current");
    if fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    replace_symlink(&target, &link)?;
    fsync_dir(&dir)?;
    tracing::info!(repo, arch, generation, "served generation switched");
    Ok(())
}

/// Removes generation directories of (repo, arch) beyond the newest `keep`
/// (at least 1), never the served one, and unpins their blobs. Also clears
/// leftovers of interrupted builds and prunes (`.tmp-*`, `.trash-*`).
/// Returns the generations removed.
pub fn prune(
    blobs: &dyn BlobStore,
    data_dir: &Path,
    repo: &str,
    arch: &str,
    keep: usize,
) -> Result<Vec<u64>> {
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    prune_locked(blobs, data_dir, repo, arch, keep)
}

fn prune_locked(
    blobs: &dyn BlobStore,
    data_dir: &Path,
    repo: &str,
    arch: &str,
    keep: usize,
) -> Result<Vec<u64>> {
    let gen_root = repo_dir(data_dir, repo, arch).join("gen");
    clean_leftovers(&gen_root);
    let gens = list_generations(data_dir, repo, arch)?;
    let served = served_generation(data_dir, repo, arch);
    let keep = keep.max(1);
    let cut = gens.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for &g in &gens[..cut] {
        if Some(g) == served {
            continue;
        }
        let dir = generation_dir(data_dir, repo, arch, g);
        let manifest = read_materialised(&dir);
        let trash = gen_root.join(format!(".trash-{g}-{}", unique()));
        fs::rename(&dir, &trash)
            .with_context(|| format!("Failed to move {} aside", dir.display()))?;
        if let Err(e) = fs::remove_dir_all(&trash) {
            tracing::warn!(dir = %trash.display(), "could not delete a pruned generation: {e}");
        }
        match manifest {
            Some(m) => {
                let tag = pin_tag(repo, arch, g);
                for h in manifest_blobs(&m) {
                    blobs
                        .unpin(&h, &tag)
                        .with_context(|| format!("Failed to unpin blob {h}"))?;
                }
            }
            None => tracing::warn!(
                repo,
                arch,
                generation = g,
                "pruned generation had no readable manifest; its pins stay"
            ),
        }
        removed.push(g);
    }
    if !removed.is_empty() {
        fsync_dir(&gen_root)?;
        tracing::info!(repo, arch, ?removed, "old generations pruned");
    }
    Ok(removed)
}

/// Removes `.tmp-*` and `.trash-*` directories under `gen/` (interrupted
/// builds and prunes). Call with [`INSTALL_LOCK`] held.
fn clean_leftovers(gen_root: &Path) {
    if let Ok(rd) = fs::read_dir(gen_root) {
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".tmp-") || n.starts_with(".trash-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Materialises `m`, switches `current` to it (unless a newer generation is
/// served already) and, with `keep`, prunes to that many generations.
pub fn install(
    blobs: &dyn BlobStore,
    data_dir: &Path,
    m: &RepoManifest,
    keep: Option<usize>,
) -> Result<PathBuf> {
    let _guard = INSTALL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    clean_leftovers(&repo_dir(data_dir, &m.repo, &m.arch).join("gen"));
    let dir = materialise(blobs, data_dir, m)?;
    let served = served_generation(data_dir, &m.repo, &m.arch);
    if served.is_none_or(|s| s <= m.generation) {
        switch_current(data_dir, &m.repo, &m.arch, m.generation)?;
    }
    if let Some(keep) = keep {
        prune_locked(blobs, data_dir, &m.repo, &m.arch, keep)?;
    }
    Ok(dir)
}

/// Whether the latest manifest of (m.repo, m.arch) is what `current` serves.
pub fn is_current(data_dir: &Path, m: &RepoManifest) -> bool {
    served_generation(data_dir, &m.repo, &m.arch) == Some(m.generation)
        && read_materialised(&generation_dir(data_dir, &m.repo, &m.arch, m.generation)).as_ref()
            == Some(m)
}

/// Start-up repair: for every (repo, arch) with an accepted `publish`, makes
/// sure its latest generation is materialised and served (e.g. the node was
/// killed between accepting its own `publish` and switching). Returns the
/// (repo, arch, generation) it installed; a no-op returns an empty list.
///
/// Lenient: a generation that cannot be materialised (its blobs are not on
/// this node, e.g. a builder that saw the `publish` but never fetched the
/// packages) is logged and skipped, and the others are still tried; use
/// [`try_ensure_current`] to get that failure as an error. Nothing is
/// pruned here (the publisher prunes with its configured `keep`).
pub fn ensure_current(core: &Core) -> Result<Vec<(Name, Name, u64)>> {
    Ok(ensure_inner(core).0)
}

/// [`ensure_current`], failing with the first error after every (repo, arch)
/// was tried.
pub fn try_ensure_current(core: &Core) -> Result<Vec<(Name, Name, u64)>> {
    match ensure_inner(core) {
        (_, Some(e)) => Err(e),
        (done, None) => Ok(done),
    }
}

fn ensure_inner(core: &Core) -> (Vec<(Name, Name, u64)>, Option<anyhow::Error>) {
    let latest: Vec<_> = {
        let ingest = core.ingest();
        let state = ingest.state();
        state
            .published_repos()
            .filter_map(|(r, a)| state.latest_generation(r, a))
            .collect()
    };
    let mut done = Vec::new();
    let mut first_err = None;
    for g in latest {
        let m = &g.manifest;
        if is_current(&core.data_dir, m) {
            continue;
        }
        match install(&*core.blobs, &core.data_dir, m, None) {
            Ok(_) => done.push((m.repo.clone(), m.arch.clone(), m.generation)),
            Err(e) => {
                tracing::error!(repo = %m.repo, arch = %m.arch, generation = m.generation, "cannot serve the latest generation: {e:#}");
                first_err.get_or_insert(e);
            }
        }
    }
    (done, first_err)
}
