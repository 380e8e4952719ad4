//! Blob replication over `/pacmesh/blobs/1`: serving segments, and fetching a blob by its
//! BLAKE3 hash from several peers at once.
//!
//! A fetch asks every candidate peer for the blob's outboard (size + segment chaining values)
//! and keeps the peers whose outboard merges to the blob's hash
//! ([`pacmesh_protocol::outboard_matches`]); a peer with a wrong outboard is charged a fault.
//! Segments are then requested round-robin from those peers, several in flight, and each is
//! checked against its chaining value before it is written at its offset in
//! `DATA/partial/<hash>.part`; `<hash>.done` records the verified segments, so a fetch
//! interrupted by a disconnect or a restart resumes where it stopped. A peer that sends bad
//! bytes is dropped from this fetch (and charged a fault) and the segment is asked of another.
//! The finished file enters the content store only through `import_reader` with the expected
//! hash, which hashes it once more.
//!
//! What a node fetches ([`Wants`]): builders the source snapshots of open entries; publishers
//! the artifacts and logs of built entries and the blobs of the newest generations.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::stream::{FuturesUnordered, StreamExt};
use libp2p::PeerId;
use pacmesh_protocol::{
    BLOBS_VERSION, BlobAnswer, BlobRequest, BlobResponse, BlobWant, Hash, PublicKey, SEGMENT_BYTES,
    Source, Timestamp, outboard_matches, segment_count, segment_value,
};
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

/// Segment requests in flight per fetch.
const PARALLEL: usize = 8;
/// Blobs fetched at once.
const CONCURRENT_BLOBS: usize = 2;
/// Outboards kept in memory (computing one reads the whole blob).
const OUTBOARD_CACHE: usize = 256;

fn outboard_cache() -> &'static Mutex<HashMap<Hash, Arc<(u64, Vec<Hash>)>>> {
    static C: OnceLock<Mutex<HashMap<Hash, Arc<(u64, Vec<Hash>)>>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

fn response(answer: BlobAnswer) -> BlobResponse {
    BlobResponse {
        version: BLOBS_VERSION,
        answer,
    }
}

/// The outboard of a stored blob (cached).
fn outboard(core: &Core, hash: &Hash) -> Result<Arc<(u64, Vec<Hash>)>> {
    if let Some(o) = outboard_cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(hash)
    {
        return Ok(o.clone());
    }
    let path = core.blobs.path_of(hash);
    let size = std::fs::metadata(&path)?.len();
    let mut f = File::open(&path)?;
    let mut buf = vec![0u8; SEGMENT_BYTES as usize];
    let mut cvs = Vec::new();
    for i in 0..segment_count(size) {
        let n = read_full(&mut f, &mut buf)?;
        cvs.push(segment_value(size, i, &buf[..n]));
    }
    let o = Arc::new((size, cvs));
    let mut c = outboard_cache().lock().unwrap_or_else(|p| p.into_inner());
    if c.len() >= OUTBOARD_CACHE {
        c.clear();
    }
    c.insert(*hash, o.clone());
    Ok(o)
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
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
        BlobWant::Outboard => outboard(core, &req.hash).map(|o| BlobAnswer::Outboard {
            size: o.0,
            segments: o.1.clone(),
        }),
        BlobWant::Range { offset, len } => (|| {
            let f = File::open(core.blobs.path_of(&req.hash))?;
            let size = f.metadata()?.len();
            if offset >= size && !(offset == 0 && size == 0) {
                anyhow::bail!("range starts past the end ({size} bytes)");
            }
            let mut bytes = vec![0u8; len.min(size - offset) as usize];
            f.read_exact_at(&mut bytes, offset)?;
            Ok(BlobAnswer::Data { bytes })
        })(),
    };
    response(r.unwrap_or_else(|e: anyhow::Error| BlobAnswer::Refused {
        reason: format!("{e:#}").chars().take(200).collect(),
    }))
}

/// Where partial downloads live.
fn partial_dir(core: &Core) -> PathBuf {
    core.data_dir.join("partial")
}

/// Fetches `hash` from `providers` (tried in order for the outboard; segments spread over all
/// that have it). Returns the bytes transferred.
pub async fn fetch(
    core: &Arc<Core>,
    net: &NetHandle,
    hash: Hash,
    providers: &[PeerId],
) -> Result<u64> {
    if core.blobs.has(&hash)? {
        return Ok(0);
    }
    // 1. Outboards, from every provider at once.
    let mut asks = FuturesUnordered::new();
    for p in providers {
        let (net, p) = (net.clone(), *p);
        asks.push(async move {
            let r = net
                .blob_request(
                    p,
                    BlobRequest {
                        version: BLOBS_VERSION,
                        hash,
                        want: BlobWant::Outboard,
                    },
                )
                .await;
            (p, r)
        });
    }
    let mut good: Vec<PeerId> = Vec::new();
    let mut board: Option<(u64, Vec<Hash>)> = None;
    while let Some((p, r)) = asks.next().await {
        match r.map(|r| r.answer) {
            Ok(BlobAnswer::Outboard { size, segments }) => {
                if outboard_matches(&hash, size, &segments) {
                    good.push(p);
                    board.get_or_insert((size, segments));
                } else {
                    net.fault(p, "outboard does not match the blob hash").await;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(peer = %p, "outboard request failed: {e:#}"),
        }
    }
    let Some((size, cvs)) = board else {
        bail!("no connected peer has blob {}", hash.fmt_short());
    };
    let n = segment_count(size) as usize;

    // 2. Partial file and the record of verified segments.
    let dir = partial_dir(core);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let part = dir.join(format!("{hash}.part"));
    let done_path = dir.join(format!("{hash}.done"));
    let mut done = std::fs::read(&done_path).unwrap_or_default();
    if done.len() != n {
        done = vec![0u8; n];
    }
    let file = Arc::new(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&part)
            .with_context(|| format!("cannot open {}", part.display()))?,
    );
    file.set_len(size)?;

    // 3. Segments, round-robin over the good peers.
    let mut todo: VecDeque<usize> = (0..n).filter(|i| done[*i] == 0).collect();
    let mut tries: HashMap<usize, u32> = HashMap::new();
    let mut next_peer = 0usize;
    let mut inflight = FuturesUnordered::new();
    let mut transferred = 0u64;
    let mut bad: HashSet<PeerId> = HashSet::new();
    loop {
        while inflight.len() < PARALLEL.min(good.len() * 4)
            && let Some(i) = todo.pop_front()
        {
            let p = good[next_peer % good.len()];
            next_peer += 1;
            let net = net.clone();
            let offset = i as u64 * SEGMENT_BYTES;
            let len = SEGMENT_BYTES
                .min(size - offset)
                .max(if size == 0 { 0 } else { 1 });
            inflight.push(async move {
                if len == 0 {
                    return (i, p, Ok(Vec::new()));
                }
                let r = net
                    .blob_request(
                        p,
                        BlobRequest {
                            version: BLOBS_VERSION,
                            hash,
                            want: BlobWant::Range { offset, len },
                        },
                    )
                    .await
                    .and_then(|r| match r.answer {
                        BlobAnswer::Data { bytes } if bytes.len() as u64 == len => Ok(bytes),
                        BlobAnswer::Data { bytes } => {
                            Err(anyhow!("short segment: {} of {len} bytes", bytes.len()))
                        }
                        other => Err(anyhow!("no data: {other:?}")),
                    });
                (i, p, r)
            });
        }
        let Some((i, p, r)) = inflight.next().await else {
            break;
        };
        let retry = |todo: &mut VecDeque<usize>, tries: &mut HashMap<usize, u32>| -> Result<()> {
            let t = tries.entry(i).or_default();
            *t += 1;
            if *t > 8 {
                bail!("segment {i} of {} failed 8 times", hash.fmt_short());
            }
            todo.push_back(i);
            Ok(())
        };
        match r {
            Ok(bytes) if segment_value(size, i as u64, &bytes) == cvs[i] => {
                let (f, off) = (file.clone(), i as u64 * SEGMENT_BYTES);
                let len = bytes.len() as u64;
                tokio::task::spawn_blocking(move || f.write_all_at(&bytes, off)).await??;
                done[i] = 1;
                std::fs::write(&done_path, &done)?;
                transferred += len;
            }
            Ok(_) => {
                tracing::warn!(peer = %p, segment = i, blob = %hash.fmt_short(), "peer sent bytes that do not match the blob; dropped for this fetch");
                net.fault(p, "corrupt blob segment").await;
                bad.insert(p);
                good.retain(|g| *g != p);
                retry(&mut todo, &mut tries)?;
            }
            Err(e) => {
                tracing::debug!(peer = %p, segment = i, "segment request failed: {e:#}");
                retry(&mut todo, &mut tries)?;
            }
        }
        if good.is_empty() && (!todo.is_empty() || !inflight.is_empty()) {
            bail!(
                "every peer holding {} sent bad bytes or went away (progress kept)",
                hash.fmt_short()
            );
        }
    }

    // 4. Into the store, hashed once more on the way.
    let (c, part2, done2) = (core.clone(), part.clone(), done_path.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut f = File::open(&part2)?;
        f.seek(SeekFrom::Start(0))?;
        let r = c.blobs.import_reader(&mut f, Some(&hash));
        let _ = std::fs::remove_file(&part2);
        let _ = std::fs::remove_file(&done2);
        r.map(|_| ()).map_err(Into::into)
    })
    .await??;
    Ok(transferred)
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
        let connected = net.connected();
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
