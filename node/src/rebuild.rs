//! Rebuilds: new versions for forced rebuilds, and rebuild cascades.
//!
//! # Forced rebuilds get a new version
//!
//! A rebuild of a version that is already published (a `[deploy NAME]` of an unchanged tree
//! folder, a rebuild trigger below) would produce the same `pkgver-pkgrel` with other bytes
//! (a new `SOURCE_DATE_EPOCH`), which the publisher refuses. So whoever makes such an entry
//! puts a [`PkgrelBump`] in it, computed from what is published ([`PkgrelBump::after`]: `1` →
//! `1.1` → `1.2`, as Arch and Chaotic-AUR do), and every builder applies it in the sandbox's
//! interfere phase (`PACMESH_REBUILD_BUMP`): while the PKGBUILD still says the published
//! version, pkgrel becomes `pkgrel.N`; a PKGBUILD with a new pkgver or pkgrel is built as it is
//! (the bump does not match, the new version needs none). `pacmesh tree sync` does this for
//! every folder it enqueues whose package base is published ([`published_bases`]).
//!
//! # Rebuild cascades
//!
//! When a publish is accepted, this node (module task [`spawn`], `[rebuild]` in the node
//! config) compares the new generation of each repository and architecture with the previous
//! one. For every package whose version changed (not new packages: nothing was built against
//! them), the dependants are:
//!
//! - the tree folders whose `.CI/config` `CI_REBUILD_TRIGGERS` names the package (or its
//!   package base), read from the tree at its last synced commit;
//! - the published packages that depend on a soname (`libfoo.so`) whose version the package's
//!   `provides` changed (`libfoo.so=1-64` → `libfoo.so=2-64`) or dropped, read from the two
//!   generations' databases.
//!
//! Each dependant is enqueued again (the same source; a tree folder at its tree's last synced
//! commit) with a pkgrel bump from its published version, `after` the entry that built the
//! trigger, and `cascade` = the trigger entry's cascade plus the trigger's package base. It is
//! not enqueued when its package base is already in that list (so mutual triggers A ↔ B stop
//! after one round), when the list is [`MAX_CASCADE`] long, when an entry for it was enqueued
//! after the trigger's entry or waits for it in `after` (it is built against the new version
//! anyway: both changed in one tree sync that ordered them, or this cascade already ran), or
//! when nothing of it is published.
//!
//! The enqueue is signed with the automation key (`[rebuild] key`, else `[watch] key`, else
//! the node key — the same key update detection uses) when the policy makes it a maintainer;
//! otherwise nothing is signed and the rebuild is *reported*: recorded in
//! `DATA/rebuild/state.json` and shown by `queue why PKG` for a maintainer to act on. Every
//! node may run this; configure an automation key on one node per mesh (two nodes with
//! maintainer keys could both enqueue the same rebuild before they see each other's entry).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pacmesh_protocol::{
    EventBody, Hash, MAX_CASCADE, Name, PkgrelBump, QueueEntry, RepoManifest, Roles, Source,
    Timestamp,
};
use pacmesh_repo::db::Database;
use pacmesh_repo::version::vercmp;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::core::Core;
use crate::state::{QueueState, ReportOutcome};
use crate::store::BlobStore;

/// `[rebuild]` in the node config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildSection {
    /// React to publishes with rebuild cascades (default true).
    pub enabled: Option<bool>,
    /// Maintainer key that signs cascade enqueues (default: `[watch] key`, else the node key),
    /// relative to the config file's folder.
    pub key: Option<PathBuf>,
}

// ---- versions -----------------------------------------------------------------------------

/// The newest published version of each package base in `db` (a package without `%BASE%` is
/// its own base).
pub fn versions_by_base(db: &Database) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for e in db.entries.values() {
        let base = e.base.clone().unwrap_or_else(|| e.name.clone());
        let v = e.version.to_string();
        match out.get(&base) {
            Some(old) if vercmp(old, &v).is_ge() => {}
            _ => {
                out.insert(base, v);
            }
        }
    }
    out
}

/// The newest published version of each package base of `repo`, over all its architectures,
/// as the node at `client` serves them (its `REPO.db` files); empty when nothing is published.
pub fn published_bases(
    client: &crate::client::Client,
    repo: &str,
) -> Result<BTreeMap<String, String>> {
    let st = client.get_json("/api/v1/status")?;
    let arches: Vec<String> = st["mesh"]["repos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == repo)
        .flat_map(|r| r["arches"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for arch in arches {
        let Some(bytes) = client.get_bytes_opt(&format!("/{repo}/os/{arch}/{repo}.db"))? else {
            continue;
        };
        let db = Database::from_archives(repo, &bytes, None)
            .with_context(|| format!("reading the published database of {repo}/{arch}"))?;
        for (base, v) in versions_by_base(&db) {
            match out.get(&base) {
                Some(old) if vercmp(old, &v).is_ge() => {}
                _ => {
                    out.insert(base, v);
                }
            }
        }
    }
    Ok(out)
}

/// The newest version of each package base of `repo` in the newest generation of each of its
/// architectures, as this node's state holds them (update detection and triggers inside the
/// node use it for [`bump_for`]). From the generation's database when this node has the blob
/// (publishers, mirrors); else from the manifest's package list, where a split package's base
/// is only known when a package carries the base's name.
pub fn published_versions(core: &Core, repo: &Name) -> BTreeMap<String, String> {
    let tips: Vec<Arc<RepoManifest>> = {
        let ingest = core.ingest();
        let st = ingest.state();
        st.published_repos()
            .filter(|(r, _)| r == repo)
            .filter_map(|(r, a)| st.latest_generation(r, a))
            .map(|g| g.manifest)
            .collect()
    };
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for m in tips {
        let versions = match read_db(&*core.blobs, &m) {
            Some(db) => versions_by_base(&db),
            None => m
                .packages
                .iter()
                .map(|p| (p.pkgname.to_string(), p.version.clone()))
                .collect(),
        };
        for (base, v) in versions {
            match out.get(&base) {
                Some(old) if vercmp(old, &v).is_ge() => {}
                _ => {
                    out.insert(base, v);
                }
            }
        }
    }
    out
}

/// The bump for a new entry of a package base published at `published` (see the module docs).
pub fn bump_for(published: Option<&str>) -> Option<PkgrelBump> {
    PkgrelBump::after(published?)
}

// ---- sonames ------------------------------------------------------------------------------

/// `libfoo.so=2-64` → (`libfoo.so`, `2-64`); `libfoo.so` → (`libfoo.so`, ``); not a soname →
/// `None`.
fn soname(s: &str) -> Option<(&str, &str)> {
    let (name, ver) = match s.find(['=', '<', '>']) {
        Some(i) => (&s[..i], s[i..].trim_start_matches(['=', '<', '>'])),
        None => (s, ""),
    };
    (name.ends_with(".so") || name.contains(".so.")).then_some((name, ver))
}

/// Sonames whose version `new` changed or dropped compared with `old` (two `provides` lists).
pub fn changed_sonames(old: &[String], new: &[String]) -> BTreeSet<String> {
    let had: BTreeSet<(&str, &str)> = old.iter().filter_map(|p| soname(p)).collect();
    let has: BTreeSet<(&str, &str)> = new.iter().filter_map(|p| soname(p)).collect();
    had.difference(&has).map(|(n, _)| n.to_string()).collect()
}

/// Whether a `depends` list names one of `sonames`.
pub fn depends_on_any(depends: &[String], sonames: &BTreeSet<String>) -> bool {
    depends
        .iter()
        .filter_map(|d| soname(d))
        .any(|(n, _)| sonames.contains(n))
}

// ---- the cascade --------------------------------------------------------------------------

/// A package whose version changed between two generations.
#[derive(Debug, Clone)]
struct Changed {
    pkgname: String,
    pkgbase: String,
    old: String,
    new: String,
    blob: Hash,
}

/// Something to rebuild.
#[derive(Debug, Clone)]
struct Dependant {
    pkgbase: String,
    source: Source,
    /// Why: `CI_REBUILD_TRIGGERS` or the soname.
    why: String,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// (package base, entry id) enqueued.
    pub enqueued: Vec<(String, String)>,
    /// Package bases reported instead (no maintainer key).
    pub reported: Vec<String>,
    /// (package base, why) not enqueued.
    pub skipped: Vec<(String, String)>,
}

const MAX_STATE_BYTES: u64 = 16 << 20;

fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("rebuild").join("state.json")
}

fn load(data_dir: &Path) -> Map<String, Value> {
    let p = state_path(data_dir);
    match std::fs::metadata(&p) {
        Ok(m) if m.len() <= MAX_STATE_BYTES => {}
        Ok(_) => {
            tracing::warn!(path = %p.display(), "rebuild state too large; ignored");
            return Map::new();
        }
        Err(_) => return Map::new(),
    }
    match std::fs::read(&p).map(|b| serde_json::from_slice::<Map<String, Value>>(&b)) {
        Ok(Ok(m)) => m,
        _ => {
            tracing::warn!(path = %p.display(), "rebuild state unreadable; ignored");
            Map::new()
        }
    }
}

fn store(data_dir: &Path, state: &Map<String, Value>) -> std::io::Result<()> {
    let p = state_path(data_dir);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &p)
}

/// What the cascade last said about package base `pkg` (a rebuild it enqueued, reported or
/// stopped), if anything.
pub fn observed(data_dir: &Path, pkg: &str) -> Option<Value> {
    load(data_dir)
        .get("packages")
        .and_then(|p| p.get(pkg))
        .cloned()
}

/// Starts the cascade task (unless `[rebuild] enabled = false`).
pub fn spawn(
    tasks: &mut tokio::task::JoinSet<Result<&'static str>>,
    core: &Arc<Core>,
    cfg: &crate::config::Config,
    mut stop: watch::Receiver<bool>,
) {
    if cfg.rebuild.enabled == Some(false) {
        return;
    }
    let key_path = cfg.rebuild.key.clone().or_else(|| cfg.watch.key.clone());
    let core = core.clone();
    tasks.spawn(async move {
        let key = match &key_path {
            Some(p) => Some(
                crate::keys::NodeKey::load(p)
                    .with_context(|| format!("rebuild key {}", p.display()))?,
            ),
            None => None,
        };
        let key = Arc::new(key);
        let mut changed = core.subscribe();
        loop {
            let (c, k) = (core.clone(), key.clone());
            match tokio::task::spawn_blocking(move || cascade_once(&c, (*k).as_ref())).await {
                Ok(Ok(r)) => {
                    if r != Round::default() {
                        tracing::info!(enqueued = ?r.enqueued, reported = ?r.reported, skipped = ?r.skipped, "rebuild cascade");
                    }
                }
                Ok(Err(e)) => tracing::warn!("rebuild cascade: {e:#}"),
                Err(e) => return Err(anyhow::anyhow!("rebuild cascade task: {e}")),
            }
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return Ok("rebuild");
                    }
                    // Let a burst of events (a publish and its neighbours) settle.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                // The wait's output (a watch guard) is not Send: drop it inside.
                () = async { let _ = stop.wait_for(|s| *s).await; } => return Ok("rebuild"),
            }
        }
    });
}

/// The generations of (repo, arch) not processed yet, oldest first, each with its previous
/// manifest; at most 16, and only the newest one when nothing was processed before.
fn unprocessed(
    state: &QueueState,
    repo: &Name,
    arch: &Name,
    done: Option<&str>,
) -> Vec<(Hash, Arc<RepoManifest>, Option<Arc<RepoManifest>>)> {
    let chain = state.chain(repo, arch);
    let mut out = Vec::new();
    for (i, g) in chain.iter().enumerate() {
        if Some(g.event.to_string().as_str()) == done || i >= 16 || (done.is_none() && i >= 1) {
            break;
        }
        let prev = chain.get(i + 1).map(|p| p.manifest.clone());
        out.push((g.event, g.manifest.clone(), prev));
    }
    out.reverse();
    out
}

/// One pass over the generations published since the last pass (see the module docs).
pub fn cascade_once(core: &Core, key: Option<&crate::keys::NodeKey>) -> Result<Round> {
    let mut round = Round::default();
    let mut st = load(&core.data_dir);
    let targets: Vec<(Name, Name)> = {
        let ingest = core.ingest();
        ingest.state().published_repos().cloned().collect()
    };
    let signer = key.unwrap_or(&core.key);
    let signer_pub = pacmesh_protocol::PublicKey::from(signer.signing_key());
    let mut dirty = false;
    for (repo, arch) in targets {
        let slot = format!("{repo}/{arch}");
        let done = st
            .get("processed")
            .and_then(|p| p.get(&slot))
            .and_then(Value::as_str)
            .map(str::to_string);
        let todo = {
            let ingest = core.ingest();
            unprocessed(ingest.state(), &repo, &arch, done.as_deref())
        };
        for (event, new, old) in todo {
            if let Some(old) = old {
                let may_enqueue = core
                    .ingest()
                    .policy()
                    .role_of(&signer_pub)
                    .contains(Roles::MAINTAINER);
                process(core, &new, &old, signer, may_enqueue, &mut st, &mut round)?;
            }
            st.entry("processed")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object")
                .insert(slot.clone(), json!(event.to_string()));
            dirty = true;
        }
    }
    if dirty {
        store(&core.data_dir, &st).context("recording the rebuild state")?;
    }
    Ok(round)
}

fn read_db(blobs: &dyn BlobStore, m: &RepoManifest) -> Option<Database> {
    let bytes = match blobs.read(&m.db) {
        Ok(b) => b,
        Err(e) => {
            tracing::info!(repo = %m.repo, arch = %m.arch, generation = m.generation, "database not here; sonames not compared: {e}");
            return None;
        }
    };
    Database::from_archives(m.repo.as_str(), &bytes, None)
        .map_err(|e| tracing::warn!(generation = m.generation, "unreadable database: {e}"))
        .ok()
}

/// The newest entry (by enqueue time) of `repo` whose agreed build produced blob `blob`.
fn entry_of_blob(state: &QueueState, repo: &Name, blob: &Hash) -> Option<Hash> {
    state
        .entries()
        .filter(|e| {
            e.enqueued.as_ref().is_some_and(|q| q.entry.repo == *repo)
                && e.built().any(|r| match &r.outcome {
                    ReportOutcome::Built { artifacts, .. } => {
                        artifacts.iter().any(|a| a.blake3 == *blob)
                    }
                    ReportOutcome::Failed { .. } => false,
                })
        })
        .max_by_key(|e| e.enqueued.as_ref().map(|q| (q.time, e.id)))
        .map(|e| e.id)
}

/// The package base a source names (tree folder, AUR package base, folder or repository
/// name).
fn base_of_source(s: &Source) -> Option<String> {
    match s {
        Source::Aur { pkgbase } => Some(pkgbase.to_string()),
        Source::Tree { pkgbases, .. } if pkgbases.len() == 1 => Some(pkgbases[0].to_string()),
        Source::Dir { path, .. } => path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .map(str::to_string),
        Source::Git { url, subdir, .. } => subdir
            .as_deref()
            .unwrap_or(url)
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .map(|s| s.trim_end_matches(".git").to_string()),
        _ => None,
    }
}

/// Tree URLs of `repo` with their last synced commit (the rev of the newest `tree` entry).
fn trees(state: &QueueState, repo: &Name) -> BTreeMap<String, String> {
    let mut newest: BTreeMap<String, (Timestamp, String)> = BTreeMap::new();
    for e in state.entries() {
        let Some(q) = &e.enqueued else { continue };
        if q.entry.repo != *repo {
            continue;
        }
        if let Source::Tree {
            url, rev: Some(r), ..
        } = &q.entry.source
        {
            let cur = newest.entry(url.clone()).or_insert((q.time, r.clone()));
            if q.time > cur.0 {
                *cur = (q.time, r.clone());
            }
        }
    }
    newest.into_iter().map(|(u, (_, r))| (u, r)).collect()
}

/// The package folders of tree `url` at `rev`, from the node's git mirror (fetched when the
/// commit is not in it yet).
fn tree_folders(
    core: &Core,
    url: &str,
    rev: &str,
) -> Result<BTreeMap<String, crate::tree::Folder>> {
    let cfg = crate::source::SourceConfig::new(core.data_dir.join("git"));
    let oid = git2::Oid::from_str(rev).with_context(|| format!("tree rev {rev:?}"))?;
    let open = || -> Option<git2::Repository> {
        let r =
            git2::Repository::open_bare(crate::source::mirror_path(&cfg.git_cache, url)).ok()?;
        r.find_commit(oid).ok()?;
        Some(r)
    };
    let (repo, _guard) = match open() {
        Some(r) => (r, None),
        None => {
            let (r, g) =
                crate::source::git_mirror(&cfg, url, &std::sync::atomic::AtomicBool::new(false))
                    .with_context(|| format!("fetching the tree {url}"))?;
            (r, Some(g))
        }
    };
    let commit = repo
        .find_commit(oid)
        .with_context(|| format!("{rev} is not in {url}"))?;
    let mut warnings = Vec::new();
    Ok(crate::tree::folders(&repo, &commit, &mut warnings)?)
}

fn note(st: &mut Map<String, Value>, pkgbase: &str, v: Value) {
    st.entry("packages")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("an object")
        .insert(pkgbase.to_string(), v);
}

/// The cascade for one generation `new` over its previous one `old`.
fn process(
    core: &Core,
    new: &RepoManifest,
    old: &RepoManifest,
    signer: &crate::keys::NodeKey,
    may_enqueue: bool,
    st: &mut Map<String, Value>,
    round: &mut Round,
) -> Result<()> {
    let repo = &new.repo;
    let mut changed: Vec<Changed> = Vec::new();
    for p in &new.packages {
        if let Some(o) = old.packages.iter().find(|o| o.pkgname == p.pkgname)
            && !vercmp(&o.version, &p.version).is_eq()
        {
            changed.push(Changed {
                pkgname: p.pkgname.to_string(),
                pkgbase: p.pkgname.to_string(),
                old: o.version.clone(),
                new: p.version.clone(),
                blob: p.blake3,
            });
        }
    }
    if changed.is_empty() {
        return Ok(());
    }
    let (new_db, old_db) = (read_db(&*core.blobs, new), read_db(&*core.blobs, old));
    if let Some(db) = &new_db {
        for c in &mut changed {
            if let Some(e) = db.get(&c.pkgname) {
                c.pkgbase = e.base.clone().unwrap_or_else(|| e.name.clone());
            }
        }
    }
    let published = new_db.as_ref().map(versions_by_base).unwrap_or_default();
    // Tree folders and their rebuild triggers.
    let tree_list = {
        let ingest = core.ingest();
        trees(ingest.state(), repo)
    };
    let mut folders: Vec<(String, String, crate::tree::Folder)> = Vec::new();
    for (url, rev) in &tree_list {
        match tree_folders(core, url, rev) {
            Ok(fs) => folders.extend(fs.into_values().map(|f| (url.clone(), rev.clone(), f))),
            Err(e) => tracing::warn!(%url, "rebuild triggers of this tree not read: {e:#}"),
        }
    }
    for c in &changed {
        let mut deps: BTreeMap<String, Dependant> = BTreeMap::new();
        for (url, rev, f) in &folders {
            let Some(ci) = &f.ci else { continue };
            if ci
                .rebuild_triggers
                .iter()
                .any(|t| *t == c.pkgname || *t == c.pkgbase)
                && let Ok(folder) = Name::new(f.name.clone())
            {
                deps.entry(f.pkgbase.clone()).or_insert(Dependant {
                    pkgbase: f.pkgbase.clone(),
                    source: Source::Tree {
                        url: url.clone(),
                        rev: Some(rev.clone()),
                        pkgbases: vec![folder],
                    },
                    why: format!("CI_REBUILD_TRIGGERS of {} names {}", f.name, c.pkgname),
                });
            }
        }
        if let (Some(ndb), Some(odb)) = (&new_db, &old_db) {
            let sonames = match (odb.get(&c.pkgname), ndb.get(&c.pkgname)) {
                (Some(o), Some(n)) => changed_sonames(&o.provides, &n.provides),
                _ => BTreeSet::new(),
            };
            if !sonames.is_empty() {
                for e in ndb.entries.values() {
                    let base = e.base.clone().unwrap_or_else(|| e.name.clone());
                    if base == c.pkgbase || !depends_on_any(&e.depends, &sonames) {
                        continue;
                    }
                    let source = {
                        let ingest = core.ingest();
                        source_of_package(ingest.state(), repo, &e.name, &tree_list)
                    };
                    let Some(source) = source else {
                        round
                            .skipped
                            .push((base.clone(), "no queue entry built it".into()));
                        continue;
                    };
                    deps.entry(base.clone()).or_insert(Dependant {
                        pkgbase: base,
                        source,
                        why: format!(
                            "{} depends on {}, whose version {} changed",
                            e.name,
                            sonames.iter().cloned().collect::<Vec<_>>().join(", "),
                            c.pkgname
                        ),
                    });
                }
            }
        }
        if deps.is_empty() {
            continue;
        }
        // The trigger's entry and its cascade.
        let (trigger, visited, trigger_time) = {
            let ingest = core.ingest();
            let state = ingest.state();
            let id = entry_of_blob(state, repo, &c.blob);
            let rec = id.and_then(|i| state.entry(&i));
            let q = rec.and_then(|r| r.enqueued.as_ref());
            let mut visited: Vec<Name> = q.map(|q| q.entry.cascade.clone()).unwrap_or_default();
            if let Ok(n) = Name::new(c.pkgbase.clone())
                && !visited.contains(&n)
            {
                visited.push(n);
            }
            (id, visited, q.map(|q| q.time).unwrap_or(new.time))
        };
        let chain = visited
            .iter()
            .map(|n| n.as_str())
            .collect::<Vec<_>>()
            .join(" → ");
        for d in deps.into_values() {
            let trigger_line = format!("{} {} → {}", c.pkgname, c.old, c.new);
            let skip = |round: &mut Round, st: &mut Map<String, Value>, why: String| {
                note(
                    st,
                    &d.pkgbase,
                    json!({ "trigger": trigger_line, "why": d.why, "stopped": why, "time": Timestamp::now().0 }),
                );
                round.skipped.push((d.pkgbase.clone(), why));
            };
            if visited.iter().any(|v| v.as_str() == d.pkgbase) {
                skip(
                    round,
                    st,
                    format!(
                        "cascade stopped: {} was already rebuilt in this cascade ({chain})",
                        d.pkgbase
                    ),
                );
                continue;
            }
            if visited.len() >= MAX_CASCADE {
                skip(
                    round,
                    st,
                    format!("cascade stopped after {MAX_CASCADE} package bases ({chain})"),
                );
                continue;
            }
            let (queued_after, prev) = {
                let ingest = core.ingest();
                let state = ingest.state();
                let mut newest: Option<(Timestamp, QueueEntry)> = None;
                let mut after = false;
                for e in state.entries() {
                    let Some(q) = &e.enqueued else { continue };
                    if q.entry.repo != *repo
                        || base_of_source(&q.entry.source).as_deref() != Some(d.pkgbase.as_str())
                    {
                        continue;
                    }
                    // Enqueued after the trigger's entry, or waiting for it: built against the
                    // new version anyway.
                    if e.cancelled.is_none()
                        && (q.time >= trigger_time
                            || trigger.is_some_and(|t| q.entry.after.contains(&t)))
                    {
                        after = true;
                    }
                    if newest.as_ref().is_none_or(|(t, _)| q.time > *t) {
                        newest = Some((q.time, q.entry.clone()));
                    }
                }
                (after, newest.map(|(_, q)| q))
            };
            if queued_after {
                round.skipped.push((
                    d.pkgbase.clone(),
                    "an entry enqueued after the trigger's builds it".into(),
                ));
                continue;
            }
            let Some(version) = published.get(&d.pkgbase).cloned().or_else(|| {
                // Without the database: the manifest's packages of a tree folder's name.
                new.packages
                    .iter()
                    .find(|p| p.pkgname.as_str() == d.pkgbase)
                    .map(|p| p.version.clone())
            }) else {
                skip(
                    round,
                    st,
                    format!("{} is not published: nothing to rebuild", d.pkgbase),
                );
                continue;
            };
            let mut entry = QueueEntry::new(repo.clone(), d.source.clone());
            if let Some(p) = &prev {
                entry.arches = p.arches.clone();
                entry.needs = p.needs.clone();
                entry.timeout_secs = p.timeout_secs;
                if matches!(d.source, Source::Dir { .. }) {
                    entry.source_date_epoch = None;
                }
            }
            entry.pkgrel_bump = bump_for(Some(&version));
            entry.after = trigger.into_iter().collect();
            entry.cascade = visited.clone();
            let target = entry
                .pkgrel_bump
                .as_ref()
                .map(|b| b.bumped())
                .unwrap_or_else(|| version.clone());
            if !may_enqueue {
                let msg = format!(
                    "{trigger_line}: {} should be rebuilt ({}) as {target}, but this node's automation key may not enqueue: a maintainer must",
                    d.pkgbase, d.why
                );
                note(
                    st,
                    &d.pkgbase,
                    json!({ "trigger": trigger_line, "why": d.why, "reported": msg, "time": Timestamp::now().0 }),
                );
                round.reported.push(d.pkgbase.clone());
                continue;
            }
            let id = core
                .submit_as(signer, EventBody::Enqueue(entry))
                .with_context(|| format!("enqueuing the rebuild of {}", d.pkgbase))?;
            tracing::info!(pkgbase = %d.pkgbase, entry = %id.fmt_short(), trigger = %trigger_line, why = %d.why, version = %target, "rebuild enqueued");
            note(
                st,
                &d.pkgbase,
                json!({ "trigger": trigger_line, "why": d.why, "enqueued": id.to_string(), "version": target, "time": Timestamp::now().0 }),
            );
            round.enqueued.push((d.pkgbase.clone(), id.to_string()));
        }
    }
    Ok(())
}

/// The source to rebuild published package `pkgname` from: that of the newest entry of `repo`
/// that built it (a tree folder at its tree's last synced commit).
fn source_of_package(
    state: &QueueState,
    repo: &Name,
    pkgname: &str,
    trees: &BTreeMap<String, String>,
) -> Option<Source> {
    let e = state
        .entries()
        .filter(|e| {
            e.enqueued.as_ref().is_some_and(|q| q.entry.repo == *repo)
                && e.cancelled.is_none()
                && e.built().any(|r| match &r.outcome {
                    ReportOutcome::Built { artifacts, .. } => artifacts.iter().any(|a| {
                        crate::why::pkgname_of_file(a.file_name.as_str()) == Some(pkgname)
                    }),
                    ReportOutcome::Failed { .. } => false,
                })
        })
        .max_by_key(|e| e.enqueued.as_ref().map(|q| (q.time, e.id)))?;
    let s = e.enqueued.as_ref()?.entry.source.clone();
    Some(match s {
        Source::Tree { url, rev, pkgbases } => Source::Tree {
            rev: trees.get(&url).cloned().or(rev),
            url,
            pkgbases,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soname_changes_are_found() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let c = changed_sonames(
            &v(&["libfoo.so=1-64", "libbar.so=3-64", "foo-api=1"]),
            &v(&["libfoo.so=2-64", "libbar.so=3-64", "foo-api=2"]),
        );
        assert_eq!(c.into_iter().collect::<Vec<_>>(), ["libfoo.so"]);
        // A dropped soname counts; an added one does not.
        let c = changed_sonames(&v(&["libgone.so=1-64"]), &v(&["libnew.so=1-64"]));
        assert_eq!(c.into_iter().collect::<Vec<_>>(), ["libgone.so"]);
        let s: BTreeSet<String> = ["libfoo.so".to_string()].into();
        assert!(depends_on_any(&v(&["glibc", "libfoo.so=1-64"]), &s));
        assert!(depends_on_any(&v(&["libfoo.so"]), &s));
        assert!(!depends_on_any(&v(&["libfoo.sox", "libfoo"]), &s));
    }

    #[test]
    fn bumps_come_from_the_published_version() {
        assert_eq!(bump_for(None), None);
        assert_eq!(
            bump_for(Some("1.0-1")).map(|b| b.to_string()).as_deref(),
            Some("1.0-1/1")
        );
        assert_eq!(
            bump_for(Some("1:2.0-3.4")).map(|b| b.bumped()).as_deref(),
            Some("1:2.0-3.5")
        );
        let n = |s: &str| Name::new(s).unwrap();
        assert_eq!(
            base_of_source(&Source::Tree {
                url: "u".into(),
                rev: None,
                pkgbases: vec![n("app")]
            })
            .as_deref(),
            Some("app")
        );
        assert_eq!(
            base_of_source(&Source::Git {
                url: "https://x/y/hello.git".into(),
                rev: None,
                subdir: None
            })
            .as_deref(),
            Some("hello")
        );
    }
}
