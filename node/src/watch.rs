//! What update detection last saw upstream, per package: kept in `DATA/watch/state.json` (one
//! JSON object: package → `{source, version, last_modified, checked_at, reported?}`), written
//! atomically by the checker and read by [`crate::why`].
//!
//! # Update detection (`[watch]` in the node config)
//!
//! Every `interval_secs` the node asks the AUR RPC (`info`, batched: 1000 packages in at most
//! 10 requests) about the `aur` packages it watches and compares each `LastModified` with the
//! one recorded last time:
//!
//! - a package with no queue entry yet (for its package base, in the target repository) is
//!   enqueued at once (its first build);
//! - a changed `LastModified` enqueues an update. With `review = true` (the default) the new
//!   PKGBUILD is compared with the one last built (the `source_commit` of the newest build of
//!   that base): a change beyond pkgver/pkgrel/checksums makes the entry wait for a
//!   maintainer's `approve` ([`crate::review`]);
//! - the enqueue is signed with `key` (default: the node's own key) when the policy makes that
//!   key a maintainer; otherwise nothing is signed and the change is *reported*: recorded here,
//!   shown by `queue why PKG`, for a maintainer to act on.
//!
//! An RPC failure (network, HTTP, malformed answer) leaves the recorded state as it was, so
//! the next round sees the change again; transient failures are retried sooner (backoff from
//! 30 s, doubling up to the interval).
//!
//! Git sources (`[[watch.git]]`), packages trees (`[[watch.tree]]`), the upstream commits of
//! VCS packages and named schedules are checked in the same rounds: see [`crate::watch_git`]
//! and [`crate::schedule`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pacmesh_protocol::{EventBody, Name, QueueEntry, Roles, Source, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use crate::core::Core;
use crate::state::ReportOutcome;

/// `[watch]` in the node config.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    /// AUR packages to keep built and up to date.
    #[serde(default)]
    pub aur: Vec<String>,
    /// Seconds between checks (default 3600, at least 1).
    pub interval_secs: Option<u64>,
    /// Updates that change a PKGBUILD beyond pkgver/pkgrel/checksums wait for a maintainer's
    /// approval (default true).
    pub review: Option<bool>,
    /// Target repository (default: the mesh's only one).
    pub repo: Option<String>,
    /// Maintainer key that signs automatic enqueues (default: the node key), relative to the
    /// config file's folder.
    pub key: Option<PathBuf>,
    /// Git repositories holding a PKGBUILD, kept built at the head of a ref (`[[watch.git]]`).
    #[serde(default)]
    pub git: Vec<WatchGit>,
    /// Packages trees synced when their head moves (`[[watch.tree]]`).
    #[serde(default)]
    pub tree: Vec<WatchTree>,
    /// Watched AUR packages enqueued when a named schedule fires: schedule name → packages
    /// (`aur_on_trigger = { daily = ["foo-git"] }`).
    #[serde(default)]
    pub aur_on_trigger: std::collections::BTreeMap<String, Vec<String>>,
    /// Check the upstream commits of VCS packages (`-git`, or a `git+` source in their
    /// `.SRCINFO`) of the watched trees, git sources and AUR packages (default true).
    pub vcs: Option<bool>,
}

/// `[[watch.git]]`: a git repository holding a PKGBUILD.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchGit {
    pub url: String,
    /// Branch, tag or commit (default: the remote's HEAD).
    #[serde(rename = "ref")]
    pub rev: Option<String>,
    /// Folder holding the PKGBUILD.
    pub subdir: Option<String>,
    /// Target repository (default: `[watch] repo`, else the mesh's only one).
    pub repo: Option<String>,
    /// Also enqueued (at the current head) when the schedule of this name fires.
    pub on_trigger: Option<String>,
}

/// `[[watch.tree]]`: a packages tree (Chaotic-AUR layout).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchTree {
    pub url: String,
    /// Branch or tag (default: the remote's HEAD).
    #[serde(rename = "ref")]
    pub rev: Option<String>,
    /// Target repository (default: `[watch] repo`, else the mesh's only one).
    pub repo: Option<String>,
}

impl WatchSection {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.unwrap_or(3600).max(1))
    }

    /// Every trigger named here (`on_trigger`, `aur_on_trigger`) is one of `schedules`.
    pub fn check_triggers(&self, schedules: &[crate::schedule::Schedule]) -> Result<(), String> {
        let known = |t: &str| schedules.iter().any(|s| s.name == t);
        let named = self
            .git
            .iter()
            .filter_map(|g| g.on_trigger.as_deref().map(|t| (t, "watch.git on_trigger")))
            .chain(
                self.aur_on_trigger
                    .keys()
                    .map(|t| (t.as_str(), "watch.aur_on_trigger")),
            );
        for (t, what) in named {
            if !known(t) {
                return Err(format!(
                    "{what} names {t:?}, which is no schedule (add [[schedule]] name = {t:?}; built in: hourly, daily)"
                ));
            }
        }
        Ok(())
    }

    /// Whether anything is watched (otherwise no checker runs).
    pub fn is_empty(&self) -> bool {
        self.aur.is_empty() && self.git.is_empty() && self.tree.is_empty()
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Packages enqueued (name, entry id).
    pub enqueued: Vec<(String, String)>,
    /// Changes reported for a maintainer (name).
    pub reported: Vec<String>,
    /// Sources whose check failed this round (state key, message); the others went on.
    pub errors: Vec<(String, String)>,
}

/// The largest state file read (a node watching thousands of packages stays far below).
const MAX_STATE_BYTES: u64 = 16 << 20;

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("watch").join("state.json")
}

/// Everything recorded, or an empty map (a missing, oversized or unreadable file is logged and
/// treated as empty: the next check records again).
pub fn load(data_dir: &Path) -> Map<String, Value> {
    let p = path(data_dir);
    let Ok(meta) = std::fs::metadata(&p) else {
        return Map::new();
    };
    if meta.len() > MAX_STATE_BYTES {
        tracing::warn!(path = %p.display(), "watch state too large; ignored");
        return Map::new();
    }
    match std::fs::read(&p).map(|b| serde_json::from_slice::<Map<String, Value>>(&b)) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(path = %p.display(), error = %e, "watch state unreadable; ignored");
            Map::new()
        }
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "watch state unreadable; ignored");
            Map::new()
        }
    }
}

/// Replaces the recorded state (write to a temporary file, then rename).
pub fn store(data_dir: &Path, state: &Map<String, Value>) -> std::io::Result<()> {
    let p = path(data_dir);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &p)
}

/// What was last seen upstream for `pkg`, if anything.
pub fn observed(data_dir: &Path, pkg: &str) -> Option<Value> {
    load(data_dir).remove(pkg)
}

/// Starts the periodic checker when `[watch]` names anything to watch: every interval the AUR
/// round ([`check_once`]) and the git, tree and VCS round ([`crate::watch_git::check_sources`]);
/// at each firing of a named schedule ([`crate::schedule`]) [`crate::watch_git::fire`].
pub fn spawn(
    tasks: &mut tokio::task::JoinSet<Result<&'static str>>,
    core: &Arc<Core>,
    cfg: &crate::config::Config,
    mut stop: watch::Receiver<bool>,
) {
    let w = cfg.watch.clone();
    if w.is_empty() {
        return;
    }
    let schedules = cfg.schedules.clone();
    let (core, aur_url) = (core.clone(), cfg.aur_url.clone());
    tasks.spawn(async move {
        let key = match &w.key {
            Some(p) => Some(
                crate::keys::NodeKey::load(p)
                    .with_context(|| format!("watch.key {}", p.display()))?,
            ),
            None => None,
        };
        let key = Arc::new(key);
        let started = Timestamp::now().0 / 1000;
        let mut backoff = Duration::from_secs(30);
        let mut next_check = tokio::time::Instant::now();
        loop {
            let now_s = Timestamp::now().0 / 1000;
            let firings = crate::watch_git::next_firings(&core.data_dir, &schedules, started, now_s);
            let mut wake = next_check;
            if let Some(t) = firings.iter().filter_map(|(_, t)| *t).min() {
                wake = wake.min(
                    tokio::time::Instant::now() + Duration::from_secs(t.saturating_sub(now_s)),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.wait_for(|s| *s) => return Ok("watch"),
            }
            if tokio::time::Instant::now() >= next_check {
                let (c, w2, u, k) = (core.clone(), w.clone(), aur_url.clone(), key.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let aur = check_once(&c, &w2, &u, (*k).as_ref());
                    let sources = crate::watch_git::check_sources(&c, &w2, &u, (*k).as_ref());
                    (aur, sources)
                })
                .await;
                let wait = match r {
                    Ok((aur, sources)) => {
                        match sources {
                            Ok(round) => log_round("update detection (git, trees, VCS)", &round),
                            Err(e) => tracing::warn!(error = %format!("{e:#}"), "update detection (git, trees, VCS) failed"),
                        }
                        match aur {
                            Ok(round) => {
                                log_round("update detection (AUR)", &round);
                                backoff = Duration::from_secs(30);
                                w.interval()
                            }
                            Err(e) => {
                                let transient = e
                                    .downcast_ref::<crate::aur::AurError>()
                                    .is_some_and(|a| a.is_transient());
                                tracing::warn!(error = %format!("{e:#}"), transient, "update detection (AUR) failed; retrying");
                                if transient {
                                    let b = backoff.min(w.interval());
                                    backoff = (backoff * 2).min(w.interval());
                                    b
                                } else {
                                    w.interval()
                                }
                            }
                        }
                    }
                    Err(e) => return Err(anyhow::anyhow!("update detection task: {e}")),
                };
                next_check = tokio::time::Instant::now() + wait;
            }
            let now_s = Timestamp::now().0 / 1000;
            for (name, at) in firings {
                if at.is_none_or(|t| t > now_s) {
                    continue;
                }
                let (c, w2, u, k) = (core.clone(), w.clone(), aur_url.clone(), key.clone());
                let n = name.clone();
                let r = tokio::task::spawn_blocking(move || {
                    crate::watch_git::fire(&c, &w2, &u, (*k).as_ref(), &n)
                })
                .await;
                match r {
                    Ok(Ok(round)) => {
                        tracing::info!(schedule = %name, enqueued = ?round.enqueued, reported = ?round.reported, errors = ?round.errors, "schedule fired")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(schedule = %name, error = %format!("{e:#}"), "schedule firing failed")
                    }
                    Err(e) => return Err(anyhow::anyhow!("schedule task: {e}")),
                }
            }
        }
    });
}

fn log_round(what: &str, round: &Round) {
    if !round.enqueued.is_empty() || !round.reported.is_empty() {
        tracing::info!(enqueued = ?round.enqueued, reported = ?round.reported, "{what}");
    }
    for (src, e) in &round.errors {
        tracing::warn!(source = %src, error = %e, "{what}: check failed");
    }
}

/// The PKGBUILD of `pkgbase` in the AUR at `rev` (`None`: the newest commit) and that commit.
fn aur_pkgbuild(
    core: &Core,
    aur_url: &str,
    pkgbase: &str,
    rev: Option<&str>,
) -> Result<(String, String)> {
    let cfg = crate::source::SourceConfig::new(core.data_dir.join("git"));
    let url = crate::aur::git_url(aur_url, pkgbase);
    let (repo, _guard) =
        crate::source::git_mirror(&cfg, &url, &std::sync::atomic::AtomicBool::new(false))
            .with_context(|| format!("fetching {url}"))?;
    let commit = crate::source::resolve_rev(&repo, rev).map_err(|e| match e {
        Some(e) => anyhow::anyhow!("{e}"),
        None => anyhow::anyhow!("{} names no commit in {url}", rev.unwrap_or("HEAD")),
    })?;
    let tree = commit.tree()?;
    let entry = tree
        .get_path(Path::new("PKGBUILD"))
        .with_context(|| format!("{url} has no PKGBUILD"))?;
    let blob = repo.find_blob(entry.id())?;
    anyhow::ensure!(blob.size() <= 1 << 20, "{url}: PKGBUILD larger than 1 MiB");
    Ok((
        String::from_utf8_lossy(blob.content()).into_owned(),
        commit.id().to_string(),
    ))
}

/// One round of update detection (see the [module docs](self)).
pub fn check_once(
    core: &Core,
    w: &WatchSection,
    aur_url: &str,
    key: Option<&crate::keys::NodeKey>,
) -> Result<Round> {
    let mut round = Round::default();
    if w.aur.is_empty() {
        return Ok(round);
    }
    let client = crate::aur::AurClient::new(aur_url);
    let names: Vec<&str> = w.aur.iter().map(String::as_str).collect();
    let infos = client.info(&names)?;
    let mut recorded = load(&core.data_dir);
    let signer = key.unwrap_or(&core.key);
    let signer_pub = pacmesh_protocol::PublicKey::from(signer.signing_key());
    let (may_enqueue, repo) = {
        let ingest = core.ingest();
        let policy = ingest.policy();
        let repo = match &w.repo {
            Some(r) => r.clone(),
            None => match policy.repos.as_slice() {
                [one] => one.name.to_string(),
                _ => anyhow::bail!("watch.repo: the mesh has several repositories; name one"),
            },
        };
        (
            policy.role_of(&signer_pub).contains(Roles::MAINTAINER),
            repo,
        )
    };
    let repo_n = Name::new(repo.clone()).map_err(|e| anyhow::anyhow!("watch.repo: {e}"))?;
    let now = Timestamp::now();
    for pkg in &w.aur {
        let Some(p) = infos.iter().find(|p| &p.name == pkg) else {
            recorded.insert(
                pkg.clone(),
                json!({ "source": "aur", "checked_at": now.0, "reported": "not in the AUR" }),
            );
            continue;
        };
        let prev = recorded.get(pkg).and_then(|v| v["last_modified"].as_u64());
        // The newest entry of this package base, and the commit of its newest build.
        let (has_entry, last_built) = {
            let ingest = core.ingest();
            let st = ingest.state();
            let mut newest: Option<(Timestamp, Option<String>)> = None;
            let mut any = false;
            for e in st.entries() {
                let Some(q) = &e.enqueued else { continue };
                let Source::Aur { pkgbase } = &q.entry.source else {
                    continue;
                };
                if pkgbase.as_str() != p.package_base || q.entry.repo.as_str() != repo {
                    continue;
                }
                if e.cancelled.is_none() {
                    any = true;
                }
                for r in e.built() {
                    if let ReportOutcome::Built { source_commit, .. } = &r.outcome
                        && newest.as_ref().is_none_or(|(t, _)| r.time > *t)
                    {
                        newest = Some((r.time, source_commit.clone()));
                    }
                }
            }
            (any, newest.and_then(|(_, c)| c))
        };
        let changed = prev.is_some_and(|t| t != p.last_modified);
        let mut rec = json!({
            "source": "aur", "package_base": p.package_base, "version": p.version,
            "last_modified": p.last_modified, "checked_at": now.0,
        });
        if has_entry && !changed {
            recorded.insert(pkg.clone(), rec);
            continue;
        }
        if !may_enqueue {
            rec["reported"] = json!(format!(
                "upstream {} ({}) is not queued, and this node's key may not enqueue: a maintainer must (pacmesh queue add --aur {})",
                p.version,
                if has_entry { "changed" } else { "never built" },
                pkg
            ));
            round.reported.push(pkg.clone());
            recorded.insert(pkg.clone(), rec);
            continue;
        }
        let mut entry = QueueEntry::new(
            repo_n.clone(),
            Source::Aur {
                pkgbase: Name::new(p.package_base.clone())
                    .map_err(|e| anyhow::anyhow!("AUR package base {:?}: {e}", p.package_base))?,
            },
        );
        // An update whose PKGBUILD keeps the published version is a rebuild: it gets a pkgrel
        // bump (ignored by the sandbox when the PKGBUILD's version is new).
        entry.pkgrel_bump = crate::rebuild::bump_for(
            crate::rebuild::published_versions(core, &repo_n)
                .get(&p.package_base)
                .map(String::as_str),
        );
        if w.review.unwrap_or(true)
            && let Some(old) = &last_built
        {
            let (new_text, _) = aur_pkgbuild(core, aur_url, &p.package_base, None)?;
            let diff = match aur_pkgbuild(core, aur_url, &p.package_base, Some(old)) {
                Ok((old_text, _)) => crate::review::significant_diff(&old_text, &new_text),
                // The commit built is gone (history rewritten): everything is new.
                Err(_) => Some(crate::review::new_file(&new_text)),
            };
            entry.review = diff;
        }
        let id = core
            .submit_as(signer, EventBody::Enqueue(entry))
            .with_context(|| format!("enqueuing aur/{}", p.package_base))?;
        rec["enqueued"] = json!(id.to_string());
        round.enqueued.push((pkg.clone(), id.to_string()));
        recorded.insert(pkg.clone(), rec);
    }
    store(&core.data_dir, &recorded).context("recording the watch state")?;
    Ok(round)
}
