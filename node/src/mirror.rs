//! `pacmesh mirror`: a non-building node that follows the mesh's signed manifests, fetches the
//! blobs of the newest generation of every repository (verified, from every peer it follows),
//! materialises it under `OUT` and switches to it atomically; it keeps the last N generations.
//!
//! # Layout of `OUT` (any static web server can serve it)
//!
//! ```text
//! OUT/NAME/os/ARCH -> ../gen/G/os/ARCH     symlink, replaced by rename: the served generation
//! OUT/NAME/gen/G/os/ARCH/                  one complete generation, read-only once renamed in
//!     PKGFILE, PKGFILE.sig, NAME.db(.tar.zst)(.sig), NAME.files(.tar.zst)(.sig)
//!     .pacmesh-manifest.json               the manifest it holds
//! OUT/NAME/gen/.tmp-*                      a generation being built (removed at start)
//! ```
//!
//! A generation directory also holds the package files of the generation served before it
//! that it no longer lists ("grace files", not in its database): a client that read the
//! previous database just before the switch still finds the packages it names. Package
//! files are hard links to the mirror's content store, so kept generations share the space.
//!
//! # One step
//!
//! 1. anti-entropy with each `--follow` peer (`POST /api/v1/sync`), every event verified by
//!    the same [`crate::ingest`] pipeline as a node's: signature, policy role, manifest chain
//!    (on the mesh, [`crate::mirror_mesh`], events also arrive by gossip and libp2p sync at any
//!    time, through the same ingest, and wake the loop);
//! 2. per (repo, arch): the newest generation on the chain ([`crate::state::QueueState::chain`]);
//!    if `OUT` does not hold it: pin its blobs, fetch the missing ones ([`crate::fetch`]: in
//!    segments, verified, from every followed and connected peer, resumable; imported without
//!    a per-blob `fsync`), make them durable at once (one `syncfs`, one index flush), build the
//!    directory in `.tmp-*`, `syncfs`, rename it into place, switch the symlink;
//! 3. prune to `--keep` generations (never the served one), unpin what they held and collect
//!    blobs no kept generation references.
//!
//! A kill at any point leaves the old generation served; the next start removes `.tmp-*`
//! and resumes partial blob downloads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::stream::{self, StreamExt};
use pacmesh_protocol::{
    Hash, Limits, MeshPolicy, Message, Name, RepoManifest, Signed, SyncResponse,
};
use serde_json::json;

use crate::core::Core;
use crate::fetch::{BlobSource, FetchConfig, FetchReport, Fetcher, Progress, http_sources};
use crate::generation::{check_file, check_names, db_names, fsync_dir, sync_fs, unique};
use crate::ingest::{Ingest, IngestConfig, IngestOutcome};
use crate::store::{BlobStore, DbConfig, FsStore, open_db};

/// Name of the manifest copy in a generation directory.
pub const MANIFEST_FILE: &str = ".pacmesh-manifest.json";

/// Settings of a mirror.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// The signed mesh policy (names the mesh).
    pub policy: PathBuf,
    /// The served tree.
    pub out: PathBuf,
    /// Event store, content store, partial downloads.
    pub data_dir: PathBuf,
    /// Peers followed over HTTP (`http://HOST:PORT` of a node or mirror).
    pub follow: Vec<String>,
    /// libp2p bootstrap peers: with these (or `listen`) the mirror joins the mesh
    /// ([`crate::mirror_mesh`]).
    pub bootstrap: Vec<String>,
    /// libp2p listen addresses (default with the mesh on: TCP and QUIC on every interface,
    /// ports picked by the system).
    pub listen: Vec<String>,
    /// mDNS discovery of mesh peers on the LAN (with the mesh on).
    pub mdns: bool,
    /// Serve `OUT` (and the blob/sync API) here.
    pub http: Option<SocketAddr>,
    /// Generations kept per (repo, arch), the served one included.
    pub keep: usize,
    /// Pause between steps.
    pub interval: Duration,
    /// Progress bars (on a terminal) instead of log lines.
    pub progress: bool,
}

impl MirrorConfig {
    /// Defaults for `out` following `follow`.
    pub fn new(policy: PathBuf, out: PathBuf, follow: Vec<String>) -> Self {
        MirrorConfig {
            data_dir: default_data_dir(&out),
            policy,
            out,
            follow,
            bootstrap: Vec::new(),
            listen: Vec::new(),
            mdns: true,
            http: None,
            keep: crate::generation::DEFAULT_KEEP,
            interval: Duration::from_secs(2),
            progress: std::io::stderr().is_terminal(),
        }
    }
}

impl MirrorConfig {
    /// Whether the mirror joins the libp2p mesh (`--bootstrap` or `--listen` given).
    pub fn mesh_enabled(&self) -> bool {
        !self.bootstrap.is_empty() || !self.listen.is_empty()
    }
}

/// `$XDG_DATA_HOME/pacmesh/mirror-<16 hex of blake3(absolute OUT)>`: one data dir per tree.
pub fn default_data_dir(out: &Path) -> PathBuf {
    let abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let h = Hash::new(abs.as_os_str().as_encoded_bytes()).to_hex();
    crate::keys::default_data_dir().join(format!("mirror-{}", &h[..16]))
}

/// `OUT/NAME/gen/G/os/ARCH`.
pub fn gen_dir(out: &Path, repo: &str, arch: &str, g: u64) -> PathBuf {
    out.join(repo)
        .join("gen")
        .join(g.to_string())
        .join("os")
        .join(arch)
}

/// `OUT/NAME/os/ARCH` (the symlink).
pub fn served_link(out: &Path, repo: &str, arch: &str) -> PathBuf {
    out.join(repo).join("os").join(arch)
}

/// The generation `OUT/NAME/os/ARCH` points to, if it points to a complete one.
pub fn served_generation(out: &Path, repo: &str, arch: &str) -> Option<u64> {
    let t = fs::read_link(served_link(out, repo, arch)).ok()?;
    let s = t.to_str()?;
    let rest = s.strip_prefix("../gen/")?;
    let (g, tail) = rest.split_once('/')?;
    let g: u64 = g.parse().ok()?;
    (tail == format!("os/{arch}") && gen_dir(out, repo, arch, g).is_dir()).then_some(g)
}

/// The manifest held by a generation directory.
pub fn read_manifest(dir: &Path) -> Option<RepoManifest> {
    serde_json::from_slice(&fs::read(dir.join(MANIFEST_FILE)).ok()?).ok()
}

/// Generations of (repo, arch) present in `OUT`, ascending.
pub fn list_generations(out: &Path, repo: &str, arch: &str) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(out.join(repo).join("gen"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|g| gen_dir(out, repo, arch, *g).is_dir())
        .collect();
    v.sort_unstable();
    v
}

fn pin_tag(repo: &str, arch: &str, g: u64) -> String {
    format!("mirror:{repo}/{arch}/{g}")
}

/// A running mirror.
pub struct Mirror {
    /// Event log, state, content store (no publisher key; never builds).
    pub core: Arc<Core>,
    cfg: MirrorConfig,
    /// The fetcher of the HTTP-only mirror (sources: the followed peers).
    fetcher: Fetcher,
    /// The followed peers as blob sources (with the mesh on, fetched from beside the peers).
    http_sources: Vec<Arc<dyn BlobSource>>,
    agent: ureq::Agent,
    /// Payload bytes received by the fetcher since start (benchmarks).
    pub bytes_fetched: AtomicU64,
    /// Sync response bytes received since start.
    pub bytes_synced: AtomicU64,
    /// Followed peers caught sending bytes that do not verify, with a count.
    bad_sources: std::sync::Mutex<BTreeMap<String, u64>>,
    /// Per client and (repo, arch): the generation of its last database read, and when.
    sticky: std::sync::Mutex<
        std::collections::HashMap<(std::net::IpAddr, String, String, String), (u64, Instant)>,
    >,
}

fn read_root(policy: &[u8], limits: &Limits) -> Result<pacmesh_protocol::PublicKey> {
    Ok(Signed::<MeshPolicy>::from_bytes(policy, limits)
        .context("the policy file is not a signed mesh policy")?
        .signer)
}

impl Mirror {
    /// Opens the stores in `cfg.data_dir` (created if needed) and checks `cfg`.
    pub fn open(cfg: MirrorConfig) -> Result<Mirror> {
        if cfg.follow.is_empty() && !cfg.mesh_enabled() {
            bail!(
                "nothing to follow: give --bootstrap MULTIADDR (join the mesh) or --follow URL (a node's or mirror's HTTP address)"
            );
        }
        crate::mirror_mesh::check(&cfg)?;
        for d in [&cfg.data_dir, &cfg.out] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let limits = Limits::default();
        let policy = fs::read(&cfg.policy)
            .with_context(|| format!("cannot read policy {}", cfg.policy.display()))?;
        let root = read_root(&policy, &limits)?;
        let db = open_db(&cfg.data_dir.join("db"), &DbConfig::default()).with_context(|| {
            format!(
                "cannot open the store in {} (is another mirror running on it?)",
                cfg.data_dir.display()
            )
        })?;
        let (ingest, _) = Ingest::open(
            &db,
            root,
            Some(&policy),
            IngestConfig {
                limits,
                ..Default::default()
            },
        )
        .context("cannot open the event store")?;
        let (blobs, _) =
            FsStore::open(&cfg.data_dir, &db).context("cannot open the content store")?;
        let key = crate::daemon::load_or_create_key(&cfg.data_dir.join("node.key"))?;
        // Blobs are made durable in one go before a generation switch (see `install`).
        blobs.set_deferred_durability(true);
        let core = Core::new(key, None, ingest, Arc::new(blobs), cfg.data_dir.clone());
        // The kept generations pin what the mirror keeps; events pin nothing.
        core.set_pin_events(false);
        let http_sources = http_sources(&cfg.follow, Duration::from_secs(60));
        let fetcher = Fetcher::new(
            core.blobs.clone(),
            cfg.data_dir.join("partial"),
            http_sources.clone(),
            FetchConfig::default(),
        );
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .into();
        // Leftovers of a killed run: generation directories never renamed into place.
        for repo in fs::read_dir(&cfg.out).into_iter().flatten().flatten() {
            for e in fs::read_dir(repo.path().join("gen"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let n = e.file_name();
                let n = n.to_string_lossy();
                if n.starts_with(".tmp-") || n.starts_with(".trash-") {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        recover_unsynced(&core.blobs, &cfg)?;
        Ok(Mirror {
            core,
            cfg,
            fetcher,
            http_sources,
            agent,
            bytes_fetched: AtomicU64::new(0),
            bytes_synced: AtomicU64::new(0),
            bad_sources: Default::default(),
            sticky: Default::default(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MirrorConfig {
        &self.cfg
    }

    /// Fetches one blob. Without the mesh: from the followed peers (one fetcher, which
    /// remembers sources caught twice). With it: from the connected peers, rotated per blob
    /// ([`crate::mirror_mesh::peer_sources`]), then the followed peers not caught twice.
    async fn fetch_one(
        &self,
        blob: Hash,
        size: Option<u64>,
        progress: Option<Progress>,
    ) -> Result<FetchReport> {
        let Some(net) = self.core.net.get() else {
            return self.fetcher.fetch(blob, size, progress).await;
        };
        let mut sources = crate::mirror_mesh::peer_sources(&self.core, net, &blob);
        {
            let bad = self.bad_sources.lock().unwrap();
            sources.extend(
                self.http_sources
                    .iter()
                    .filter(|s| bad.get(&s.name()).is_none_or(|n| *n < 2))
                    .cloned(),
            );
        }
        if sources.is_empty() {
            bail!("blob {blob}: no peer connected");
        }
        let report = Fetcher::new(
            self.core.blobs.clone(),
            self.cfg.data_dir.join("partial"),
            sources,
            FetchConfig::default(),
        )
        .fetch(blob, size, progress)
        .await?;
        // A peer caught lying is banned at once, before it is asked for the next blob.
        for bad in &report.bad_sources {
            crate::mirror_mesh::charge(net, bad).await;
        }
        Ok(report)
    }

    /// Anti-entropy with every followed peer until each says it sent everything. Returns the
    /// events accepted; an unreachable peer is logged and skipped.
    pub async fn sync_all(&self) -> usize {
        let mut accepted = 0;
        for url in &self.cfg.follow {
            match self.sync_with(url).await {
                Ok(n) => accepted += n,
                Err(e) => tracing::warn!(peer = %url, "sync failed: {e:#}"),
            }
        }
        accepted
    }

    async fn sync_with(&self, url: &str) -> Result<usize> {
        let mut accepted = 0;
        for _round in 0..1000 {
            let (req, limits, bases) = {
                let ingest = self.core.ingest();
                let state = ingest.state();
                // The newest manifests held: the node may send new ones as deltas of them.
                let bases: Vec<String> = state
                    .published_repos()
                    .filter_map(|(r, a)| state.latest_generation(r, a))
                    .map(|g| g.event.to_string())
                    .take(crate::delta::MAX_BASES)
                    .collect();
                (
                    ingest.sync_request(1000),
                    ingest.limits().clone(),
                    bases.join(","),
                )
            };
            let body = req.encode()?;
            let agent = self.agent.clone();
            let endpoint = format!("{}/api/v1/sync", url.trim_end_matches('/'));
            let max = limits.max_sync_bytes as u64;
            let (bytes, is_delta) =
                tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, bool)> {
                    let mut r = agent
                        .post(&endpoint)
                        .header("content-type", "application/cbor")
                        .header(crate::delta::BASES_HEADER, &bases)
                        .send(&body[..])
                        .map_err(|e| anyhow!("{endpoint}: {e}"))?;
                    if !r.status().is_success() {
                        bail!("{endpoint}: HTTP {}", r.status());
                    }
                    let delta = r
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v.as_bytes() == crate::delta::CONTENT_TYPE.as_bytes());
                    Ok((r.body_mut().with_config().limit(max).read_to_vec()?, delta))
                })
                .await??;
            self.bytes_synced
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let resp = if is_delta {
                let c = self.core.clone();
                let l = limits.clone();
                tokio::task::spawn_blocking(move || {
                    let ingest = c.ingest();
                    crate::delta::decode_response(
                        &bytes,
                        |id| ingest.events().get(id).ok().flatten(),
                        &l,
                    )
                })
                .await?
                .map_err(|e| anyhow!("sync response from {url}: {e}"))?
            } else {
                SyncResponse::decode(&bytes, &limits)
                    .map_err(|e| anyhow!("sync response from {url}: {e}"))?
            };
            let c = self.core.clone();
            let complete = resp.complete;
            let outcomes =
                tokio::task::spawn_blocking(move || c.ingest().ingest_sync_response(&resp)).await?;
            let new = outcomes
                .iter()
                .filter(|o| matches!(o, IngestOutcome::Accepted { .. }))
                .count();
            accepted += new;
            if complete || new == 0 {
                break;
            }
        }
        Ok(accepted)
    }

    /// For every (repo, arch) of the policy: makes the newest generation on the chain served.
    /// Returns the generations switched to.
    pub async fn step(&self) -> Result<Vec<(Name, Name, u64)>> {
        let targets: Vec<(Name, Name, Option<(Hash, Arc<RepoManifest>)>)> = {
            let ingest = self.core.ingest();
            let state = ingest.state();
            ingest
                .policy()
                .repos
                .iter()
                .flat_map(|r| r.arches.iter().map(move |a| (r.name.clone(), a.clone())))
                .map(|(r, a)| {
                    let g = state
                        .latest_generation(&r, &a)
                        .map(|g| (g.event, g.manifest));
                    (r, a, g)
                })
                .collect()
        };
        let mut switched = Vec::new();
        let mut first_err = None;
        for (repo, arch, tip) in targets {
            let Some((_, m)) = tip else { continue };
            match self.install(&m).await {
                Ok(true) => switched.push((repo.clone(), arch.clone(), m.generation)),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(%repo, %arch, generation = m.generation, "cannot serve: {e:#}");
                    first_err.get_or_insert(e);
                }
            }
            if let Err(e) = self.prune(&repo, &arch) {
                tracing::warn!(%repo, %arch, "pruning failed: {e:#}");
            }
        }
        match first_err {
            Some(e) if switched.is_empty() => Err(e),
            _ => Ok(switched),
        }
    }

    /// Fetches, materialises and switches to `m` unless it is served. `Ok(true)` if switched.
    async fn install(&self, m: &RepoManifest) -> Result<bool> {
        let out = &self.cfg.out;
        let (repo, arch, g) = (m.repo.as_str(), m.arch.as_str(), m.generation);
        let dir = gen_dir(out, repo, arch, g);
        if read_manifest(&dir).as_ref() == Some(m) {
            if served_generation(out, repo, arch) == Some(g) {
                return Ok(false);
            }
            switch(out, repo, arch, g)?;
            return Ok(true);
        }
        check_names(m)?;
        // Pin first (a want), remember the manifest so a later prune can unpin it.
        let tag = pin_tag(repo, arch, g);
        let blobs = crate::generation::manifest_blobs(m);
        self.core.blobs.pin_all(&blobs, &tag)?;
        let wanted = self.cfg.data_dir.join("wanted");
        fs::create_dir_all(&wanted)?;
        fs::write(
            wanted.join(format!("{repo}-{arch}-{g}.json")),
            serde_json::to_vec(m)?,
        )?;
        // Fetch what is missing.
        let sizes: BTreeMap<Hash, u64> = m.packages.iter().map(|p| (p.blake3, p.size)).collect();
        let mut missing = Vec::new();
        for h in &blobs {
            if !self.core.blobs.has(h)? {
                missing.push(*h);
            }
        }
        let fresh: BTreeSet<Hash> = missing.iter().copied().collect();
        self.fetcher.discard_partials_except(&fresh);
        if !missing.is_empty() {
            let total: u64 = missing.iter().filter_map(|h| sizes.get(h)).sum();
            let t = Instant::now();
            tracing::info!(%repo, %arch, generation = g, blobs = missing.len(), bytes = total, "fetching");
            if !self.cfg.progress {
                println!(
                    "pacmesh: fetching {repo}/{arch} generation {g}: {} files, {:.1} MiB of packages",
                    missing.len(),
                    total as f64 / (1 << 20) as f64
                );
            }
            let bar = self.cfg.progress.then(|| {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                b.set_message(format!("{repo}/{arch} generation {g}"));
                b
            });
            let progress: Option<Progress> = bar
                .clone()
                .map(|b| Arc::new(move |n: u64| b.inc(n)) as Progress);
            // Imports from here on are not durable one by one (one syncfs below); a crash
            // before that leaves the marker, and the next start re-verifies what it fetched.
            let data = self.cfg.data_dir.clone();
            tokio::task::spawn_blocking(move || mark_unsynced(&data))
                .await
                .map_err(|e| anyhow!("{e}"))??;
            let results: Vec<Result<crate::fetch::FetchReport>> = stream::iter(missing.iter())
                .map(|h| self.fetch_one(*h, sizes.get(h).copied(), progress.clone()))
                .buffer_unordered(8)
                .collect()
                .await;
            if let Some(b) = bar {
                b.finish_and_clear();
            }
            let mut received = 0;
            let mut first_err = None;
            for r in results {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        first_err.get_or_insert(e);
                        continue;
                    }
                };
                received += r.bytes_received;
                for bad in r.bad_sources {
                    tracing::warn!(source = %bad, "a peer sent bytes that do not verify");
                    *self.bad_sources.lock().unwrap().entry(bad).or_default() += 1;
                }
            }
            self.bytes_fetched.fetch_add(received, Ordering::Relaxed);
            if let Some(e) = first_err {
                return Err(e);
            }
            // Everything fetched becomes durable at once: one syncfs, one index flush.
            let t_sync = Instant::now();
            let (store, data) = (self.core.blobs.clone(), self.cfg.data_dir.clone());
            tokio::task::spawn_blocking(move || -> Result<()> {
                store
                    .make_durable()
                    .context("Failed to make the fetched blobs durable")?;
                clear_unsynced(&data);
                Ok(())
            })
            .await
            .map_err(|e| anyhow!("{e}"))??;
            tracing::debug!(
                ms = t_sync.elapsed().as_millis() as u64,
                "fetched blobs made durable"
            );
            tracing::info!(%repo, %arch, generation = g, bytes = received, ms = t.elapsed().as_millis() as u64, rate = %crate::fetch::rate(received, t), "fetched");
            if !self.cfg.progress {
                println!(
                    "pacmesh: fetched {repo}/{arch} generation {g}: {:.1} MiB in {:.1} s ({})",
                    received as f64 / (1 << 20) as f64,
                    t.elapsed().as_secs_f64(),
                    crate::fetch::rate(received, t)
                );
            }
        }
        // Materialise and switch (blocking file work).
        let (store, out2, m2) = (self.core.blobs.clone(), out.clone(), m.clone());
        tokio::task::spawn_blocking(move || materialise(&store, &out2, &m2, &fresh))
            .await
            .map_err(|e| anyhow!("{e}"))??;
        switch(out, repo, arch, g)?;
        Ok(true)
    }

    /// Removes generations beyond `keep` (never the served one), unpins their blobs and
    /// collects blobs nothing pins any more.
    pub fn prune(&self, repo: &str, arch: &str) -> Result<Vec<u64>> {
        let out = &self.cfg.out;
        let gens = list_generations(out, repo, arch);
        let served = served_generation(out, repo, arch);
        let keep = self.cfg.keep.max(1);
        let cut = gens.len().saturating_sub(keep);
        let kept: BTreeSet<u64> = gens[cut..].iter().copied().chain(served).collect();
        let mut removed = Vec::new();
        for &g in &gens[..cut] {
            if Some(g) == served {
                continue;
            }
            let dir = gen_dir(out, repo, arch, g);
            let trash = out
                .join(repo)
                .join("gen")
                .join(format!(".trash-{g}-{arch}-{}", unique()));
            fs::rename(&dir, &trash)
                .with_context(|| format!("Failed to move {} aside", dir.display()))?;
            let _ = fs::remove_dir_all(&trash);
            // Empty parents (other arches may share gen/G).
            let os = out.join(repo).join("gen").join(g.to_string()).join("os");
            if fs::remove_dir(&os).is_ok() {
                let _ = fs::remove_dir(os.parent().unwrap_or(&os));
            }
            removed.push(g);
        }
        // Release the pins of every generation that is neither kept nor the newest wanted.
        let wanted = self.cfg.data_dir.join("wanted");
        let newest_wanted = fs::read_dir(&wanted)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| parse_wanted(&e.file_name().to_string_lossy(), repo, arch))
            .max();
        let mut unpinned = false;
        for e in fs::read_dir(&wanted).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(g) = parse_wanted(&name, repo, arch) else {
                continue;
            };
            if kept.contains(&g) || Some(g) == newest_wanted {
                continue;
            }
            if let Some(m) = fs::read(e.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<RepoManifest>(&b).ok())
            {
                self.core.blobs.unpin_all(
                    &crate::generation::manifest_blobs(&m),
                    &pin_tag(repo, arch, g),
                )?;
            }
            let _ = fs::remove_file(e.path());
            unpinned = true;
        }
        if unpinned {
            let stats = self.core.blobs.gc(Duration::ZERO)?;
            tracing::info!(repo, arch, ?removed, ?stats, "old generations pruned");
        }
        Ok(removed)
    }

    /// One sync and one step.
    pub async fn once(&self) -> Result<Vec<(Name, Name, u64)>> {
        self.sync_all().await;
        self.step().await
    }

    /// Serving state as JSON (`GET /api/v1/status` of a mirror).
    pub fn status(&self) -> serde_json::Value {
        // The peer table first: never both locks at once.
        let peers = self.core.peers().view(pacmesh_protocol::Timestamp::now());
        let ingest = self.core.ingest();
        let state = ingest.state();
        let out = &self.cfg.out;
        let repos: Vec<_> = ingest
            .policy()
            .repos
            .iter()
            .flat_map(|r| r.arches.iter().map(move |a| (r.name.clone(), a.clone())))
            .map(|(r, a)| {
                json!({
                    "repo": r.to_string(),
                    "arch": a.to_string(),
                    "latest": state.latest_generation(&r, &a).map(|g| g.manifest.generation),
                    "served": served_generation(out, &r, &a),
                    "kept": list_generations(out, &r, &a),
                })
            })
            .collect();
        let net = self.core.net.get();
        json!({
            "mirror": true,
            "out": out.display().to_string(),
            "follow": self.cfg.follow,
            "peer_id": self.core.key.peer_id().to_string(),
            "p2p": net.map(|n| n.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>()),
            "peers_connected": net.map(|n| n.connected().iter().map(|p| p.to_string()).collect::<Vec<_>>()),
            "peers": peers,
            "state_digest": state.digest().to_string(),
            "events": ingest.counters(),
            "repos": repos,
            "bytes_fetched": self.bytes_fetched.load(Ordering::Relaxed),
            "bytes_synced": self.bytes_synced.load(Ordering::Relaxed),
            "bad_sources": self.bad_sources.lock().unwrap().clone(),
        })
    }
}

/// Present in the data dir while fetched blobs may not be durable yet.
const UNSYNCED: &str = "unsynced";

/// Notes (durably) that blobs are about to be imported without per-blob durability.
fn mark_unsynced(data: &Path) -> Result<()> {
    let p = data.join(UNSYNCED);
    if p.exists() {
        return Ok(());
    }
    let f = fs::File::create(&p).with_context(|| format!("Failed to create {}", p.display()))?;
    f.sync_all()
        .with_context(|| format!("Failed to fsync {}", p.display()))?;
    fsync_dir(data)
}

/// Everything imported so far is durable.
fn clear_unsynced(data: &Path) {
    let _ = fs::remove_file(data.join(UNSYNCED));
}

/// After an unclean stop during a fetch (the marker is there), a blob imported since the last
/// durable point may be indexed while its file is empty or short: every blob that no complete
/// generation directory names is read and checked against its hash again, and a bad one is
/// forgotten (fetched again). Blobs of complete generations were durable before their
/// directory was renamed into place.
fn recover_unsynced(store: &FsStore, cfg: &MirrorConfig) -> Result<()> {
    if !cfg.data_dir.join(UNSYNCED).exists() {
        return Ok(());
    }
    let t = Instant::now();
    let mut durable = BTreeSet::new();
    for repo in fs::read_dir(&cfg.out).into_iter().flatten().flatten() {
        for g in fs::read_dir(repo.path().join("gen"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for arch in fs::read_dir(g.path().join("os"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(m) = read_manifest(&arch.path()) {
                    durable.extend(crate::generation::manifest_blobs(&m));
                }
            }
        }
    }
    let (mut checked, mut bad) = (0u64, 0u64);
    for h in store.list()? {
        if durable.contains(&h) {
            continue;
        }
        checked += 1;
        if !store.verify(&h)? {
            bad += 1;
        }
    }
    store.make_durable()?;
    clear_unsynced(&cfg.data_dir);
    tracing::info!(
        checked,
        bad,
        ms = t.elapsed().as_millis() as u64,
        "blobs fetched before an unclean stop verified again"
    );
    Ok(())
}

fn parse_wanted(file: &str, repo: &str, arch: &str) -> Option<u64> {
    file.strip_prefix(&format!("{repo}-{arch}-"))?
        .strip_suffix(".json")?
        .parse()
        .ok()
}

/// Points `OUT/NAME/os/ARCH` at generation `g` atomically.
fn switch(out: &Path, repo: &str, arch: &str, g: u64) -> Result<()> {
    let os = out.join(repo).join("os");
    fs::create_dir_all(&os).with_context(|| format!("Failed to create {}", os.display()))?;
    let target = PathBuf::from(format!("../gen/{g}/os/{arch}"));
    let link = os.join(arch);
    if fs::read_link(&link).is_ok_and(|t| t == target) {
        return Ok(());
    }
    crate::generation::replace_symlink(&target, &link)?;
    fsync_dir(&os)?;
    tracing::info!(repo, arch, generation = g, "served generation switched");
    println!("pacmesh: serving {repo}/{arch} generation {g}");
    Ok(())
}

/// Places `hash` at `dest`: a hard link to the store's file (a copy across file systems).
fn place(store: &FsStore, hash: &Hash, dest: &Path) -> Result<()> {
    let src = store.path_of(hash);
    if fs::hard_link(&src, dest).is_ok() {
        return Ok(());
    }
    crate::generation::copy_out(store, hash, dest).map(|_| ())
}

/// Builds `OUT/NAME/gen/G/os/ARCH` for `m` from the store. Blobs in `fresh` (just fetched)
/// are checked against the manifest's size and SHA-256 too (their BLAKE3 was verified while
/// fetching); the others were checked when first placed.
fn materialise(
    store: &FsStore,
    out: &Path,
    m: &RepoManifest,
    fresh: &BTreeSet<Hash>,
) -> Result<()> {
    let (repo, arch, g) = (m.repo.as_str(), m.arch.as_str(), m.generation);
    let gen_root = out.join(repo).join("gen");
    fs::create_dir_all(&gen_root)?;
    let tmp = gen_root.join(format!(".tmp-{g}-{arch}-{}", unique()));
    fs::create_dir(&tmp).with_context(|| format!("Failed to create {}", tmp.display()))?;
    let built = (|| -> Result<()> {
        for p in &m.packages {
            let f = tmp.join(p.file_name.as_str());
            place(store, &p.blake3, &f)?;
            if fresh.contains(&p.blake3) {
                check_file(&p.blake3, &f, Some(p.size), Some(&p.sha256))?;
            } else {
                let len = fs::metadata(&f)?.len();
                if len != p.size {
                    bail!("{}: {len} bytes, the manifest says {}", p.file_name, p.size);
                }
            }
            place(store, &p.sig, &tmp.join(format!("{}.sig", p.file_name)))?;
        }
        let [db, db_link, files, files_link] = db_names(repo);
        place(store, &m.db, &tmp.join(&db))?;
        place(store, &m.db_sig, &tmp.join(format!("{db}.sig")))?;
        std::os::unix::fs::symlink(&db, tmp.join(&db_link))?;
        std::os::unix::fs::symlink(format!("{db}.sig"), tmp.join(format!("{db_link}.sig")))?;
        place(store, &m.files_db, &tmp.join(&files))?;
        std::os::unix::fs::symlink(&files, tmp.join(&files_link))?;
        if let Some(s) = &m.files_db_sig {
            place(store, s, &tmp.join(format!("{files}.sig")))?;
            std::os::unix::fs::symlink(
                format!("{files}.sig"),
                tmp.join(format!("{files_link}.sig")),
            )?;
        }
        // Grace files: packages of the served generation that this one drops.
        if let Some(prev) = served_generation(out, repo, arch) {
            let pdir = gen_dir(out, repo, arch, prev);
            if let Some(pm) = read_manifest(&pdir) {
                for p in &pm.packages {
                    let f = tmp.join(p.file_name.as_str());
                    if !f.exists() {
                        let _ = fs::hard_link(pdir.join(p.file_name.as_str()), &f);
                        let _ = fs::hard_link(
                            pdir.join(format!("{}.sig", p.file_name)),
                            tmp.join(format!("{}.sig", p.file_name)),
                        );
                    }
                }
            }
        }
        fs::write(tmp.join(MANIFEST_FILE), serde_json::to_vec_pretty(m)?)?;
        sync_fs(&tmp)?;
        fsync_dir(&tmp)?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e.context(format!(
            "Failed to materialise {repo}/{arch} generation {g}"
        )));
    }
    let final_dir = gen_dir(out, repo, arch, g);
    let parent = final_dir.parent().expect("gen/G/os");
    fs::create_dir_all(parent)?;
    if final_dir.exists() {
        // Another manifest under this number (a race lost by the one we had): replace it.
        let trash = gen_root.join(format!(".trash-{g}-{arch}-{}", unique()));
        fs::rename(&final_dir, &trash)?;
        let _ = fs::remove_dir_all(&trash);
    }
    fs::rename(&tmp, &final_dir)
        .with_context(|| format!("Failed to rename {} into place", tmp.display()))?;
    fsync_dir(parent)?;
    tracing::info!(
        repo,
        arch,
        generation = g,
        packages = m.packages.len(),
        "generation materialised"
    );
    Ok(())
}

/// The mirror's HTTP server: `OUT` (served and generation-pinned paths; responses under
/// `/NAME/os/ARCH/` carry `X-Pacmesh-Generation`), plus the blob, sync, event and status API
/// so that other mirrors can follow this one.
pub fn router(mirror: Arc<Mirror>) -> Router {
    let core = mirror.core.clone();
    let sync_limit = core.ingest().limits().max_sync_bytes;
    let m1 = mirror.clone();
    let m2 = mirror.clone();
    let m3 = mirror.clone();
    let api = Router::new()
        .route("/api/v1/blobs/{hash}", get(crate::http::get_blob))
        .route(
            "/api/v1/blobs/{hash}/outboard",
            get(crate::http_sync::outboard),
        )
        .route(
            "/api/v1/sync",
            post(crate::http_sync::sync).layer(axum::extract::DefaultBodyLimit::max(sync_limit)),
        )
        .route("/api/v1/events/{id}", get(crate::http_sync::event))
        .route(
            "/api/v1/repos/{repo}/history",
            get(crate::http_sync::history),
        )
        .with_state(core);
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route(
            "/api/v1/status",
            get(move || {
                let m = m1.clone();
                async move {
                    match tokio::task::spawn_blocking(move || m.status()).await {
                        Ok(v) => axum::Json(v).into_response(),
                        Err(e) => {
                            crate::http::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                        }
                    }
                }
            }),
        )
        .route(
            "/{repo}/os/{arch}/{file}",
            get(
                move |UrlPath((repo, arch, file)): UrlPath<(String, String, String)>,
                      req: axum::extract::Request| {
                    let m = m2.clone();
                    async move {
                        let peer = req
                            .extensions()
                            .get::<axum::extract::ConnectInfo<SocketAddr>>()
                            .map(|c| c.0);
                        let headers = req.headers();
                        let client = peer.map(|p| {
                            let ua = headers
                                .get(axum::http::header::USER_AGENT)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .chars()
                                .take(200)
                                .collect::<String>();
                            (p.ip(), ua)
                        });
                        m.serve_current(client, &repo, &arch, &file).await
                    }
                },
            ),
        )
        .route(
            "/{repo}/gen/{generation}/os/{arch}/{file}",
            get(
                move |UrlPath((repo, g, arch, file)): UrlPath<(String, String, String, String)>| {
                    let m = m3.clone();
                    async move {
                        let Ok(g) = g.parse::<u64>() else {
                            return crate::http::error(StatusCode::NOT_FOUND, "no such generation");
                        };
                        if !ok_names(&[&repo, &arch, &file]) {
                            return crate::http::error(StatusCode::NOT_FOUND, "no such file");
                        }
                        let p = gen_dir(&m.cfg.out, &repo, &arch, g).join(&file);
                        crate::http_sync::serve_file(
                            &p,
                            &format!("{repo}/gen/{g}/os/{arch}/{file}"),
                        )
                        .await
                    }
                },
            ),
        )
        .merge(api)
        .with_state(())
}

fn ok_names(names: &[&str]) -> bool {
    names
        .iter()
        .all(|s| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']))
}

/// How long a client's database read pins the generation its other reads come from.
const STICKY_FOR: Duration = Duration::from_secs(600);

/// A client as the mirror's server tells them apart: address and user agent.
type ClientKey = (std::net::IpAddr, String);

impl Mirror {
    /// A file under `/NAME/os/ARCH/`. The symlink is resolved once per request and the
    /// response names the generation (`X-Pacmesh-Generation`). A database read (`NAME.db`,
    /// `NAME.files`, with or without `.tar.zst`) always gets the served generation and is
    /// remembered per client (address + user agent, for [`STICKY_FOR`]); the client's other
    /// reads (`NAME.db.sig`, packages, their signatures) then come from that generation while
    /// it is kept, so pacman's separate requests for a database, its signature and its
    /// packages form one consistent set even across a switch.
    async fn serve_current(
        &self,
        client: Option<ClientKey>,
        repo: &str,
        arch: &str,
        file: &str,
    ) -> Response {
        let out = &self.cfg.out;
        if !ok_names(&[repo, arch, file]) {
            return crate::http::error(StatusCode::NOT_FOUND, "no such file");
        }
        let Some(current) = served_generation(out, repo, arch) else {
            return crate::http::error(
                StatusCode::NOT_FOUND,
                format!("{repo}/os/{arch}: nothing served"),
            );
        };
        let is_db = [".db", ".db.tar.zst", ".files", ".files.tar.zst"]
            .iter()
            .any(|ext| file.strip_suffix(ext) == Some(repo));
        let key = client.map(|(ip, ua)| (ip, ua, repo.to_string(), arch.to_string()));
        let mut g = current;
        if let Some(k) = &key {
            let mut sticky = self.sticky.lock().unwrap();
            if is_db {
                if sticky.len() > 10_000 {
                    sticky.retain(|_, (_, t)| t.elapsed() < STICKY_FOR);
                }
                sticky.insert(k.clone(), (current, Instant::now()));
            } else if let Some((sg, t)) = sticky.get(k)
                && t.elapsed() < STICKY_FOR
                && gen_dir(out, repo, arch, *sg).join(file).is_file()
            {
                g = *sg;
            }
        }
        let p = gen_dir(out, repo, arch, g).join(file);
        let mut r = crate::http_sync::serve_file(&p, &format!("{repo}/os/{arch}/{file}")).await;
        if let Ok(v) = HeaderValue::from_str(&g.to_string()) {
            r.headers_mut().insert("x-pacmesh-generation", v);
        }
        r
    }
}

/// Runs a mirror until `shutdown` resolves: serves HTTP (if configured), joins the mesh (with
/// `--bootstrap`/`--listen`), then syncs and steps every `interval`, and at once when an event
/// arrives from the mesh. `on_start` gets the HTTP address once listening.
pub async fn run(
    cfg: MirrorConfig,
    shutdown: impl std::future::Future<Output = ()>,
    on_start: impl FnOnce(Option<SocketAddr>),
) -> Result<()> {
    let interval = cfg.interval;
    let http = cfg.http;
    let mirror = Arc::new(tokio::task::spawn_blocking(move || Mirror::open(cfg)).await??);
    println!(
        "pacmesh: mirror of mesh {} into {} (data {})",
        mirror.core.ingest().root(),
        mirror.cfg.out.display(),
        mirror.cfg.data_dir.display()
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut net_task = None;
    if mirror.cfg.mesh_enabled() {
        let (handle, task) =
            crate::mirror_mesh::start(&mirror.core, &mirror.cfg, stop_rx.clone()).await?;
        let _ = mirror.core.net.set(handle);
        net_task = Some(task);
    }
    let mut server = None;
    let mut addr = None;
    if let Some(a) = http {
        let listener = tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| anyhow!("cannot listen for HTTP on {a}: {e}"))?;
        let local = listener.local_addr()?;
        let listener = axum::serve::ListenerExt::tap_io(listener, crate::http::nodelay);
        println!("pacmesh: mirror http listening on http://{local}");
        addr = Some(local);
        let app = router(mirror.clone());
        server = Some(tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
        }));
    }
    on_start(addr);
    tokio::pin!(shutdown);
    let mut changed = mirror.core.subscribe();
    let mut failures = 0u32;
    let result = loop {
        let r = tokio::select! {
            // Stopping mid-step is safe: the served generation only changes by a rename.
            () = &mut shutdown => break Ok(()),
            r = mirror.once() => r,
        };
        let pause = match r {
            Ok(_) => {
                failures = 0;
                interval
            }
            Err(e) => {
                failures += 1;
                tracing::error!("mirror step failed: {e:#}");
                interval * failures.min(15)
            }
        };
        changed.borrow_and_update();
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            () = tokio::time::sleep(pause) => {}
            // An event from the mesh: step now (after a short pause that lets a burst land).
            Ok(()) = changed.changed(), if failures == 0 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if let Some(s) = &server
            && s.is_finished()
        {
            break Err(anyhow!("the HTTP server stopped"));
        }
        if let Some(t) = &net_task
            && t.is_finished()
        {
            break Err(anyhow!("the mesh network stopped"));
        }
    };
    let _ = stop_tx.send(true);
    if let Some(t) = net_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Err(e) = mirror.core.ingest().events().flush() {
        tracing::warn!("flushing the event store: {e}");
    }
    result
}

/// `pacmesh mirror --once`: one sync and one step, then exit. With the mesh: joins it, waits
/// for a first sync round and until no new event arrived for a second (at most 60 s), steps,
/// leaves.
pub async fn run_once(cfg: MirrorConfig) -> Result<()> {
    let mirror = tokio::task::spawn_blocking(move || Mirror::open(cfg)).await??;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut net_task = None;
    if mirror.cfg.mesh_enabled() {
        let (handle, task) =
            crate::mirror_mesh::start(&mirror.core, &mirror.cfg, stop_rx.clone()).await?;
        let mut caught_up = handle.caught_up();
        let _ = mirror.core.net.set(handle);
        net_task = Some(task);
        let _ =
            tokio::time::timeout(crate::net::CATCH_UP_WAIT * 2, caught_up.wait_for(|c| *c)).await;
        let mut changed = mirror.core.subscribe();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && tokio::time::timeout(Duration::from_secs(1), changed.changed())
                .await
                .is_ok_and(|r| r.is_ok())
        {}
    }
    let r = mirror.once().await.map(|_| ());
    let _ = stop_tx.send(true);
    if let Some(t) = net_task {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    if let Err(e) = mirror.core.ingest().events().flush() {
        tracing::warn!("flushing the event store: {e}");
    }
    r
}
