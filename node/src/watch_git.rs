//! Update detection of git sources, packages trees and VCS packages, and named-schedule
//! firings (the AUR part is [`crate::watch`], which also runs the loop).
//!
//! Every round (`[watch] interval_secs`):
//!
//! - **`[[watch.git]]`**: the head of `ref` is read without cloning (ls-remote). A head that
//!   differs from the recorded one (or a source with no entry yet) enqueues a `git` entry
//!   *pinned to that commit*; with `review` (default) a PKGBUILD change beyond
//!   pkgver/pkgrel/checksums since the last head waits for approval.
//! - **`[[watch.tree]]`**: a moved head runs the tree sync (the folders changed since the last
//!   synced commit, `[deploy NAME]`, removed folders; [`crate::tree::plan`]) in the node,
//!   signed like the AUR path.
//! - **VCS packages** (`[watch] vcs`, default on): the folders of watched trees, watched git
//!   sources and watched `-git`/`-hg`/… AUR packages whose `.SRCINFO` has `git+` sources: the
//!   upstream commit of each (`#branch=`, `#tag=`, default `HEAD`; `#commit=` is pinned) is read
//!   by ls-remote and recorded (Chaotic's `CI_GIT_COMMIT`; a tree folder's `CI_GIT_COMMIT` is
//!   the first known value). A new commit enqueues a rebuild of that package alone (a tree
//!   folder: a `tree` entry at the current synced commit), unless a build of it is already
//!   waiting.
//!
//! When a schedule fires ([`fire`]) every watched tree is synced with that trigger (its
//! `CI_ON_TRIGGER=NAME` folders are enqueued even if unchanged) and the git sources with
//! `on_trigger = NAME` and the AUR packages of `aur_on_trigger.NAME` are enqueued; a package
//! whose previous build is still waiting is not enqueued again.
//!
//! Enqueues are signed by `[watch] key` (default the node key) when the policy makes it a
//! maintainer; otherwise the change is *reported* in the state (and by `queue why`). A failed
//! check (unreachable URL, unknown ref, bad tree) is recorded on that source only, with the
//! reason, keeping what was recorded before; the other sources are checked as usual.
//!
//! State keys in `DATA/watch/state.json` (besides AUR package names): `git:URL#REF:SUBDIR`,
//! `tree:URL#REF`, `vcs:PKGBASE ORIGIN` (ORIGIN is the tree/git key or `aur`) and
//! `schedule:NAME`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use pacmesh_protocol::{EventBody, Hash, Name, QueueEntry, Roles, Source, Timestamp};
use serde_json::{Map, Value, json};

use crate::core::Core;
use crate::keys::NodeKey;
use crate::schedule::Schedule;
use crate::state::{EntryStatus, ReportOutcome};
use crate::upstream::{self, Heads, VcsRef, VcsSource};
use crate::watch::{Round, WatchGit, WatchSection, WatchTree};

/// The state key of a watched git source.
pub fn git_key(g: &WatchGit) -> String {
    format!(
        "git:{}#{}:{}",
        g.url,
        g.rev.as_deref().unwrap_or("HEAD"),
        g.subdir.as_deref().unwrap_or("")
    )
}

/// The state key of a watched tree.
pub fn tree_key(t: &WatchTree) -> String {
    format!("tree:{}#{}", t.url, t.rev.as_deref().unwrap_or("HEAD"))
}

fn vcs_key(origin: &str, pkgbase: &str) -> String {
    format!("vcs:{pkgbase} {origin}")
}

/// The state key of a schedule.
pub fn schedule_key(name: &str) -> String {
    format!("schedule:{name}")
}

/// The name `queue why` knows a git source by: the last component of `subdir`, else of the
/// URL without `.git`.
pub fn git_label(url: &str, subdir: Option<&str>) -> String {
    let p = subdir.unwrap_or(url);
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(p)
        .trim_end_matches(".git")
        .to_string()
}

/// What one round works with.
struct Ctx<'a> {
    core: &'a Core,
    w: &'a WatchSection,
    aur_url: &'a str,
    signer: &'a NodeKey,
    may_enqueue: bool,
    now: Timestamp,
    allow_local: bool,
}

impl<'a> Ctx<'a> {
    fn new(
        core: &'a Core,
        w: &'a WatchSection,
        aur_url: &'a str,
        key: Option<&'a NodeKey>,
    ) -> Ctx<'a> {
        let signer = key.unwrap_or(&core.key);
        let public = pacmesh_protocol::PublicKey::from(signer.signing_key());
        let may_enqueue = core
            .ingest()
            .policy()
            .role_of(&public)
            .contains(Roles::MAINTAINER);
        Ctx {
            core,
            w,
            aur_url,
            signer,
            may_enqueue,
            now: Timestamp::now(),
            allow_local: true,
        }
    }

    /// The target repository: the source's own, `[watch] repo`, else the mesh's only one.
    fn repo(&self, own: Option<&str>) -> Result<Name, String> {
        let name = match own.or(self.w.repo.as_deref()) {
            Some(r) => r.to_string(),
            None => {
                let ingest = self.core.ingest();
                match ingest.policy().repos.as_slice() {
                    [one] => one.name.to_string(),
                    _ => {
                        return Err(
                            "the mesh has several repositories; name one (repo = \"…\")".into()
                        );
                    }
                }
            }
        };
        Name::new(name.clone()).map_err(|e| format!("repository {name:?}: {e}"))
    }

    fn source_config(&self) -> crate::source::SourceConfig {
        let mut c = crate::source::SourceConfig::new(self.core.data_dir.join("git"));
        c.aur_url = self.aur_url.to_string();
        c.allow_local_git = self.allow_local;
        c
    }

    fn submit(&self, entry: QueueEntry) -> Result<Hash> {
        self.core.submit_as(self.signer, EventBody::Enqueue(entry))
    }

    fn may_not(&self, what: &str, how: &str) -> String {
        format!("{what}, and this node's key may not enqueue: a maintainer must ({how})")
    }
}

/// Whether two sources name the same package source (the revision aside).
fn same_source(a: &Source, b: &Source) -> bool {
    match (a, b) {
        (Source::Aur { pkgbase: x }, Source::Aur { pkgbase: y }) => x == y,
        (
            Source::Git {
                url: u1,
                subdir: s1,
                ..
            },
            Source::Git {
                url: u2,
                subdir: s2,
                ..
            },
        ) => u1 == u2 && s1 == s2,
        (
            Source::Tree {
                url: u1,
                pkgbases: p1,
                ..
            },
            Source::Tree {
                url: u2,
                pkgbases: p2,
                ..
            },
        ) => u1 == u2 && p1 == p2,
        _ => false,
    }
}

/// Entries of `repo` for the same source as `like`: (any not cancelled, one still to be built
/// — waiting, claimed or awaiting review, the commit of the newest build).
fn entries_like(core: &Core, repo: &Name, like: &Source) -> (bool, bool, Option<String>) {
    let ingest = core.ingest();
    let st = ingest.state();
    let now = Timestamp::now();
    let (mut any, mut open) = (false, false);
    let mut newest: Option<(Timestamp, Option<String>)> = None;
    for e in st.entries() {
        let Some(q) = &e.enqueued else { continue };
        if &q.entry.repo != repo || !same_source(&q.entry.source, like) {
            continue;
        }
        if e.cancelled.is_some() {
            continue;
        }
        any = true;
        if matches!(
            st.status(e, now),
            EntryStatus::Waiting | EntryStatus::Claimed { .. } | EntryStatus::Review { .. }
        ) {
            open = true;
        }
        for r in e.built() {
            if let ReportOutcome::Built { source_commit, .. } = &r.outcome
                && newest.as_ref().is_none_or(|(t, _)| r.time > *t)
            {
                newest = Some((r.time, source_commit.clone()));
            }
        }
    }
    (any, open, newest.and_then(|(_, c)| c))
}

/// A small text file of `url` at `rev` (fetched into the node's mirror).
fn file_at(ctx: &Ctx<'_>, url: &str, rev: &str, path: &str) -> Result<Option<String>> {
    let (repo, _guard) =
        crate::source::git_mirror(&ctx.source_config(), url, &AtomicBool::new(false))
            .with_context(|| format!("fetching {url}"))?;
    let commit = crate::source::resolve_rev(&repo, Some(rev)).map_err(|e| match e {
        Some(e) => anyhow::anyhow!("{e}"),
        None => anyhow::anyhow!("{rev} names no commit in {url}"),
    })?;
    let tree = commit.tree()?;
    let Ok(entry) = tree.get_path(Path::new(path)) else {
        return Ok(None);
    };
    let Ok(blob) = repo.find_blob(entry.id()) else {
        return Ok(None);
    };
    anyhow::ensure!(blob.size() <= 1 << 20, "{url}: {path} larger than 1 MiB");
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

fn sub_path(subdir: Option<&str>, file: &str) -> String {
    match subdir
        .map(|s| s.trim_matches('/'))
        .filter(|s| !s.is_empty())
    {
        Some(d) => format!("{d}/{file}"),
        None => file.to_string(),
    }
}

fn record_error(rec: &mut Value, round: &mut Round, key: &str, now: Timestamp, e: String) {
    rec["error"] = json!(e);
    rec["error_at"] = json!(now.0);
    round.errors.push((key.to_string(), e));
}

fn clear_error(rec: &mut Value) {
    if let Some(o) = rec.as_object_mut() {
        o.remove("error");
        o.remove("error_at");
    }
}

/// The previous record of `key`, or a fresh object.
fn record(recorded: &Map<String, Value>, key: &str) -> Value {
    recorded
        .get(key)
        .filter(|v| v.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}))
}

// ---- git sources -----------------------------------------------------------------------------

fn check_git(ctx: &Ctx<'_>, g: &WatchGit, recorded: &mut Map<String, Value>, round: &mut Round) {
    let key = git_key(g);
    let mut rec = record(recorded, &key);
    let label = git_label(&g.url, g.subdir.as_deref());
    rec["source"] = json!("git");
    rec["url"] = json!(g.url);
    rec["ref"] = json!(g.rev);
    rec["subdir"] = json!(g.subdir);
    rec["package"] = json!(label);
    rec["on_trigger"] = json!(g.on_trigger);
    rec["checked_at"] = json!(ctx.now.0);
    if let Err(e) = check_git_inner(ctx, g, &label, &mut rec, round) {
        record_error(&mut rec, round, &key, ctx.now, e);
    } else {
        clear_error(&mut rec);
    }
    recorded.insert(key, rec);
}

fn git_head(ctx: &Ctx<'_>, url: &str, rev: Option<&str>) -> Result<String, String> {
    let heads = upstream::ls_remote(url, ctx.allow_local)?;
    heads.resolve(rev).ok_or_else(|| match rev {
        Some(r) => format!("ref {r:?} is not a branch, tag or commit of {url}"),
        None => format!("{url} has no HEAD (an empty repository?)"),
    })
}

fn check_git_inner(
    ctx: &Ctx<'_>,
    g: &WatchGit,
    label: &str,
    rec: &mut Value,
    round: &mut Round,
) -> Result<(), String> {
    let repo = ctx.repo(g.repo.as_deref())?;
    let head = git_head(ctx, &g.url, g.rev.as_deref())?;
    rec["upstream_head"] = json!(head);
    let known = rec["head"].as_str().map(str::to_string);
    let like = Source::Git {
        url: g.url.clone(),
        rev: None,
        subdir: g.subdir.clone(),
    };
    let (any, _open, last_built) = entries_like(ctx.core, &repo, &like);
    let first = known.is_none();
    if known.as_deref() == Some(head.as_str()) || (first && any) {
        // Unchanged, or first seen while already queued here: just record.
        rec["head"] = json!(head);
        return Ok(());
    }
    let short = &head[..head.len().min(12)];
    if !ctx.may_enqueue {
        rec["reported"] = json!(ctx.may_not(
            &format!(
                "upstream head {short} ({}) is not queued",
                if first { "never built" } else { "changed" }
            ),
            &format!(
                "pacmesh queue add --git {} --ref {head}{}",
                g.url,
                g.subdir
                    .as_deref()
                    .map(|s| format!(" --subdir {s}"))
                    .unwrap_or_default()
            )
        ));
        // `head` stays what was last acted on: once a maintainer key may enqueue (a new
        // policy), the change is still there to enqueue.
        round.reported.push(label.to_string());
        return Ok(());
    }
    let mut entry = QueueEntry::new(
        repo,
        Source::Git {
            url: g.url.clone(),
            rev: Some(head.clone()),
            subdir: g.subdir.clone(),
        },
    );
    if ctx.w.review.unwrap_or(true)
        && let Some(old) = known.or(last_built)
    {
        let path = sub_path(g.subdir.as_deref(), "PKGBUILD");
        let new_text = file_at(ctx, &g.url, &head, &path)
            .map_err(|e| format!("{e:#}"))?
            .ok_or_else(|| format!("{} has no {path} at {short}", g.url))?;
        entry.review = match file_at(ctx, &g.url, &old, &path) {
            Ok(Some(old_text)) => crate::review::significant_diff(&old_text, &new_text),
            // The old commit or file is gone (history rewritten, folder moved): all new.
            _ => Some(crate::review::new_file(&new_text)),
        };
    }
    let id = ctx
        .submit(entry)
        .map_err(|e| format!("enqueuing {label}: {e:#}"))?;
    if let Some(o) = rec.as_object_mut() {
        o.remove("reported");
    }
    rec["head"] = json!(head);
    rec["enqueued"] = json!(id.to_string());
    rec["enqueued_at"] = json!(ctx.now.0);
    round.enqueued.push((label.to_string(), id.to_string()));
    Ok(())
}

// ---- packages trees --------------------------------------------------------------------------

/// What an in-node tree sync did.
#[derive(Debug, Clone, Default)]
pub struct TreeOutcome {
    /// The synced commit.
    pub commit: String,
    /// Folder → entry id.
    pub enqueued: Vec<(String, Hash)>,
    /// Package bases removed.
    pub removed: Vec<String>,
    /// Folders planned (when this node's key may not enqueue, nothing is submitted).
    pub planned: Vec<String>,
    /// Every package folder at the commit.
    pub folders: Vec<String>,
    /// Folders with `CI_ON_TRIGGER`: folder → trigger.
    pub triggers: BTreeMap<String, String>,
    /// The plan's warnings.
    pub warnings: Vec<String>,
    /// Trigger folders left out because a build of them is still waiting.
    pub still_waiting: Vec<String>,
}

/// The tree sync of `pacmesh tree sync`, run by the node itself: fetch `url` into the node's
/// mirror, plan at `rev` since the last synced commit (the newest `tree` entry of the URL),
/// submit signed by `ctx.signer` — or, when that key may not enqueue, only plan.
fn sync_tree(
    ctx: &Ctx<'_>,
    url: &str,
    rev: Option<&str>,
    repo: &Name,
    trigger: Option<&str>,
) -> Result<TreeOutcome> {
    let (git, _guard) =
        crate::source::git_mirror(&ctx.source_config(), url, &AtomicBool::new(false))
            .with_context(|| format!("fetching the tree {url}"))?;
    let commit = crate::source::resolve_rev(&git, rev)
        .map_err(|e| match e {
            Some(e) => anyhow::anyhow!("{e}"),
            None => anyhow::anyhow!("{} names no commit in {url}", rev.unwrap_or("HEAD")),
        })?
        .id();
    // The last synced commit, the trigger folders still waiting, and what was removed last.
    let (since, waiting, removed_last) = {
        let ingest = ctx.core.ingest();
        let st = ingest.state();
        let now = Timestamp::now();
        let mut newest: Option<(Timestamp, String)> = None;
        let mut waiting = Vec::new();
        let mut entry_time: BTreeMap<String, Timestamp> = BTreeMap::new();
        for e in st.entries() {
            let Some(q) = &e.enqueued else { continue };
            let Source::Tree {
                url: u,
                rev: Some(r),
                pkgbases,
            } = &q.entry.source
            else {
                continue;
            };
            if u != url || &q.entry.repo != repo {
                continue;
            }
            if newest.as_ref().is_none_or(|(t, _)| q.time > *t) {
                newest = Some((q.time, r.clone()));
            }
            for p in pkgbases {
                let t = entry_time.entry(p.to_string()).or_insert(q.time);
                *t = (*t).max(q.time);
            }
            if e.cancelled.is_none()
                && matches!(
                    st.status(e, now),
                    EntryStatus::Waiting | EntryStatus::Claimed { .. } | EntryStatus::Review { .. }
                )
            {
                waiting.extend(pkgbases.iter().map(|p| p.to_string()));
            }
        }
        // A package base removed after its newest entry is not removed again.
        let mut removed_last = Vec::new();
        for ((r, pb), evs) in st.removals() {
            if r != repo {
                continue;
            }
            let last_removal = evs.iter().map(|e| e.time).max();
            if last_removal > entry_time.get(pb.as_str()).copied() {
                removed_last.push(pb.to_string());
            }
        }
        (
            newest.and_then(|(_, r)| git2::Oid::from_str(&r).ok()),
            waiting,
            removed_last,
        )
    };
    let mut plan = crate::tree::plan(&git, commit, since, trigger)?;
    let mut out = TreeOutcome {
        commit: plan.commit.clone(),
        folders: plan.folders.keys().cloned().collect(),
        triggers: plan
            .folders
            .iter()
            .filter_map(|(n, f)| {
                f.ci.as_ref()
                    .and_then(|c| c.on_trigger.clone())
                    .map(|t| (n.clone(), t))
            })
            .collect(),
        warnings: plan.warnings.clone(),
        ..TreeOutcome::default()
    };
    // A trigger does not stack a second build on one still waiting.
    plan.build.retain(|n, why| {
        let keep = !(matches!(why, crate::tree::Reason::Trigger(_)) && waiting.contains(n));
        if !keep {
            out.still_waiting.push(n.clone());
        }
        keep
    });
    plan.remove.retain(|pb| !removed_last.contains(pb));
    let order = crate::tree::build_order(&mut plan);
    out.planned = order.iter().map(|(n, _)| n.clone()).collect();
    if !ctx.may_enqueue {
        out.removed = plan.remove.iter().cloned().collect();
        return Ok(out);
    }
    let mut ids: BTreeMap<String, Hash> = BTreeMap::new();
    // Folders whose package base is published are rebuilt with a pkgrel bump (a new upstream
    // version in the PKGBUILD overrides it in the sandbox), as `pacmesh tree sync` does.
    let published = crate::rebuild::published_versions(ctx.core, repo);
    for (folder, deps) in order {
        let mut e = QueueEntry::new(
            repo.clone(),
            Source::Tree {
                url: url.to_string(),
                rev: Some(plan.commit.clone()),
                pkgbases: vec![Name::new(folder.clone()).map_err(|e| anyhow::anyhow!("{e}"))?],
            },
        );
        e.after = deps.iter().filter_map(|d| ids.get(d).copied()).collect();
        e.review = plan.review.get(&folder).cloned();
        e.pkgrel_bump = crate::rebuild::bump_for(published.get(&folder).map(String::as_str));
        let id = ctx
            .submit(e)
            .with_context(|| format!("enqueuing {folder}"))?;
        ids.insert(folder.clone(), id);
        out.enqueued.push((folder, id));
    }
    for pkgbase in plan.remove.clone() {
        ctx.core
            .submit_as(
                ctx.signer,
                EventBody::Remove {
                    pkgbase: Name::new(pkgbase.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
                    repo: repo.clone(),
                },
            )
            .with_context(|| format!("removing {pkgbase}"))?;
        out.removed.push(pkgbase);
    }
    Ok(out)
}

fn check_tree(
    ctx: &Ctx<'_>,
    t: &WatchTree,
    recorded: &mut Map<String, Value>,
    round: &mut Round,
    trigger: Option<&str>,
) {
    let key = tree_key(t);
    let mut rec = record(recorded, &key);
    rec["source"] = json!("tree");
    rec["url"] = json!(t.url);
    rec["ref"] = json!(t.rev);
    rec["checked_at"] = json!(ctx.now.0);
    let r = (|| -> Result<(), String> {
        let repo = ctx.repo(t.repo.as_deref())?;
        let head = git_head(ctx, &t.url, t.rev.as_deref())?;
        rec["upstream_head"] = json!(head);
        if trigger.is_none() && rec["synced"].as_str() == Some(head.as_str()) {
            return Ok(());
        }
        let o = sync_tree(ctx, &t.url, Some(&head), &repo, trigger)
            .map_err(|e| format!("tree sync at {}: {e:#}", &head[..12.min(head.len())]))?;
        for w in &o.warnings {
            tracing::warn!(tree = %t.url, "{w}");
        }
        if ctx.may_enqueue {
            // (When only reported, the next round plans and reports again.)
            rec["synced"] = json!(o.commit);
            rec["synced_at"] = json!(ctx.now.0);
        }
        rec["folders"] = json!(o.folders);
        rec["triggers"] = json!(o.triggers);
        rec["warnings"] = json!(o.warnings);
        if let Some(tr) = trigger {
            rec["last_trigger"] = json!({ "name": tr, "at": ctx.now.0,
                "still_waiting": o.still_waiting });
        }
        if ctx.may_enqueue {
            if let Some(obj) = rec.as_object_mut() {
                obj.remove("reported");
            }
            rec["enqueued"] = o
                .enqueued
                .iter()
                .map(|(f, id)| json!({ "folder": f, "entry": id.to_string() }))
                .collect();
            rec["removed"] = json!(o.removed);
            for (f, id) in &o.enqueued {
                round.enqueued.push((f.clone(), id.to_string()));
            }
        } else if !o.planned.is_empty() || !o.removed.is_empty() {
            let mut what = format!(
                "tree at {}: {} folder(s) to build ({})",
                &o.commit[..12],
                o.planned.len(),
                o.planned.join(", ")
            );
            if !o.removed.is_empty() {
                what.push_str(&format!(" and {} to remove", o.removed.join(", ")));
            }
            let how = format!(
                "pacmesh tree sync --git {}{}",
                t.url,
                trigger
                    .map(|t| format!(" --trigger {t}"))
                    .unwrap_or_default()
            );
            rec["reported"] = json!(ctx.may_not(&what, &how));
            rec["reported_folders"] = json!(o.planned);
            round.reported.extend(o.planned.iter().cloned());
        }
        Ok(())
    })();
    match r {
        Ok(()) => clear_error(&mut rec),
        Err(e) => record_error(&mut rec, round, &key, ctx.now, e),
    }
    recorded.insert(key, rec);
}

// ---- VCS packages ----------------------------------------------------------------------------

/// A package whose upstream VCS commit is checked.
struct Candidate {
    /// State key of where it comes from (`tree:…`, `git:…`, `aur`).
    origin: String,
    pkgbase: String,
    repo: Name,
    /// Its VCS sources, or why they are unknown.
    sources: Result<Vec<VcsSource>, String>,
    /// `CI_GIT_COMMIT` of its `.CI/config`.
    initial: Option<String>,
    /// What a rebuild enqueues.
    source: Source,
    /// Enqueued this round already (its source changed).
    just_enqueued: bool,
}

fn sources_of(pkgbase: &str, srcinfo: Option<&str>) -> Option<Result<Vec<VcsSource>, String>> {
    match srcinfo {
        Some(text) => match pacmesh_repo::srcinfo::SrcInfo::parse(text) {
            Ok(info) => {
                let v = upstream::vcs_sources(&info);
                (!v.is_empty()).then_some(Ok(v))
            }
            Err(e) if upstream::is_vcs_name(pkgbase) => {
                Some(Err(format!("its .SRCINFO does not parse: {e}")))
            }
            Err(_) => None,
        },
        None if upstream::is_vcs_name(pkgbase) => Some(Err(
            "no .SRCINFO next to the PKGBUILD: its VCS source is unknown (commit a .SRCINFO)"
                .into(),
        )),
        None => None,
    }
}

fn tree_candidates(
    ctx: &Ctx<'_>,
    t: &WatchTree,
    rec: &Value,
    round: &Round,
    out: &mut Vec<Candidate>,
) -> Result<(), String> {
    let Some(synced) = rec["synced"].as_str() else {
        return Ok(());
    };
    let repo_name = ctx.repo(t.repo.as_deref())?;
    let mirror = crate::source::mirror_path(&ctx.source_config().git_cache, &t.url);
    let git = git2::Repository::open_bare(&mirror).map_err(|e| e.message().to_string())?;
    let oid = git2::Oid::from_str(synced).map_err(|e| e.message().to_string())?;
    let commit = git.find_commit(oid).map_err(|e| e.message().to_string())?;
    let root = commit.tree().map_err(|e| e.message().to_string())?;
    let mut ignore = Vec::new();
    let folders = crate::tree::folders(&git, &commit, &mut ignore).map_err(|e| e.to_string())?;
    for (name, f) in folders {
        let text = root
            .get_path(Path::new(&format!("{name}/.SRCINFO")))
            .ok()
            .and_then(|e| git.find_blob(e.id()).ok())
            .filter(|b| b.size() <= 1 << 20)
            .map(|b| String::from_utf8_lossy(b.content()).into_owned());
        let Some(sources) = sources_of(&f.pkgbase, text.as_deref()) else {
            continue;
        };
        let Ok(n) = Name::new(name.clone()) else {
            continue;
        };
        out.push(Candidate {
            origin: tree_key(t),
            pkgbase: name.clone(),
            repo: repo_name.clone(),
            sources,
            initial: f.ci.as_ref().and_then(|c| c.git_commit.clone()),
            source: Source::Tree {
                url: t.url.clone(),
                rev: Some(synced.to_string()),
                pkgbases: vec![n],
            },
            just_enqueued: round.enqueued.iter().any(|(f, _)| f == &name),
        });
    }
    Ok(())
}

/// The VCS sources of a `.SRCINFO` kept in `rec` (as source entries) while `at` is unchanged;
/// `fetch` reads the `.SRCINFO` otherwise.
fn cached_sources(
    prev: &Value,
    at: &str,
    pkgbase: &str,
    fetch: impl FnOnce() -> Result<Option<String>, String>,
) -> (Option<Result<Vec<VcsSource>, String>>, Value) {
    if prev["sources_at"].as_str() == Some(at)
        && let Some(entries) = prev["vcs_sources"].as_array()
    {
        let v: Vec<VcsSource> = entries
            .iter()
            .filter_map(Value::as_str)
            .map(|e| upstream::vcs_source(&pacmesh_repo::srcinfo::Source::from_entry(e, None, 0)))
            .collect();
        let cache = json!({ "sources_at": at, "vcs_sources": entries });
        return ((!v.is_empty()).then_some(Ok(v)), cache);
    }
    match fetch() {
        Ok(text) => {
            let s = sources_of(pkgbase, text.as_deref());
            let entries: Vec<&str> = match &s {
                Some(Ok(v)) => v.iter().map(|x| x.entry.as_str()).collect(),
                _ => Vec::new(),
            };
            let cache = match &s {
                Some(Err(_)) => json!({}),
                _ => json!({ "sources_at": at, "vcs_sources": entries }),
            };
            (s, cache)
        }
        Err(e) if upstream::is_vcs_name(pkgbase) => (Some(Err(e)), json!({})),
        Err(_) => (None, json!({})),
    }
}

fn check_vcs(
    ctx: &Ctx<'_>,
    cands: Vec<Candidate>,
    caches: BTreeMap<String, Value>,
    recorded: &mut Map<String, Value>,
    round: &mut Round,
) {
    let mut heads: BTreeMap<String, Result<Heads, String>> = BTreeMap::new();
    for c in cands {
        let key = vcs_key(&c.origin, &c.pkgbase);
        let prev = record(recorded, &key);
        let mut rec = prev.clone();
        rec["source"] = json!("vcs");
        rec["package"] = json!(c.pkgbase);
        rec["origin"] = json!(c.origin);
        rec["checked_at"] = json!(ctx.now.0);
        if let Some(cache) = caches.get(&key).and_then(Value::as_object) {
            for (k, v) in cache {
                rec[k] = v.clone();
            }
        }
        let sources = match c.sources {
            Ok(s) => s,
            Err(e) => {
                record_error(&mut rec, round, &key, ctx.now, e);
                recorded.insert(key, rec);
                continue;
            }
        };
        let prev_commits = prev["commits"].as_object().cloned().unwrap_or_default();
        let mut commits = Map::new();
        let mut errors = Vec::new();
        let mut changed = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            let id = format!("{}#{}", s.url, s.reference);
            let known = prev_commits
                .get(&id)
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| (i == 0).then(|| c.initial.clone()).flatten());
            if s.protocol != "git" {
                errors.push(format!(
                    "{}: {} sources are not checked (git only)",
                    s.entry, s.protocol
                ));
                continue;
            }
            if let VcsRef::Commit(pin) = &s.reference {
                commits.insert(id, json!(pin));
                continue;
            }
            let h = heads
                .entry(s.url.clone())
                .or_insert_with(|| upstream::ls_remote(&s.url, ctx.allow_local));
            let found = match h {
                Ok(h) => h
                    .resolve_vcs(&s.reference)
                    .ok_or_else(|| format!("{}: {} is not in {}", s.entry, s.reference, s.url)),
                Err(e) => Err(format!("{}: {e}", s.entry)),
            };
            match found {
                Ok(now) => {
                    if let Some(k) = &known
                        && !now.starts_with(&k.to_ascii_lowercase())
                    {
                        changed.push(format!("{} {} → {}", s.url, short(k), short(&now)));
                    }
                    commits.insert(id, json!(now));
                }
                Err(e) => {
                    // Keep what was known.
                    if let Some(k) = known {
                        commits.insert(id, json!(k));
                    }
                    errors.push(e);
                }
            }
        }
        if let Some(first) = commits.values().next() {
            rec["commit"] = first.clone();
        }
        rec["commits"] = Value::Object(commits);
        if errors.is_empty() {
            clear_error(&mut rec);
        } else {
            record_error(&mut rec, round, &key, ctx.now, errors.join("; "));
        }
        if !changed.is_empty() {
            rec["changed"] = json!(changed.join(", "));
            rec["changed_at"] = json!(ctx.now.0);
            let (_, open, _) = entries_like(ctx.core, &c.repo, &c.source);
            if c.just_enqueued {
                rec["action"] = json!("built with the change of its own source this round");
            } else if open {
                rec["action"] = json!("a build of it is already waiting; not enqueued again");
            } else if !ctx.may_enqueue {
                rec["reported"] = json!(ctx.may_not(
                    &format!("upstream commit changed ({})", changed.join(", ")),
                    "pacmesh queue add"
                ));
                round.reported.push(c.pkgbase.clone());
            } else {
                match ctx.submit(QueueEntry::new(c.repo.clone(), c.source.clone())) {
                    Ok(id) => {
                        if let Some(o) = rec.as_object_mut() {
                            o.remove("reported");
                        }
                        rec["action"] = json!("rebuild enqueued");
                        rec["enqueued"] = json!(id.to_string());
                        rec["enqueued_at"] = json!(ctx.now.0);
                        round.enqueued.push((c.pkgbase.clone(), id.to_string()));
                    }
                    Err(e) => {
                        // Not recorded as seen: the next round tries again.
                        let msg = format!("enqueuing the rebuild: {e:#}");
                        rec["commits"] = prev["commits"].clone();
                        rec["commit"] = prev["commit"].clone();
                        record_error(&mut rec, round, &key, ctx.now, msg);
                    }
                }
            }
        }
        recorded.insert(key, rec);
    }
}

fn short(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// Gathers the VCS candidates of every watched source (see the module docs) and checks them.
fn vcs_round(ctx: &Ctx<'_>, recorded: &mut Map<String, Value>, round: &mut Round) {
    let mut cands = Vec::new();
    let mut caches: BTreeMap<String, Value> = BTreeMap::new();
    for t in &ctx.w.tree {
        let rec = record(recorded, &tree_key(t));
        if let Err(e) = tree_candidates(ctx, t, &rec, round, &mut cands) {
            tracing::warn!(tree = %t.url, "VCS check: {e}");
        }
    }
    for g in &ctx.w.git {
        let gk = git_key(g);
        let rec = record(recorded, &gk);
        let Some(head) = rec["head"].as_str() else {
            continue;
        };
        let Ok(repo) = ctx.repo(g.repo.as_deref()) else {
            continue;
        };
        let label = git_label(&g.url, g.subdir.as_deref());
        let key = vcs_key(&gk, &label);
        let prev = record(recorded, &key);
        let path = sub_path(g.subdir.as_deref(), ".SRCINFO");
        let (sources, cache) = cached_sources(&prev, head, &label, || {
            file_at(ctx, &g.url, head, &path).map_err(|e| format!("{e:#}"))
        });
        let Some(sources) = sources else { continue };
        caches.insert(key, cache);
        cands.push(Candidate {
            origin: gk,
            pkgbase: label.clone(),
            repo,
            sources,
            initial: None,
            source: Source::Git {
                url: g.url.clone(),
                rev: Some(head.to_string()),
                subdir: g.subdir.clone(),
            },
            just_enqueued: round.enqueued.iter().any(|(l, _)| l == &label),
        });
    }
    for name in &ctx.w.aur {
        let rec = record(recorded, name);
        let pkgbase = rec["package_base"].as_str().unwrap_or(name).to_string();
        // Only VCS-named AUR packages: reading any other's .SRCINFO means fetching its
        // repository every time it changes.
        if !upstream::is_vcs_name(&pkgbase) {
            continue;
        }
        let (Some(lm), Ok(repo), Ok(pb)) = (
            rec["last_modified"].as_u64(),
            ctx.repo(None),
            Name::new(pkgbase.clone()),
        ) else {
            continue;
        };
        let key = vcs_key("aur", &pkgbase);
        let prev = record(recorded, &key);
        let url = crate::aur::git_url(ctx.aur_url, &pkgbase);
        let (sources, cache) = cached_sources(&prev, &lm.to_string(), &pkgbase, || {
            let (repo, _g) =
                crate::source::git_mirror(&ctx.source_config(), &url, &AtomicBool::new(false))
                    .map_err(|e| format!("fetching {url}: {e}"))?;
            let commit = crate::source::resolve_rev(&repo, None)
                .map_err(|_| format!("{url} has no commit"))?;
            let tree = commit.tree().map_err(|e| e.message().to_string())?;
            Ok(tree
                .get_path(Path::new(".SRCINFO"))
                .ok()
                .and_then(|e| repo.find_blob(e.id()).ok())
                .filter(|b| b.size() <= 1 << 20)
                .map(|b| String::from_utf8_lossy(b.content()).into_owned()))
        });
        let Some(sources) = sources else { continue };
        caches.insert(key, cache);
        cands.push(Candidate {
            origin: "aur".into(),
            pkgbase: pkgbase.clone(),
            repo,
            sources,
            initial: None,
            source: Source::Aur { pkgbase: pb },
            just_enqueued: false,
        });
    }
    check_vcs(ctx, cands, caches, recorded, round);
}

/// One round for `[[watch.git]]`, `[[watch.tree]]` and VCS packages (see the module docs).
/// Failures are per source (in [`Round::errors`] and the state), never the whole round's.
pub fn check_sources(
    core: &Core,
    w: &WatchSection,
    aur_url: &str,
    key: Option<&NodeKey>,
) -> Result<Round> {
    let mut round = Round::default();
    if w.git.is_empty() && w.tree.is_empty() && (w.aur.is_empty() || w.vcs == Some(false)) {
        return Ok(round);
    }
    let ctx = Ctx::new(core, w, aur_url, key);
    let mut recorded = crate::watch::load(&core.data_dir);
    for g in &w.git {
        check_git(&ctx, g, &mut recorded, &mut round);
    }
    for t in &w.tree {
        check_tree(&ctx, t, &mut recorded, &mut round, None);
    }
    if w.vcs.unwrap_or(true) {
        vcs_round(&ctx, &mut recorded, &mut round);
    }
    // Which schedules select each AUR package (for `queue why`).
    let mut by_pkg: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (trigger, pkgs) in &w.aur_on_trigger {
        for p in pkgs {
            by_pkg.entry(p).or_default().push(trigger);
        }
    }
    for (pkg, triggers) in by_pkg {
        let key = format!("trigger:aur/{pkg}");
        let mut rec = record(&recorded, &key);
        rec["triggers"] = json!(triggers);
        recorded.insert(key, rec);
    }
    crate::watch::store(&core.data_dir, &recorded).context("recording the watch state")?;
    Ok(round)
}

// ---- schedules -------------------------------------------------------------------------------

/// The next firing of each schedule (Unix seconds; `None`: never), recorded in the state for
/// `queue why` when it changed.
pub fn next_firings(
    data_dir: &Path,
    schedules: &[Schedule],
    started: u64,
    now: u64,
) -> Vec<(String, Option<u64>)> {
    let mut recorded = crate::watch::load(data_dir);
    let mut dirty = false;
    let mut out = Vec::new();
    for s in schedules {
        let key = schedule_key(&s.name);
        let mut rec = record(&recorded, &key);
        let last = rec["last_at"].as_u64();
        let next = s.next(last, started, now);
        if rec["next_at"].as_u64() != next || rec["spec"].as_str() != Some(s.spec.as_str()) {
            rec["source"] = json!("schedule");
            rec["name"] = json!(s.name);
            rec["spec"] = json!(s.spec);
            rec["next_at"] = json!(next);
            recorded.insert(key, rec);
            dirty = true;
        }
        out.push((s.name.clone(), next));
    }
    if dirty && let Err(e) = crate::watch::store(data_dir, &recorded) {
        tracing::warn!("recording the schedules: {e}");
    }
    out
}

/// A firing of schedule `name` (see the module docs).
pub fn fire(
    core: &Core,
    w: &WatchSection,
    aur_url: &str,
    key: Option<&NodeKey>,
    name: &str,
) -> Result<Round> {
    let ctx = Ctx::new(core, w, aur_url, key);
    let mut round = Round::default();
    let mut recorded = crate::watch::load(&core.data_dir);
    for t in &w.tree {
        check_tree(&ctx, t, &mut recorded, &mut round, Some(name));
    }
    for g in w
        .git
        .iter()
        .filter(|g| g.on_trigger.as_deref() == Some(name))
    {
        let label = git_label(&g.url, g.subdir.as_deref());
        let r = (|| -> Result<Option<String>, String> {
            let repo = ctx.repo(g.repo.as_deref())?;
            let head = git_head(&ctx, &g.url, g.rev.as_deref())?;
            let source = Source::Git {
                url: g.url.clone(),
                rev: Some(head.clone()),
                subdir: g.subdir.clone(),
            };
            enqueue_for_trigger(&ctx, repo, source, &label, name, &mut round)
        })();
        note_trigger(&mut recorded, &git_key(g), name, &ctx, r, &mut round);
    }
    for pkg in w.aur_on_trigger.get(name).into_iter().flatten() {
        let pkgbase = recorded
            .get(pkg)
            .and_then(|v| v["package_base"].as_str())
            .unwrap_or(pkg)
            .to_string();
        let r = (|| -> Result<Option<String>, String> {
            let repo = ctx.repo(None)?;
            let pb = Name::new(pkgbase.clone()).map_err(|e| format!("{pkgbase:?}: {e}"))?;
            enqueue_for_trigger(
                &ctx,
                repo,
                Source::Aur { pkgbase: pb },
                pkg,
                name,
                &mut round,
            )
        })();
        note_trigger(
            &mut recorded,
            &format!("trigger:aur/{pkg}"),
            name,
            &ctx,
            r,
            &mut round,
        );
    }
    let key = schedule_key(name);
    let mut rec = record(&recorded, &key);
    rec["source"] = json!("schedule");
    rec["name"] = json!(name);
    rec["last_at"] = json!(ctx.now.0 / 1000);
    rec["last_enqueued"] = json!(round.enqueued.len());
    recorded.insert(key, rec);
    crate::watch::store(&core.data_dir, &recorded).context("recording the watch state")?;
    Ok(round)
}

fn enqueue_for_trigger(
    ctx: &Ctx<'_>,
    repo: Name,
    source: Source,
    label: &str,
    trigger: &str,
    round: &mut Round,
) -> Result<Option<String>, String> {
    let (_, open, _) = entries_like(ctx.core, &repo, &source);
    if open {
        return Ok(Some(format!(
            "trigger {trigger}: a build is still waiting; not enqueued again"
        )));
    }
    if !ctx.may_enqueue {
        round.reported.push(label.to_string());
        return Ok(Some(ctx.may_not(
            &format!("trigger {trigger} fired"),
            "pacmesh queue add",
        )));
    }
    let base = match &source {
        Source::Aur { pkgbase } => Some(pkgbase.to_string()),
        Source::Tree { pkgbases, .. } if pkgbases.len() == 1 => Some(pkgbases[0].to_string()),
        _ => None,
    };
    let mut entry = QueueEntry::new(repo, source);
    // A triggered rebuild of a published version gets a pkgrel bump, so it can be published.
    if let Some(base) = base {
        entry.pkgrel_bump = crate::rebuild::bump_for(
            crate::rebuild::published_versions(ctx.core, &entry.repo)
                .get(&base)
                .map(String::as_str),
        );
    }
    let id = ctx
        .submit(entry)
        .map_err(|e| format!("enqueuing {label}: {e:#}"))?;
    round.enqueued.push((label.to_string(), id.to_string()));
    Ok(Some(format!("trigger {trigger}: enqueued {id}")))
}

fn note_trigger(
    recorded: &mut Map<String, Value>,
    key: &str,
    trigger: &str,
    ctx: &Ctx<'_>,
    r: Result<Option<String>, String>,
    round: &mut Round,
) {
    let mut rec = record(recorded, key);
    match r {
        Ok(note) => {
            rec["last_trigger"] = json!({ "name": trigger, "at": ctx.now.0, "note": note });
        }
        Err(e) => {
            rec["last_trigger"] = json!({ "name": trigger, "at": ctx.now.0, "error": e });
            round.errors.push((key.to_string(), e));
        }
    }
    recorded.insert(key.to_string(), rec);
}

// ---- queue why -------------------------------------------------------------------------------

/// What update detection records about `pkg` beyond the AUR record: watched git sources named
/// like it, the trees holding a folder of that name (with its `CI_ON_TRIGGER`), its VCS
/// commits, and the next firing of the schedules that select it.
pub fn related(data_dir: &Path, pkg: &str) -> Vec<Value> {
    let recorded = crate::watch::load(data_dir);
    let mut out = Vec::new();
    let mut triggers: Vec<String> = Vec::new();
    for (k, v) in &recorded {
        let kind = k.split(':').next().unwrap_or("");
        match kind {
            "git" if v["package"] == pkg => {
                if let Some(t) = v["on_trigger"].as_str() {
                    triggers.push(t.to_string());
                }
                out.push(v.clone());
            }
            "vcs" if v["package"] == pkg => out.push(v.clone()),
            "tree"
                if v["folders"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|f| f == pkg)) =>
            {
                let mut t = json!({
                    "source": "tree", "url": v["url"], "ref": v["ref"], "synced": v["synced"],
                    "upstream_head": v["upstream_head"], "checked_at": v["checked_at"],
                });
                for f in ["error", "reported"] {
                    if !v[f].is_null() {
                        t[f] = v[f].clone();
                    }
                }
                if let Some(tr) = v["triggers"][pkg].as_str() {
                    t["on_trigger"] = json!(tr);
                    triggers.push(tr.to_string());
                }
                out.push(t);
            }
            "trigger" if k == &format!("trigger:aur/{pkg}") => {
                for t in v["triggers"].as_array().into_iter().flatten() {
                    if let Some(t) = t.as_str() {
                        triggers.push(t.to_string());
                    }
                }
                if let Some(e) = v["last_trigger"]["error"].as_str() {
                    out.push(json!({ "source": "trigger", "error": e }));
                }
            }
            _ => {}
        }
    }
    triggers.sort();
    triggers.dedup();
    for t in triggers {
        let s = &recorded.get(&schedule_key(&t));
        let mut v = json!({ "source": "schedule", "name": t });
        match s {
            Some(s) => {
                v["spec"] = s["spec"].clone();
                v["next_at"] = s["next_at"].clone();
                v["last_at"] = s["last_at"].clone();
            }
            None => v["error"] = json!(format!("no schedule named {t} on this node")),
        }
        out.push(v);
    }
    out
}

/// `queue why` lines for [`related`] records.
pub fn render_related(items: &[Value]) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    for v in items {
        let line = match v["source"].as_str() {
            Some("git") => format!(
                "  watched    git {}{} {}: head {}",
                s(&v["url"]),
                v["ref"]
                    .as_str()
                    .map(|r| format!(" ref {r}"))
                    .unwrap_or_default(),
                v["subdir"]
                    .as_str()
                    .map(|r| format!("subdir {r}"))
                    .unwrap_or_default(),
                v["head"].as_str().map(short).unwrap_or("unknown"),
            ),
            Some("tree") => format!(
                "  watched    tree {}: synced at {}{}",
                s(&v["url"]),
                v["synced"].as_str().map(short).unwrap_or("never"),
                v["on_trigger"]
                    .as_str()
                    .map(|t| format!(", CI_ON_TRIGGER={t}"))
                    .unwrap_or_default()
            ),
            Some("vcs") => format!(
                "  vcs        upstream commit {}{}{}",
                v["commit"].as_str().map(short).unwrap_or("unknown"),
                v["changed"]
                    .as_str()
                    .map(|c| format!(" (changed: {c})"))
                    .unwrap_or_default(),
                v["action"]
                    .as_str()
                    .map(|a| format!("; {a}"))
                    .unwrap_or_default()
            ),
            Some("schedule") => format!(
                "  schedule   {} ({}): next firing {}",
                s(&v["name"]),
                v["spec"].as_str().unwrap_or("?"),
                v["next_at"]
                    .as_u64()
                    .map(crate::schedule::format_utc)
                    .unwrap_or_else(|| "unknown".into())
            ),
            _ => continue,
        };
        out.push_str(&line);
        out.push('\n');
        for f in ["error", "reported"] {
            if let Some(e) = v[f].as_str() {
                out.push_str(&format!("             {f}: {e}\n"));
            }
        }
    }
    out
}
