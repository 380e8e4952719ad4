//! `pacmesh queue add --all` (rebuild everything the repository publishes, each package base
//! from its last source) and `pacmesh queue add --tree URL [--all]` (a packages tree: the
//! folders changed since its last sync, or with `--all` every folder).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use pacmesh_protocol::{EventBody, Hash, Name, QueueEntry, Requirement, Source};
use serde_json::Value;

use crate::client::Client;
use crate::keys::NodeKey;

/// What `queue add --all` / `--tree` was asked.
#[derive(Debug, Clone)]
pub struct Requeue {
    pub key: PathBuf,
    pub node: String,
    pub repo: Option<String>,
    /// `--tree URL`; `None` with `all`: every published package base.
    pub tree: Option<String>,
    pub all: bool,
    pub needs: Vec<String>,
    /// Where `--tree` keeps its git mirror (`None`: the default cache).
    pub cache_dir: Option<PathBuf>,
}

/// `--tree URL [--all]`: the tree sync of `pacmesh tree sync` (with `--all`, every folder
/// regardless of changes). Returns the folder → entry pairs and the removed package bases.
pub fn add_tree(r: &Requeue) -> Result<crate::tree::SyncReport> {
    let url = r.tree.clone().context("--tree URL")?;
    if !r.needs.is_empty() {
        bail!("--needs is not supported with --tree (put requirements in the tree instead)");
    }
    crate::tree::sync(&crate::tree::TreeSync {
        key: r.key.clone(),
        node: r.node.clone(),
        url,
        rev: None,
        repo: r.repo.clone(),
        trigger: None,
        cache_dir: r
            .cache_dir
            .clone()
            .unwrap_or_else(crate::tree::default_cache_dir),
        dry_run: false,
        all: r.all,
    })
}

fn repo_name(client: &Client, repo: &Option<String>) -> Result<(String, Vec<String>)> {
    let st = client.get_json("/api/v1/status")?;
    let repos: Vec<(String, Vec<String>)> = st["mesh"]["repos"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| {
            Some((
                r["name"].as_str()?.to_string(),
                r["arches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
            ))
        })
        .collect();
    match repo {
        Some(want) => repos
            .into_iter()
            .find(|(n, _)| n == want)
            .with_context(|| format!("the mesh has no repository {want:?}")),
        None => match repos.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!("the mesh has no repositories"),
            many => bail!(
                "the mesh has several repositories ({}): choose one with --repo",
                many.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    }
}

/// A `Source` back from its JSON view ([`crate::views::source`]).
fn source_of(v: &Value) -> Option<Source> {
    let s = |k: &str| v[k].as_str().map(str::to_string);
    Some(match v["kind"].as_str()? {
        "dir" => Source::Dir {
            path: s("path")?,
            snapshot: Some(s("snapshot")?.parse::<Hash>().ok()?),
        },
        "git" => Source::Git {
            url: s("url")?,
            rev: s("rev"),
            subdir: s("subdir"),
        },
        "aur" => Source::Aur {
            pkgbase: Name::new(s("pkgbase")?).ok()?,
        },
        "tree" => Source::Tree {
            url: s("url")?,
            rev: s("rev"),
            pkgbases: v["pkgbases"]
                .as_array()?
                .iter()
                .filter_map(|p| Name::new(p.as_str()?).ok())
                .collect(),
        },
        _ => return None,
    })
}

/// Identifies "the same package base" across entries: the source without its revision.
fn identity(v: &Value) -> String {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("rev");
        o.remove("snapshot");
    }
    v.to_string()
}

/// `queue add --all`: every package base the repository publishes now (a package of its
/// newest published entry is in the current database of one of the repository's
/// architectures) is enqueued again from that entry's source. Returns (name, new entry).
pub fn requeue_published(r: &Requeue) -> Result<Vec<(String, Hash)>> {
    let key = NodeKey::load(&r.key)?;
    let client = Client::new(&r.node);
    let (repo, arches) = repo_name(&client, &r.repo)?;
    let needs = r
        .needs
        .iter()
        .map(|n| Requirement::parse(n).map_err(|e| anyhow::anyhow!("--needs {n:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    // The file names in the current databases.
    let mut current = std::collections::BTreeSet::new();
    // Package file → its base, and each base's published version: every rebuild gets a pkgrel
    // bump (`1.0-1` → `1.0-1.1`), or the publisher would refuse a second file of one name.
    let mut base_of_file: BTreeMap<String, String> = BTreeMap::new();
    let mut published: BTreeMap<String, String> = BTreeMap::new();
    for arch in &arches {
        let bytes = match client.get_bytes(&format!("/{repo}/os/{arch}/{repo}.db")) {
            Ok(b) => b,
            // Nothing published for this architecture yet.
            Err(_) => continue,
        };
        let db = pacmesh_repo::db::Database::from_archives(&repo, &bytes, None)
            .with_context(|| format!("reading the {repo} database for {arch}"))?;
        current.extend(db.entries.values().map(|e| e.filename.clone()));
        for e in db.entries.values() {
            base_of_file.insert(
                e.filename.clone(),
                e.base.clone().unwrap_or_else(|| e.name.clone()),
            );
        }
        for (base, v) in crate::rebuild::versions_by_base(&db) {
            match published.get(&base) {
                Some(old) if pacmesh_repo::version::vercmp(old, &v).is_ge() => {}
                _ => {
                    published.insert(base, v);
                }
            }
        }
    }
    let q = client.get_json("/api/v1/queue")?;
    // Newest published entry per package source.
    let mut newest: BTreeMap<String, (u64, Value)> = BTreeMap::new();
    for e in q["entries"].as_array().into_iter().flatten() {
        if e["repo"] != repo.as_str() || e["status"]["state"] != "published" {
            continue;
        }
        let t = e["enqueued_at"].as_u64().unwrap_or(0);
        let id = identity(&e["source"]);
        if newest.get(&id).is_none_or(|(t0, _)| t > *t0) {
            newest.insert(id, (t, e.clone()));
        }
    }
    let repo_n = Name::new(repo.clone()).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = Vec::new();
    for (_, (_, e)) in newest {
        let id = e["id"].as_str().unwrap_or("");
        let d = client.get_json(&format!("/api/v1/entries/{id}"))?;
        let base = d["reports"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|rep| rep["artifacts"].as_array().into_iter().flatten())
            .filter_map(|a| a["file_name"].as_str())
            .find(|f| current.contains(*f))
            .and_then(|f| base_of_file.get(f).cloned());
        let Some(base) = base else {
            continue;
        };
        let name = e["name"].as_str().unwrap_or("?").to_string();
        let Some(source) = source_of(&e["source"]) else {
            eprintln!("{name}: its source kind is not known to this client; skipped");
            continue;
        };
        let mut entry = QueueEntry::new(repo_n.clone(), source);
        entry.pkgrel_bump = crate::rebuild::bump_for(published.get(&base).map(String::as_str));
        entry.needs = if needs.is_empty() {
            e["needs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| Requirement::parse(n.as_str()?).ok())
                .collect()
        } else {
            needs.clone()
        };
        let new = client
            .submit(&key, EventBody::Enqueue(entry))
            .with_context(|| format!("enqueuing {name}"))?;
        out.push((name, new));
    }
    if out.is_empty() {
        bail!("nothing is published in {repo}: nothing to enqueue again");
    }
    Ok(out)
}

/// Runs `queue add --tree URL [--all]` or `queue add --all` and prints what was enqueued.
/// `per_entry_flags`: --arch, --source-date-epoch or --timeout were given (they apply to one
/// entry, not to these).
pub fn command(r: Requeue, per_entry_flags: bool, json: bool) -> Result<()> {
    if per_entry_flags {
        bail!(
            "--arch, --source-date-epoch and --timeout apply to one entry; they cannot be used with {}",
            if r.tree.is_some() { "--tree" } else { "--all" }
        );
    }
    let enqueued: Vec<(String, Hash)> = if r.tree.is_some() {
        let rep = add_tree(&r)?;
        for w in &rep.plan.warnings {
            eprintln!("warning: {w}");
        }
        for b in &rep.removed {
            eprintln!("removed {b} (its folder is gone)");
        }
        rep.enqueued
    } else {
        requeue_published(&r)?
    };
    if json {
        let v: Vec<Value> = enqueued
            .iter()
            .map(|(n, id)| serde_json::json!({ "name": n, "id": id.to_string() }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if enqueued.is_empty() {
        println!("nothing to enqueue");
    } else {
        for (n, id) in &enqueued {
            println!("{id}  {n}");
        }
    }
    Ok(())
}
