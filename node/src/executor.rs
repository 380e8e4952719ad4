//! The executor: claims queue entries this node can build, builds them in the sandbox and
//! reports the result.
//!
//! ```text
//! wake (accepted event │ tick │ job done) ─▶ pick an eligible entry ─▶ Claim{attempt, lease}
//!   ─▶ job: fetch source (crate::source) ─▶ sandbox build (spawn_blocking) ─▶ import artifacts
//!      and log into the content store ─▶ Built{artifacts, log, source_commit} / Failed{reason, log}
//!      while a heartbeat re-claims (same attempt, later lease) every lease/3
//! ```
//!
//! # Which entries
//!
//! An entry is eligible when the queue state says it may be claimed by this node
//! ([`QueueState::claimable_by`] semantics: enqueued, not cancelled, no `failed` report, not
//! published, fewer than `quorum` builders built it, this node did not build it, no live
//! claim), and:
//!
//! - this node holds the builder role in the policy;
//! - its architectures (or, when empty, its repository's) include [`ExecutorConfig::arch`];
//! - its requirements are met by [`ExecutorConfig::capabilities`] ([`pacmesh_protocol::matches`]);
//! - its source can be fetched: `dir` with a snapshot blob already in the content store (one
//!   still missing is looked at again at the next tick), `git`; other kinds only when
//!   [`ExecutorConfig::fail_unsupported`] is set, and then they are claimed and reported as
//!   failed with "not supported by this node yet", so that the queue says why nothing happens;
//! - this node has made fewer than [`ExecutorConfig::max_attempts`] attempts. An attempt
//!   that ends without a report (the process was killed, or shut down mid-build) counts, so
//!   a PKGBUILD that brings the node down is not retried forever by it; other nodes may still
//!   take it. (A `failed` report is final for the entry anyway — builds are deterministic —
//!   until a maintainer enqueues it again.)
//!
//! Entries are taken oldest enqueue first. With [`ExecutorConfig::claim_delay`] set (by the
//! layer that knows the other builders), an entry is claimed only after its rank-proportional
//! delay has passed since it became claimable, and only if nobody claimed it meanwhile.
//!
//! # Attempts, leases, restarts
//!
//! A claim's attempt is this node's previous highest attempt on the entry (from its claims
//! and reports) + 1; its lease is [`ExecutorConfig::lease`] (zero: the policy's
//! `lease_secs`), never more than the 2 × `lease_secs` that ingest accepts. The heartbeat
//! repeats the claim with the same attempt and a later lease every lease/3.
//!
//! A live claim of this node's own that no job of this process holds was left by a process
//! that died (`kill -9`, power loss): it is taken again at once with attempt + 1 instead of
//! waiting for the lease to lapse. The old attempt never gets a report; the new report
//! fences both. Stale work dirs (`WORK_ROOT/job-*`) are removed at start-up.
//!
//! # Whose fault
//!
//! A problem of the entry — the PKGBUILD fails, times out, produces nothing; the source is
//! hostile, missing its PKGBUILD, names no commit, or is of a kind this node cannot fetch —
//! is reported at once as `failed`, with a one-line reason (what failed, and the last log
//! lines) and the log blob. A problem of this node — the disk, the content store, the
//! sandbox's own set-up — and a transient failure — the network during a git or AUR fetch or a
//! `CI_PKGBUILD_SOURCE` fetch ([`crate::pkgbuild_source`]), makepkg's download phase failing with a
//! network error ([`network_failure`]) — end the attempt without a report and hand the claim
//! back ([`release`]); this node claims the entry again after
//! [`ExecutorConfig::retry_delay`], doubled after each such attempt up to
//! [`ExecutorConfig::retry_max`] ([`retry_backoff`]; `Core::retries` keeps the note `queue
//! why` shows), and the last allowed attempt ([`ExecutorConfig::max_attempts`]) reports it as
//! failed ("node error …" / "transient failure …"), so that the queue does not wait in
//! silence. A checksum mismatch, a 404, a failing `build()` or a patch that does not apply are
//! problems of the entry: reported at once, never retried.
//!
//! # Shutdown
//!
//! When `shutdown` turns true the executor stops claiming and abandons running builds: the
//! sandbox's process group is killed (it would die with the process anyway: bwrap runs with
//! `--die-with-parent`), the work dir is removed, and no report is made for the abandoned
//! attempt. The lease is handed back ([`release`]): a claim for the next attempt whose lease
//! ends when it is made, so the entry is claimable again at once rather than when the lease
//! would have lapsed. A maintainer's `cancel` of a running entry abandons its build the same
//! way (without a release: a cancelled entry is claimed by nobody).
//!
//! # Resources
//!
//! While [`crate::health::Health::refusal`] says the node is short of disk or memory, nothing
//! new is claimed; running builds go on.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pacmesh_protocol::{
    Artifact, Capabilities, EventBody, FileName, Hash, QueueEntry, Roles, Sha256, Source,
    Timestamp, matches,
};
use pacmesh_sandbox::{BuildConfig, BuildResult, Builder, ChrootConfig, Profile};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::core::Core;
use crate::source::{self, SourceConfig};
use crate::state::{EntryRecord, QueueState};
use crate::store::BlobStore;

/// Longest `Failed.reason` this node writes (the protocol allows 4096 bytes).
pub const MAX_REASON: usize = 1000;

/// How this node builds.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// `CARCH`, and the architecture an entry must target.
    pub arch: String,
    /// What entries' requirements are matched against.
    pub capabilities: Capabilities,
    /// Sandbox profile.
    pub profile: Profile,
    /// Concurrent builds (at least 1).
    pub slots: usize,
    /// Per-job work dirs `job-<entry>-<attempt>` live here; stale ones are removed at
    /// start-up. Give the executor a folder of its own.
    pub work_root: PathBuf,
    /// makepkg source cache (downloads, VCS mirrors), shared between builds.
    pub source_cache: PathBuf,
    /// How sources are fetched (git mirrors, local git URLs, size caps).
    pub source: SourceConfig,
    /// Bytes of build log kept.
    pub log_cap: usize,
    /// SIGTERM → SIGKILL delay at a build timeout.
    pub grace: Duration,
    /// Build timeout when neither the entry nor the policy gives one.
    pub default_timeout: Duration,
    /// Claim lease; zero: the policy's `lease_secs`. Capped at 2 × `lease_secs`.
    pub lease: Duration,
    /// `PACKAGER` of the built packages.
    pub packager: String,
    /// How often to look again without an event (lapsed leases, snapshots that arrived).
    pub tick: Duration,
    /// Attempts by this node per entry (see the module docs).
    pub max_attempts: u32,
    /// Wait after an attempt that ended with a transient problem or a problem of this node
    /// rather than of the entry (the network during a source fetch or makepkg's download
    /// phase, disk, sandbox set-up): no report is made, the claim is handed back, and this node
    /// claims the entry again (attempt + 1) after this delay, doubled after each further such
    /// attempt up to [`ExecutorConfig::retry_max`]; the last allowed attempt
    /// ([`ExecutorConfig::max_attempts`]) reports it as failed.
    pub retry_delay: Duration,
    /// The longest wait between retries (see [`ExecutorConfig::retry_delay`]).
    pub retry_max: Duration,
    /// GitLab API base for `CI_PKGBUILD_SOURCE=gitlab:ID` ([`crate::pkgbuild_source`]).
    pub gitlab_url: String,
    /// Claim and fail entries whose source kind this node cannot fetch (see the module docs).
    pub fail_unsupported: bool,
    /// The bubblewrap binary.
    /// Host profile, node running as root: the unprivileged host `(uid, gid)` that starts
    /// bwrap, so the build user is not host uid 0 (config `build.run_as`).
    pub run_as: Option<(u32, u32)>,
    pub bwrap: PathBuf,
    /// The rank-proportional wait before claiming an entry that became claimable (see
    /// [`ClaimDelay`]); `None`: claim at once (a node alone in its mesh).
    pub claim_delay: Option<ClaimDelay>,
    /// Where build log lines also go as they are produced (they always go to
    /// [`Core::live_logs`], which `/logs/ENTRY` follows); lossy for
    /// slow receivers, like any broadcast channel. The stored log blob is complete.
    pub live_log: Option<broadcast::Sender<LogLine>>,
    /// Builds running now (for capability announcements).
    pub busy: Arc<std::sync::atomic::AtomicU32>,
    /// Claim nothing until this turns true (a mesh node first catches up with its peers, so
    /// that it does not re-take an orphaned claim of its own on an entry another node finished
    /// meanwhile). `None`: ready at once.
    pub ready: Option<watch::Receiver<bool>>,
}

/// How long to wait, once an entry is claimable, before claiming it: the design's
/// rank-proportional delay (this node's position in the rendezvous ranking of the live
/// eligible builders, [`pacmesh_protocol::rendezvous_rank`], times a step), so that the first
/// ranked builder claims at once and the others only if no claim appeared meanwhile. Provided
/// by the layer that knows the other builders' announcements. Not applied when re-taking this
/// node's own orphaned claim.
#[derive(Clone)]
pub struct ClaimDelay(pub Arc<ClaimDelayFn>);

/// `(entry id, entry, the architectures it may be built for) → delay`. Called while the
/// executor holds the ingest lock: it must not take it.
pub type ClaimDelayFn =
    dyn Fn(&Hash, &QueueEntry, &[pacmesh_protocol::Name]) -> Duration + Send + Sync;

impl std::fmt::Debug for ClaimDelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClaimDelay(..)")
    }
}

/// One line of a running build's log (see [`ExecutorConfig::live_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The entry being built.
    pub entry: Hash,
    /// The attempt.
    pub attempt: u32,
    /// The line, without its newline.
    pub line: String,
}

impl ExecutorConfig {
    /// Defaults under `data_dir`: `executor/` (work), `sources/`, `git/`; host profile, one
    /// slot, 16 MiB logs, 10 s grace, 1 h default timeout, the policy's lease, 5 s tick,
    /// 3 attempts.
    pub fn new(data_dir: &Path, capabilities: Capabilities) -> Self {
        ExecutorConfig {
            arch: capabilities.arch.to_string(),
            capabilities,
            profile: Profile::Host,
            slots: 1,
            work_root: data_dir.join("executor"),
            source_cache: data_dir.join("sources"),
            source: SourceConfig::new(data_dir.join("git")),
            log_cap: 16 << 20,
            grace: Duration::from_secs(10),
            default_timeout: Duration::from_secs(3600),
            lease: Duration::ZERO,
            packager: "pacmesh <pacmesh@localhost>".into(),
            tick: Duration::from_secs(5),
            max_attempts: 3,
            retry_delay: Duration::from_secs(60),
            retry_max: Duration::from_secs(3600),
            gitlab_url: crate::config::DEFAULT_GITLAB_URL.to_string(),
            fail_unsupported: true,
            bwrap: "bwrap".into(),
            run_as: None,
            live_log: None,
            busy: Arc::default(),
            ready: None,
            claim_delay: None,
        }
    }

    /// From the node's resolved configuration. The chroot profile without a base root falls
    /// back to the host profile (with a warning).
    pub fn from_config(
        cfg: &crate::config::Config,
        capabilities: Capabilities,
        core: &Core,
    ) -> Self {
        let mut e = ExecutorConfig::new(&cfg.data_dir, capabilities);
        e.arch = cfg.arch.clone();
        e.profile = match (cfg.profile.as_str(), &cfg.base_root) {
            ("chroot", Some(base)) => Profile::Chroot(ChrootConfig::new(base.clone())),
            ("chroot", None) => {
                tracing::warn!(
                    "build profile chroot needs a base root; building with the host profile"
                );
                Profile::Host
            }
            _ => Profile::Host,
        };
        e.slots = cfg.slots.max(1) as usize;
        e.default_timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        e.log_cap = cfg.log_cap_bytes;
        e.run_as = cfg.run_as;
        e.source.aur_url = cfg.aur_url.clone();
        e.gitlab_url = cfg.gitlab_url.clone();
        e.retry_delay = cfg.retry_initial;
        e.retry_max = cfg.retry_max;
        e.max_attempts = cfg.max_attempts;
        e.packager = format!("pacmesh node <{}@pacmesh.invalid>", core.key.peer_id());
        e
    }
}

/// What one job ended with (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
enum JobEnd {
    Built,
    Failed,
    Abandoned,
    Retry,
    ReportRefused,
}

/// An entry picked for a claim.
#[derive(Debug, Clone)]
struct Pick {
    id: Hash,
    entry: QueueEntry,
    enqueued_secs: u64,
    attempt: u32,
    lease: Duration,
    timeout: Duration,
    /// A dependency (`QueueEntry::after`) failed or was cancelled: report this entry failed.
    broken_dependency: Option<String>,
    /// The packages the `after` entries built (their first `built` report each): in the
    /// chroot profile they are installable in the build root (see [`dependency_repo`]).
    dep_artifacts: Vec<Artifact>,
}

/// Name of the job-local pacman repository holding the packages of an entry's `after`
/// entries (chroot profile).
pub const DEPS_REPO: &str = "pacmesh-deps";

/// The packages the `after` entries of `q` built: the artifacts of each one's published
/// build, else of its first `built` report (all agreed builds of an entry have the same file
/// names).
pub fn dependency_artifacts(state: &QueueState, q: &QueueEntry) -> Vec<Artifact> {
    let mut out = Vec::new();
    for dep in &q.after {
        let Some(d) = state.entry(dep) else { continue };
        if let Some(crate::state::ReportOutcome::Built { artifacts, .. }) =
            d.built().next().map(|r| &r.outcome)
        {
            out.extend(artifacts.iter().cloned());
        }
    }
    out
}

/// Makes the job-local repository [`DEPS_REPO`] in `dir` from `artifacts` (packages only,
/// exported from the content store, each checked against its BLAKE3 on the way), so that a
/// chroot build installs its dependencies as the mesh built them, not from elsewhere.
/// A package not in this node's store yet is a node-side problem (it is being replicated):
/// the attempt is retried.
pub fn dependency_repo(
    blobs: &dyn BlobStore,
    artifacts: &[Artifact],
    dir: &Path,
) -> Result<Option<pacmesh_sandbox::PacmanRepo>, String> {
    let pkgs: Vec<&Artifact> = artifacts
        .iter()
        .filter(|a| a.file_name.as_str().contains(".pkg.tar"))
        .collect();
    if pkgs.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for a in pkgs {
        let dest = dir.join(a.file_name.as_str());
        match blobs.has(&a.blake3) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "dependency package {} is not on this node yet (replication)",
                    a.file_name
                ));
            }
            Err(e) => return Err(format!("content store: {e}")),
        }
        blobs
            .export(&a.blake3, &dest)
            .map_err(|e| format!("exporting {}: {e}", a.file_name))?;
        files.push(dest);
    }
    let db = dir.join(format!("{DEPS_REPO}.db.tar.zst"));
    pacmesh_repo::db::repo_add(&db, &files, &pacmesh_repo::db::AddOptions::default(), None)
        .map_err(|e| format!("making the dependency repository: {e}"))?;
    Ok(Some(pacmesh_sandbox::PacmanRepo::local(
        DEPS_REPO,
        dir,
        "Optional TrustAll",
    )))
}

/// Where an entry's dependencies (`QueueEntry::after`) stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterState {
    /// All built (by quorum) or published.
    Ready,
    /// This one is still to be built (or not seen yet by this node).
    Waiting(Hash),
    /// One failed or was cancelled: why.
    Broken(String),
}

/// Where `q`'s dependencies stand in `state`.
pub fn after_state(state: &QueueState, q: &QueueEntry, quorum: u32) -> AfterState {
    for dep in &q.after {
        let Some(d) = state.entry(dep) else {
            return AfterState::Waiting(*dep);
        };
        let label = d
            .enqueued
            .as_ref()
            .map(|e| crate::views::source_label(&e.entry.source))
            .unwrap_or_else(|| dep.fmt_short().to_string());
        if d.enqueued.is_none() {
            return AfterState::Waiting(*dep);
        }
        if d.cancelled.is_some() {
            return AfterState::Broken(format!(
                "dependency {label} (entry {}) was cancelled",
                dep.fmt_short()
            ));
        }
        if let Some(f) = d.failed().next() {
            let why = match &f.outcome {
                crate::state::ReportOutcome::Failed { reason, .. } => reason.as_str(),
                _ => "",
            };
            return AfterState::Broken(format!(
                "dependency {label} (entry {}) failed: {why}",
                dep.fmt_short()
            ));
        }
        if state.published(d).is_none() && d.builders_built().len() < quorum.max(1) as usize {
            return AfterState::Waiting(*dep);
        }
    }
    AfterState::Ready
}

/// Runs the executor until `shutdown` is true (see the [module docs](self)).
pub async fn run(
    core: Arc<Core>,
    cfg: ExecutorConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut cfg = cfg;
    cfg.slots = cfg.slots.max(1);
    std::fs::create_dir_all(&cfg.work_root)
        .with_context(|| format!("cannot create {}", cfg.work_root.display()))?;
    // Canonical, so that the sandbox's command line (which names the canonical work dir)
    // can be matched when a build is abandoned.
    cfg.work_root = std::fs::canonicalize(&cfg.work_root)
        .with_context(|| format!("cannot open {}", cfg.work_root.display()))?;
    let expired = expire_source_cache(&cfg.source_cache, SOURCE_CACHE_TTL);
    if expired > 0 {
        tracing::info!(expired, "removed source cache entries unused for 30 days");
    }
    let removed = clean_stale(&cfg.work_root);
    if removed > 0 {
        tracing::info!(removed, "removed stale work dirs");
    }
    let cfg = Arc::new(cfg);
    tracing::info!(arch = %cfg.arch, slots = cfg.slots, "executor started");
    if !core
        .ingest()
        .policy()
        .role_of(&core.public)
        .contains(Roles::BUILDER)
    {
        tracing::warn!(node = %core.public, "the mesh policy does not list this node as a builder: it claims nothing until a policy does");
    }

    let mut changed = core.subscribe();
    let mut watching = true;
    let mut tick = tokio::time::interval(cfg.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut jobs: JoinSet<JobEnd> = JoinSet::new();
    let mut running: HashMap<Hash, watch::Sender<bool>> = HashMap::new();
    let mut task_entry: HashMap<tokio::task::Id, (Hash, u32)> = HashMap::new();
    let mut book = Book::default();

    let mut last_sweep = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        if last_sweep.elapsed() > Duration::from_secs(3600) {
            last_sweep = Instant::now();
            let cache = cfg.source_cache.clone();
            tokio::task::spawn_blocking(move || expire_source_cache(&cache, SOURCE_CACHE_TTL));
        }
        book.cooldown.retain(|_, until| *until > Instant::now());
        book.wake = None;
        let ready = cfg.ready.as_ref().is_none_or(|r| *r.borrow());
        while ready && running.len() < cfg.slots {
            let Some(p) = pick(&core, &cfg, &running, &mut book) else {
                break;
            };
            match claim(&core, &p, Timestamp::now()) {
                Ok(ev) => {
                    tracing::info!(entry = %p.id.fmt_short(), attempt = p.attempt, claim = %ev.fmt_short(), "claimed");
                    let (tx, rx) = watch::channel(false);
                    let h = jobs.spawn(job(core.clone(), cfg.clone(), p.clone(), tx.clone(), rx));
                    task_entry.insert(h.id(), (p.id, p.attempt));
                    running.insert(p.id, tx);
                    cfg.busy.store(running.len() as u32, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::warn!(entry = %p.id.fmt_short(), "claim refused: {e:#}");
                    book.cooldown
                        .insert(p.id, Instant::now() + Duration::from_secs(60));
                }
            }
        }
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() {
                    break;
                }
            }
            r = changed.changed(), if watching => watching = r.is_ok(),
            _ = wait_ready(&cfg.ready), if !ready => {}
            _ = tick.tick() => {}
            _ = sleep_until(book.wake), if book.wake.is_some() => {}
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => {
                let (id, end) = match done {
                    Ok((id, end)) => (id, Some(end)),
                    Err(e) => {
                        tracing::error!("a build job panicked: {e}");
                        (e.id(), None)
                    }
                };
                if let Some((entry, attempt)) = task_entry.remove(&id) {
                    running.remove(&entry);
                    cfg.busy.store(running.len() as u32, Ordering::Relaxed);
                    match end {
                        None => {
                            book.cooldown
                                .insert(entry, Instant::now() + Duration::from_secs(60));
                        }
                        Some(JobEnd::Retry) => {
                            let wait = retry_backoff(&cfg, attempt);
                            book.cooldown.insert(entry, Instant::now() + wait);
                            if let Some(n) = core.retries().get_mut(&entry) {
                                n.next_at = Timestamp::now().saturating_add(wait);
                            }
                        }
                        Some(JobEnd::Built | JobEnd::Failed) => {
                            core.retries().remove(&entry);
                        }
                        _ => {}
                    }
                    tracing::debug!(entry = %entry.fmt_short(), ?end, "job done");
                }
            }
        }
    }

    if !running.is_empty() {
        tracing::info!(
            jobs = running.len(),
            "shutting down: abandoning running builds"
        );
    }
    for tx in running.values() {
        let _ = tx.send(true);
    }
    // Hand the abandoned builds back: a claim with a later attempt whose lease ends now
    // replaces ours, is not live, and so makes the entry claimable again at once (by any
    // builder) instead of after the lease.
    let drain = async {
        while let Some(done) = jobs.join_next_with_id().await {
            let Ok((tid, JobEnd::Abandoned)) = done else {
                continue;
            };
            let Some((entry, attempt)) = task_entry.get(&tid).copied() else {
                continue;
            };
            let c = core.clone();
            match tokio::task::spawn_blocking(move || release(&c, entry, attempt)).await {
                Ok(Ok(ev)) => {
                    tracing::info!(entry = %entry.fmt_short(), release = %ev.fmt_short(), "lease released")
                }
                Ok(Err(e)) => {
                    tracing::warn!(entry = %entry.fmt_short(), "cannot release the lease: {e:#}")
                }
                Err(e) => tracing::warn!("lease release task failed: {e}"),
            }
        }
    };
    if tokio::time::timeout(cfg.grace + Duration::from_secs(30), drain)
        .await
        .is_err()
    {
        tracing::warn!("build jobs did not stop in time");
    }
    tracing::info!("executor stopped");
    Ok(())
}

/// The wait before this node's next attempt after attempt `attempt` ended transiently:
/// [`ExecutorConfig::retry_delay`] doubled for each earlier attempt, at most
/// [`ExecutorConfig::retry_max`].
pub fn retry_backoff(cfg: &ExecutorConfig, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    cfg.retry_delay
        .saturating_mul(1u32 << doublings)
        .min(cfg.retry_max.max(cfg.retry_delay))
}

/// A transient failure this node will try again (shown by `queue why`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryNote {
    /// The attempt that failed.
    pub attempt: u32,
    /// Attempts this node makes at most.
    pub max_attempts: u32,
    /// What went wrong.
    pub reason: String,
    /// When this node tries again.
    pub next_at: Timestamp,
}

/// Gives up this node's claim on `entry` (attempt `attempt`, abandoned at shutdown): a claim
/// for attempt + 1 with `lease_until` = its own time. The state keeps a builder's greatest
/// claim by (attempt, lease), so this one replaces the running one; a lease that ends at once
/// is not live, so the entry is claimable again ([`QueueState::is_claimable`]).
/// [`own_attempts`] does not count such a release as an attempt.
pub fn release(core: &Core, entry: Hash, attempt: u32) -> Result<Hash> {
    core.submit(EventBody::Claim {
        entry,
        attempt: attempt + 1,
        lease_until: Timestamp::now(),
    })
}

/// Removes `job-*` dirs under `work_root`; returns how many.
fn clean_stale(work_root: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(work_root) else {
        return 0;
    };
    let mut n = 0;
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with("job-") {
            match pacmesh_sandbox::overlay::remove_tree(&e.path()) {
                Ok(()) => n += 1,
                Err(err) => {
                    tracing::warn!(dir = %e.path().display(), "cannot remove a stale work dir: {err}")
                }
            }
        }
    }
    n
}

/// Why a running build of `e` by `me` is no longer wanted, if it is not: the entry was
/// cancelled or published, enough other builders built it, or another builder's claim crossed
/// ours and wins the rendezvous ranking ([`pacmesh_protocol::claim_winner`]; the other node
/// computes the same and goes on).
fn superseded(
    state: &QueueState,
    e: &EntryRecord,
    me: &pacmesh_protocol::PublicKey,
    now: Timestamp,
    quorum: u32,
) -> Option<String> {
    if e.cancelled.is_some() {
        return Some("entry cancelled".into());
    }
    if state.published(e).is_some() {
        return Some("entry published".into());
    }
    let others = e.builders_built().iter().filter(|b| *b != me).count();
    if others >= quorum.max(1) as usize {
        return Some(format!("entry built by {others} other builder(s)"));
    }
    e.live_claims(now)
        .find(|c| {
            c.builder != *me && pacmesh_protocol::claim_winner(&e.id, me, &c.builder) == c.builder
        })
        .map(|c| {
            format!(
                "claim crossed with {}'s, which ranks first",
                c.builder.fmt_short()
            )
        })
}

/// The attempts this node made on `e` so far (its highest attempt number).
fn own_attempts(e: &EntryRecord, me: &pacmesh_protocol::PublicKey) -> u32 {
    // A release (lease ending at the claim's own time, see [`release`]) hands an attempt
    // back; it is not one.
    let claimed = e.claims.get(me).map_or(0, |c| {
        if c.lease_until <= c.time {
            c.attempt.saturating_sub(1)
        } else {
            c.attempt
        }
    });
    let reported = e
        .reports
        .keys()
        .filter(|(b, _, _)| b == me)
        .map(|(_, a, _)| *a)
        .max()
        .unwrap_or(0);
    claimed.max(reported)
}

/// Why this node does not take `e` now, or `None` if it may. `running`: entries this
/// process builds.
fn ineligible(
    state: &QueueState,
    e: &EntryRecord,
    me: &pacmesh_protocol::PublicKey,
    now: Timestamp,
    quorum: u32,
    running: &HashMap<Hash, watch::Sender<bool>>,
) -> Option<&'static str> {
    if running.contains_key(&e.id) {
        return Some("building");
    }
    if e.enqueued.is_none() || e.cancelled.is_some() || e.failed().next().is_some() {
        return Some("done");
    }
    if e.awaiting_review().is_some() {
        // A change a maintainer must approve first (`QueueEntry::review`).
        return Some("review");
    }
    let built = e.builders_built();
    if built.contains(me) || built.len() >= quorum.max(1) as usize || state.published(e).is_some() {
        return Some("done");
    }
    // A live claim of our own that no job here holds was left by a dead process: ours to
    // take again at once.
    if e.live_claims(now).any(|c| c.builder != *me) {
        return Some("claimed");
    }
    None
}

/// The main loop's bookkeeping between picks.
#[derive(Debug, Default)]
struct Book {
    /// Entries not to look at before the instant (refused claims, node-side retries).
    cooldown: HashMap<Hash, Instant>,
    /// Entries whose skip was logged once.
    noted: HashSet<Hash>,
    /// Since when an entry has been claimable (for [`ExecutorConfig::claim_delay`]).
    eligible_since: HashMap<Hash, Instant>,
    /// The earliest instant a delayed entry becomes ours to claim.
    wake: Option<Instant>,
}

async fn wait_ready(r: &Option<watch::Receiver<bool>>) {
    if let Some(r) = r {
        let mut r = r.clone();
        let _ = r.wait_for(|v| *v).await;
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

fn pick(
    core: &Core,
    cfg: &ExecutorConfig,
    running: &HashMap<Hash, watch::Sender<bool>>,
    book: &mut Book,
) -> Option<Pick> {
    let Book {
        cooldown,
        noted,
        eligible_since,
        wake,
    } = book;
    if let Some(why) = core.health.refusal() {
        if noted.insert(Hash::from_bytes([0; 32])) {
            tracing::warn!("not claiming: {why}");
        }
        return None;
    }
    noted.remove(&Hash::from_bytes([0; 32]));
    let now = Timestamp::now();
    let me = core.public;
    let mut candidates: Vec<(Timestamp, Pick)> = Vec::new();
    {
        let ingest = core.ingest();
        let policy = ingest.policy();
        if !policy.role_of(&me).contains(Roles::BUILDER) {
            return None;
        }
        let state = ingest.state();
        let lease_cap = Duration::from_secs(2 * u64::from(policy.lease_secs));
        let lease = if cfg.lease.is_zero() {
            Duration::from_secs(u64::from(policy.lease_secs))
        } else {
            cfg.lease
        }
        .min(lease_cap)
        .max(Duration::from_secs(1));
        for e in state.entries() {
            if cooldown.contains_key(&e.id) {
                continue;
            }
            if ineligible(state, e, &me, now, policy.quorum, running).is_some() {
                eligible_since.remove(&e.id);
                continue;
            }
            let Some(enq) = &e.enqueued else { continue };
            let q = &enq.entry;
            let arches: &[pacmesh_protocol::Name] = if q.arches.is_empty() {
                policy.repo(q.repo.as_str()).map_or(&[], |r| &r.arches[..])
            } else {
                &q.arches
            };
            let arch_ok = arches.iter().any(|a| a.as_str() == cfg.arch);
            if !arch_ok || matches(&cfg.capabilities, &q.needs).is_err() {
                continue;
            }
            if !source::is_supported(&q.source) && !cfg.fail_unsupported {
                continue;
            }
            let orphaned = e.live_claims(now).any(|c| c.builder == me);
            if let Some(d) = &cfg.claim_delay
                && !orphaned
            {
                let since = *eligible_since.entry(e.id).or_insert_with(Instant::now);
                let at = since + (d.0)(&e.id, q, arches);
                if at > Instant::now() {
                    *wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
            }
            let prev = own_attempts(e, &me);
            if prev >= cfg.max_attempts {
                if noted.insert(e.id) {
                    tracing::warn!(entry = %e.id.fmt_short(), attempts = prev, "not building again: this node's attempts ended without a result");
                }
                continue;
            }
            let broken_dependency = match after_state(state, q, policy.quorum) {
                AfterState::Ready => None,
                AfterState::Waiting(dep) => {
                    if noted.insert(e.id) {
                        tracing::info!(entry = %e.id.fmt_short(), dependency = %dep.fmt_short(), "waiting for a dependency to be built first");
                    }
                    continue;
                }
                AfterState::Broken(why) => Some(why),
            };
            let timeout = match q.timeout_secs {
                Some(s) => Duration::from_secs(u64::from(s.max(1))),
                None if policy.build_timeout_secs > 0 => {
                    Duration::from_secs(u64::from(policy.build_timeout_secs))
                }
                None => cfg.default_timeout,
            };
            let dep_artifacts = match broken_dependency {
                None => dependency_artifacts(state, q),
                Some(_) => Vec::new(),
            };
            candidates.push((
                enq.time,
                Pick {
                    id: e.id,
                    entry: q.clone(),
                    enqueued_secs: enq.time.0 / 1000,
                    attempt: prev + 1,
                    lease,
                    timeout,
                    broken_dependency,
                    dep_artifacts,
                },
            ));
        }
    }
    candidates.sort_by_key(|c| (c.0, c.1.id));
    for (_, p) in candidates {
        if let Source::Dir { snapshot, path } = &p.entry.source {
            match snapshot {
                None => {
                    if noted.insert(p.id) {
                        tracing::warn!(entry = %p.id.fmt_short(), %path, "dir entry without a snapshot: this node cannot build it");
                    }
                    continue;
                }
                Some(h) if !core.blobs.has(h).unwrap_or(false) => {
                    if noted.insert(p.id) {
                        tracing::info!(entry = %p.id.fmt_short(), snapshot = %h.fmt_short(), "waiting for the snapshot blob");
                    }
                    continue;
                }
                Some(_) => {}
            }
        }
        return Some(p);
    }
    None
}

/// Submits a claim (or a renewal) for `p` with a lease from `now`.
fn claim(core: &Core, p: &Pick, now: Timestamp) -> Result<Hash> {
    core.submit(EventBody::Claim {
        entry: p.id,
        attempt: p.attempt,
        lease_until: now.saturating_add(p.lease),
    })
}

/// How the sandbox run of a job ended, for `pacmesh_builds_total` (set by [`execute`]).
type OutcomeCell = Arc<Mutex<Option<&'static str>>>;

/// One claimed entry: its live log stream and its metrics around [`job_inner`].
async fn job(
    core: Arc<Core>,
    cfg: Arc<ExecutorConfig>,
    p: Pick,
    abandon_tx: watch::Sender<bool>,
    abandon: watch::Receiver<bool>,
) -> JobEnd {
    core.live_logs.begin(p.id, p.attempt, core.public);
    core.live_logs.push(
        p.id,
        p.attempt,
        &format!(
            "==> pacmesh: attempt {} on node {} ({})",
            p.attempt,
            core.key.peer_id(),
            describe(&p.entry.source)
        ),
    );
    let cell: OutcomeCell = Arc::new(Mutex::new(None));
    let end = job_inner(
        core.clone(),
        cfg,
        p.clone(),
        abandon_tx,
        abandon,
        cell.clone(),
    )
    .await;
    let label = match end {
        JobEnd::Built => Some("success"),
        JobEnd::Failed => Some(
            cell.lock()
                .unwrap_or_else(|e| e.into_inner())
                .unwrap_or("failed"),
        ),
        JobEnd::Retry => Some("node_error"),
        JobEnd::Abandoned => {
            let ingest = core.ingest();
            let quorum = ingest.policy().quorum;
            let state = ingest.state();
            let done_elsewhere = state.entry(&p.id).is_some_and(|e| {
                e.cancelled.is_none()
                    && (state.published(e).is_some()
                        || e.builders_built()
                            .iter()
                            .filter(|b| **b != core.public)
                            .count()
                            >= quorum.max(1) as usize)
            });
            Some(if done_elsewhere {
                "already_built"
            } else {
                "cancelled"
            })
        }
        JobEnd::ReportRefused => None,
    };
    if let Some(l) = label {
        core.metrics.build_outcome(l);
    }
    let said = match end {
        JobEnd::Built => "built",
        JobEnd::Failed => "failed",
        JobEnd::Abandoned => "abandoned",
        JobEnd::Retry => "node error: will retry",
        JobEnd::ReportRefused => "report refused",
    };
    core.live_logs
        .push(p.id, p.attempt, &format!("==> pacmesh: {said}"));
    core.live_logs.end(p.id, p.attempt, said);
    end
}

/// One claimed entry, from source to report.
async fn job_inner(
    core: Arc<Core>,
    cfg: Arc<ExecutorConfig>,
    p: Pick,
    abandon_tx: watch::Sender<bool>,
    mut abandon: watch::Receiver<bool>,
    cell: OutcomeCell,
) -> JobEnd {
    let job_dir = cfg
        .work_root
        .join(format!("job-{}-{}", &p.id.to_hex()[..16], p.attempt));

    // Heartbeat: renew the lease every lease/3; abandon when the build is no longer wanted.
    let (hb_stop_tx, mut hb_stop) = watch::channel(false);
    let heartbeat = {
        let (core, p) = (core.clone(), p.clone());
        let mut changed = core.subscribe();
        tokio::spawn(async move {
            let period = (p.lease / 3).max(Duration::from_millis(200));
            let mut next = tokio::time::Instant::now() + period;
            let mut watching = true;
            loop {
                let renew = tokio::select! {
                    _ = tokio::time::sleep_until(next) => true,
                    r = changed.changed(), if watching => {
                        watching = r.is_ok();
                        false
                    }
                    _ = hb_stop.wait_for(|s| *s) => return,
                };
                let why = {
                    let ingest = core.ingest();
                    let quorum = ingest.policy().quorum;
                    let state = ingest.state();
                    state
                        .entry(&p.id)
                        .and_then(|e| superseded(state, e, &core.public, Timestamp::now(), quorum))
                };
                if let Some(why) = why {
                    tracing::info!(entry = %p.id.fmt_short(), "{why}: abandoning the build");
                    let _ = abandon_tx.send(true);
                    return;
                }
                if !renew {
                    continue;
                }
                next = tokio::time::Instant::now() + period;
                let (c, q) = (core.clone(), p.clone());
                match tokio::task::spawn_blocking(move || claim(&c, &q, Timestamp::now())).await {
                    Ok(Ok(_)) => tracing::debug!(entry = %p.id.fmt_short(), "lease renewed"),
                    Ok(Err(e)) => {
                        tracing::warn!(entry = %p.id.fmt_short(), "lease renewal refused: {e:#}")
                    }
                    Err(e) => tracing::warn!("lease renewal task failed: {e}"),
                }
            }
        })
    };

    let cancel = Arc::new(AtomicBool::new(false));
    let work = {
        let (core, cfg, p, dir) = (core.clone(), cfg.clone(), p.clone(), job_dir.clone());
        let cancel = cancel.clone();
        tokio::task::spawn_blocking(move || execute(&core, &cfg, &p, &dir, &cancel, &cell))
    };
    tokio::pin!(work);
    let outcome = tokio::select! {
        r = &mut work => Some(r),
        _ = abandon.wait_for(|a| *a) => None,
    };
    let _ = hb_stop_tx.send(true);
    let _ = heartbeat.await;

    let report = match outcome {
        None => {
            // Stop a git transfer, kill the sandbox until the blocking build returns, then
            // drop its result.
            cancel.store(true, Ordering::Relaxed);
            let deadline = Instant::now() + cfg.grace + Duration::from_secs(20);
            loop {
                kill_job_processes(&job_dir);
                tokio::select! {
                    _ = &mut work => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                if Instant::now() > deadline {
                    tracing::warn!(entry = %p.id.fmt_short(), "the abandoned build did not stop");
                    break;
                }
            }
            remove_dir(&job_dir).await;
            tracing::info!(entry = %p.id.fmt_short(), attempt = p.attempt, "build abandoned; no report");
            return JobEnd::Abandoned;
        }
        Some(Ok(Ok(body))) => body,
        Some(r) => {
            let fault = match r {
                Ok(Err(fault)) => fault,
                Err(panic) => NodeFault::new(format!("the build task panicked: {panic}"), None),
                Ok(Ok(_)) => unreachable!(),
            };
            if p.attempt < cfg.max_attempts {
                remove_dir(&job_dir).await;
                let wait = retry_backoff(&cfg, p.attempt);
                tracing::warn!(entry = %p.id.fmt_short(), attempt = p.attempt, retry_in = ?wait, "transient or node-side problem, no report; trying again later: {}", fault.reason);
                core.retries().insert(
                    p.id,
                    RetryNote {
                        attempt: p.attempt,
                        max_attempts: cfg.max_attempts,
                        reason: clip_reason(&fault.reason),
                        next_at: Timestamp::now().saturating_add(wait),
                    },
                );
                core.live_logs.push(
                    p.id,
                    p.attempt,
                    &format!(
                        "==> pacmesh: transient failure (attempt {} of {}): {}; trying again in {} s",
                        p.attempt,
                        cfg.max_attempts,
                        clip_reason(&fault.reason),
                        wait.as_secs()
                    ),
                );
                // Hand the claim back: the entry shows as waiting (for this node's retry, or
                // for another builder that may have the network this one lacks).
                let (c, id, attempt) = (core.clone(), p.id, p.attempt);
                match tokio::task::spawn_blocking(move || release(&c, id, attempt)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(entry = %p.id.fmt_short(), "cannot release the lease: {e:#}")
                    }
                    Err(e) => tracing::warn!("lease release task failed: {e}"),
                }
                return JobEnd::Retry;
            }
            EventBody::Failed {
                entry: p.id,
                attempt: p.attempt,
                reason: clip_reason(&format!(
                    "{} (attempt {} of {}, giving up): {}",
                    if fault.transient {
                        "transient failure"
                    } else {
                        "node error"
                    },
                    p.attempt,
                    cfg.max_attempts,
                    fault.reason
                )),
                log: fault.log,
            }
        }
    };
    remove_dir(&job_dir).await;
    // A cancel or shutdown that came while the result was being imported: no report either.
    if *abandon.borrow() {
        return JobEnd::Abandoned;
    }
    let end = match &report {
        EventBody::Built { .. } => JobEnd::Built,
        _ => JobEnd::Failed,
    };
    // Core pins the blobs of every accepted event (artifacts, log) as GC roots.
    let c = core.clone();
    let res = tokio::task::spawn_blocking(move || c.submit(report)).await;
    match res {
        Ok(Ok(id)) => {
            tracing::info!(entry = %p.id.fmt_short(), attempt = p.attempt, report = %id.fmt_short(), result = ?end, "reported");
            end
        }
        Ok(Err(e)) => {
            tracing::error!(entry = %p.id.fmt_short(), "report refused: {e:#}");
            JobEnd::ReportRefused
        }
        Err(e) => {
            tracing::error!(entry = %p.id.fmt_short(), "report task failed: {e}");
            JobEnd::ReportRefused
        }
    }
}

async fn remove_dir(dir: &Path) {
    let d = dir.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = pacmesh_sandbox::overlay::remove_tree(&d) {
            tracing::warn!(dir = %d.display(), "cannot remove the work dir: {e}");
        }
    })
    .await;
}

/// Fetch, build, import (blocking). Returns the report to submit.
fn execute(
    core: &Core,
    cfg: &ExecutorConfig,
    p: &Pick,
    job_dir: &Path,
    cancel: &AtomicBool,
    cell: &OutcomeCell,
) -> Result<EventBody, NodeFault> {
    let failed = |reason: String, log: Option<Hash>| {
        Ok(EventBody::Failed {
            entry: p.id,
            attempt: p.attempt,
            reason: clip_reason(&reason),
            log,
        })
    };
    let log_blob = |text: &str| match core.blobs.import_bytes(text.as_bytes()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::error!("cannot store the build log: {e}");
            None
        }
    };
    if let Err(e) = std::fs::create_dir_all(job_dir) {
        return Err(NodeFault::new(
            format!("cannot create the work dir: {e}"),
            None,
        ));
    }
    if let Some(why) = &p.broken_dependency {
        return failed(why.clone(), log_blob(&format!("==> pacmesh: {why}\n")));
    }
    let dest = job_dir.join("source");
    let fetched = match source::fetch(&p.entry, &*core.blobs, &cfg.source, &dest, cancel) {
        Ok(f) => f,
        Err(e) => {
            let what = match &e {
                source::SourceError::Unsupported { .. } => "",
                _ => "cannot fetch the source: ",
            };
            let line = format!("{what}{e}");
            let log = log_blob(&format!("==> pacmesh: {line}\n"));
            tracing::warn!(entry = %p.id.fmt_short(), "{line}");
            if e.is_transient() {
                return Err(NodeFault::transient(line, log));
            }
            return failed(line, log);
        }
    };
    // A tree folder whose `.CI/config` names an upstream PKGBUILD source (`crate::upstream`).
    let (fetched, upstream) = match &p.entry.source {
        Source::Tree { pkgbases, .. } if pkgbases.len() == 1 => {
            match crate::pkgbuild_source::overlay(
                &cfg.source,
                &cfg.gitlab_url,
                &fetched,
                pkgbases[0].as_str(),
                &job_dir.join("upstream"),
                cancel,
            ) {
                Ok(Some((f, u))) => (f, Some(u)),
                Ok(None) => (fetched, None),
                Err(e) => {
                    let line = format!("cannot fetch the upstream PKGBUILD: {e}");
                    let log = log_blob(&format!("==> pacmesh: {line}\n"));
                    tracing::warn!(entry = %p.id.fmt_short(), "{line}");
                    if e.is_transient() {
                        return Err(NodeFault::transient(line, log));
                    }
                    return failed(line, log);
                }
            }
        }
        _ => (fetched, None),
    };
    if let Some(u) = &upstream {
        let line = format!(
            "==> pacmesh: CI_PKGBUILD_SOURCE={}: PKGBUILD from {} at commit {} (the folder's .CI/ on top)",
            u.what, u.url, u.commit
        );
        core.live_logs.push(p.id, p.attempt, &line);
    }
    if !fetched.dir.join("PKGBUILD").is_file() {
        let line = format!("the source ({}) has no PKGBUILD", describe(&p.entry.source));
        return failed(line.clone(), log_blob(&format!("==> pacmesh: {line}\n")));
    }
    let epoch = p
        .entry
        .source_date_epoch
        .or(fetched.commit_time)
        .unwrap_or(p.enqueued_secs)
        .max(1);
    // A Chaotic-style folder: `.CI/config` may stretch the timeout and decides whether the
    // downloaded sources stay cached. (Its errors fail the build in the sandbox's interfere
    // phase, with the line named.)
    let ci = pacmesh_repo::ciconfig::read_folder(&fetched.dir)
        .ok()
        .flatten();
    let timeout = match ci.as_ref().and_then(|c| c.extra_timeout) {
        Some(x) => p.timeout.mul_f64(x).max(Duration::from_secs(1)),
        None => p.timeout,
    };
    let mut bc = BuildConfig::new(job_dir.join("work"), &cfg.source_cache);
    bc.profile = cfg.profile.clone();
    // Chroot builds install what the `after` entries built, from a job-local repository
    // searched before the configured ones: dependants are built against the mesh's fresh
    // packages.
    if let Profile::Chroot(c) = &mut bc.profile {
        match dependency_repo(&*core.blobs, &p.dep_artifacts, &job_dir.join("deps")) {
            Ok(Some(repo)) => c.repos.insert(0, repo),
            Ok(None) => {}
            Err(e) => {
                let line = format!("cannot prepare the dependencies: {e}");
                tracing::warn!(entry = %p.id.fmt_short(), "{line}");
                return Err(NodeFault::new(line, None));
            }
        }
    }
    bc.timeout = timeout;
    bc.grace = cfg.grace;
    bc.log_cap = cfg.log_cap;
    bc.source_date_epoch = epoch;
    bc.packager = cfg.packager.clone();
    bc.arch = cfg.arch.clone();
    bc.bwrap = cfg.bwrap.clone();
    bc.run_as = cfg.run_as;
    bc.rebuild_bump = p.entry.pkgrel_bump.as_ref().map(|b| b.to_string());
    tracing::info!(entry = %p.id.fmt_short(), attempt = p.attempt, source = p.entry.source.kind(), commit = ?fetched.commit, epoch, timeout_secs = timeout.as_secs(), "building");
    if cancel.load(Ordering::Relaxed) {
        return Err(NodeFault::new("abandoned".into(), None));
    }
    let short = p.id.fmt_short();
    let result = Builder::new(bc).build(&fetched.dir, &mut |line: &str| {
        tracing::trace!(entry = %short, "{line}");
        core.live_logs.push(p.id, p.attempt, line);
        if let Some(tx) = &cfg.live_log {
            let _ = tx.send(LogLine {
                entry: p.id,
                attempt: p.attempt,
                line: line.to_string(),
            });
        }
    });
    if !cancel.load(Ordering::Relaxed) {
        core.metrics
            .build_duration
            .observe(result.duration.as_secs_f64());
        let label = match &result.outcome {
            pacmesh_sandbox::Outcome::TimedOut => "timed_out",
            pacmesh_sandbox::Outcome::SandboxError { .. } => {
                core.metrics.sandbox_failures.inc();
                "node_error"
            }
            o if o.is_success() => "success",
            _ => "failed",
        };
        *cell.lock().unwrap_or_else(|e| e.into_inner()) = Some(label);
    }
    let body = report_of(core, p, &result, fetched.commit.clone());
    let _ = result.cleanup();
    if let Some(dir) = &result.source_cache_dir {
        match &ci {
            // Chaotic's default: sources are not kept without BUILDER_CACHE_SOURCES=true.
            Some(c) if !c.cache_sources => {
                let _ = pacmesh_sandbox::overlay::remove_tree(dir);
            }
            _ => touch(dir),
        }
    }
    body
}

/// How long a source cache entry is kept without being used.
pub const SOURCE_CACHE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Removes source cache entries not used for `ttl` (their mtime is set at each use); returns
/// how many.
pub fn expire_source_cache(cache: &Path, ttl: Duration) -> usize {
    let Ok(rd) = std::fs::read_dir(cache) else {
        return 0;
    };
    let now = std::time::SystemTime::now();
    let mut n = 0;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if !m.is_dir() {
            continue;
        }
        let old = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > ttl);
        if old {
            // Only when no build holds it (the sandbox takes this lock while it uses it).
            let mut l = p.as_os_str().to_owned();
            l.push(".lock");
            let ok = std::fs::File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(std::path::PathBuf::from(&l))
                .is_ok_and(|f| {
                    use std::os::fd::AsRawFd;
                    // SAFETY: flock on an fd we own, released when it closes.
                    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
                });
            if ok && pacmesh_sandbox::overlay::remove_tree(&p).is_ok() {
                let _ = std::fs::remove_file(std::path::PathBuf::from(l));
                n += 1;
            }
        }
    }
    n
}

/// A problem of this node rather than of the entry (disk, network, sandbox set-up): the
/// attempt ends without a report and the entry is tried again after
/// [`ExecutorConfig::retry_delay`]; the last allowed attempt reports it as failed.
#[derive(Debug, Clone)]
struct NodeFault {
    reason: String,
    log: Option<Hash>,
    /// A transient failure of the source or download (the network), not of this node.
    transient: bool,
}

impl NodeFault {
    fn new(reason: String, log: Option<Hash>) -> Self {
        NodeFault {
            reason,
            log,
            transient: false,
        }
    }

    fn transient(reason: String, log: Option<Hash>) -> Self {
        NodeFault {
            reason,
            log,
            transient: true,
        }
    }
}

fn describe(s: &Source) -> String {
    match s {
        Source::Dir { path, .. } => format!("dir {path}"),
        Source::Git {
            url, rev, subdir, ..
        } => {
            let mut d = format!("git {url}");
            if let Some(r) = rev {
                d.push_str(&format!(" rev {r}"));
            }
            if let Some(sd) = subdir {
                d.push_str(&format!(" subdir {sd}"));
            }
            d
        }
        Source::Aur { pkgbase } => format!("aur {pkgbase}"),
        Source::Tree { url, pkgbases, .. } => format!(
            "tree {url} folder {}",
            pkgbases
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        other => other.kind().to_string(),
    }
}

/// The `Built`/`Failed` body for a finished build, importing artifacts and log.
fn report_of(
    core: &Core,
    p: &Pick,
    r: &BuildResult,
    commit: Option<String>,
) -> Result<EventBody, NodeFault> {
    let log = core.blobs.import_bytes(r.log.as_bytes());
    let failed = |reason: String, log: Option<Hash>| {
        Ok(EventBody::Failed {
            entry: p.id,
            attempt: p.attempt,
            reason: clip_reason(&reason),
            log,
        })
    };
    if let pacmesh_sandbox::Outcome::SandboxError { .. } = &r.outcome {
        return Err(NodeFault::new(failure_reason(r), log.ok()));
    }
    if !r.outcome.is_success() {
        if r.failed_phase == Some(pacmesh_sandbox::Phase::FetchSources)
            && let Some(why) = network_failure(&r.log)
        {
            // makepkg's download phase failed on the network: may work later.
            return Err(NodeFault::transient(
                format!("{} (network: {why})", failure_reason(r)),
                log.ok(),
            ));
        }
        return failed(failure_reason(r), log.ok());
    }
    let log = match log {
        Ok(h) => h,
        Err(e) => {
            return Err(NodeFault::new(
                format!("cannot store the build log: {e}"),
                None,
            ));
        }
    };
    let mut artifacts = Vec::new();
    for a in &r.artifacts {
        let art = (|| -> Result<Artifact> {
            let h = core
                .blobs
                .import_file(&a.path)
                .with_context(|| format!("cannot store {}", a.file_name))?;
            anyhow::ensure!(
                h.to_hex() == a.blake3,
                "{} changed after the build (blake3 {} then {h})",
                a.file_name,
                a.blake3
            );
            Ok(Artifact {
                file_name: FileName::new(a.file_name.clone())
                    .with_context(|| format!("package file name {:?}", a.file_name))?,
                blake3: h,
                sha256: a.sha256.parse::<Sha256>().context("sha256")?,
                size: a.size,
            })
        })();
        match art {
            Ok(x) => artifacts.push(x),
            Err(e) => return Err(NodeFault::new(format!("{e:#}"), Some(log))),
        }
    }
    if artifacts.is_empty() {
        return failed("the build produced no package".into(), Some(log));
    }
    Ok(EventBody::Built {
        entry: p.id,
        attempt: p.attempt,
        artifacts,
        log,
        source_commit: commit,
    })
}

/// Whether the fetch phase's log shows a network failure (one that may pass), and which: curl's
/// and git's messages for DNS, connection, timeout, TLS and HTTP 5xx/429 errors. A download
/// that arrived but failed its checksum, or a 404, is not one.
pub fn network_failure(log: &str) -> Option<&'static str> {
    // Only the fetch phase's part of the log.
    let from = log.rfind("==> pacmesh: phase fetch-sources").unwrap_or(0);
    let part = &log[from..];
    if part.contains("did not pass the validity check") {
        return None;
    }
    const PATTERNS: &[(&str, &str)] = &[
        ("Could not resolve host", "name resolution"),
        ("Temporary failure in name resolution", "name resolution"),
        ("Failed to connect", "connection refused or unreachable"),
        (
            "Couldn't connect to server",
            "connection refused or unreachable",
        ),
        ("Connection refused", "connection refused"),
        ("Network is unreachable", "network unreachable"),
        ("No route to host", "no route to host"),
        ("Connection timed out", "timeout"),
        ("Operation timed out", "timeout"),
        ("Connection reset", "connection reset"),
        ("Recv failure", "connection reset"),
        ("SSL connect error", "TLS"),
        ("returned error: 5", "HTTP server error"),
        ("returned error: 429", "HTTP 429"),
        ("Empty reply from server", "empty reply"),
        ("unable to access", "git transfer"),
        ("early EOF", "git transfer"),
    ];
    PATTERNS
        .iter()
        .find(|(p, _)| part.contains(p))
        .map(|(_, why)| *why)
}

/// One line: what failed and the last lines of the log.
pub fn failure_reason(r: &BuildResult) -> String {
    let head = match (&r.error, r.failed_phase) {
        (Some(e), _) => format!("{e} ({})", r.outcome),
        (None, Some(ph)) => format!("phase {}: {}", ph.name(), r.outcome),
        (None, None) => r.outcome.to_string(),
    };
    let tail: Vec<&str> = r
        .log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("==> pacmesh:"))
        .collect();
    let tail = &tail[tail.len().saturating_sub(3)..];
    if tail.is_empty() {
        head
    } else {
        let t: Vec<String> = tail.iter().map(|l| clip(l, 300)).collect();
        format!("{head}; log: {}", t.join(" | "))
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One line (control characters become spaces), at most [`MAX_REASON`] bytes.
fn clip_reason(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clip(&one, MAX_REASON - 3)
}

/// Kills the process groups of this process's children that run in `job_dir` (the sandbox
/// of an abandoned build). The supervisor puts each child in its own process group, and
/// bwrap's command line names the build's work dir.
fn kill_job_processes(job_dir: &Path) {
    let me = std::process::id() as i32;
    let mut needle = job_dir.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let needle = needle.as_slice();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(ppid), Some(pgrp)) = (
            f.get(1).and_then(|s| s.parse::<i32>().ok()),
            f.get(2).and_then(|s| s.parse::<i32>().ok()),
        ) else {
            continue;
        };
        if ppid != me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        if !cmd.windows(needle.len()).any(|w| w == needle) {
            continue;
        }
        let target = if pgrp == pid && pgrp != 0 { -pgrp } else { pid };
        tracing::debug!(pid, "killing an abandoned build");
        // SAFETY: kill(2) with a pid or negative pgid we just read; no memory is involved.
        unsafe {
            libc::kill(target, libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::{Event, PublicKey, SigningKey};

    #[test]
    fn source_cache_entries_expire_when_unused() {
        let t = tempfile::tempdir().unwrap();
        for n in ["old-1234", "fresh-5678"] {
            std::fs::create_dir_all(t.path().join(n).join("sub")).unwrap();
            std::fs::write(t.path().join(n).join("sub/f"), "x").unwrap();
        }
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(40 * 24 * 3600);
        std::fs::File::open(t.path().join("old-1234"))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        assert_eq!(expire_source_cache(t.path(), SOURCE_CACHE_TTL), 1);
        assert!(!t.path().join("old-1234").exists());
        assert!(t.path().join("fresh-5678/sub/f").exists());
        touch(&t.path().join("fresh-5678"));
        assert_eq!(expire_source_cache(t.path(), Duration::from_secs(3600)), 0);
    }
    use pacmesh_sandbox::{Outcome, Phase};

    fn key(n: u8) -> PublicKey {
        PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
    }

    /// Applies events with fake ids (the state does not check them).
    struct Log {
        state: QueueState,
        n: u64,
    }
    impl Log {
        fn apply(&mut self, author: u8, body: EventBody) -> Hash {
            self.n += 1;
            let prev = (self.n > 1).then(|| Hash::new(b"prev"));
            let ev = Event::new(
                key(author),
                self.n,
                prev,
                Timestamp::from_millis(self.n),
                body,
            );
            let id = Hash::new(format!("event {}", self.n));
            assert!(self.state.apply(id, &ev));
            id
        }
    }

    #[test]
    fn eligibility_orphans_crossed_claims_and_cancels() {
        let (me, other, maint) = (3u8, 4u8, 2u8);
        let now = Timestamp::from_millis(1_000);
        let later = Timestamp::from_millis(600_000);
        let mut log = Log {
            state: QueueState::new(),
            n: 0,
        };
        let entry = log.apply(
            maint,
            EventBody::Enqueue(QueueEntry::new(
                pacmesh_protocol::Name::new("extra").unwrap(),
                Source::Aur {
                    pkgbase: pacmesh_protocol::Name::new("x").unwrap(),
                },
            )),
        );
        let running = HashMap::new();
        let rec = |log: &Log| log.state.entry(&entry).unwrap().clone();
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), now, 1, &running),
            None
        );
        assert_eq!(own_attempts(&rec(&log), &key(me)), 0);

        // Our own live claim, left by a dead process: ours to take again, attempt 2.
        log.apply(
            me,
            EventBody::Claim {
                entry,
                attempt: 1,
                lease_until: later,
            },
        );
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), now, 1, &running),
            None
        );
        assert_eq!(own_attempts(&rec(&log), &key(me)), 1);
        // ... but not while a job of this process holds it.
        let (tx, _rx) = watch::channel(false);
        let busy = HashMap::from([(entry, tx)]);
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), now, 1, &busy),
            Some("building")
        );
        assert_eq!(superseded(&log.state, &rec(&log), &key(me), now, 1), None);

        // Another builder's live claim: not ours; while building, the ranking decides.
        log.apply(
            other,
            EventBody::Claim {
                entry,
                attempt: 1,
                lease_until: later,
            },
        );
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), now, 1, &running),
            Some("claimed")
        );
        let winner = pacmesh_protocol::claim_winner(&entry, &key(me), &key(other));
        assert_eq!(
            superseded(&log.state, &rec(&log), &key(me), now, 1).is_some(),
            winner == key(other)
        );
        assert_eq!(
            superseded(&log.state, &rec(&log), &key(other), now, 1).is_some(),
            winner == key(me)
        );
        // Lapsed leases count for nothing.
        let after = Timestamp::from_millis(700_000);
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), after, 1, &running),
            None
        );

        // A cancel ends everything.
        log.apply(maint, EventBody::Cancel { entry });
        assert_eq!(
            ineligible(&log.state, &rec(&log), &key(me), now, 1, &running),
            Some("done")
        );
        assert_eq!(
            superseded(&log.state, &rec(&log), &key(me), now, 1).as_deref(),
            Some("entry cancelled")
        );
    }

    fn result(log: &str, outcome: Outcome, error: Option<&str>) -> BuildResult {
        BuildResult {
            outcome,
            failed_phase: Some(Phase::Build),
            error: error.map(str::to_string),
            srcinfo_text: None,
            srcinfo: None,
            artifacts: Vec::new(),
            buildinfo: None,
            log: log.to_string(),
            log_truncated: false,
            duration: Duration::ZERO,
            work_dir: PathBuf::new(),
            source_cache_dir: None,
        }
    }

    #[test]
    fn failure_reason_is_one_short_line_with_the_log_tail() {
        let r = result(
            "==> Starting build()...\nsomething\n==> ERROR: A failure occurred in build().\n    Aborting...\n==> pacmesh: ERROR in phase build: makepkg exited with code 4\n",
            Outcome::Failed { code: 4 },
            Some("phase build: makepkg exited with code 4"),
        );
        let s = clip_reason(&failure_reason(&r));
        assert_eq!(
            s,
            "phase build: makepkg exited with code 4 (failed with exit code 4); log: something | ==> ERROR: A failure occurred in build(). | Aborting..."
        );
        let long = "é".repeat(5000);
        let r = result(&format!("{long}\n"), Outcome::TimedOut, None);
        let s = clip_reason(&failure_reason(&r));
        assert!(s.len() <= MAX_REASON && !s.contains('\n'), "{}", s.len());
        let s = clip_reason("a\nb\tc");
        assert_eq!(s, "a b c");
    }
}
