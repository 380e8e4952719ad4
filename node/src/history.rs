//! Repository history: the generations of a repository along its manifest chain, with what
//! changed between consecutive ones (packages added, updated, removed), and the manifest of a
//! rollback.

use std::collections::BTreeMap;

use pacmesh_protocol::{Hash, MANIFEST_VERSION, Name, PublicKey, RepoManifest, Timestamp};
use pacmesh_repo::version::vercmp;
use serde_json::{Value, json};

use crate::state::{Generation, QueueState};

/// What changed from one manifest to the next, by package name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// `(name, version)` new in this generation.
    pub added: Vec<(String, String)>,
    /// `(name, old version, new version)`; a lower new version is a downgrade.
    pub updated: Vec<(String, String, String)>,
    /// `(name, version)` no longer in this generation.
    pub removed: Vec<(String, String)>,
}

/// Package changes from `old` (none: an empty repository) to `new`.
pub fn changes(old: Option<&RepoManifest>, new: &RepoManifest) -> Changes {
    let by_name = |m: &RepoManifest| -> BTreeMap<String, (String, Hash)> {
        m.packages
            .iter()
            .map(|p| (p.pkgname.to_string(), (p.version.clone(), p.blake3)))
            .collect()
    };
    let before = old.map(by_name).unwrap_or_default();
    let after = by_name(new);
    let mut c = Changes::default();
    for (name, (v, h)) in &after {
        match before.get(name) {
            None => c.added.push((name.clone(), v.clone())),
            Some((ov, oh)) if ov != v || oh != h => {
                c.updated.push((name.clone(), ov.clone(), v.clone()))
            }
            Some(_) => {}
        }
    }
    for (name, (v, _)) in &before {
        if !after.contains_key(name) {
            c.removed.push((name.clone(), v.clone()));
        }
    }
    c
}

/// One line of history as JSON.
pub fn generation_json(g: &Generation, prev: Option<&RepoManifest>) -> Value {
    let m = &g.manifest;
    let c = changes(prev, m);
    json!({
        "arch": m.arch.to_string(),
        "generation": m.generation,
        "event": g.event.to_string(),
        "previous": m.previous.map(|p| p.to_string()),
        "time": m.time.0,
        "publisher": m.publisher.to_string(),
        "packages": m.packages.len(),
        "added": c.added.iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
        "updated": c.updated.iter().map(|(n, o, v)| json!({
            "name": n, "from": o, "to": v,
            "downgrade": vercmp(v, o).is_lt(),
        })).collect::<Vec<_>>(),
        "removed": c.removed.iter().map(|(n, v)| json!({"name": n, "version": v})).collect::<Vec<_>>(),
    })
}

/// The history of every architecture of `repo`, newest first per architecture.
pub fn history_json(state: &QueueState, repo: &Name, arches: &[Name]) -> Value {
    let mut out = Vec::new();
    for arch in arches {
        let chain = state.chain(repo, arch);
        for (i, g) in chain.iter().enumerate() {
            let prev = chain.get(i + 1).map(|p| p.manifest.as_ref());
            out.push(generation_json(g, prev));
        }
    }
    json!({ "repo": repo.to_string(), "generations": out })
}

/// The manifest of a rollback: generation `latest_generation + 1` on top of the latest one
/// (its publish event id `latest_event`), with exactly the files of `target`, signed by `publisher`.
pub fn rollback_manifest(
    target: &RepoManifest,
    latest_generation: u64,
    latest_event: Hash,
    publisher: PublicKey,
    time: Timestamp,
) -> RepoManifest {
    RepoManifest {
        version: MANIFEST_VERSION,
        repo: target.repo.clone(),
        arch: target.arch.clone(),
        generation: latest_generation + 1,
        previous: Some(latest_event),
        time,
        publisher,
        db: target.db,
        files_db: target.files_db,
        db_sig: target.db_sig,
        files_db_sig: target.files_db_sig,
        packages: target.packages.clone(),
    }
}

/// `pacmesh repo history NAME`: the node's history JSON.
pub fn fetch_history(node: &str, repo: &str) -> anyhow::Result<Value> {
    crate::client::Client::new(node).get_json(&format!("/api/v1/repos/{repo}/history"))
}

/// `pacmesh repo rollback NAME GEN --key FILE`: for every architecture of `repo` (or only
/// `arch`) whose chain holds generation `generation`, signs with `key` (which must be a
/// publisher of the mesh) a new generation equal to it on top of the latest one, and submits
/// it to the node. Returns `(arch, new generation, event id)`.
pub fn rollback(
    key: &crate::keys::NodeKey,
    node: &str,
    repo: &str,
    generation: u64,
    arch: Option<&str>,
) -> anyhow::Result<Vec<(String, u64, Hash)>> {
    use anyhow::{Context, bail};
    use pacmesh_protocol::{Event, EventBody, Limits, MeshPolicy, Roles, Signed};
    let client = crate::client::Client::new(node);
    let limits = Limits::default();
    let me = PublicKey::from(key.signing_key());
    let policy_bytes = client.get_bytes("/api/v1/policy")?;
    let policy = Signed::<MeshPolicy>::from_bytes(&policy_bytes, &limits)
        .context("the node sent a malformed policy")?
        .verify_and_decode(&limits)
        .context("the node sent a policy that does not verify")?;
    if !policy.role_of(&me).contains(Roles::PUBLISHER) {
        bail!(
            "key {me} is not a publisher in the mesh policy (version {}); only a publisher can roll back",
            policy.policy_version
        );
    }
    let hist = fetch_history(node, repo)?;
    let gens = hist["generations"].as_array().cloned().unwrap_or_default();
    let mut arches: Vec<String> = gens
        .iter()
        .filter_map(|g| g["arch"].as_str().map(str::to_string))
        .filter(|a| arch.is_none_or(|x| x == a))
        .collect();
    arches.dedup();
    if arches.is_empty() {
        bail!(
            "{repo}: no published generations{}",
            arch.map(|a| format!(" for {a}")).unwrap_or_default()
        );
    }
    let mut done = Vec::new();
    for a in arches {
        let chain: Vec<&Value> = gens.iter().filter(|g| g["arch"] == a.as_str()).collect();
        let tip = chain[0];
        let tip_gen = tip["generation"]
            .as_u64()
            .context("history without generation numbers")?;
        let tip_event: Hash = tip["event"]
            .as_str()
            .context("history without event ids")?
            .parse()?;
        let Some(target) = chain
            .iter()
            .find(|g| g["generation"].as_u64() == Some(generation))
        else {
            bail!(
                "{repo}/{a}: generation {generation} is not in the history (latest is {tip_gen})"
            );
        };
        if tip_gen == generation {
            bail!("{repo}/{a}: generation {generation} is already the latest");
        }
        let id: Hash = target["event"]
            .as_str()
            .context("history without event ids")?
            .parse()?;
        let bytes = client.get_bytes(&format!("/api/v1/events/{id}"))?;
        let ev: Event = Signed::<Event>::from_bytes(&bytes, &limits)
            .context("the node sent a malformed event")?
            .verify_and_decode(&limits)
            .context("the node sent an event that does not verify")?;
        let EventBody::Publish(m) = ev.body else {
            bail!("event {id} is not a publish");
        };
        if m.repo.as_str() != repo || m.arch.as_str() != a || m.generation != generation {
            bail!("event {id} is not generation {generation} of {repo}/{a}");
        }
        let new = rollback_manifest(&m, tip_gen, tip_event, me, Timestamp::now());
        let n = new.generation;
        let eid = client.submit(key, EventBody::Publish(new))?;
        done.push((a, n, eid));
    }
    Ok(done)
}

/// Renders history JSON (from [`history_json`]) for a terminal.
pub fn render(v: &Value) -> String {
    let mut s = String::new();
    let gens = v["generations"].as_array().cloned().unwrap_or_default();
    if gens.is_empty() {
        s.push_str("no generations published\n");
    }
    for g in gens {
        let t = g["time"].as_u64().unwrap_or(0);
        let secs = t / 1000;
        let when = format_time(secs);
        let publisher: String = g["publisher"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(12)
            .collect();
        s.push_str(&format!(
            "{} generation {}  {}  publisher {}…  {} packages\n",
            g["arch"].as_str().unwrap_or(""),
            g["generation"],
            when,
            publisher,
            g["packages"]
        ));
        for a in g["added"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "    + {} {}\n",
                a["name"].as_str().unwrap_or(""),
                a["version"].as_str().unwrap_or("")
            ));
        }
        for u in g["updated"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "    {} {} {} -> {}\n",
                if u["downgrade"].as_bool() == Some(true) {
                    "v"
                } else {
                    "^"
                },
                u["name"].as_str().unwrap_or(""),
                u["from"].as_str().unwrap_or(""),
                u["to"].as_str().unwrap_or("")
            ));
        }
        for r in g["removed"].as_array().into_iter().flatten() {
            s.push_str(&format!(
                "    - {} {}\n",
                r["name"].as_str().unwrap_or(""),
                r["version"].as_str().unwrap_or("")
            ));
        }
    }
    s
}

/// `YYYY-MM-DD HH:MM:SS UTC` from Unix seconds (civil-from-days).
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_767_225_600), "2026-01-01 00:00:00 UTC");
        assert_eq!(format_time(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
    }
}
