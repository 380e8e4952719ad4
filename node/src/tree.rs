//! Packages trees (the Chaotic-AUR layout): a git repository with one folder per package base,
//! each holding a PKGBUILD and optionally `.CI/config` and interfere files.
//!
//! `pacmesh tree sync --git URL` plans a sync ([`plan`]) and applies it: one `enqueue` per
//! folder to build, as a `tree` source naming that folder at the synced commit (so the build is
//! pinned to it), and one `remove` per package base whose folder is gone (the publisher drops
//! all its split packages).
//!
//! # What is built
//!
//! - The first sync of a URL: every package folder.
//! - A later sync: the folders whose git tree changed since the last synced commit, plus those
//!   named by `[deploy NAME]` in the messages of the new commits (`[deploy all]`: every folder).
//!   A `[deploy NAME]` naming no folder makes the whole sync fail before anything is submitted
//!   (nothing is half-applied); fix the message (force-push) and sync again.
//! - With `--trigger NAME`: every folder whose `.CI/config` says `CI_ON_TRIGGER=NAME` (Chaotic's
//!   named schedules, e.g. `daily`).
//!
//! The last synced commit is read from the node's queue: the commit of the newest `tree` entry
//! for the URL. A package folder is a top-level folder with a `PKGBUILD`, not starting with
//! `.`; its name must be a valid package name. A folder's `.CI/config` problems (garbage lines,
//! bad values) do not stop the sync: the folder is enqueued and its build fails with the
//! reason (the sandbox's interfere phase names the line); the plan lists them as warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use pacmesh_repo::ciconfig::{self, CiConfig};

/// One package folder of the tree at a commit.
#[derive(Debug, Clone)]
pub struct Folder {
    /// The folder name.
    pub name: String,
    /// The git tree id of the folder (changes when anything in it changes).
    pub tree: git2::Oid,
    /// The package base (`pkgbase` of its `.SRCINFO`, else the folder name).
    pub pkgbase: String,
    /// Its `.CI/config`, if any and valid.
    pub ci: Option<CiConfig>,
    /// Package names it produces (its `.SRCINFO`'s pkgnames), empty without one.
    pub pkgnames: Vec<String>,
    /// What it needs to build (`.SRCINFO` depends, makedepends, checkdepends; names only).
    pub needs: Vec<String>,
}

/// Why a folder is built.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// First sync of the tree.
    New,
    /// Its files changed.
    Changed,
    /// `[deploy NAME]` / `[deploy all]` in a commit message.
    Deploy(String),
    /// `CI_ON_TRIGGER` matches the trigger of this sync.
    Trigger(String),
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::New => f.write_str("new"),
            Reason::Changed => f.write_str("changed"),
            Reason::Deploy(c) => write!(f, "deploy in commit {c}"),
            Reason::Trigger(t) => write!(f, "trigger {t}"),
        }
    }
}

/// What a sync does.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The commit synced (full hex).
    pub commit: String,
    /// The previous synced commit, if any.
    pub since: Option<String>,
    /// Folders to build, by name.
    pub build: BTreeMap<String, Reason>,
    /// Package bases whose folders are gone.
    pub remove: BTreeSet<String>,
    /// Every package folder at `commit`.
    pub folders: BTreeMap<String, Folder>,
    /// Problems that do not stop the sync (bad `.CI/config`, folders that are not packages).
    pub warnings: Vec<String>,
    /// Time taken.
    pub elapsed: std::time::Duration,
    /// Folders to build whose `.CI/config` says `CI_HUMAN_REVIEW=true` and whose PKGBUILD
    /// changed since the last synced commit beyond pkgver/pkgrel/checksums (or is new): the
    /// change, which their entries carry for a maintainer to approve ([`crate::review`]).
    pub review: BTreeMap<String, String>,
}

/// Why a sync cannot be planned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    #[error("git: {0}")]
    Git(String),
    /// `[deploy NAME]` names no folder.
    #[error(
        "commit {commit}: [deploy {name}] names no package folder{hint}; fix the commit message (force-push) and sync again — nothing was applied"
    )]
    BadDeploy {
        commit: String,
        name: String,
        hint: String,
    },
}

fn git(e: git2::Error) -> TreeError {
    TreeError::Git(e.message().to_string())
}

const MAX_SMALL_FILE: usize = 1 << 20;

fn small_blob(repo: &git2::Repository, tree: &git2::Tree<'_>, path: &str) -> Option<String> {
    let e = tree.get_path(std::path::Path::new(path)).ok()?;
    if e.filemode() != 0o100644 && e.filemode() != 0o100755 {
        return None;
    }
    let b = repo.find_blob(e.id()).ok()?;
    (b.size() <= MAX_SMALL_FILE).then(|| String::from_utf8_lossy(b.content()).into_owned())
}

/// The package folders of `commit`'s tree, and warnings about the rest.
pub fn folders(
    repo: &git2::Repository,
    commit: &git2::Commit<'_>,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Folder>, TreeError> {
    let root = commit.tree().map_err(git)?;
    let mut out = BTreeMap::new();
    for e in root.iter() {
        if e.kind() != Some(git2::ObjectType::Tree) {
            continue;
        }
        let Some(name) = e.name() else { continue };
        if name.starts_with('.') {
            continue;
        }
        let sub = repo.find_tree(e.id()).map_err(git)?;
        if sub.get_name("PKGBUILD").is_none() {
            continue;
        }
        if pacmesh_protocol::Name::new(name).is_err() {
            warnings.push(format!("{name}: not a valid package base name; skipped"));
            continue;
        }
        let srcinfo = small_blob(repo, &sub, ".SRCINFO")
            .and_then(|t| pacmesh_repo::srcinfo::SrcInfo::from_bytes(t.as_bytes()).ok());
        let pkgbase = srcinfo
            .as_ref()
            .map(|s| s.pkgbase().to_string())
            .filter(|b| pacmesh_protocol::Name::new(b.as_str()).is_ok())
            .unwrap_or_else(|| name.to_string());
        let (pkgnames, needs) = match &srcinfo {
            Some(s) => (
                s.pkgnames().into_iter().map(str::to_string).collect(),
                s.depends_for_arch(&crate::config::host_arch())
                    .all()
                    .into_iter()
                    .map(|d| crate::aur::dep_name(d).to_string())
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let ci = match small_blob(repo, &sub, ".CI/config") {
            None => None,
            Some(text) => match ciconfig::parse(&text) {
                Ok(c) => {
                    for w in &c.warnings {
                        warnings.push(format!("{name}: .CI/config {w}"));
                    }
                    Some(c)
                }
                Err(err) => {
                    warnings.push(format!(
                        "{name}: {err} (its build will fail with this reason)"
                    ));
                    None
                }
            },
        };
        out.insert(
            name.to_string(),
            Folder {
                name: name.to_string(),
                tree: e.id(),
                pkgbase,
                ci,
                pkgnames,
                needs,
            },
        );
    }
    Ok(out)
}

/// `[deploy NAME]` occurrences in a commit message.
pub fn deploy_names(msg: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = msg;
    while let Some(i) = rest.find("[deploy ") {
        rest = &rest[i + "[deploy ".len()..];
        if let Some(j) = rest.find(']') {
            let n = rest[..j].trim();
            if !n.is_empty() && !n.contains('\n') {
                out.push(n.to_string());
            }
            rest = &rest[j..];
        }
    }
    out
}

fn closest<'a>(name: &str, names: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    fn dist(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut cur = vec![i + 1];
            for (j, cb) in b.iter().enumerate() {
                cur.push(
                    (prev[j] + usize::from(ca != *cb))
                        .min(prev[j + 1] + 1)
                        .min(cur[j] + 1),
                );
            }
            prev = cur;
        }
        prev[b.len()]
    }
    names
        .map(|n| (dist(name, n), n))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

/// Plans the sync of `repo` at `commit` since `since` (see the module docs).
pub fn plan(
    repo: &git2::Repository,
    commit: git2::Oid,
    since: Option<git2::Oid>,
    trigger: Option<&str>,
) -> Result<Plan, TreeError> {
    let start = Instant::now();
    let mut p = Plan {
        commit: commit.to_string(),
        since: since.map(|s| s.to_string()),
        ..Plan::default()
    };
    let new = repo.find_commit(commit).map_err(git)?;
    p.folders = folders(repo, &new, &mut p.warnings)?;
    let old = match since {
        Some(s) if s != commit => match repo.find_commit(s) {
            Ok(c) => Some(c),
            Err(_) => {
                p.warnings.push(format!(
                    "the last synced commit {s} is not in the repository (history rewritten?): every folder is compared with nothing"
                ));
                None
            }
        },
        _ => None,
    };
    if since.is_none() || (old.is_none() && since != Some(commit)) {
        for n in p.folders.keys() {
            p.build.insert(n.clone(), Reason::New);
        }
    } else if let Some(old) = &old {
        let mut ignore = Vec::new();
        let before = folders(repo, old, &mut ignore)?;
        for (n, f) in &p.folders {
            if before.get(n).is_none_or(|b| b.tree != f.tree) {
                p.build.insert(n.clone(), Reason::Changed);
            }
        }
        for (n, f) in &before {
            if !p.folders.contains_key(n) && !p.folders.values().any(|g| g.pkgbase == f.pkgbase) {
                p.remove.insert(f.pkgbase.clone());
            }
        }
        // [deploy NAME] in the new commits.
        let mut walk = repo.revwalk().map_err(git)?;
        walk.push(commit).map_err(git)?;
        walk.hide(old.id()).map_err(git)?;
        for id in walk {
            let id = id.map_err(git)?;
            let c = repo.find_commit(id).map_err(git)?;
            let short = id.to_string()[..10].to_string();
            for name in deploy_names(c.message().unwrap_or("")) {
                if name == "all" {
                    for n in p.folders.keys() {
                        p.build
                            .entry(n.clone())
                            .or_insert_with(|| Reason::Deploy(short.clone()));
                    }
                } else if p.folders.contains_key(&name) {
                    p.build
                        .entry(name)
                        .or_insert_with(|| Reason::Deploy(short.clone()));
                } else {
                    let hint = closest(&name, p.folders.keys())
                        .map(|c| format!(" (did you mean {c}?)"))
                        .unwrap_or_default();
                    return Err(TreeError::BadDeploy {
                        commit: short,
                        name,
                        hint,
                    });
                }
            }
        }
    }
    if let Some(old) = &old {
        let old_tree = old.tree().map_err(git)?;
        let new_tree = new.tree().map_err(git)?;
        for n in p.build.keys() {
            let Some(f) = p.folders.get(n) else { continue };
            if !f.ci.as_ref().is_some_and(|c| c.human_review) {
                continue;
            }
            let path = format!("{n}/PKGBUILD");
            let now = small_blob(repo, &new_tree, &path).unwrap_or_default();
            let diff = match small_blob(repo, &old_tree, &path) {
                Some(before) => crate::review::significant_diff(&before, &now),
                None => Some(crate::review::new_file(&now)),
            };
            if let Some(d) = diff {
                p.review.insert(n.clone(), d);
            }
        }
    }
    if let Some(t) = trigger {
        for (n, f) in &p.folders {
            if f.ci.as_ref().and_then(|c| c.on_trigger.as_deref()) == Some(t) {
                p.build
                    .entry(n.clone())
                    .or_insert_with(|| Reason::Trigger(t.to_string()));
            }
        }
    }
    p.elapsed = start.elapsed();
    Ok(p)
}

/// The folders of `plan.build` in dependency order (a folder producing a package another
/// needs comes first) and, for each, the folders it must wait for. A cycle is reported as a
/// warning and its folders get no ordering.
pub fn build_order(plan: &mut Plan) -> Vec<(String, Vec<String>)> {
    let mut producer: BTreeMap<&str, &str> = BTreeMap::new();
    for n in plan.build.keys() {
        if let Some(f) = plan.folders.get(n) {
            for p in &f.pkgnames {
                producer.insert(p.as_str(), n.as_str());
            }
        }
    }
    let mut needs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for n in plan.build.keys() {
        let deps = plan
            .folders
            .get(n)
            .map(|f| {
                f.needs
                    .iter()
                    .filter_map(|d| producer.get(d.as_str()))
                    .filter(|p| **p != n.as_str())
                    .map(|p| p.to_string())
                    .collect()
            })
            .unwrap_or_default();
        needs.insert(n.clone(), deps);
    }
    match crate::aur::topo_order(&needs) {
        Ok(order) => order
            .into_iter()
            .map(|n| {
                let d = needs
                    .get(&n)
                    .map(|d| d.iter().cloned().collect())
                    .unwrap_or_default();
                (n, d)
            })
            .collect(),
        Err(e) => {
            plan.warnings.push(format!(
                "{} (built without ordering)",
                e.to_string().replace("AUR dependency", "dependency")
            ));
            plan.build.keys().map(|n| (n.clone(), Vec::new())).collect()
        }
    }
}

/// Parameters of `pacmesh tree sync`.
#[derive(Debug, Clone)]
pub struct TreeSync {
    pub key: std::path::PathBuf,
    pub node: String,
    pub url: String,
    pub rev: Option<String>,
    pub repo: Option<String>,
    pub trigger: Option<String>,
    pub cache_dir: std::path::PathBuf,
    pub dry_run: bool,
    /// Every folder, changed or not (`queue add --tree URL --all`).
    pub all: bool,
}

/// What a sync did.
#[derive(Debug, Clone)]
pub struct SyncReport {
    pub plan: Plan,
    /// Folder → entry id, in the order submitted.
    pub enqueued: Vec<(String, pacmesh_protocol::Hash)>,
    pub removed: Vec<String>,
    /// Folder → the pkgrel bump its entry carries: its package base is published, so a
    /// rebuild of the same version gets a new pkgrel ([`crate::rebuild`]).
    pub bumps: BTreeMap<String, pacmesh_protocol::PkgrelBump>,
}

/// `pacmesh tree sync`: fetch, plan (see the module docs), submit.
pub fn sync(a: &TreeSync) -> anyhow::Result<SyncReport> {
    use anyhow::Context;
    use pacmesh_protocol::{EventBody, Name, QueueEntry, Source};
    let key = crate::keys::NodeKey::load(&a.key)?;
    let client = crate::client::Client::new(&a.node);
    let repo_name = match &a.repo {
        Some(r) => r.clone(),
        None => {
            let st = client.get_json("/api/v1/status")?;
            let repos: Vec<String> = st["mesh"]["repos"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|r| r["name"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            match repos.as_slice() {
                [one] => one.clone(),
                _ => anyhow::bail!(
                    "the mesh has {} repositories: choose one with --repo",
                    repos.len()
                ),
            }
        }
    };
    let repo_n = Name::new(repo_name.clone()).map_err(|e| anyhow::anyhow!("--repo: {e}"))?;
    let cfg = crate::source::SourceConfig::new(a.cache_dir.join("git"));
    let (git, _guard) =
        crate::source::git_mirror(&cfg, &a.url, &std::sync::atomic::AtomicBool::new(false))
            .with_context(|| format!("fetching the tree {}", a.url))?;
    let commit = crate::source::resolve_rev(&git, a.rev.as_deref())
        .map_err(|e| match e {
            Some(e) => anyhow::anyhow!("{e}"),
            None => anyhow::anyhow!(
                "{} names no commit in {}",
                a.rev.as_deref().unwrap_or("HEAD"),
                a.url
            ),
        })?
        .id();
    // The last synced commit: the newest tree entry of this URL in this repository.
    let q = client.get_json("/api/v1/queue")?;
    let since = q["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| {
            e["source"]["kind"] == "tree"
                && e["source"]["url"] == a.url.as_str()
                && e["repo"] == repo_name.as_str()
        })
        .max_by_key(|e| e["enqueued_at"].as_u64().unwrap_or(0))
        .and_then(|e| e["source"]["rev"].as_str())
        .and_then(|r| git2::Oid::from_str(r).ok());
    let since = since.filter(|_| !a.all);
    let mut plan = plan(&git, commit, since, a.trigger.as_deref())?;
    let order = build_order(&mut plan);
    // Folders whose package base is published: a rebuild of the same version gets a new pkgrel.
    let published = crate::rebuild::published_bases(&client, &repo_name)
        .context("reading what the repository publishes (for pkgrel bumps of rebuilds)")?;
    let bumps = plan
        .build
        .keys()
        .filter_map(|n| {
            let f = plan.folders.get(n)?;
            let b = crate::rebuild::bump_for(published.get(&f.pkgbase).map(String::as_str))?;
            Some((n.clone(), b))
        })
        .collect();
    let mut report = SyncReport {
        plan,
        enqueued: Vec::new(),
        removed: Vec::new(),
        bumps,
    };
    if a.dry_run {
        return Ok(report);
    }
    let mut ids: BTreeMap<String, pacmesh_protocol::Hash> = BTreeMap::new();
    for (folder, deps) in order {
        let mut e = QueueEntry::new(
            repo_n.clone(),
            Source::Tree {
                url: a.url.clone(),
                rev: Some(report.plan.commit.clone()),
                pkgbases: vec![Name::new(folder.clone()).map_err(|e| anyhow::anyhow!("{e}"))?],
            },
        );
        e.after = deps.iter().filter_map(|d| ids.get(d).copied()).collect();
        e.review = report.plan.review.get(&folder).cloned();
        e.pkgrel_bump = report.bumps.get(&folder).cloned();
        let id = client
            .submit(&key, EventBody::Enqueue(e))
            .with_context(|| format!("enqueuing {folder}"))?;
        ids.insert(folder.clone(), id);
        report.enqueued.push((folder, id));
    }
    for pkgbase in report.plan.remove.clone() {
        client
            .submit(
                &key,
                EventBody::Remove {
                    pkgbase: Name::new(pkgbase.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
                    repo: repo_n.clone(),
                },
            )
            .with_context(|| format!("removing {pkgbase}"))?;
        report.removed.push(pkgbase);
    }
    Ok(report)
}

pub(crate) fn default_cache_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("pacmesh")
}

/// Runs a `pacmesh tree` command.
pub fn tree_command(cmd: crate::cli::TreeCommand) -> anyhow::Result<()> {
    let crate::cli::TreeCommand::Sync {
        key,
        node,
        git,
        rev,
        repo,
        trigger,
        cache_dir,
        dry_run,
        json,
    } = cmd;
    let r = sync(&TreeSync {
        key,
        node,
        url: git,
        rev,
        repo,
        trigger,
        cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
        dry_run,
        all: false,
    })?;
    for w in &r.plan.warnings {
        eprintln!("warning: {w}");
    }
    if json {
        let v = serde_json::json!({
            "commit": r.plan.commit,
            "since": r.plan.since,
            "folders": r.plan.folders.len(),
            "build": r.plan.build.iter().map(|(n, why)| serde_json::json!({
                "folder": n, "reason": why.to_string(),
                "entry": r.enqueued.iter().find(|(f, _)| f == n).map(|(_, id)| id.to_string()),
                "pkgrel_bump": r.bumps.get(n).map(|b| b.to_string()),
            })).collect::<Vec<_>>(),
            "remove": r.plan.remove,
            "warnings": r.plan.warnings,
            "dry_run": dry_run,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "tree at {} ({} package folders; last synced {})",
        &r.plan.commit[..12],
        r.plan.folders.len(),
        r.plan.since.as_deref().map_or("never", |s| &s[..12])
    );
    for (n, why) in &r.plan.build {
        let bump = r
            .bumps
            .get(n)
            .map(|b| format!(" (if still {}: rebuilt as {})", b.version, b.bumped()))
            .unwrap_or_default();
        match r.enqueued.iter().find(|(f, _)| f == n) {
            Some((_, id)) => println!("build   {n} ({why}) entry {id}{bump}"),
            None => println!(
                "build   {n} ({why}){bump}{}",
                if dry_run { " [dry run]" } else { "" }
            ),
        }
    }
    for b in &r.plan.remove {
        println!("remove  {b}{}", if dry_run { " [dry run]" } else { "" });
    }
    if r.plan.build.is_empty() && r.plan.remove.is_empty() {
        println!("nothing to do");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deploy_names_are_found() {
        assert_eq!(
            deploy_names("fix(x): y [deploy foo]\n\n[deploy all] and [deploy  bar ]"),
            vec!["foo", "all", "bar"]
        );
        assert!(deploy_names("[deploy ]").is_empty());
        let names = ["firefox".to_string(), "freecad-git".to_string()];
        assert_eq!(
            closest("freecad-gti", names.iter()).map(String::as_str),
            Some("freecad-git")
        );
        assert_eq!(closest("zzzzzzzz", names.iter()), None);
    }
}
