//! `pacmesh queue why PKG` and `GET /api/v1/why/PKG`: why a package is or is not queued,
//! claimed, built, failed, published or up to date — the most common question about a
//! repository built from the AUR or a packages tree.
//!
//! The answer is computed from the node's derived state only (no network): the entries whose
//! source names PKG (AUR package base, tree folder, `dir`/`git` folder name) or whose build
//! produced a package named PKG (split packages), newest first, each with its state and the
//! reason for it (who holds the claim and until when, the failure and the tail of its log,
//! the `after` entries it waits for, the change awaiting a maintainer's approval), what the
//! repositories publish under that name now, `remove` events, and what update detection
//! ([`crate::watch`]) last saw upstream.

use pacmesh_protocol::{Hash, Source, Timestamp};
use serde_json::{Value, json};

use crate::core::Core;
use crate::executor::{AfterState, after_state};
use crate::state::{EntryRecord, EntryStatus, QueueState, ReportOutcome};

/// The package name in a package file name (`NAME-PKGVER-PKGREL-ARCH.pkg.tar.*`).
pub fn pkgname_of_file(file: &str) -> Option<&str> {
    let stem = &file[..file.find(".pkg.tar")?];
    let mut end = stem.len();
    for _ in 0..3 {
        end = stem[..end].rfind('-')?;
    }
    Some(&stem[..end])
}

/// The version in a package file name (`PKGVER-PKGREL`, with the epoch if any).
pub fn version_of_file(file: &str) -> Option<String> {
    let name = pkgname_of_file(file)?;
    let stem = &file[name.len() + 1..file.find(".pkg.tar")?];
    let arch = stem.rfind('-')?;
    Some(stem[..arch].to_string())
}

/// Whether `source` is about package base `pkg`.
fn source_names(source: &Source, pkg: &str) -> bool {
    let last = |p: &str| -> bool {
        p.trim_end_matches('/')
            .rsplit('/')
            .next()
            .map(|s| s.trim_end_matches(".git"))
            == Some(pkg)
    };
    match source {
        Source::Aur { pkgbase } => pkgbase.as_str() == pkg,
        Source::Tree { pkgbases, .. } => pkgbases.iter().any(|p| p.as_str() == pkg),
        Source::Dir { path, .. } => last(path),
        Source::Git { url, subdir, .. } => match subdir {
            Some(d) => last(d),
            None => last(url),
        },
        _ => false,
    }
}

/// Whether entry `e` is about `pkg`: its source names it, or a build of it produced it.
fn entry_matches(e: &EntryRecord, pkg: &str) -> bool {
    if e.enqueued
        .as_ref()
        .is_some_and(|q| source_names(&q.entry.source, pkg))
    {
        return true;
    }
    e.built().any(|r| match &r.outcome {
        ReportOutcome::Built { artifacts, .. } => artifacts
            .iter()
            .any(|a| pkgname_of_file(a.file_name.as_str()) == Some(pkg)),
        ReportOutcome::Failed { .. } => false,
    })
}

/// The newest version of `pkg` a build of `e` produced, if any.
fn built_version(e: &EntryRecord, pkg: &str) -> Option<String> {
    e.built()
        .max_by_key(|r| (r.time, r.event))
        .and_then(|r| match &r.outcome {
            ReportOutcome::Built { artifacts, .. } => artifacts
                .iter()
                .find(|a| pkgname_of_file(a.file_name.as_str()) == Some(pkg))
                .or(artifacts.first())
                .and_then(|a| version_of_file(a.file_name.as_str())),
            ReportOutcome::Failed { .. } => None,
        })
}

fn ms_left(until: Timestamp, now: Timestamp) -> i64 {
    until.0 as i64 - now.0 as i64
}

/// One entry's explanation.
fn explain(core: &Core, state: &QueueState, quorum: u32, e: &EntryRecord, now: Timestamp) -> Value {
    let st = state.status(e, now);
    let mut v = json!({ "id": e.id.to_string(), "state": st.label() });
    if let Some(q) = &e.enqueued {
        v["name"] = json!(crate::views::source_label(&q.entry.source));
        v["repo"] = json!(q.entry.repo.to_string());
        v["source"] = crate::views::source(&q.entry.source);
        v["enqueued_by"] = json!(q.by.to_string());
        v["enqueued_at"] = json!(q.time.0);
    }
    if let Some(a) = &e.approved {
        v["approved_by"] = json!(a.by.to_string());
        v["approved_at"] = json!(a.time.0);
    }
    let reason = match &st {
        EntryStatus::Published(p) => {
            v["generation"] = json!(p.generation);
            v["arch"] = json!(p.arch.to_string());
            format!(
                "published in {}/{} generation {}",
                p.repo, p.arch, p.generation
            )
        }
        EntryStatus::Cancelled { by } => {
            v["cancelled_by"] = json!(by.to_string());
            format!("cancelled by maintainer {}", by.fmt_short())
        }
        EntryStatus::Built { builds } => {
            let n = e.builders_built().len();
            v["builders"] = json!(
                builds
                    .iter()
                    .map(|r| r.builder.to_string())
                    .collect::<Vec<_>>()
            );
            if n < quorum.max(1) as usize {
                format!(
                    "built by {n} builder(s); the policy needs {quorum} matching builds before it is published"
                )
            } else {
                "built; waiting for a publisher to put it in the next generation".to_string()
            }
        }
        EntryStatus::Claimed {
            by,
            attempt,
            lease_until,
        } => {
            let building = core.live_logs.is_active(&e.id);
            v["claimed_by"] = json!(by.to_string());
            v["attempt"] = json!(attempt);
            v["lease_until"] = json!(lease_until.0);
            v["building_here"] = json!(building);
            format!(
                "{} by {} (attempt {attempt}; lease ends in {} s unless renewed)",
                if building { "building" } else { "claimed" },
                by.fmt_short(),
                ms_left(*lease_until, now).max(0) / 1000
            )
        }
        EntryStatus::Failed { by, reason, log } => {
            v["failed_by"] = json!(by.to_string());
            v["reason"] = json!(reason);
            if let Some(l) = log {
                v["log"] = json!(l.to_string());
                v["log_tail"] = json!(crate::webhooks::log_tail(core, l));
            }
            format!(
                "failed on {}: {reason} (a failure is final: enqueue again to retry)",
                by.fmt_short()
            )
        }
        EntryStatus::Review { diff } => {
            v["review"] = json!(diff);
            "waiting for a maintainer's approval of the change below (pacmesh queue approve ENTRY --key FILE)".to_string()
        }
        EntryStatus::Waiting => match e
            .enqueued
            .as_ref()
            .map(|q| after_state(state, &q.entry, quorum))
        {
            Some(AfterState::Waiting(dep)) => {
                v["waiting_for"] = json!(dep.to_string());
                format!(
                    "waiting for entry {} ({}) to be built first",
                    dep.fmt_short(),
                    dep_label(state, &dep)
                )
            }
            Some(AfterState::Broken(why)) => {
                v["broken_dependency"] = json!(why);
                format!("will fail: {why}")
            }
            _ => {
                let lapsed = e.open_claims().count();
                if lapsed > 0 {
                    "waiting: the last claim's lease ran out without a result; claimable again"
                        .into()
                } else {
                    "waiting for a builder with matching capabilities to claim it".into()
                }
            }
        },
    };
    v["reason"] = json!(reason);
    if let Some(r) = core.retries().get(&e.id).cloned() {
        let wait = ms_left(r.next_at, now).max(0) / 1000;
        v["retry"] = json!({
            "attempt": r.attempt, "max_attempts": r.max_attempts, "reason": r.reason,
            "next_at": r.next_at.0,
        });
        if matches!(st, EntryStatus::Waiting) {
            v["reason"] = json!(format!(
                "waiting to retry after a transient failure (attempt {} of {} on this node: {}); next attempt in {wait} s",
                r.attempt, r.max_attempts, r.reason
            ));
        }
    }
    if let Some(q) = &e.enqueued {
        if let Some(b) = &q.entry.pkgrel_bump {
            v["pkgrel_bump"] = json!(b.to_string());
            v["rebuild"] = json!(format!(
                "a rebuild of the published {}: built as {} while the PKGBUILD says {}",
                b.version,
                b.bumped(),
                b.version
            ));
        }
        if !q.entry.cascade.is_empty() {
            v["cascade"] = json!(
                q.entry
                    .cascade
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
            );
        }
    }
    if let Some(q) = &e.enqueued
        && !q.entry.after.is_empty()
    {
        v["after"] = q
            .entry
            .after
            .iter()
            .map(|d| {
                let state_label = state
                    .entry(d)
                    .map_or("unknown to this node", |r| state.status(r, now).label());
                json!({ "id": d.to_string(), "name": dep_label(state, d), "state": state_label })
            })
            .collect();
    }
    if let Some(r) = e.built().max_by_key(|r| (r.time, r.event))
        && let ReportOutcome::Built {
            source_commit, log, ..
        } = &r.outcome
    {
        v["source_commit"] = json!(source_commit);
        v["build_log"] = json!(log.to_string());
    }
    v
}

fn dep_label(state: &QueueState, d: &Hash) -> String {
    state
        .entry(d)
        .and_then(|r| r.enqueued.as_ref())
        .map(|q| crate::views::source_label(&q.entry.source))
        .unwrap_or_else(|| "not seen yet".into())
}

/// The JSON answer for `pkg` (see the [module docs](self)).
pub fn why(core: &Core, pkg: &str, now: Timestamp) -> Value {
    let ingest = core.ingest();
    let state = ingest.state();
    let quorum = ingest.policy().quorum;
    let mut entries: Vec<&EntryRecord> =
        state.entries().filter(|e| entry_matches(e, pkg)).collect();
    entries.sort_by_key(|e| std::cmp::Reverse(e.enqueued.as_ref().map(|q| (q.time, e.id))));
    // What the repositories publish under that name now.
    let mut published = Vec::new();
    for (repo, arch) in state.published_repos() {
        if let Some(g) = state.latest_generation(repo, arch) {
            for p in &g.manifest.packages {
                let ours = p.pkgname.as_str() == pkg;
                if ours {
                    published.push(json!({
                        "repo": repo.to_string(), "arch": arch.to_string(),
                        "generation": g.manifest.generation, "pkgname": p.pkgname.to_string(),
                        "version": p.version, "file_name": p.file_name.to_string(),
                    }));
                }
            }
        }
    }
    let removals: Vec<Value> = state
        .removals()
        .iter()
        .filter(|((_, pb), _)| pb.as_str() == pkg)
        .flat_map(|((repo, _), evs)| {
            evs.iter().map(move |r| {
                json!({ "repo": repo.to_string(), "by": r.by.to_string(), "time": r.time.0, "event": r.id.to_string() })
            })
        })
        .collect();
    let explained: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = explain(core, state, quorum, e, now);
            if let Some(ver) = built_version(e, pkg) {
                v["built_version"] = json!(ver);
            }
            v
        })
        .collect();
    drop(ingest);
    let upstream = crate::watch::observed(&core.data_dir, pkg);
    let rebuild = crate::rebuild::observed(&core.data_dir, pkg);
    let mut answer = summary(pkg, &explained, &published, &removals);
    if let Some(r) = &rebuild
        && let Some(msg) = r["reported"].as_str().or(r["stopped"].as_str())
    {
        answer = format!("{answer}; rebuild cascade: {msg}");
    }
    if let Some(u) = &upstream {
        let theirs = u["version"].as_str().unwrap_or("");
        let ours = published.first().and_then(|p| p["version"].as_str());
        if let (false, Some(ours)) = (theirs.is_empty(), ours) {
            let cmp = pacmesh_repo::version::vercmp(ours, theirs);
            let verdict = match cmp {
                std::cmp::Ordering::Less => {
                    format!("out of date: upstream has {theirs}, the repository {ours}")
                }
                _ => format!("up to date with upstream ({theirs})"),
            };
            answer = format!("{answer}; {verdict}");
        }
        if let Some(r) = u["reported"].as_str() {
            answer = format!("{answer}; update detection: {r}");
        }
    }
    let watched = crate::watch_git::related(&core.data_dir, pkg);
    for w in &watched {
        for f in ["error", "reported"] {
            if let Some(r) = w[f].as_str() {
                let what = w["source"].as_str().unwrap_or("?");
                answer = format!("{answer}; update detection ({what}): {r}");
            }
        }
    }
    json!({
        "package": pkg,
        "answer": answer,
        "entries": explained,
        "published": published,
        "removed": removals,
        "upstream": upstream,
        "watched": watched,
        "rebuild": rebuild,
    })
}

/// The one-line answer: about the newest entry, or why there is none.
fn summary(pkg: &str, entries: &[Value], published: &[Value], removed: &[Value]) -> String {
    let pubd = published.first().map(|p| {
        format!(
            "{} {} is in {}/{} generation {}",
            pkg,
            p["version"].as_str().unwrap_or("?"),
            p["repo"].as_str().unwrap_or("?"),
            p["arch"].as_str().unwrap_or("?"),
            p["generation"]
        )
    });
    match entries.first() {
        None if !removed.is_empty() => {
            format!("{pkg} was removed from the repository and is not queued")
        }
        None => match pubd {
            Some(p) => format!("{p}; no queue entry names it"),
            None => {
                format!("{pkg} is not queued, built or published on this node (no entry names it)")
            }
        },
        Some(e) => {
            let r = e["reason"].as_str().unwrap_or("");
            let id = e["id"].as_str().unwrap_or("");
            let head = format!(
                "newest entry {} is {}: {r}",
                &id[..id.len().min(12)],
                e["state"].as_str().unwrap_or("?")
            );
            match pubd {
                Some(p) if e["state"] != "published" => format!("{p}; {head}"),
                _ => head,
            }
        }
    }
}

/// `pkg` made safe for a URL path segment (percent-encoding anything but `[A-Za-z0-9@._+-]`).
pub fn url_segment(pkg: &str) -> String {
    let mut out = String::new();
    for b in pkg.bytes() {
        if b.is_ascii_alphanumeric() || b"@._+-".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `queue why` as text (plain; colours on a terminal when `color`).
pub fn render(v: &Value, color: bool) -> String {
    let bold = |s: &str| {
        if color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    };
    let paint = |state: &str| -> String {
        if !color {
            return state.to_string();
        }
        let c = match state {
            "published" => "32",
            "failed" => "31",
            "review" => "35",
            "claimed" | "built" => "36",
            "cancelled" => "90",
            _ => "33",
        };
        format!("\x1b[{c}m{state}\x1b[0m")
    };
    let mut out = format!(
        "{}: {}\n",
        bold(v["package"].as_str().unwrap_or("?")),
        v["answer"].as_str().unwrap_or("")
    );
    for p in v["published"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  published  {} {} in {}/{} generation {}\n",
            p["pkgname"].as_str().unwrap_or("?"),
            p["version"].as_str().unwrap_or("?"),
            p["repo"].as_str().unwrap_or("?"),
            p["arch"].as_str().unwrap_or("?"),
            p["generation"]
        ));
    }
    if let Some(u) = v["upstream"].as_object() {
        out.push_str(&format!(
            "  upstream   {} {} (last modified {}, checked {})\n",
            u.get("source").and_then(Value::as_str).unwrap_or("?"),
            u.get("version").and_then(Value::as_str).unwrap_or("?"),
            u.get("last_modified")
                .map(|x| x.to_string())
                .unwrap_or_default(),
            u.get("checked_at")
                .map(|x| x.to_string())
                .unwrap_or_default(),
        ));
    }
    if let Some(w) = v["watched"].as_array() {
        out.push_str(&crate::watch_git::render_related(w));
    }
    for r in v["removed"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  removed    from {} by {}\n",
            r["repo"].as_str().unwrap_or("?"),
            r["by"]
                .as_str()
                .unwrap_or("?")
                .chars()
                .take(12)
                .collect::<String>()
        ));
    }
    for e in v["entries"].as_array().into_iter().flatten() {
        let state = e["state"].as_str().unwrap_or("?");
        out.push_str(&format!(
            "\nentry {}  {}  {}\n  {}\n",
            e["id"].as_str().unwrap_or("?"),
            e["name"].as_str().unwrap_or("?"),
            paint(state),
            e["reason"].as_str().unwrap_or("")
        ));
        if let Some(ver) = e["built_version"].as_str() {
            out.push_str(&format!("  built version {ver}\n"));
        }
        if let Some(r) = e["rebuild"].as_str() {
            out.push_str(&format!("  {r}\n"));
        }
        if let Some(c) = e["cascade"].as_array() {
            let chain: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
            out.push_str(&format!("  rebuild cascade: {}\n", chain.join(" → ")));
        }
        for d in e["after"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "  after {} ({}): {}\n",
                d["id"]
                    .as_str()
                    .unwrap_or("?")
                    .chars()
                    .take(12)
                    .collect::<String>(),
                d["name"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?")
            ));
        }
        if let Some(a) = e["approved_by"].as_str() {
            out.push_str(&format!("  approved by {}\n", &a[..a.len().min(12)]));
        }
        for l in e["log_tail"].as_array().into_iter().flatten() {
            out.push_str(&format!("  | {}\n", l.as_str().unwrap_or("")));
        }
        if let Some(d) = e["review"].as_str() {
            out.push_str("  change awaiting review:\n");
            for l in d.lines() {
                let line = if color && l.starts_with('+') && !l.starts_with("+++") {
                    format!("\x1b[32m{l}\x1b[0m")
                } else if color && l.starts_with('-') && !l.starts_with("---") {
                    format!("\x1b[31m{l}\x1b[0m")
                } else {
                    l.to_string()
                };
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert_eq!(
            pkgname_of_file("hello-1.0-1-x86_64.pkg.tar.zst"),
            Some("hello")
        );
        assert_eq!(
            pkgname_of_file("lib32-foo-bar-2:1.2.3-4-any.pkg.tar.xz"),
            Some("lib32-foo-bar")
        );
        assert_eq!(
            version_of_file("lib32-foo-bar-2:1.2.3-4-any.pkg.tar.xz").as_deref(),
            Some("2:1.2.3-4")
        );
        assert_eq!(pkgname_of_file("nonsense.pkg.tar.zst"), None);
        assert_eq!(pkgname_of_file("hello-1.0-1-x86_64.tar"), None);
    }

    #[test]
    fn sources_named() {
        let n = |s: &str| pacmesh_protocol::Name::new(s).unwrap();
        assert!(source_names(&Source::Aur { pkgbase: n("yay") }, "yay"));
        assert!(!source_names(&Source::Aur { pkgbase: n("yay") }, "ya"));
        assert!(source_names(
            &Source::Dir {
                path: "/a/b/hello/".into(),
                snapshot: None
            },
            "hello"
        ));
        assert!(source_names(
            &Source::Git {
                url: "https://x/y/hello.git".into(),
                rev: None,
                subdir: None
            },
            "hello"
        ));
        assert!(source_names(
            &Source::Git {
                url: "https://x/y.git".into(),
                rev: None,
                subdir: Some("pk/hello".into())
            },
            "hello"
        ));
        assert!(source_names(
            &Source::Tree {
                url: "u".into(),
                rev: None,
                pkgbases: vec![n("a"), n("hello")]
            },
            "hello"
        ));
    }
}
