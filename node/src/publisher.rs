//! The publisher: turns agreed build results into signed repository
//! generations.
//!
//! Runs only on a node that holds a publisher key. On start and after every
//! accepted event it looks, for each repository and architecture of the
//! mesh policy, for
//!
//! - **agreed builds**: entries whose `built` reports meet the policy's
//!   quorum (distinct builders allowed by the *current* policy whose artifact
//!   sets are identical by BLAKE3), whose artifacts for this architecture are
//!   not all in the latest generation;
//! - **removals**: `remove` events for a package base that still has
//!   packages in the latest generation.
//!
//! If anything changes it builds generation G+1 from the previous
//! generation's database (loaded from its blobs): new packages are exported
//! from the content store, read (`.PKGINFO`), signed (OpenPGP detached
//! signature from the publisher key) and added; the sync and files databases
//! are written and signed; everything is imported into the content store and
//! a [`RepoManifest`] is published as a `publish` event. Then the generation
//! is materialised and served ([`crate::generation::install`]).
//!
//! # Rules
//!
//! - **Architecture**: an artifact counts for architecture A when its file
//!   name and its `.PKGINFO` say A or `any`; a `.PKGINFO` that disagrees with
//!   the target is skipped with a warning.
//! - **Versions**: a newer version replaces the older entry of the same
//!   name; an older version, or the same version with other bytes, is
//!   refused (logged once). So a rebuild of a published entry (e.g. after a
//!   crash) never makes a new generation: identical bytes are already in the
//!   latest generation, different bytes have the same version.
//! - **Removal**: a `remove` of package base B drops every package of B
//!   (split packages included) that was enqueued no later than the remove
//!   (event times of maintainers; a tie counts as removed); an entry
//!   enqueued after the remove is published again. Removals apply to every
//!   architecture of the repository.
//! - **Cancel**: a cancelled entry is not published (one already published
//!   stays until removed).
//! - **Once on the chain, done**: an entry whose artifacts were all in some
//!   generation of the manifest chain published after the entry was enqueued
//!   is not published again when a later generation drops them (a rollback,
//!   `pacmesh repo rollback`); a new build or enqueue is needed. Entries only
//!   in a generation that lost a race (off the chain) are published again on
//!   top of the winner.
//!
//! # Crash safety
//!
//! The `publish` event is the commit point. Everything before it (staging
//! files, imported blobs, pinned under the generation's tag) is rebuildable
//! and is rebuilt at the next step if the node dies. After it,
//! [`crate::generation::ensure_current`] (at start-up) or the next step
//! finishes materialising and switching. Signatures of one generation are
//! stamped with the manifest's time (whole seconds), so rebuilding a
//! generation from the same inputs at the same second gives the same bytes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use pacmesh_protocol::{
    Artifact, EventBody, Hash, MANIFEST_VERSION, ManifestPackage, MeshPolicy, Name, PublicKey,
    RepoManifest, Roles, Sha256, Timestamp,
};
use pacmesh_repo::db::{AddOutcome, Database};
use pacmesh_repo::package::{
    Compression, PackageInfo, ReadOptions, encode_signature, read_package_with, signature_path,
};
use pacmesh_repo::sign::{KEY_CREATION_TIME, OpenPgpKey};
use pacmesh_repo::version::vercmp;
use tokio::sync::watch;

use crate::core::Core;
use crate::generation::{self, DEFAULT_KEEP};
use crate::state::{EntryRecord, Generation, QueueState, ReportOutcome};
use crate::store::BlobStore;

/// Publisher settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Generations kept on disk per (repo, arch) (default
    /// [`DEFAULT_KEEP`]); older directories are removed and their blobs
    /// unpinned.
    pub keep: usize,
    /// OpenPGP user id of the signing key (default
    /// `pacmesh node <PEERID@pacmesh.invalid>`); the fingerprint does not
    /// depend on it.
    pub uid: Option<String>,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            keep: DEFAULT_KEEP,
            uid: None,
        }
    }
}

/// What the `.PKGINFO` of an artifact says (immutable per blob, so cached).
#[derive(Debug, Clone)]
struct PkgFacts {
    pkgname: String,
    version: String,
    pkgbase: String,
    arch: String,
}

/// An entry with an agreed build not (fully) in the latest generation.
#[derive(Debug)]
struct Candidate {
    entry: Hash,
    enqueued: Timestamp,
    /// The agreed artifacts whose file name fits the architecture (or does
    /// not parse: then the `.PKGINFO` decides).
    artifacts: Vec<Artifact>,
}

/// Everything a step needs from the state, copied out under the lock.
struct Plan {
    latest: Option<Generation>,
    candidates: Vec<Candidate>,
    /// Package base → time of its latest `remove` in this repository.
    removals: HashMap<String, Timestamp>,
    /// For blobs of the latest generation: the latest enqueue time of an
    /// entry that built them.
    blob_times: HashMap<Hash, Timestamp>,
}

impl Plan {
    /// BLAKE3 over everything the step's decision depends on.
    fn fingerprint(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        h.update(b"pacmesh/publisher-plan/v1\0");
        if let Some(g) = &self.latest {
            h.update(g.event.as_bytes());
        }
        let mut removals: Vec<_> = self.removals.iter().collect();
        removals.sort();
        for (base, t) in removals {
            h.update(base.as_bytes());
            h.update(b"\0");
            h.update(&t.as_millis().to_be_bytes());
        }
        let mut times: Vec<_> = self.blob_times.iter().collect();
        times.sort();
        for (b, t) in times {
            h.update(b.as_bytes());
            h.update(&t.as_millis().to_be_bytes());
        }
        h.update(b"candidates\0");
        for c in &self.candidates {
            h.update(c.entry.as_bytes());
            h.update(&c.enqueued.as_millis().to_be_bytes());
            for a in &c.artifacts {
                h.update(a.blake3.as_bytes());
                h.update(a.file_name.as_bytes());
                h.update(b"\0");
            }
        }
        Hash::from(h.finalize())
    }
}

/// Splits `NAME-VER-REL-ARCH.pkg.tar.EXT` into (name, `VER-REL`, arch).
fn parse_file_name(f: &str) -> Option<(&str, String, &str)> {
    let at = f.rfind(".pkg.tar")?;
    let ext = &f[at + ".pkg.tar".len()..];
    if ![
        "", ".zst", ".xz", ".gz", ".bz2", ".lz4", ".lzo", ".lrz", ".lz", ".Z",
    ]
    .contains(&ext)
    {
        return None;
    }
    let stem = &f[..at];
    let mut it = stem.rsplitn(4, '-');
    let arch = it.next()?;
    let rel = it.next()?;
    let ver = it.next()?;
    let name = it.next()?;
    if name.is_empty() || ver.is_empty() || rel.is_empty() || arch.is_empty() {
        return None;
    }
    Some((name, format!("{ver}-{rel}"), arch))
}

fn arch_fits(pkg_arch: &str, target: &str) -> bool {
    pkg_arch == target || pkg_arch == "any"
}

/// The artifact set of `e` that meets the quorum: reports grouped by their
/// set of artifact hashes, counting distinct builders the policy allows;
/// of several qualifying sets, the one with most builders, then the
/// earliest reported.
pub fn agreed_artifacts(e: &EntryRecord, policy: &MeshPolicy) -> Option<Vec<Artifact>> {
    type Group = (BTreeSet<PublicKey>, (Timestamp, Hash), Vec<Artifact>);
    let quorum = policy.quorum.max(1) as usize;
    let mut groups: BTreeMap<Vec<Hash>, Group> = BTreeMap::new();
    for r in e.built() {
        let ReportOutcome::Built { artifacts, .. } = &r.outcome else {
            continue;
        };
        if artifacts.is_empty() || !policy.role_of(&r.builder).contains(Roles::BUILDER) {
            continue;
        }
        let mut key: Vec<Hash> = artifacts.iter().map(|a| a.blake3).collect();
        key.sort_unstable();
        key.dedup();
        let g = groups
            .entry(key)
            .or_insert_with(|| (BTreeSet::new(), (r.time, r.event), artifacts.clone()));
        g.0.insert(r.builder);
        if (r.time, r.event) < g.1 {
            g.1 = (r.time, r.event);
        }
    }
    groups
        .into_values()
        .filter(|g| g.0.len() >= quorum)
        .max_by(|a, b| a.0.len().cmp(&b.0.len()).then(b.1.cmp(&a.1)))
        .map(|g| g.2)
}

fn gather(state: &QueueState, policy: &MeshPolicy, repo: &Name, arch: &Name) -> Plan {
    let latest = state.latest_generation(repo, arch);
    let in_latest: HashSet<Hash> = latest
        .iter()
        .flat_map(|g| g.manifest.packages.iter().map(|p| p.blake3))
        .collect();
    // Per package blob: the newest time a generation on the chain held it. An entry whose
    // artifacts were all published on the chain after it was enqueued is done, even if a
    // later generation dropped them (a rollback, a removal): it is not published again.
    let mut on_chain: HashMap<Hash, Timestamp> = HashMap::new();
    for g in state.chain(repo, arch) {
        for p in &g.manifest.packages {
            let t = on_chain.entry(p.blake3).or_default();
            *t = (*t).max(g.manifest.time);
        }
    }
    let mut candidates = Vec::new();
    let mut blob_times: HashMap<Hash, Timestamp> = HashMap::new();
    for e in state.entries() {
        let Some(enq) = &e.enqueued else { continue };
        if enq.entry.repo != *repo {
            continue;
        }
        for r in e.built() {
            if let ReportOutcome::Built { artifacts, .. } = &r.outcome {
                for a in artifacts.iter().filter(|a| in_latest.contains(&a.blake3)) {
                    let t = blob_times.entry(a.blake3).or_default();
                    *t = (*t).max(enq.time);
                }
            }
        }
        if e.cancelled.is_some()
            || (!enq.entry.arches.is_empty() && !enq.entry.arches.contains(arch))
        {
            continue;
        }
        let Some(arts) = agreed_artifacts(e, policy) else {
            continue;
        };
        let fitting: Vec<Artifact> = arts
            .into_iter()
            .filter(|a| parse_file_name(&a.file_name).is_none_or(|(_, _, a2)| arch_fits(a2, arch)))
            .collect();
        if fitting.is_empty()
            || fitting.iter().all(|a| in_latest.contains(&a.blake3))
            || fitting
                .iter()
                .all(|a| on_chain.get(&a.blake3).is_some_and(|t| *t >= enq.time))
        {
            continue;
        }
        candidates.push(Candidate {
            entry: e.id,
            enqueued: enq.time,
            artifacts: fitting,
        });
    }
    candidates.sort_by_key(|c| (c.enqueued, c.entry));
    let mut removals = HashMap::new();
    for ((r, base), refs) in state.removals() {
        if r == repo
            && let Some(t) = refs.iter().map(|x| x.time).max()
        {
            removals.insert(base.to_string(), t);
        }
    }
    Plan {
        latest,
        candidates,
        removals,
        blob_times,
    }
}

/// The publisher's working state: caches that only save work (what a
/// package blob's `.PKGINFO` says) and the set of refusals already logged.
pub struct Publisher {
    cfg: PublisherConfig,
    pgp: Option<OpenPgpKey>,
    /// Per artifact blob: its `.PKGINFO` facts, or why it can never be
    /// published (unreadable, file name disagrees with `.PKGINFO`).
    facts: HashMap<Hash, Result<PkgFacts, String>>,
    /// Per (repo, arch): the fingerprint of the last plan that changed
    /// nothing (the decision is a function of the plan, so it is skipped
    /// until the plan changes).
    settled: HashMap<(Name, Name), Hash>,
    /// The last step skipped an artifact whose blob is not (yet) here.
    retry_soon: bool,
    logged: HashSet<String>,
}

/// One publish step with a fresh [`Publisher`] (tests, one-shot tools):
/// every (repo, arch) of the policy with something new gets a new
/// generation, published, materialised and served. Returns the manifests
/// published.
pub fn publish_once(core: &Core, cfg: &PublisherConfig) -> Result<Vec<RepoManifest>> {
    Publisher::new(cfg.clone()).step(core)
}

impl Publisher {
    /// A publisher with empty caches.
    pub fn new(cfg: PublisherConfig) -> Self {
        Publisher {
            cfg,
            pgp: None,
            facts: HashMap::new(),
            settled: HashMap::new(),
            retry_soon: false,
            logged: HashSet::new(),
        }
    }

    /// Whether the last step skipped artifacts whose blobs are not in the
    /// store yet (replication may bring them without a new event): the run
    /// loop then tries again after a short delay.
    pub fn wants_retry(&self) -> bool {
        self.retry_soon
    }

    fn once(&mut self, key: String, f: impl FnOnce()) {
        if self.logged.insert(key) {
            f()
        }
    }

    /// See [`publish_once`].
    pub fn step(&mut self, core: &Core) -> Result<Vec<RepoManifest>> {
        let key = core
            .publisher_key
            .as_ref()
            .ok_or_else(|| anyhow!("this node holds no publisher key"))?;
        let publisher = PublicKey::from(key.signing_key());
        if self.pgp.is_none() {
            let uid = self
                .cfg
                .uid
                .clone()
                .unwrap_or_else(|| pacmesh_repo::sign::default_uid(&key.peer_id().to_string()));
            self.pgp = Some(
                OpenPgpKey::from_ed25519_secret(key.seed(), &uid)
                    .context("Failed to derive the OpenPGP signing key")?,
            );
        }
        let targets: Vec<(Name, Name)> = {
            let ingest = core.ingest();
            let policy = ingest.policy();
            if !policy.role_of(&publisher).contains(Roles::PUBLISHER) {
                self.once(format!("not-publisher:{}", policy.policy_version), || {
                    tracing::warn!(key = %publisher.fmt_short(), "the publisher key is not a publisher in the mesh policy; not publishing");
                });
                return Ok(Vec::new());
            }
            policy
                .repos
                .iter()
                .flat_map(|r| r.arches.iter().map(|a| (r.name.clone(), a.clone())))
                .collect()
        };
        let mut out = Vec::new();
        let mut first_err = None;
        self.retry_soon = false;
        for (repo, arch) in targets {
            match self.step_repo(core, publisher, &repo, &arch) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(%repo, %arch, "publishing failed: {e:#}");
                    first_err.get_or_insert(e.context(format!("publishing {repo}/{arch}")));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    fn step_repo(
        &mut self,
        core: &Core,
        publisher: PublicKey,
        repo: &Name,
        arch: &Name,
    ) -> Result<Option<RepoManifest>> {
        let plan = {
            let ingest = core.ingest();
            gather(ingest.state(), ingest.policy(), repo, arch)
        };
        let latest_removable = plan
            .latest
            .as_ref()
            .is_some_and(|g| !plan.removals.is_empty() && !g.manifest.packages.is_empty());
        if plan.candidates.is_empty() && !latest_removable {
            return Ok(None);
        }
        let key = (repo.clone(), arch.clone());
        let fingerprint = plan.fingerprint();
        if self.settled.get(&key) == Some(&fingerprint) {
            return Ok(None);
        }
        let mut transient = false;
        let blobs: &dyn BlobStore = &*core.blobs;

        // The previous generation: database and packages by file name.
        let (mut db, mut pkgs) = match &plan.latest {
            Some(g) => load_previous(blobs, &g.manifest)?,
            None => (Database::new(repo.as_str()), BTreeMap::new()),
        };
        let mut present: HashSet<Hash> = pkgs.values().map(|p| p.blake3).collect();
        let mut changes: Vec<String> = Vec::new();

        // Removals.
        let names: Vec<(String, String, String)> = db
            .entries
            .values()
            .map(|e| {
                let base = e.base.clone().unwrap_or_else(|| e.name.clone());
                (e.name.clone(), base, e.filename.clone())
            })
            .collect();
        for (name, base, filename) in names {
            let Some(&removed_at) = plan.removals.get(&base) else {
                continue;
            };
            let built_at = pkgs
                .get(&filename)
                .and_then(|p| plan.blob_times.get(&p.blake3))
                .copied()
                .unwrap_or_default();
            if removed_at >= built_at {
                db.remove(&name)?;
                if let Some(p) = pkgs.remove(&filename) {
                    present.remove(&p.blake3);
                }
                changes.push(format!("-{name}"));
            }
        }

        // New packages.
        let time = Timestamp::now();
        let sig_time = u32::try_from(time.as_secs())
            .unwrap_or(u32::MAX)
            .max(KEY_CREATION_TIME);
        let staging_root = core.data_dir.join("repos");
        fs::create_dir_all(&staging_root)
            .with_context(|| format!("Failed to create {}", staging_root.display()))?;
        let staging = tempfile::Builder::new()
            .prefix(".publish-")
            .tempdir_in(&staging_root)
            .context("Failed to create a staging directory")?;
        let mut staged: HashMap<Hash, (PathBuf, PackageInfo)> = HashMap::new();
        let mut new_blobs: Vec<Hash> = Vec::new();
        for c in &plan.candidates {
            for a in &c.artifacts {
                if present.contains(&a.blake3) {
                    continue;
                }
                // Cheap refusal from the file name before touching the blob.
                if !self.facts.contains_key(&a.blake3)
                    && let Some((name, version, _)) = parse_file_name(&a.file_name)
                    && let Some(old) = db.get(name)
                    && vercmp(old.version.as_str(), &version).is_ge()
                {
                    self.refuse_version(repo, arch, a, name, old.version.as_str(), &version);
                    continue;
                }
                let facts = match self.facts.get(&a.blake3) {
                    Some(Ok(f)) => f.clone(),
                    Some(Err(_)) => continue,
                    None => match stage(blobs, staging.path(), a) {
                        Err(e) => {
                            // Not here yet or unreadable from the store: try
                            // again later.
                            transient = true;
                            self.retry_soon = true;
                            self.once(format!("missing:{}", a.blake3), || {
                                tracing::warn!(%repo, %arch, file = %a.file_name, entry = %c.entry.fmt_short(), "artifact not available: {e:#}");
                            });
                            continue;
                        }
                        Ok((path, Err(why))) => {
                            tracing::warn!(%repo, %arch, file = %a.file_name, blob = %a.blake3.fmt_short(), entry = %c.entry.fmt_short(), "artifact can never be published: {why}");
                            self.facts.insert(a.blake3, Err(why));
                            let _ = fs::remove_file(path);
                            continue;
                        }
                        Ok((path, Ok(info))) => {
                            let f = facts_of(&info);
                            self.facts.insert(a.blake3, Ok(f.clone()));
                            staged.insert(a.blake3, (path, info));
                            f
                        }
                    },
                };
                if !arch_fits(&facts.arch, arch) {
                    self.once(format!("arch:{arch}:{}", a.blake3), || {
                        tracing::warn!(%repo, %arch, file = %a.file_name, pkg_arch = %facts.arch, entry = %c.entry.fmt_short(), "artifact's .PKGINFO arch does not fit; skipped");
                    });
                    continue;
                }
                if let Some(&removed_at) = plan.removals.get(&facts.pkgbase)
                    && removed_at >= c.enqueued
                {
                    self.once(format!("removed:{repo}:{}", a.blake3), || {
                        tracing::info!(%repo, %arch, file = %a.file_name, pkgbase = %facts.pkgbase, entry = %c.entry.fmt_short(), "package base was removed after this entry was enqueued; not published");
                    });
                    continue;
                }
                if let Some(old) = db.get(&facts.pkgname)
                    && vercmp(old.version.as_str(), &facts.version).is_ge()
                {
                    let old = old.version.to_string();
                    self.refuse_version(repo, arch, a, &facts.pkgname, &old, &facts.version);
                    continue;
                }
                let (path, mut info) = match staged.remove(&a.blake3) {
                    Some(s) => s,
                    None => match stage(blobs, staging.path(), a) {
                        Ok((path, Ok(info))) => (path, info),
                        Ok((_, Err(why))) => bail!("{}: {why}", a.file_name),
                        Err(e) => {
                            transient = true;
                            self.retry_soon = true;
                            tracing::warn!(%repo, %arch, file = %a.file_name, "artifact not available: {e:#}");
                            continue;
                        }
                    },
                };
                let pgp = self.pgp.as_ref().expect("derived in step");
                let f = File::open(&path)
                    .with_context(|| format!("Failed to open {}", path.display()))?;
                let sig = pgp
                    .sign_detached_reader_at(f, sig_time)
                    .with_context(|| format!("Failed to sign {}", a.file_name))?;
                info.pgpsig = Some(encode_signature(&signature_path(&path), &sig)?);
                let outcome =
                    match db.add(&info, false) {
                        Ok(o) => o,
                        Err(e) => {
                            self.once(format!("add:{repo}:{arch}:{}:{}", a.blake3, db.len()), || {
                            tracing::warn!(%repo, %arch, file = %a.file_name, "refused: {e}");
                        });
                            continue;
                        }
                    };
                match &outcome {
                    AddOutcome::Unchanged => continue,
                    AddOutcome::Replaced { old_filename, .. } => {
                        if let Some(p) = pkgs.remove(old_filename) {
                            present.remove(&p.blake3);
                        }
                    }
                    _ => {}
                }
                let sig_hash = blobs
                    .import_bytes(&sig)
                    .context("Failed to store a signature")?;
                new_blobs.push(sig_hash);
                let sha256: Sha256 = info
                    .sha256sum
                    .parse()
                    .map_err(|e| anyhow!("sha256 of {}: {e:?}", a.file_name))?;
                let mp = ManifestPackage {
                    file_name: a.file_name.clone(),
                    pkgname: Name::new(info.pkginfo.pkgname.clone())
                        .map_err(|e| anyhow!("package name of {}: {e}", a.file_name))?,
                    version: info.pkginfo.pkgver.to_string(),
                    blake3: a.blake3,
                    sha256,
                    size: info.csize,
                    sig: sig_hash,
                };
                changes.push(format!("+{} {}", mp.pkgname, mp.version));
                present.insert(a.blake3);
                pkgs.insert(a.file_name.to_string(), mp);
            }
        }
        drop(staging);
        if changes.is_empty() {
            if !transient {
                self.settled.insert(key, fingerprint);
            }
            return Ok(None);
        }

        // Databases.
        let pgp = self.pgp.as_ref().expect("derived in step");
        let (db_bytes, files_bytes) = db
            .archives(Compression::Zstd)
            .context("Failed to write the databases")?;
        let db_sig = pgp.sign_detached_at(&db_bytes, sig_time)?;
        let files_sig = pgp.sign_detached_at(&files_bytes, sig_time)?;
        let mut import = |b: &[u8]| -> Result<Hash> {
            let h = blobs
                .import_bytes(b)
                .context("Failed to store a database file")?;
            new_blobs.push(h);
            Ok(h)
        };
        let db_hash = import(&db_bytes)?;
        let files_hash = import(&files_bytes)?;
        let db_sig_hash = import(&db_sig)?;
        let files_sig_hash = import(&files_sig)?;
        let manifest = RepoManifest {
            version: MANIFEST_VERSION,
            repo: repo.clone(),
            arch: arch.clone(),
            generation: plan
                .latest
                .as_ref()
                .map_or(1, |g| g.manifest.generation + 1),
            previous: plan.latest.as_ref().map(|g| g.event),
            time,
            publisher,
            db: db_hash,
            files_db: files_hash,
            db_sig: db_sig_hash,
            files_db_sig: Some(files_sig_hash),
            packages: pkgs.into_values().collect(),
        };

        // Pin before the commit point, so that GC cannot take the new blobs.
        let tag = generation::pin_tag(repo, arch, manifest.generation);
        let all = generation::manifest_blobs(&manifest);
        for h in &all {
            blobs.pin(h, &tag)?;
        }
        let unpin = |blobs: &dyn BlobStore| {
            for h in &all {
                let _ = blobs.unpin(h, &tag);
            }
        };
        // Another publisher may have published meanwhile: then start over.
        let still_latest = {
            let ingest = core.ingest();
            ingest
                .state()
                .latest_generation(repo, arch)
                .map(|g| g.event)
                == plan.latest.as_ref().map(|g| g.event)
        };
        if !still_latest {
            unpin(blobs);
            tracing::info!(%repo, %arch, "a new generation arrived while preparing; retrying");
            return Ok(None);
        }
        let id = match core.submit_as_publisher(EventBody::Publish(manifest.clone())) {
            Ok(id) => id,
            Err(e) => {
                unpin(blobs);
                return Err(e.context("Failed to publish the manifest"));
            }
        };
        tracing::info!(
            %repo, %arch, generation = manifest.generation, event = %id.fmt_short(),
            packages = manifest.packages.len(), changes = %changes.join(" "),
            "published"
        );
        core.metrics.publishes.inc();
        generation::install(blobs, &core.data_dir, &manifest, Some(self.cfg.keep))
            .context("published, but could not serve the new generation yet")?;
        Ok(Some(manifest))
    }

    fn refuse_version(
        &mut self,
        repo: &Name,
        arch: &Name,
        a: &Artifact,
        name: &str,
        old: &str,
        new: &str,
    ) {
        let what = if vercmp(old, new).is_eq() {
            "same version with other contents"
        } else {
            "downgrade"
        };
        self.once(format!("version:{repo}:{arch}:{}:{old}", a.blake3), || {
            tracing::warn!(%repo, %arch, file = %a.file_name, package = name, published = old, offered = new, "{what} refused");
        });
    }
}

/// The previous generation's database (from its blobs) and its packages by
/// file name; fails if they disagree.
fn load_previous(
    blobs: &dyn BlobStore,
    m: &RepoManifest,
) -> Result<(Database, BTreeMap<String, ManifestPackage>)> {
    let db = blobs
        .read(&m.db)
        .with_context(|| format!("Failed to read the database of generation {}", m.generation))?;
    let files = blobs.read(&m.files_db).with_context(|| {
        format!(
            "Failed to read the files database of generation {}",
            m.generation
        )
    })?;
    let db = Database::from_archives(m.repo.as_str(), &db, Some(&files))
        .with_context(|| format!("Failed to load the database of generation {}", m.generation))?;
    let pkgs: BTreeMap<String, ManifestPackage> = m
        .packages
        .iter()
        .map(|p| (p.file_name.to_string(), p.clone()))
        .collect();
    for e in db.entries.values() {
        if !pkgs.contains_key(&e.filename) {
            bail!(
                "generation {} of {}/{}: the database lists {} but the manifest does not",
                m.generation,
                m.repo,
                m.arch,
                e.filename
            );
        }
    }
    let listed: HashSet<&str> = db.entries.values().map(|e| e.filename.as_str()).collect();
    let pkgs = pkgs
        .into_iter()
        .filter(|(f, _)| {
            let keep = listed.contains(f.as_str());
            if !keep {
                tracing::warn!(file = %f, "package in the manifest but not in its database; dropped");
            }
            keep
        })
        .collect();
    Ok((db, pkgs))
}

/// Exports an artifact to `dir/FILE` (verified by the store) and reads it.
/// The outer error is about the store (missing or unreadable blob: may
/// change); the inner one about the content (never changes for a hash):
/// not a package, or its file name disagrees with its `.PKGINFO`.
fn stage(
    blobs: &dyn BlobStore,
    dir: &Path,
    a: &Artifact,
) -> Result<(PathBuf, Result<PackageInfo, String>)> {
    // One folder per blob: two artifacts may share a file name.
    let sub = dir.join(a.blake3.to_hex());
    match fs::create_dir(&sub) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("Failed to create {}", sub.display())),
    }
    let path = sub.join(a.file_name.as_str());
    let _ = fs::remove_file(&path);
    // A scratch copy: no fsync.
    generation::copy_out(blobs, &a.blake3, &path)
        .with_context(|| format!("Failed to export artifact {} ({})", a.file_name, a.blake3))?;
    let mut opts = ReadOptions::default();
    opts.read_signature = false;
    let info = match read_package_with(&path, &opts) {
        Ok(info) => info,
        Err(e) => return Ok((path, Err(format!("not a readable package: {e}")))),
    };
    let p = &info.pkginfo;
    let version = p.pkgver.to_string();
    let pkg_arch = p.arch.as_deref().unwrap_or("");
    if parse_file_name(&a.file_name) != Some((p.pkgname.as_str(), version.clone(), pkg_arch)) {
        let why = format!(
            "file name does not match its .PKGINFO ({}-{version}-{pkg_arch}.pkg.tar.*)",
            p.pkgname
        );
        return Ok((path, Err(why)));
    }
    if let Err(e) = Name::new(p.pkgname.clone()) {
        return Ok((path, Err(format!("package name: {e}"))));
    }
    Ok((path, Ok(info)))
}

fn facts_of(info: &PackageInfo) -> PkgFacts {
    let p = &info.pkginfo;
    PkgFacts {
        pkgname: p.pkgname.clone(),
        version: p.pkgver.to_string(),
        pkgbase: p.pkgbase.clone().unwrap_or_else(|| p.pkgname.clone()),
        arch: p.arch.clone().unwrap_or_default(),
    }
}

/// The publisher task: a step at start and after every state change (with
/// a short delay to batch bursts), until `shutdown` becomes true. Step
/// errors are logged and retried with backoff (up to a minute); the served
/// generations are repaired ([`generation::try_ensure_current`]) at start and
/// after an error. A node without a publisher key idles until shutdown.
pub async fn run(
    core: Arc<Core>,
    cfg: PublisherConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    if core.publisher_key.is_none() {
        tracing::info!("no publisher key: publisher idle");
        let _ = shutdown.wait_for(|s| *s).await;
        return Ok(());
    }
    let mut changes = core.subscribe();
    let publisher = Arc::new(std::sync::Mutex::new(Publisher::new(cfg)));
    let mut backoff: Option<Duration> = None;
    let mut repair = true;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let _ = changes.borrow_and_update();
        let (c, p) = (core.clone(), publisher.clone());
        let r = tokio::task::spawn_blocking(move || -> Result<Vec<RepoManifest>> {
            if repair {
                generation::try_ensure_current(&c)?;
            } else {
                // Generations published elsewhere (another publisher, `repo rollback`).
                generation::ensure_current(&c)?;
            }
            let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
            p.step(&c)
        })
        .await
        .map_err(|e| anyhow!("publisher step panicked: {e}"))?;
        let mut retry_soon = false;
        match r {
            Ok(_) => {
                backoff = None;
                repair = false;
                retry_soon = publisher
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .wants_retry();
            }
            Err(e) => {
                let next = backoff.map_or(Duration::from_secs(1), |b| {
                    (b * 2).min(Duration::from_secs(60))
                });
                tracing::error!(retry_in_s = next.as_secs(), "publisher: {e:#}");
                backoff = Some(next);
                repair = true;
            }
        }
        let retry = match (backoff, retry_soon) {
            (Some(b), _) => Some(b),
            (None, true) => Some(Duration::from_secs(10)),
            (None, false) => None,
        };
        tokio::select! {
            // The wait's output (a watch guard) is not Send: drop it inside.
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return Ok(()),
            r = changes.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            () = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            parse_file_name("hello-1.0-1-x86_64.pkg.tar.zst"),
            Some(("hello", "1.0-1".to_string(), "x86_64"))
        );
        assert_eq!(
            parse_file_name("lib-foo-bar-2:1.0.r3-2.1-any.pkg.tar.xz"),
            Some(("lib-foo-bar", "2:1.0.r3-2.1".to_string(), "any"))
        );
        assert_eq!(parse_file_name("hello.tar.zst"), None);
        assert_eq!(parse_file_name("a-1-x86_64.pkg.tar.zst"), None);
        assert!(arch_fits("any", "aarch64") && !arch_fits("x86_64", "aarch64"));
    }
}
