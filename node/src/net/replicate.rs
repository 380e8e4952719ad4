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

/// How long a peer's blob HTTP listener that could not be used is not tried again (the peer
/// is asked over `/pacmesh/blobs/2` meanwhile).
pub const HTTP_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Blob listeners (`http://IP:PORT`) that failed, and when.
static HTTP_DOWN: std::sync::Mutex<Vec<(String, Instant)>> = std::sync::Mutex::new(Vec::new());

fn http_down(base: &str) -> bool {
    let mut down = HTTP_DOWN.lock().unwrap_or_else(|p| p.into_inner());
    down.retain(|(_, t)| t.elapsed() < HTTP_RETRY_AFTER);
    down.iter().any(|(b, _)| b == base)
}

fn mark_http_down(base: &str) {
    let mut down = HTTP_DOWN.lock().unwrap_or_else(|p| p.into_inner());
    down.retain(|(b, t)| b != base && t.elapsed() < HTTP_RETRY_AFTER);
    // Bounded: one entry per peer that ever announced a listener, oldest dropped first.
    if down.len() >= 1024 {
        down.remove(0);
    }
    down.push((base.to_string(), Instant::now()));
}

/// One peer as a source, asked at its blob HTTP listener first (plain HTTP, no encryption:
/// the bytes are verified against the blob's hash all the same) and over `/pacmesh/blobs/2`
/// once that fails or does not have the blob. The source has the peer's name, but only bytes
/// that came over libp2p (authenticated by noise) are charged to the peer: bytes from the
/// listener that do not verify may have been changed by anyone on the path, or come from
/// whatever else answers at that address, so they only make this source stop using the
/// listener ([`BlobSource::disown`]), and the engine asks again.
pub struct PreferHttp {
    name: String,
    http: Arc<dyn BlobSource>,
    base: String,
    p2p: Arc<dyn BlobSource>,
    http_failed: std::sync::atomic::AtomicBool,
    /// Offsets of segments, and the outboard (`None`), delivered over HTTP in this fetch.
    over_http: std::sync::Mutex<HashSet<Option<u64>>>,
    counters: HttpCounters,
}

/// What [`PreferHttp`] counts (`pacmesh_replicated_http_bytes_total`,
/// `pacmesh_blob_http_fallbacks_total`).
#[derive(Clone, Default)]
pub struct HttpCounters {
    /// Bytes received from blob listeners.
    pub bytes: prometheus_client::metrics::counter::Counter,
    /// Fetches that gave a peer's listener up and went on over libp2p.
    pub fallbacks: prometheus_client::metrics::counter::Counter,
}

impl PreferHttp {
    /// `http` (at `base`) first, then `p2p`.
    pub fn new(
        name: String,
        http: Arc<dyn BlobSource>,
        base: String,
        p2p: Arc<dyn BlobSource>,
        counters: HttpCounters,
    ) -> Self {
        PreferHttp {
            name,
            http,
            base,
            p2p,
            http_failed: Default::default(),
            over_http: Default::default(),
            counters,
        }
    }

    fn mark_over_http(&self, what: Option<u64>) {
        self.over_http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(what);
    }

    fn unmark_over_http(&self, what: Option<u64>) {
        self.over_http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&what);
    }

    fn use_http(&self) -> bool {
        !self.http_failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn failed(&self, e: &str) {
        if !self
            .http_failed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.counters.fallbacks.inc();
            tracing::info!(peer = %self.name, base = %self.base, "blob HTTP listener not usable, asking over libp2p: {e}");
        }
        mark_http_down(&self.base);
    }
}

impl BlobSource for PreferHttp {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            if self.use_http() {
                match self.http.outboard(blob).await {
                    Ok(d) => {
                        self.mark_over_http(None);
                        return Ok(d);
                    }
                    Err(SourceError::Failed(e)) => self.failed(&e),
                    // Asked over libp2p too: whatever answers at that address may not be the
                    // peer.
                    Err(SourceError::NotFound) => {}
                }
            }
            self.unmark_over_http(None);
            self.p2p.outboard(blob).await
        })
    }

    fn fetch_range(
        &self,
        blob: Hash,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        Box::pin(async move {
            if self.use_http() {
                match self.http.fetch_range(blob, offset, len).await {
                    Ok(d) if d.is_empty() && len > 0 => {
                        self.failed("an empty answer to a range request")
                    }
                    Ok(d) => {
                        self.counters.bytes.inc_by(d.len() as u64);
                        self.mark_over_http(Some(offset));
                        return Ok(d);
                    }
                    Err(SourceError::Failed(e)) => self.failed(&e),
                    Err(SourceError::NotFound) => {}
                }
            }
            // Whatever comes now comes over libp2p: the peer's own.
            self.unmark_over_http(Some(offset));
            self.p2p.fetch_range(blob, offset, len).await
        })
    }

    fn disown(&self, what: Option<u64>) -> bool {
        let came_over_http = self
            .over_http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&what);
        if came_over_http {
            self.failed(match what {
                None => "an outboard that does not verify",
                Some(_) => "bytes that do not verify",
            });
        }
        came_over_http
    }
}

/// The sources for `providers`: each peer's blob HTTP listener first where it announced one
/// and is directly connected ([`PreferHttp`]), else `/pacmesh/blobs/2` only.
pub fn peer_sources(
    core: &Core,
    net: &NetHandle,
    providers: &[PeerId],
) -> Vec<Arc<dyn BlobSource>> {
    providers
        .iter()
        .map(|p| {
            let p2p = Arc::new(PeerSource::new(net.clone(), *p)) as Arc<dyn BlobSource>;
            match net.blob_http_base(p) {
                Some(base) if !http_down(&base) => Arc::new(PreferHttp::new(
                    p.to_string(),
                    http_source(&base),
                    base,
                    p2p,
                    HttpCounters {
                        bytes: core.metrics.replicated_http_bytes.clone(),
                        fallbacks: core.metrics.blob_http_fallbacks.clone(),
                    },
                )) as Arc<dyn BlobSource>,
                _ => p2p,
            }
        })
        .collect()
}

/// Each request to a peer's blob HTTP listener gives up after this long (a 4 MiB segment).
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP source for a blob listener, kept between fetches so that its connections are
/// reused (a mirror fetching thousands of small packages would otherwise open one connection
/// per package). At most 256 are kept; beyond that the map starts afresh.
fn http_source(base: &str) -> Arc<dyn BlobSource> {
    static SOURCES: std::sync::Mutex<Option<HashMap<String, Arc<crate::fetch::HttpSource>>>> =
        std::sync::Mutex::new(None);
    let mut map = SOURCES.lock().unwrap_or_else(|p| p.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if map.len() >= 256 && !map.contains_key(base) {
        map.clear();
    }
    map.entry(base.to_string())
        .or_insert_with(|| Arc::new(crate::fetch::HttpSource::new(base, HTTP_TIMEOUT)))
        .clone()
}

/// Fetches `hash` from `providers` with the fetch engine; peers caught sending bad bytes are
/// charged a fault. Returns the bytes received.
pub async fn fetch(
    core: &Arc<Core>,
    net: &NetHandle,
    hash: Hash,
    providers: &[PeerId],
) -> Result<u64> {
    let sources = peer_sources(core, net, providers);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::tests::rt;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A blob in memory; `flip` corrupts every range it serves.
    struct Mem {
        data: Vec<u8>,
        flip: bool,
        calls: AtomicU32,
    }

    impl Mem {
        fn new(data: &[u8], flip: bool) -> Arc<Mem> {
            Arc::new(Mem {
                data: data.to_vec(),
                flip,
                calls: AtomicU32::new(0),
            })
        }
    }

    impl BlobSource for Mem {
        fn name(&self) -> String {
            "mem".into()
        }
        fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let (hash, ob) = crate::fetch::Outboard::compute(&mut &self.data[..]).unwrap();
            if hash != blob {
                return Box::pin(async { Err(SourceError::NotFound) });
            }
            Box::pin(async move { Ok(ob.encode()) })
        }
        fn fetch_range(
            &self,
            blob: Hash,
            offset: u64,
            len: u64,
        ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if Hash::new(&self.data) != blob {
                return Box::pin(async { Err(SourceError::NotFound) });
            }
            let end = (offset + len).min(self.data.len() as u64) as usize;
            let mut v = self.data[offset as usize..end].to_vec();
            if self.flip && !v.is_empty() {
                v[0] ^= 1;
            }
            Box::pin(async move { Ok(v) })
        }
    }

    fn blob(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(b"prefer http")
            .finalize_xof()
            .fill(&mut v);
        v
    }

    fn store(dir: &std::path::Path) -> Arc<crate::store::FsStore> {
        let db = crate::store::open_db(&dir.join("db"), &Default::default()).unwrap();
        Arc::new(crate::store::FsStore::open(dir, &db).unwrap().0)
    }

    /// A listener that cannot be reached (nothing listens on the port): the peer is asked
    /// over libp2p instead, the listener is not asked again in this fetch, and not in the
    /// next ones for a while; nothing counts as HTTP bytes.
    #[test]
    fn an_unreachable_blob_listener_falls_back_to_the_peer_connection() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let data = blob(9 << 20);
        let hash = Hash::new(&data);
        let p2p = Mem::new(&data, false);
        let counters = HttpCounters::default();
        let src = Arc::new(PreferHttp::new(
            "peer".into(),
            Arc::new(crate::fetch::HttpSource::new(&base, Duration::from_secs(5))),
            base.clone(),
            p2p.clone(),
            counters.clone(),
        ));
        let t = tempfile::tempdir().unwrap();
        let st = store(t.path());
        let f = Fetcher::new(
            st.clone(),
            t.path().join("partial"),
            vec![src.clone() as Arc<dyn BlobSource>],
            FetchConfig::default(),
        );
        let report = rt().block_on(f.fetch(hash, None, None)).unwrap();
        assert!(report.bad_sources.is_empty(), "{report:?}");
        assert!(st.has(&hash).unwrap());
        // Outboard and three segments, all from the peer connection.
        assert!(p2p.calls.load(Ordering::SeqCst) >= 4);
        assert_eq!(counters.bytes.get(), 0);
        assert_eq!(counters.fallbacks.get(), 1, "one fallback per fetch");
        assert!(!src.use_http());
        assert!(http_down(&base), "the listener is remembered as down");
    }

    /// Bytes from the listener that do not verify are not the peer's fault (anyone on the
    /// path can change them): the peer is not reported, the listener is given up, and the
    /// segments come over the peer's libp2p connection. Bytes that do not verify over libp2p
    /// are the peer's.
    #[test]
    fn bad_bytes_from_a_blob_listener_are_asked_again_over_libp2p() {
        let data = blob(9 << 20);
        let hash = Hash::new(&data);
        let t = tempfile::tempdir().unwrap();
        let fetch = |sources: Vec<Arc<dyn BlobSource>>, dir: &str| {
            let st = store(&t.path().join(dir));
            let f = Fetcher::new(
                st.clone(),
                t.path().join(dir).join("partial"),
                sources,
                FetchConfig::default(),
            );
            let r = rt().block_on(f.fetch(hash, None, None));
            (r, st)
        };
        // The listener lies, the peer's libp2p side is honest; the only source.
        let (http, p2p) = (Mem::new(&data, true), Mem::new(&data, false));
        let counters = HttpCounters::default();
        let peer = Arc::new(PreferHttp::new(
            "peer".into(),
            http.clone(),
            "http://127.0.0.2:9".into(),
            p2p.clone(),
            counters.clone(),
        ));
        let (report, st) = fetch(vec![peer.clone() as Arc<dyn BlobSource>], "a");
        let report = report.unwrap();
        assert!(st.has(&hash).unwrap());
        assert!(report.bad_sources.is_empty(), "{report:?}");
        assert!(!peer.use_http(), "the listener is given up");
        assert_eq!(counters.fallbacks.get(), 1);
        // Three segments: every one that came over HTTP was asked again over libp2p.
        assert!(p2p.calls.load(Ordering::SeqCst) >= 3);
        // Lying over libp2p is the peer's fault.
        let liar = Arc::new(PreferHttp::new(
            "liar".into(),
            Mem::new(&data, true),
            "http://127.0.0.3:9".into(),
            Mem::new(&data, true),
            HttpCounters::default(),
        ));
        let honest = Mem::new(&data, false);
        let (report, st) = fetch(vec![liar as Arc<dyn BlobSource>, honest], "b");
        assert!(st.has(&hash).unwrap());
        assert_eq!(
            report.unwrap().bad_sources.iter().collect::<Vec<_>>(),
            vec!["liar"]
        );
    }

    /// A listener that does not have the blob (or is not the peer's at all) is not believed:
    /// the peer is asked over libp2p, and the listener stays in use for other blobs.
    #[test]
    fn a_listener_without_the_blob_is_checked_over_libp2p() {
        let data = blob(9 << 20);
        let hash = Hash::new(&data);
        let other = Mem::new(&blob(100), false);
        let p2p = Mem::new(&data, false);
        let peer = Arc::new(PreferHttp::new(
            "peer".into(),
            other,
            "http://127.0.0.4:9".into(),
            p2p.clone(),
            HttpCounters::default(),
        ));
        let t = tempfile::tempdir().unwrap();
        let st = store(t.path());
        let f = Fetcher::new(
            st.clone(),
            t.path().join("partial"),
            vec![peer.clone() as Arc<dyn BlobSource>],
            FetchConfig::default(),
        );
        rt().block_on(f.fetch(hash, None, None)).unwrap();
        assert!(st.has(&hash).unwrap());
        assert!(peer.use_http());
        assert!(p2p.calls.load(Ordering::SeqCst) >= 4);
    }

    /// One HTTP source (one connection pool) per listener, shared by the fetches.
    #[test]
    fn fetches_share_a_listeners_connections() {
        let a = http_source("http://127.0.0.1:1");
        let b = http_source("http://127.0.0.1:1");
        let c = http_source("http://127.0.0.1:2");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }
}
