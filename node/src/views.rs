//! JSON views of the node's state, shared by the HTTP API and `--json` output.

use pacmesh_protocol::{Source, Timestamp};
use serde_json::{Value, json};

use crate::core::Core;
use crate::ingest::Ingest;
use crate::state::{EntryRecord, EntryStatus, ReportOutcome};

pub fn source(s: &Source) -> Value {
    match s {
        Source::Dir { path, snapshot } => json!({
            "kind": "dir", "path": path, "snapshot": snapshot.map(|h| h.to_string()),
        }),
        Source::Git { url, rev, subdir } => json!({
            "kind": "git", "url": url, "rev": rev, "subdir": subdir,
        }),
        Source::Aur { pkgbase } => json!({ "kind": "aur", "pkgbase": pkgbase.to_string() }),
        Source::Tree { url, rev, pkgbases } => json!({
            "kind": "tree", "url": url, "rev": rev,
            "pkgbases": pkgbases.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        }),
        other => json!({ "kind": other.kind() }),
    }
}

/// A short human name for an entry's source: the folder, repository or package base.
pub fn source_label(s: &Source) -> String {
    match s {
        Source::Dir { path, .. } => path
            .rsplit('/')
            .find(|p| !p.is_empty())
            .unwrap_or(path)
            .to_string(),
        Source::Git { url, subdir, .. } => match subdir {
            Some(d) => format!("{url}#{d}"),
            None => url.clone(),
        },
        Source::Aur { pkgbase } => format!("aur/{pkgbase}"),
        Source::Tree { pkgbases, .. } if pkgbases.len() == 1 => format!("tree/{}", pkgbases[0]),
        Source::Tree { url, .. } => format!("tree {url}"),
        other => other.kind().to_string(),
    }
}

fn status_json(st: &EntryStatus<'_>) -> Value {
    match st {
        EntryStatus::Waiting => json!({ "state": "waiting" }),
        EntryStatus::Claimed {
            by,
            attempt,
            lease_until,
        } => json!({
            "state": "claimed", "by": by.to_string(), "attempt": attempt, "lease_until": lease_until.0,
        }),
        EntryStatus::Built { builds } => json!({
            "state": "built",
            "builders": builds.iter().map(|r| r.builder.to_string()).collect::<Vec<_>>(),
        }),
        EntryStatus::Failed { by, reason, log } => json!({
            "state": "failed", "by": by.to_string(), "reason": reason, "log": log.map(|h| h.to_string()),
        }),
        EntryStatus::Review { diff } => json!({ "state": "review", "diff": diff }),
        EntryStatus::Cancelled { by } => json!({ "state": "cancelled", "by": by.to_string() }),
        EntryStatus::Published(p) => json!({
            "state": "published", "repo": p.repo.to_string(), "arch": p.arch.to_string(),
            "generation": p.generation, "event": p.event.to_string(),
        }),
    }
}

pub fn entry(ingest: &Ingest, e: &EntryRecord, now: Timestamp, detail: bool) -> Value {
    let state = ingest.state();
    let mut v = json!({
        "id": e.id.to_string(),
        "status": status_json(&state.status(e, now)),
    });
    if let Some(q) = &e.enqueued {
        v["repo"] = json!(q.entry.repo.to_string());
        v["name"] = json!(source_label(&q.entry.source));
        v["source"] = source(&q.entry.source);
        v["enqueued_by"] = json!(q.by.to_string());
        v["enqueued_at"] = json!(q.time.0);
        v["needs"] = json!(
            q.entry
                .needs
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
        );
    }
    if detail {
        v["claims"] = e
            .claims
            .values()
            .map(|c| {
                json!({
                    "builder": c.builder.to_string(), "attempt": c.attempt,
                    "lease_until": c.lease_until.0, "event": c.event.to_string(), "time": c.time.0,
                })
            })
            .collect();
        v["reports"] = e
            .reports
            .values()
            .map(|r| {
                let mut j = json!({
                    "builder": r.builder.to_string(), "attempt": r.attempt,
                    "event": r.event.to_string(), "time": r.time.0,
                });
                match &r.outcome {
                    ReportOutcome::Built { artifacts, log, source_commit } => {
                        j["outcome"] = json!("built");
                        j["log"] = json!(log.to_string());
                        j["source_commit"] = json!(source_commit);
                        j["artifacts"] = artifacts
                            .iter()
                            .map(|a| json!({
                                "file_name": a.file_name.to_string(), "blake3": a.blake3.to_string(),
                                "sha256": a.sha256.to_string(), "size": a.size,
                            }))
                            .collect();
                    }
                    ReportOutcome::Failed { reason, log } => {
                        j["outcome"] = json!("failed");
                        j["reason"] = json!(reason);
                        j["log"] = json!(log.map(|h| h.to_string()));
                    }
                }
                j
            })
            .collect();
    }
    v
}

pub fn queue(ingest: &Ingest, now: Timestamp) -> Value {
    let entries: Vec<Value> = ingest
        .state()
        .entries()
        .map(|e| entry(ingest, e, now, false))
        .collect();
    json!({ "entries": entries })
}

pub fn status(core: &Core, now: Timestamp) -> Value {
    let ingest = core.ingest();
    let state = ingest.state();
    let policy = ingest.policy();
    let mut by_state = std::collections::BTreeMap::<&str, u64>::new();
    for e in state.entries() {
        *by_state.entry(state.status(e, now).label()).or_default() += 1;
    }
    let generations: Vec<Value> = state
        .published_repos()
        .filter_map(|(repo, arch)| {
            let g = state.latest_generation(repo, arch)?;
            Some(json!({
                "repo": repo.to_string(), "arch": arch.to_string(),
                "generation": g.manifest.generation, "event": g.event.to_string(),
                "packages": g.manifest.packages.len(), "time": g.manifest.time.0,
                // What this node serves now: the publish event is the commit point, the
                // switch of the served directory follows it.
                "served": crate::generation::served_generation(&core.data_dir, repo.as_str(), arch.as_str()),
            }))
        })
        .collect();
    let counters = ingest.counters();
    let claims: Vec<Value> = state
        .entries()
        .filter(|e| state.status(e, now).label() == "claimed")
        .filter_map(|e| {
            let c = e.current_claim(now)?;
            Some(json!({
                "entry": e.id.to_string(),
                "builder": c.builder.to_string(),
                "attempt": c.attempt,
                "lease_until": c.lease_until.0,
            }))
        })
        .collect();
    json!({
        "node": {
            "public_key": core.public.to_string(),
            "node_id": core.key.peer_id().to_string(),
            "publisher": core.publisher_key.as_ref().map(|k| k.public_hex()),
        },
        "mesh": {
            "root": ingest.root().to_string(),
            "policy_version": policy.policy_version,
            "repos": policy.repos.iter().map(|r| json!({
                "name": r.name.to_string(),
                "arches": r.arches.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "quorum": policy.quorum,
        },
        "events": {
            "applied": state.applied_len(),
            "accepted": counters.accepted,
            "duplicate": counters.duplicate,
            "rejected": counters.rejected,
        },
        "queue": by_state,
        "state_digest": state.digest().to_string(),
        "generations": generations,
        "claims": claims,
        "peers": peers_view(core, now),
        "health": health(core),
        "building": core.live_logs.active().iter().map(|a| json!({
            "entry": a.entry.to_string(), "builder": a.builder.to_string(),
            "attempt": a.attempt, "started": a.started.0, "lines": a.lines,
        })).collect::<Vec<_>>(),
    })
}

/// The known nodes, each marked `relayed` when reached only through a relay circuit.
fn peers_view(core: &Core, now: Timestamp) -> Vec<Value> {
    let relayed: std::collections::HashSet<String> = core
        .net
        .get()
        .map(|n| n.relayed_only().iter().map(|p| p.to_string()).collect())
        .unwrap_or_default();
    let mut peers = core.peers().view(now);
    for p in &mut peers {
        let r = p["peer_id"].as_str().is_some_and(|id| relayed.contains(id));
        p["relayed"] = Value::Bool(r);
    }
    peers
}

/// Whether this node takes new claims, and why not.
pub fn health(core: &Core) -> Value {
    let h = core.health.snapshot();
    json!({
        "accepting_claims": h.refusals.is_empty(),
        "refusals": h.refusals,
        "disk_free_bytes": h.disk_free_bytes,
        "memory_available_bytes": h.memory_available_bytes,
        "checked": h.checked.map(|t| t.0),
    })
}
