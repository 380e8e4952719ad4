//! Blob replication over `/pacmesh/blobs/1`: serving outboards and segments, and fetching a
//! blob by its BLAKE3 hash from several peers at once.
//!
//! Fetching is the transport-independent engine of [`crate::fetch`] (outboard checked against
//! the hash, 4 MiB segments verified before they are written, several sources in parallel,
//! resumable partial files, bad sources dropped) with one [`PeerSource`] per connected peer; a
//! peer the engine catches sending bytes that do not verify is also charged a fault here, which
//! disconnects and bans it.
//!
//! What a node fetches ([`Wants`]): builders the source snapshots of open entries; publishers
//! the artifacts and logs of built entries and the blobs of the newest generations.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use libp2p::PeerId;
use pacmesh_protocol::{
    BLOBS_VERSION, BlobAnswer, BlobRequest, BlobResponse, BlobWant, Hash, PublicKey, SEGMENT_BYTES,
    Source, Timestamp,
};

use crate::fetch::{BlobSource, BoxFuture, FetchConfig, Fetcher, SourceError};
use tokio::sync::watch;

use super::NetHandle;
use crate::core::Core;
use crate::store::BlobStore;

/// Which blobs a node fetches from its peers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Wants {
    /// Source snapshots of entries still to build (builders).
    pub snapshots: bool,
    /// Artifacts and logs of built, unpublished entries, and the blobs of the newest
    /// generation of each repository (publishers).
    pub artifacts: bool,
}

/// Blobs fetched at once.
const CONCURRENT_BLOBS: usize = 2;

fn response(answer: BlobAnswer) -> BlobResponse {
    BlobResponse {
        version: BLOBS_VERSION,
        answer,
    }
}

/// Answers a blob request from the content store (blocking).
pub fn serve(core: &Core, req: &BlobRequest) -> BlobResponse {
    match core.blobs.has(&req.hash) {
        Ok(true) => {}
        Ok(false) => return response(BlobAnswer::NotFound),
        Err(e) => {
            return response(BlobAnswer::Refused {
                reason: format!("store error: {e}"),
            });
        }
    }
    let r = match req.want {
        BlobWant::Outboard => (|| {
            let bytes =
                crate::fetch::outboard_of(&core.blobs, &req.hash)?.context("blob went away")?;
            let ob = crate::fetch::Outboard::decode(&bytes)?;
            // On the wire a blob of one segment lists its hash as its only value.
            let segments = if ob.cvs.is_empty() {
                vec![req.hash]
            } else {
                ob.cvs.iter().map(|c| Hash::from_bytes(*c)).collect()
            };
            Ok(BlobAnswer::Outboard {
                size: ob.len,
                segments,
            })
        })(),
        BlobWant::Range { offset, len } => (|| {
            let f = File::open(core.blobs.path_of(&req.hash))?;
            let size = f.metadata()?.len();
            if offset >= size && !(offset == 0 && size == 0) {
                bail!("range starts past the end ({size} bytes)");
            }
            // Read straight into the response buffer (sent as it is: `/pacmesh/blobs/2` frames
            // data raw).
            // `BlobCodec::write_response` gives the buffer back to the pool once it is sent.
            let mut bytes = crate::bufpool::SEGMENTS.take(len.min(size - offset) as usize);
            f.read_exact_at(&mut bytes, offset)?;
            Ok(BlobAnswer::Data { bytes })
        })(),
        BlobWant::Have { challenge } => (|| {
            let (size, proof) =
                crate::retention::proof_of(core, &req.hash, &challenge, &core.key.peer_id())?;
            Ok(BlobAnswer::Have {
                size,
                keeps: !crate::retention::releases(core, &req.hash),
                proof,
            })
        })(),
    };
    response(r.unwrap_or_else(|e: anyhow::Error| BlobAnswer::Refused {
        reason: format!("{e:#}").chars().take(200).collect(),
    }))
}

/// One connected peer as a source for the fetch engine.
pub struct PeerSource {
    net: NetHandle,
    peer: PeerId,
}

impl PeerSource {
    /// A source asking `peer` through `net`.
    pub fn new(net: NetHandle, peer: PeerId) -> Self {
        PeerSource { net, peer }
    }

    async fn ask(&self, hash: Hash, want: BlobWant) -> Result<BlobAnswer, SourceError> {
        let req = BlobRequest {
            version: BLOBS_VERSION,
            hash,
            want,
        };
        match self.net.blob_request(self.peer, req).await {
            Ok(r) => match r.answer {
                BlobAnswer::NotFound => Err(SourceError::NotFound),
                BlobAnswer::Refused { reason } => Err(SourceError::Failed(reason)),
                other => Ok(other),
            },
            Err(e) => Err(SourceError::Failed(format!("{e:#}"))),
        }
    }
}

impl BlobSource for PeerSource {
    fn name(&self) -> String {
        self.peer.to_string()
    }

    fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            match self.ask(blob, BlobWant::Outboard).await? {
                BlobAnswer::Outboard { size, segments } => {
                    let cvs = if size <= SEGMENT_BYTES {
                        Vec::new()
                    } else {
                        segments.iter().map(|h| *h.as_bytes()).collect()
                    };
                    Ok(crate::fetch::Outboard { len: size, cvs }.encode())
                }
                _ => Err(SourceError::Failed(
                    "answered an outboard request with data".into(),
                )),
            }
        })
    }

    fn fetch_range(
        &self,
        blob: Hash,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            let len = len.min(SEGMENT_BYTES);
            match self.ask(blob, BlobWant::Range { offset, len }).await? {
                BlobAnswer::Data { bytes } => Ok(bytes),
                _ => Err(SourceError::Failed(
                    "answered a range request with an outboard".into(),
                )),
            }
        })
    }
}

/// Fetches `hash` from `providers` with the fetch engine; peers caught sending bad bytes are
/// charged a fault. Returns the bytes received.
pub async fn fetch(
    core: &Arc<Core>,
    net: &NetHandle,
    hash: Hash,
    providers: &[PeerId],
) -> Result<u64> {
    let sources: Vec<Arc<dyn BlobSource>> = providers
        .iter()
        .map(|p| Arc::new(PeerSource::new(net.clone(), *p)) as Arc<dyn BlobSource>)
        .collect();
    let fetcher = Fetcher::new(
        core.blobs.clone(),
        core.data_dir.join("partial"),
        sources,
        FetchConfig::default(),
    );
    let r = fetcher.fetch(hash, None, None).await;
    let report = match &r {
        Ok(rep) => Some(rep.clone()),
        Err(_) => None,
    };
    for bad in report.iter().flat_map(|r| r.bad_sources.iter()) {
        if let Ok(p) = bad.parse::<PeerId>() {
            tracing::warn!(peer = %p, blob = %hash.fmt_short(), "peer sent bytes that do not match the blob");
            net.fault(p, "corrupt blob bytes").await;
        }
    }
    let bytes = r?.bytes_received;
    core.metrics.replicated_bytes.inc_by(bytes);
    Ok(bytes)
}

/// The blobs this node should hold and lacks, each with the key of the node most likely to
/// have it (the author of the event naming it).
pub fn missing(core: &Core, wants: Wants) -> Vec<(Hash, Option<PublicKey>)> {
    let mut out: Vec<(Hash, Option<PublicKey>)> = Vec::new();
    {
        let ingest = core.ingest();
        let state = ingest.state();
        let now = Timestamp::now();
        for e in state.entries() {
            let label = state.status(e, now).label();
            if wants.snapshots
                && matches!(label, "waiting" | "claimed")
                && let Some(enq) = &e.enqueued
                && let Source::Dir {
                    snapshot: Some(s), ..
                } = &enq.entry.source
            {
                out.push((*s, Some(enq.by)));
            }
            // The packages an open entry's `after` entries built: a chroot build installs them
            // (`executor::dependency_repo`).
            if wants.snapshots
                && matches!(label, "waiting" | "claimed")
                && let Some(enq) = &e.enqueued
                && !enq.entry.after.is_empty()
            {
                out.extend(
                    crate::executor::dependency_artifacts(state, &enq.entry)
                        .iter()
                        .filter(|a| a.file_name.as_str().contains(".pkg.tar"))
                        .map(|a| (a.blake3, None)),
                );
            }
            if wants.artifacts && label == "built" {
                for r in e.built() {
                    if let crate::state::ReportOutcome::Built { artifacts, log, .. } = &r.outcome {
                        out.extend(artifacts.iter().map(|a| (a.blake3, Some(r.builder))));
                        out.push((*log, Some(r.builder)));
                    }
                }
            }
        }
        if wants.artifacts {
            let repos: Vec<_> = state.published_repos().cloned().collect();
            for (repo, arch) in repos {
                if let Some(g) = state.latest_generation(&repo, &arch) {
                    let m = &g.manifest;
                    let by = Some(m.publisher);
                    out.extend([m.db, m.files_db, m.db_sig].map(|h| (h, by)));
                    out.extend(m.files_db_sig.map(|h| (h, by)));
                    for p in &m.packages {
                        out.extend([(p.blake3, by), (p.sig, by)]);
                    }
                }
            }
        }
    }
    let mut seen = HashSet::new();
    out.retain(|(h, _)| seen.insert(*h) && !core.blobs.has(h).unwrap_or(true));
    out
}

/// Keeps fetching what [`missing`] names until `stop`.
pub async fn run(core: Arc<Core>, net: NetHandle, wants: Wants, mut stop: watch::Receiver<bool>) {
    if !wants.snapshots && !wants.artifacts {
        let _ = stop.wait_for(|s| *s).await;
        return;
    }
    let mut changed = core.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut backoff: HashMap<Hash, (Instant, Duration)> = HashMap::new();
    let mut running: HashSet<Hash> = HashSet::new();
    let mut jobs = tokio::task::JoinSet::new();
    loop {
        let now = Instant::now();
        backoff.retain(|_, (until, _)| *until > now - Duration::from_secs(600));
        // Peers reached only through a relay are not asked: blobs never use its budget.
        let connected = net.blob_peers();
        if !connected.is_empty() {
            let c = core.clone();
            let list = tokio::task::spawn_blocking(move || missing(&c, wants))
                .await
                .unwrap_or_default();
            for (hash, author) in list {
                if jobs.len() >= CONCURRENT_BLOBS {
                    break;
                }
                if running.contains(&hash) || backoff.get(&hash).is_some_and(|(u, _)| *u > now) {
                    continue;
                }
                let mut providers = connected.clone();
                if let Some(p) = author.and_then(|a| crate::keys::peer_id_of(&a))
                    && let Some(pos) = providers.iter().position(|x| *x == p)
                {
                    providers.swap(0, pos);
                }
                running.insert(hash);
                let (c, n) = (core.clone(), net.clone());
                jobs.spawn(async move { (hash, fetch(&c, &n, hash, &providers).await) });
            }
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = changed.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            Some(Ok((hash, r))) = jobs.join_next(), if !jobs.is_empty() => {
                running.remove(&hash);
                core.metrics
                    .blobs_fetched
                    .get_or_create(&crate::metrics::ResultLabels {
                        result: if r.is_ok() { "ok" } else { "failed" },
                    })
                    .inc();
                match r {
                    Ok(bytes) => {
                        backoff.remove(&hash);
                        tracing::info!(blob = %hash.fmt_short(), bytes, "blob replicated");
                        // Waiters (executor, publisher) look again.
                        core.notify();
                    }
                    Err(e) => {
                        let d = backoff.get(&hash).map_or(Duration::from_secs(2), |(_, d)| (*d * 2).min(Duration::from_secs(60)));
                        tracing::debug!(blob = %hash.fmt_short(), "fetch failed, again in {d:?}: {e:#}");
                        backoff.insert(hash, (Instant::now() + d, d));
                    }
                }
            }
        }
    }
}
