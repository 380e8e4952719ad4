//! Client-side subcommands: `mesh init`, `queue add/ls/cancel`, `status`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use pacmesh_protocol::{
    BuilderPolicy, EventBody, Hash, MeshPolicy, Name, POLICY_VERSION, PublicKey, QueueEntry,
    RepoPolicy, Requirement, Signed, Source, Timestamp,
};
use serde_json::Value;

use crate::client::Client;
use crate::keys::NodeKey;

/// Parameters of `pacmesh mesh init`.
#[derive(Debug, Clone)]
pub struct MeshInit {
    pub root_key: PathBuf,
    pub repos: Vec<String>,
    pub arches: Vec<String>,
    pub maintainers: Vec<String>,
    pub publishers: Vec<String>,
    pub builders: Vec<String>,
    pub quorum: u32,
    pub lease_secs: u32,
    pub build_timeout_secs: u32,
    pub policy_version: u64,
    pub out: PathBuf,
}

fn parse_key(s: &str, what: &str) -> Result<PublicKey> {
    s.trim().parse::<PublicKey>().map_err(|e| {
        anyhow::anyhow!("{what} {s:?}: {e} (give the 64-hex public key `pacmesh key show` prints)")
    })
}

fn name(s: &str, what: &str) -> Result<Name> {
    Name::new(s).map_err(|e| anyhow::anyhow!("{what} {s:?}: {e}"))
}

/// Builds and signs the policy; the root key is maintainer and publisher unless others are named.
pub fn mesh_init(p: &MeshInit) -> Result<MeshPolicy> {
    let root_key = NodeKey::load(&p.root_key)?;
    let root = PublicKey::from(root_key.signing_key());
    if p.repos.is_empty() {
        bail!("name at least one repository with --repo");
    }
    let arches = if p.arches.is_empty() {
        vec![crate::config::host_arch()]
    } else {
        p.arches.clone()
    };
    let arches = arches
        .iter()
        .map(|a| name(a, "--arch"))
        .collect::<Result<Vec<_>>>()?;
    let repos = p
        .repos
        .iter()
        .map(|r| {
            Ok(RepoPolicy {
                name: name(r, "--repo")?,
                arches: arches.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let keys = |list: &[String], what: &str| -> Result<Vec<PublicKey>> {
        if list.is_empty() {
            Ok(vec![root])
        } else {
            list.iter().map(|k| parse_key(k, what)).collect()
        }
    };
    if p.quorum == 0 {
        bail!("--quorum must be at least 1");
    }
    let policy = MeshPolicy {
        version: POLICY_VERSION,
        root,
        policy_version: p.policy_version,
        time: Timestamp::now(),
        repos,
        maintainers: keys(&p.maintainers, "--maintainer")?,
        publishers: keys(&p.publishers, "--publisher")?,
        builders: if p.builders.is_empty() {
            BuilderPolicy::Any
        } else {
            BuilderPolicy::Keys(
                p.builders
                    .iter()
                    .map(|k| parse_key(k, "--builder"))
                    .collect::<Result<_>>()?,
            )
        },
        quorum: p.quorum,
        lease_secs: p.lease_secs,
        build_timeout_secs: p.build_timeout_secs,
    };
    pacmesh_protocol::Message::validate(&policy, &pacmesh_protocol::Limits::default())
        .context("the policy would be refused by nodes (check --lease-secs, --build-timeout-secs, names and key counts)")?;
    let signed = Signed::sign(root_key.signing_key(), &policy)?;
    write_new(&p.out, &signed.to_bytes())?;
    Ok(policy)
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// What `queue add` enqueues.
#[derive(Debug, Clone)]
pub enum AddSource {
    Dir(PathBuf),
    Git {
        url: String,
        rev: Option<String>,
        subdir: Option<String>,
    },
    Aur(String),
    Tree(String),
}

#[derive(Debug, Clone)]
pub struct QueueAdd {
    pub key: PathBuf,
    pub node: String,
    pub source: AddSource,
    pub repo: Option<String>,
    pub arches: Vec<String>,
    pub needs: Vec<String>,
    pub source_date_epoch: Option<u64>,
    pub timeout_secs: Option<u32>,
    /// The AUR base for `--aur` (dependency resolution); `None`: the default.
    pub aur_url: Option<String>,
}

/// Signs an Enqueue with the maintainer key and submits it; returns the entry id.
pub fn queue_add(a: &QueueAdd) -> Result<Hash> {
    let key = NodeKey::load(&a.key)?;
    let client = Client::new(&a.node);
    let needs = a
        .needs
        .iter()
        .map(|n| Requirement::parse(n).map_err(|e| anyhow::anyhow!("--needs {n:?}: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let repo = match &a.repo {
        Some(r) => name(r, "--repo")?,
        None => {
            let status = client.get_json("/api/v1/status")?;
            let repos: Vec<&str> = status["mesh"]["repos"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
                .unwrap_or_default();
            match repos.as_slice() {
                [one] => name(one, "repo")?,
                [] => bail!("the mesh has no repositories"),
                many => bail!(
                    "the mesh has several repositories ({}): choose one with --repo",
                    many.join(", ")
                ),
            }
        }
    };
    let source = match &a.source {
        AddSource::Dir(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("cannot open {}", dir.display()))?;
            if !dir.join("PKGBUILD").is_file() {
                bail!("{} has no PKGBUILD", dir.display());
            }
            let tar = crate::source::snapshot_dir(&dir)?;
            let snapshot = client
                .put_blob(&tar)
                .context("uploading the folder snapshot")?;
            Source::Dir {
                path: dir.display().to_string(),
                snapshot: Some(snapshot),
            }
        }
        AddSource::Git { url, rev, subdir } => Source::Git {
            url: url.clone(),
            rev: rev.clone(),
            subdir: subdir.clone(),
        },
        AddSource::Aur(p) => {
            return queue_add_aur(a, &client, &key, repo, needs, p);
        }
        AddSource::Tree(url) => Source::Tree {
            url: url.clone(),
            rev: None,
            pkgbases: Vec::new(),
        },
    };
    let mut entry = QueueEntry::new(repo, source);
    entry.arches = a
        .arches
        .iter()
        .map(|x| name(x, "--arch"))
        .collect::<Result<_>>()?;
    entry.needs = needs;
    entry.source_date_epoch = a.source_date_epoch;
    entry.timeout_secs = a.timeout_secs;
    client.submit_logged(&key, Some(&author_log(&a.key)), EventBody::Enqueue(entry))
}

/// Where the CLI remembers the last event it signed with the key at `key` (see
/// [`Client::submit_logged`]): `KEYFILE.seq`.
pub fn author_log(key: &Path) -> std::path::PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".seq");
    s.into()
}

/// `queue add --aur NAME`: resolves NAME's AUR dependencies over the RPC and enqueues the
/// package bases dependencies first, each naming the entries it needs in `after`. A package
/// base already in the node's queue (waiting, claimed, built or published) is not enqueued
/// again: a pending one is waited for, a published one is taken as it is. Returns NAME's
/// entry; the dependencies' entries are printed on stderr.
fn queue_add_aur(
    a: &QueueAdd,
    client: &Client,
    key: &NodeKey,
    repo: Name,
    needs: Vec<Requirement>,
    pkg: &str,
) -> Result<Hash> {
    let base = a
        .aur_url
        .clone()
        .unwrap_or_else(|| crate::config::DEFAULT_AUR_URL.to_string());
    let aur = crate::aur::AurClient::new(&base);
    let res = crate::aur::resolve(&aur, &[pkg]).map_err(|e| anyhow::anyhow!("--aur {pkg}: {e}"))?;
    let target = res
        .packages
        .get(pkg)
        .map(|p| p.package_base.clone())
        .context("the AUR did not describe the package")?;
    // What the node already has, by AUR package base.
    let q = client.get_json("/api/v1/queue")?;
    let mut existing: std::collections::BTreeMap<String, (Hash, bool)> = Default::default();
    for e in q["entries"].as_array().into_iter().flatten() {
        let (Some(pb), Some(id), Some(st)) = (
            e["source"]["pkgbase"]
                .as_str()
                .filter(|_| e["source"]["kind"] == "aur"),
            e["id"].as_str().and_then(|i| i.parse::<Hash>().ok()),
            e["status"]["state"].as_str(),
        ) else {
            continue;
        };
        if e["repo"].as_str() != Some(repo.as_str()) {
            continue;
        }
        match st {
            "published" => {
                existing.insert(pb.to_string(), (id, true));
            }
            "waiting" | "claimed" | "built" => {
                existing.entry(pb.to_string()).or_insert((id, false));
            }
            _ => {}
        }
    }
    // A package base already published is rebuilt with a pkgrel bump (`crate::rebuild`).
    let published = crate::rebuild::published_bases(client, repo.as_str())
        .context("reading what the repository publishes (for pkgrel bumps of rebuilds)")?;
    let mut ids: std::collections::BTreeMap<String, Option<Hash>> = Default::default();
    let mut main = None;
    for pb in &res.order {
        let deps: Vec<Hash> = res
            .needs
            .get(pb)
            .into_iter()
            .flatten()
            .filter_map(|d| ids.get(d).copied().flatten())
            .collect();
        if pb != &target
            && let Some((id, published)) = existing.get(pb)
        {
            eprintln!(
                "aur/{pb}: already {} (entry {id})",
                if *published { "published" } else { "queued" }
            );
            ids.insert(pb.clone(), (!published).then_some(*id));
            continue;
        }
        let mut entry = QueueEntry::new(
            repo.clone(),
            Source::Aur {
                pkgbase: name(pb, "AUR package base")?,
            },
        );
        entry.arches = a
            .arches
            .iter()
            .map(|x| name(x, "--arch"))
            .collect::<Result<_>>()?;
        entry.needs = needs.clone();
        entry.source_date_epoch = a.source_date_epoch;
        entry.timeout_secs = a.timeout_secs;
        entry.after = deps;
        entry.pkgrel_bump = crate::rebuild::bump_for(published.get(pb).map(String::as_str));
        let id = client.submit(key, EventBody::Enqueue(entry))?;
        if pb == &target {
            main = Some(id);
        } else {
            eprintln!("aur/{pb}: enqueued as a dependency (entry {id})");
        }
        ids.insert(pb.clone(), Some(id));
    }
    if !res.external.is_empty() {
        eprintln!(
            "not in the AUR (expected from the distribution's repositories): {}",
            res.external.iter().cloned().collect::<Vec<_>>().join(" ")
        );
    }
    main.context("the package was not enqueued")
}

/// Resolves a full id or a unique prefix of one against the node's queue.
pub fn resolve_entry(client: &Client, id: &str) -> Result<Hash> {
    if let Ok(h) = id.parse::<Hash>() {
        return Ok(h);
    }
    let q = client.get_json("/api/v1/queue")?;
    let matches: Vec<&str> = q["entries"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["id"].as_str())
                .filter(|e| e.starts_with(id))
                .collect()
        })
        .unwrap_or_default();
    match matches.as_slice() {
        [one] => Ok(one.parse()?),
        [] => bail!("no queue entry starts with {id:?}"),
        _ => bail!("{id:?} matches {} entries; give more digits", matches.len()),
    }
}

pub fn queue_cancel(key: &Path, node: &str, id: &str) -> Result<Hash> {
    let log = author_log(key);
    let key = NodeKey::load(key)?;
    let client = Client::new(node);
    let entry = resolve_entry(&client, id)?;
    client.submit_logged(&key, Some(&log), EventBody::Cancel { entry })
}

/// `queue approve`: signs an `approve` for an entry that waits for review. Refuses an entry
/// the node knows needs no review (or was approved already), so a typo'd prefix does not
/// silently approve something else.
pub fn queue_approve(key: &Path, node: &str, id: &str) -> Result<(Hash, Hash)> {
    let log = author_log(key);
    let key = NodeKey::load(key)?;
    let client = Client::new(node);
    let entry = resolve_entry(&client, id)?;
    let e = client.get_json(&format!("/api/v1/entries/{entry}"))?;
    match e["status"]["state"].as_str() {
        Some("review") => {}
        Some(other) => bail!("entry {entry} does not wait for review (it is {other})"),
        None => bail!("entry {entry}: the node's answer has no state"),
    }
    let id = client.submit_logged(&key, Some(&log), EventBody::Approve { entry })?;
    Ok((entry, id))
}

/// The first 12 characters (ids and keys are hex; other text is cut at a character boundary).
fn short(s: &str) -> String {
    s.chars().take(12).collect()
}

/// `queue ls` as a table.
pub fn render_queue(q: &Value) -> String {
    let mut out = format!(
        "{:<12}  {:<28}  {:<14}  {:<10}  {}\n",
        "ENTRY", "NAME", "REPO", "STATE", "DETAIL"
    );
    for e in q["entries"].as_array().into_iter().flatten() {
        let st = &e["status"];
        let detail = match st["state"].as_str().unwrap_or("") {
            "claimed" => format!(
                "by {} attempt {}",
                short(st["by"].as_str().unwrap_or("")),
                st["attempt"]
            ),
            "failed" => st["reason"].as_str().unwrap_or("").to_string(),
            "published" => format!("generation {}", st["generation"]),
            "built" => format!(
                "by {} builder(s)",
                st["builders"].as_array().map_or(0, Vec::len)
            ),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{:<12}  {:<28}  {:<14}  {:<10}  {}\n",
            short(e["id"].as_str().unwrap_or("")),
            e["name"].as_str().unwrap_or("?"),
            e["repo"].as_str().unwrap_or("?"),
            st["state"].as_str().unwrap_or("?"),
            detail
        ));
    }
    out
}

/// `status` in a few lines.
pub fn render_status(s: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "node        {}\n",
        s["node"]["node_id"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "public key  {}\n",
        s["node"]["public_key"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!(
        "mesh        root {} policy v{} quorum {}\n",
        short(s["mesh"]["root"].as_str().unwrap_or("?")),
        s["mesh"]["policy_version"],
        s["mesh"]["quorum"]
    ));
    let rejected: Vec<String> = s["events"]["rejected"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "events      {} applied, {} accepted, {} duplicate, {} rejected\n",
        s["events"]["applied"],
        s["events"]["accepted"],
        s["events"]["duplicate"],
        if rejected.is_empty() {
            "0".to_string()
        } else {
            rejected.join(", ")
        }
    ));
    let q: Vec<String> = s["queue"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{v} {k}")).collect())
        .unwrap_or_default();
    out.push_str(&format!(
        "queue       {}\n",
        if q.is_empty() {
            "empty".into()
        } else {
            q.join(", ")
        }
    ));
    for g in s["generations"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "repo        {}/{} generation {} ({} packages)\n",
            g["repo"].as_str().unwrap_or("?"),
            g["arch"].as_str().unwrap_or("?"),
            g["generation"],
            g["packages"]
        ));
    }
    for c in s["claims"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "claim       {} by {} (attempt {})\n",
            short(c["entry"].as_str().unwrap_or("?")),
            short(c["builder"].as_str().unwrap_or("?")),
            c["attempt"]
        ));
    }
    for p in s["peers"].as_array().into_iter().flatten() {
        let tags: Vec<&str> = p["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
            .collect();
        out.push_str(&format!(
            "peer        {} {} {} {} cores, {} busy of {} slots{}{}{}\n",
            short(p["node"].as_str().unwrap_or("?")),
            match (p["connected"].as_bool(), p["relayed"].as_bool()) {
                (Some(true), Some(true)) => "connected (relay only)",
                (Some(true), _) => "connected",
                _ => "not connected",
            },
            p["arch"].as_str().unwrap_or("?"),
            p["cores"],
            p["busy"],
            p["slots"],
            if tags.is_empty() {
                String::new()
            } else {
                format!(", tags {}", tags.join(","))
            },
            if p["live"].as_bool() == Some(true) {
                ""
            } else {
                ", announcement expired"
            },
            if p["digest"] == s["state_digest"] {
                ", in sync"
            } else {
                ", digest differs"
            },
        ));
    }
    out.push_str(&format!(
        "digest      {}\n",
        s["state_digest"].as_str().unwrap_or("?")
    ));
    out
}
