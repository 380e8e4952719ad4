//! Builder retention: a node that builds and does not publish keeps its own output (the
//! artifacts and logs named by its `built` reports) until `[mesh] replicas` peers keep it, then
//! drops it from its content store.
//!
//! - **Who releases.** Only a building node without a publisher key (and with `replicas > 0`).
//!   Publishers keep every artifact and log (their event pins are never removed) and mirrors
//!   keep what their generations pin; everything else a node holds stays pinned as before.
//! - **Who counts as a replica.** A connected peer whose key the policy names as a publisher or
//!   a builder, that answers a `have` query (`/pacmesh/blobs/2`) with `keeps: true` (it is not
//!   itself a builder waiting to drop the same blob), the right size, and a correct
//!   [`possession_proof`] for a fresh random challenge: BLAKE3 keyed with the challenge over
//!   its own peer id and 16 random 1 KiB spots of the blob, which this node checks against its
//!   own copy. A peer that only claims to hold the blob, or relays another peer's answer,
//!   fails the proof and does not count.
//! - **What is dropped.** Once `replicas` distinct peers passed, the blob's `event:*` pins are
//!   removed and, if no other pin holds it (a served generation), the file is deleted at once
//!   ([`crate::store::FsStore::remove_unpinned`]). Later events naming the blob pin it again as
//!   a "want" without bytes; a builder does not fetch artifacts, so that costs nothing.
//! - **Never early.** Nothing is dropped before `replicas` peers proved possession in this
//!   process's lifetime; confirmations are not persisted (a restart asks again).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::PeerId;
use pacmesh_protocol::{
    BLOBS_VERSION, BlobAnswer, BlobRequest, BlobWant, BuilderPolicy, Hash, MeshPolicy,
    possession_proof, proof_spots,
};
use tokio::sync::watch;

use crate::core::Core;
use crate::net::NetHandle;
use crate::store::BlobStore;

/// How a builder releases its output (set on [`Core::retention`] when it applies).
#[derive(Debug, Clone)]
pub struct Retention {
    /// Peers that must keep a blob before this node drops it (at least 1).
    pub replicas: u32,
    /// How often peers are asked.
    pub interval: Duration,
}

/// Whether this node would drop `hash` once it is replicated: it releases its output and
/// `hash` is part of it. Such a node answers `have` queries with `keeps: false`.
pub fn releases(core: &Core, hash: &Hash) -> bool {
    core.retention.get().is_some() && own_output(core).contains(hash)
}

/// The artifacts and logs of this node's own `built` reports.
pub fn own_output(core: &Core) -> BTreeSet<Hash> {
    let ingest = core.ingest();
    let mut out = BTreeSet::new();
    for e in ingest.state().entries() {
        for r in e.built() {
            if r.builder != core.public {
                continue;
            }
            if let crate::state::ReportOutcome::Built { artifacts, log, .. } = &r.outcome {
                out.extend(artifacts.iter().map(|a| a.blake3));
                out.insert(*log);
            }
        }
    }
    out
}

/// The proof `holder` gives for `hash` under `challenge`, computed from the local copy
/// (blocking; reads at most 16 KiB).
pub fn proof_of(
    core: &Core,
    hash: &Hash,
    challenge: &Hash,
    holder: &PeerId,
) -> Result<(u64, Hash)> {
    let path = core.blobs.path_of(hash);
    let f = File::open(&path).with_context(|| format!("Failed to open {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut bufs = Vec::new();
    for (off, len) in proof_spots(challenge, size) {
        let mut b = vec![0u8; len as usize];
        f.read_exact_at(&mut b, off)
            .with_context(|| format!("Failed to read {}", path.display()))?;
        bufs.push(b);
    }
    let spots: Vec<&[u8]> = bufs.iter().map(Vec::as_slice).collect();
    Ok((
        size,
        possession_proof(challenge, &holder.to_bytes(), size, &spots),
    ))
}

/// Whether `peer` may count as a replica: the policy names its key as a publisher or builder.
fn counts(policy: &MeshPolicy, peer: &PeerId) -> bool {
    let named = |k: &pacmesh_protocol::PublicKey| crate::keys::peer_id_of(k).as_ref() == Some(peer);
    policy.publishers.iter().any(named)
        || match &policy.builders {
            BuilderPolicy::Any => true,
            BuilderPolicy::Keys(keys) => keys.iter().any(named),
            // A policy form this build does not know: do not count on it.
            _ => false,
        }
}

fn random_hash() -> Hash {
    let mut b = [0u8; 32];
    let _ = getrandom::fill(&mut b);
    Hash::from_bytes(b)
}

/// Unpins `hash`'s event pins and deletes it unless another pin holds it.
fn release(core: &Core, hash: &Hash) -> Result<bool> {
    for tag in core.blobs.pins(hash)? {
        if tag.starts_with("event:") {
            core.blobs.unpin(hash, &tag)?;
        }
    }
    Ok(core.blobs.remove_unpinned(hash)?)
}

/// Asks `peer` whether it keeps `hash`, checking its proof against our copy.
async fn confirmed_by(core: &Arc<Core>, net: &NetHandle, peer: PeerId, hash: Hash) -> bool {
    let challenge = random_hash();
    let req = BlobRequest {
        version: BLOBS_VERSION,
        hash,
        want: BlobWant::Have { challenge },
    };
    let answer =
        match tokio::time::timeout(Duration::from_secs(30), net.blob_request(peer, req)).await {
            Ok(Ok(r)) => r.answer,
            _ => return false,
        };
    let BlobAnswer::Have { size, keeps, proof } = answer else {
        return false;
    };
    if !keeps {
        return false;
    }
    let c = core.clone();
    let expected =
        tokio::task::spawn_blocking(move || proof_of(&c, &hash, &challenge, &peer)).await;
    match expected {
        Ok(Ok((our_size, p))) if our_size == size && p == proof => true,
        Ok(Ok(_)) => {
            tracing::warn!(%peer, blob = %hash.fmt_short(), "peer claims to keep a blob and fails the possession proof");
            false
        }
        _ => false,
    }
}

/// Runs until `stop`: every interval, asks connected peers about this node's output it still
/// holds, and releases what enough of them keep.
pub async fn run(core: Arc<Core>, net: NetHandle, mut stop: watch::Receiver<bool>) {
    let Some(cfg) = core.retention.get().cloned() else {
        let _ = stop.wait_for(|s| *s).await;
        return;
    };
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Peers that proved they keep each blob.
    let mut holders: HashMap<Hash, HashSet<PeerId>> = HashMap::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let connected = net.connected();
        if connected.is_empty() {
            continue;
        }
        let c = core.clone();
        let (held, peers) = match tokio::task::spawn_blocking(move || {
            let held: Vec<Hash> = own_output(&c)
                .into_iter()
                .filter(|h| c.blobs.has(h).unwrap_or(false))
                .collect();
            let policy = c.ingest().policy().clone();
            let peers: Vec<PeerId> = connected
                .into_iter()
                .filter(|p| counts(&policy, p))
                .collect();
            (held, peers)
        })
        .await
        {
            Ok(v) => v,
            Err(_) => continue,
        };
        holders.retain(|h, _| held.contains(h));
        for hash in held {
            let have = holders.entry(hash).or_default();
            for &peer in &peers {
                if have.len() >= cfg.replicas as usize {
                    break;
                }
                if !have.contains(&peer) && confirmed_by(&core, &net, peer, hash).await {
                    have.insert(peer);
                }
            }
            if have.len() >= cfg.replicas as usize {
                let c = core.clone();
                match tokio::task::spawn_blocking(move || release(&c, &hash)).await {
                    Ok(Ok(removed)) => {
                        tracing::info!(blob = %hash.fmt_short(), replicas = have.len(), removed, "own output replicated: released");
                        core.metrics.retention_released.inc();
                    }
                    Ok(Err(e)) => tracing::warn!(blob = %hash.fmt_short(), "cannot release: {e:#}"),
                    Err(_) => {}
                }
            }
        }
    }
}
