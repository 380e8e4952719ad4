//! Derived queue state: a pure fold over verified, authorized events.
//!
//! Nothing here does I/O or checks signatures: [`crate::ingest`] does that
//! before calling [`QueueState::apply`], and start-up replays the event store
//! into a fresh state.
//!
//! # Order independence
//!
//! Gossip delivers events in any order (a `claim` may arrive before the
//! `enqueue` it refers to). The state is therefore built from merges that do
//! not depend on arrival order, so two nodes holding the same *set* of events
//! hold the same state:
//!
//! - an entry referred to before its `enqueue` arrives gets a placeholder
//!   record, invisible in listings until the `enqueue` arrives;
//! - `cancel` is sticky (an entry cancelled once stays cancelled);
//! - per builder, the claim kept is the greatest by (attempt, lease_until,
//!   event id): renewals replace, stale re-deliveries are ignored;
//! - build reports are a set keyed by (builder, attempt, event id);
//! - time-dependent facts (is a lease live?) are computed when asked, from a
//!   caller-supplied `now`, never stored.
//!
//! # Entry status
//!
//! In priority order ([`QueueState::status`]):
//!
//! 1. **published**: every artifact of some `built` report appears in a
//!    published manifest;
//! 2. **cancelled**;
//! 3. **built**: at least one `built` report (artifacts by builder);
//! 4. **claimed**: a live claim — lease not expired at `now` and not
//!    *fenced*. A report (`built` or `failed`) by builder B for attempt *a*
//!    fences B's claims with attempt ≤ *a*; a report for an older attempt
//!    is recorded but leaves a newer claim standing;
//! 5. **failed**: a `failed` report and no `built` one;
//! 6. **review**: the entry carries a `review` (a change a maintainer must read) and no
//!    maintainer's `approve` for it is known yet;
//! 7. **waiting**.
//!
//! [`QueueState::claimable`] lists enqueued entries that are not cancelled,
//! not awaiting review, not published, have no live claim, no `failed` report, and fewer than
//! `quorum` distinct builders with a `built` report. A failure is final for
//! the entry (builds are deterministic); a maintainer re-enqueues to retry.
//!
//! # Digest
//!
//! [`QueueState::digest`] is BLAKE3 over a domain tag, the number of applied
//! events and their ids in ascending byte order. Because the state is a
//! function of the set of applied events, equal digests mean equal states;
//! nodes compare digests before running anti-entropy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use pacmesh_protocol::{
    Artifact, Event, EventBody, Hash, Name, PublicKey, QueueEntry, RepoManifest, Source, Timestamp,
};

/// Who did something, when, in which event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventRef {
    /// The event id.
    pub id: Hash,
    /// Its author.
    pub by: PublicKey,
    /// Its (claimed) time.
    pub time: Timestamp,
}

/// The enqueue that created an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The maintainer.
    pub by: PublicKey,
    /// When.
    pub time: Timestamp,
    /// What to build.
    pub entry: QueueEntry,
}

/// A builder's current claim on an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRecord {
    /// The builder.
    pub builder: PublicKey,
    /// Its attempt number.
    pub attempt: u32,
    /// Lease end.
    pub lease_until: Timestamp,
    /// The claim event.
    pub event: Hash,
    /// Its time.
    pub time: Timestamp,
}

impl ClaimRecord {
    fn rank(&self) -> (u32, Timestamp, Hash) {
        (self.attempt, self.lease_until, self.event)
    }
}

/// A `built` or `failed` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The builder.
    pub builder: PublicKey,
    /// The attempt it closes.
    pub attempt: u32,
    /// The report event.
    pub event: Hash,
    /// Its time.
    pub time: Timestamp,
    /// What happened.
    pub outcome: ReportOutcome,
}

/// The result part of a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportOutcome {
    /// `built`.
    Built {
        /// The artifacts.
        artifacts: Vec<Artifact>,
        /// Build log blob.
        log: Hash,
        /// Commit built, if known.
        source_commit: Option<String>,
    },
    /// `failed`.
    Failed {
        /// One-line reason.
        reason: String,
        /// Build log blob, if any.
        log: Option<Hash>,
    },
}

/// Everything known about one queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryRecord {
    /// The entry id (id of its `enqueue` event).
    pub id: Hash,
    /// The enqueue; `None` while only later events referring to it are known.
    pub enqueued: Option<Enqueued>,
    /// The first cancel (smallest event id), if any.
    pub cancelled: Option<EventRef>,
    /// Per builder, its greatest claim.
    pub claims: BTreeMap<PublicKey, ClaimRecord>,
    /// Reports keyed by (builder, attempt, event id).
    pub reports: BTreeMap<(PublicKey, u32, Hash), Report>,
    /// The first `approve` (smallest event id), if any.
    pub approved: Option<EventRef>,
}

impl EntryRecord {
    fn new(id: Hash) -> Self {
        EntryRecord {
            id,
            enqueued: None,
            cancelled: None,
            claims: BTreeMap::new(),
            reports: BTreeMap::new(),
            approved: None,
        }
    }

    /// The change awaiting a maintainer's `approve`: the entry's `review` text while no
    /// approval is known; `None` when no review is needed or it was approved.
    pub fn awaiting_review(&self) -> Option<&str> {
        let review = self.enqueued.as_ref()?.entry.review.as_deref()?;
        self.approved.is_none().then_some(review)
    }

    /// Whether a report by `builder` closes attempt `attempt` (or a later one).
    fn fenced(&self, builder: &PublicKey, attempt: u32) -> bool {
        self.reports
            .range((*builder, attempt, Hash::from_bytes([0; 32]))..)
            .take_while(|((b, _, _), _)| b == builder)
            .next()
            .is_some()
    }

    /// Claims not closed by a report of the same builder for the same or a
    /// later attempt (expired or not).
    pub fn open_claims(&self) -> impl Iterator<Item = &ClaimRecord> {
        self.claims
            .values()
            .filter(|c| !self.fenced(&c.builder, c.attempt))
    }

    /// Open claims whose lease has not ended at `now`.
    pub fn live_claims(&self, now: Timestamp) -> impl Iterator<Item = &ClaimRecord> {
        self.open_claims().filter(move |c| c.lease_until > now)
    }

    /// The live claim shown as the entry's claim: the earliest by (time,
    /// builder).
    pub fn current_claim(&self, now: Timestamp) -> Option<&ClaimRecord> {
        self.live_claims(now).min_by_key(|c| (c.time, c.builder))
    }

    /// `built` reports.
    pub fn built(&self) -> impl Iterator<Item = &Report> {
        self.reports
            .values()
            .filter(|r| matches!(r.outcome, ReportOutcome::Built { .. }))
    }

    /// `failed` reports.
    pub fn failed(&self) -> impl Iterator<Item = &Report> {
        self.reports
            .values()
            .filter(|r| matches!(r.outcome, ReportOutcome::Failed { .. }))
    }

    /// Distinct builders with a `built` report.
    pub fn builders_built(&self) -> BTreeSet<PublicKey> {
        self.built().map(|r| r.builder).collect()
    }
}

/// Where a blob was first published.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PublishedRef {
    /// Generation.
    pub generation: u64,
    /// The `publish` event.
    pub event: Hash,
    /// Repository.
    pub repo: Name,
    /// Architecture.
    pub arch: Name,
}

/// A published generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The `publish` event id.
    pub event: Hash,
    /// The manifest.
    pub manifest: Arc<RepoManifest>,
}

/// Published generations of one (repo, arch): generation → `publish` event
/// id → manifest.
pub type Generations = BTreeMap<u64, BTreeMap<Hash, Arc<RepoManifest>>>;

/// The status of an entry at some `now`. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryStatus<'a> {
    /// Nothing happened yet (or every claim lapsed).
    Waiting,
    /// A live claim.
    Claimed {
        /// The builder.
        by: PublicKey,
        /// Its attempt.
        attempt: u32,
        /// Lease end.
        lease_until: Timestamp,
    },
    /// Built; the `built` reports (artifacts by builder).
    Built {
        /// The reports.
        builds: Vec<&'a Report>,
    },
    /// Failed (and never built).
    Failed {
        /// The builder.
        by: PublicKey,
        /// Reason.
        reason: &'a str,
        /// Log blob.
        log: Option<Hash>,
    },
    /// Waiting for a maintainer's `approve` of the change shown.
    Review {
        /// The change (the entry's `review` text).
        diff: &'a str,
    },
    /// Cancelled.
    Cancelled {
        /// The maintainer.
        by: PublicKey,
    },
    /// Published.
    Published(PublishedRef),
}

impl EntryStatus<'_> {
    /// A one-word label (`waiting`, `review`, `claimed`, `built`, `failed`,
    /// `cancelled`, `published`).
    pub fn label(&self) -> &'static str {
        match self {
            EntryStatus::Waiting => "waiting",
            EntryStatus::Claimed { .. } => "claimed",
            EntryStatus::Built { .. } => "built",
            EntryStatus::Failed { .. } => "failed",
            EntryStatus::Review { .. } => "review",
            EntryStatus::Cancelled { .. } => "cancelled",
            EntryStatus::Published(_) => "published",
        }
    }
}

/// Every blob an event refers to: artifacts and build logs, a `dir`
/// source's snapshot, and a manifest's databases, signatures and packages.
/// These are the GC roots a node pins (e.g. as `event:<id>`) when it
/// accepts the event.
pub fn referenced_blobs(body: &EventBody) -> Vec<Hash> {
    let mut out = Vec::new();
    match body {
        EventBody::Enqueue(q) => {
            if let Source::Dir {
                snapshot: Some(s), ..
            } = &q.source
            {
                out.push(*s);
            }
        }
        EventBody::Built { artifacts, log, .. } => {
            out.extend(artifacts.iter().map(|a| a.blake3));
            out.push(*log);
        }
        EventBody::Failed { log: Some(l), .. } => out.push(*l),
        EventBody::Publish(m) => {
            out.extend([m.db, m.files_db, m.db_sig]);
            out.extend(m.files_db_sig);
            for p in &m.packages {
                out.extend([p.blake3, p.sig]);
            }
        }
        _ => {}
    }
    out.sort();
    out.dedup();
    out
}

/// The derived state. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    entries: BTreeMap<Hash, EntryRecord>,
    applied: BTreeSet<Hash>,
    generations: BTreeMap<(Name, Name), Generations>,
    published_blobs: HashMap<Hash, PublishedRef>,
    removals: BTreeMap<(Name, Name), BTreeSet<EventRef>>,
    unknown: u64,
    /// [`QueueState::digest`], computed once per change of `applied` (announcements, status
    /// and every received announcement ask for it; it hashes every applied id).
    digest: DigestCache,
}

/// A cache that takes no part in equality: two states are equal by their contents.
#[derive(Debug, Clone, Default)]
struct DigestCache(std::sync::OnceLock<Hash>);

impl PartialEq for DigestCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for DigestCache {}

impl QueueState {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one verified, authorized event in. Returns `false` (and changes
    /// nothing) if `id` was applied before.
    pub fn apply(&mut self, id: Hash, ev: &Event) -> bool {
        if !self.applied.insert(id) {
            return false;
        }
        self.digest = DigestCache::default();
        let by = ev.author;
        let time = ev.time;
        match &ev.body {
            EventBody::Enqueue(q) => {
                let rec = self
                    .entries
                    .entry(id)
                    .or_insert_with(|| EntryRecord::new(id));
                rec.enqueued = Some(Enqueued {
                    by,
                    time,
                    entry: q.clone(),
                });
            }
            EventBody::Cancel { entry } => {
                let rec = self.record(*entry);
                let r = EventRef { id, by, time };
                if rec.cancelled.is_none_or(|c| r.id < c.id) {
                    rec.cancelled = Some(r);
                }
            }
            EventBody::Approve { entry } => {
                let rec = self.record(*entry);
                let r = EventRef { id, by, time };
                if rec.approved.is_none_or(|a| r.id < a.id) {
                    rec.approved = Some(r);
                }
            }
            EventBody::Claim {
                entry,
                attempt,
                lease_until,
            } => {
                let c = ClaimRecord {
                    builder: by,
                    attempt: *attempt,
                    lease_until: *lease_until,
                    event: id,
                    time,
                };
                let rec = self.record(*entry);
                match rec.claims.get(&by) {
                    Some(old) if old.rank() >= c.rank() => {}
                    _ => {
                        rec.claims.insert(by, c);
                    }
                }
            }
            EventBody::Built {
                entry,
                attempt,
                artifacts,
                log,
                source_commit,
            } => {
                let outcome = ReportOutcome::Built {
                    artifacts: artifacts.clone(),
                    log: *log,
                    source_commit: source_commit.clone(),
                };
                let r = Report {
                    builder: by,
                    attempt: *attempt,
                    event: id,
                    time,
                    outcome,
                };
                self.record(*entry).reports.insert((by, *attempt, id), r);
            }
            EventBody::Failed {
                entry,
                attempt,
                reason,
                log,
            } => {
                let outcome = ReportOutcome::Failed {
                    reason: reason.clone(),
                    log: *log,
                };
                let r = Report {
                    builder: by,
                    attempt: *attempt,
                    event: id,
                    time,
                    outcome,
                };
                self.record(*entry).reports.insert((by, *attempt, id), r);
            }
            EventBody::Remove { pkgbase, repo } => {
                self.removals
                    .entry((repo.clone(), pkgbase.clone()))
                    .or_default()
                    .insert(EventRef { id, by, time });
            }
            EventBody::Publish(m) => {
                let m = Arc::new(m.clone());
                for p in &m.packages {
                    let r = PublishedRef {
                        generation: m.generation,
                        event: id,
                        repo: m.repo.clone(),
                        arch: m.arch.clone(),
                    };
                    match self.published_blobs.get(&p.blake3) {
                        Some(old) if *old <= r => {}
                        _ => {
                            self.published_blobs.insert(p.blake3, r);
                        }
                    }
                }
                self.generations
                    .entry((m.repo.clone(), m.arch.clone()))
                    .or_default()
                    .entry(m.generation)
                    .or_default()
                    .insert(id, m);
            }
            // A kind from a newer pacmesh: stored and counted in the digest,
            // never acted on.
            _ => self.unknown += 1,
        }
        true
    }

    fn record(&mut self, entry: Hash) -> &mut EntryRecord {
        self.entries
            .entry(entry)
            .or_insert_with(|| EntryRecord::new(entry))
    }

    /// Whether event `id` has been applied.
    pub fn contains(&self, id: &Hash) -> bool {
        self.applied.contains(id)
    }

    /// Number of applied events.
    pub fn applied_len(&self) -> usize {
        self.applied.len()
    }

    /// Applied events of kinds this build does not know.
    pub fn unknown_kinds(&self) -> u64 {
        self.unknown
    }

    /// The entry `id`, if its `enqueue` is known.
    pub fn entry(&self, id: &Hash) -> Option<&EntryRecord> {
        self.entries.get(id).filter(|e| e.enqueued.is_some())
    }

    /// Every enqueued entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = &EntryRecord> {
        self.entries.values().filter(|e| e.enqueued.is_some())
    }

    /// Records for entries whose `enqueue` has not arrived (events referring
    /// to them are kept until it does).
    pub fn orphans(&self) -> impl Iterator<Item = &EntryRecord> {
        self.entries.values().filter(|e| e.enqueued.is_none())
    }

    /// Where an entry's build was published, if it was: the first
    /// publication of a `built` report all of whose artifacts are published.
    pub fn published(&self, e: &EntryRecord) -> Option<&PublishedRef> {
        e.built()
            .filter_map(|r| match &r.outcome {
                ReportOutcome::Built { artifacts, .. } => {
                    let refs: Option<Vec<&PublishedRef>> = artifacts
                        .iter()
                        .map(|a| self.published_blobs.get(&a.blake3))
                        .collect();
                    refs.and_then(|v| v.into_iter().max())
                }
                ReportOutcome::Failed { .. } => None,
            })
            .min()
    }

    /// The status of `e` at `now`. See the [module docs](self).
    pub fn status<'a>(&'a self, e: &'a EntryRecord, now: Timestamp) -> EntryStatus<'a> {
        if let Some(p) = self.published(e) {
            return EntryStatus::Published(p.clone());
        }
        if let Some(c) = &e.cancelled {
            return EntryStatus::Cancelled { by: c.by };
        }
        let builds: Vec<&Report> = e.built().collect();
        if !builds.is_empty() {
            return EntryStatus::Built { builds };
        }
        if let Some(c) = e.current_claim(now) {
            return EntryStatus::Claimed {
                by: c.builder,
                attempt: c.attempt,
                lease_until: c.lease_until,
            };
        }
        if let Some(r) = e.failed().max_by_key(|r| (r.time, r.event))
            && let ReportOutcome::Failed { reason, log } = &r.outcome
        {
            return EntryStatus::Failed {
                by: r.builder,
                reason,
                log: *log,
            };
        }
        if let Some(diff) = e.awaiting_review() {
            return EntryStatus::Review { diff };
        }
        EntryStatus::Waiting
    }

    /// Whether `e` may be claimed at `now` when a publish needs `quorum`
    /// matching reports. See the [module docs](self).
    pub fn is_claimable(&self, e: &EntryRecord, now: Timestamp, quorum: u32) -> bool {
        e.enqueued.is_some()
            && e.cancelled.is_none()
            && e.awaiting_review().is_none()
            && e.failed().next().is_none()
            && e.live_claims(now).next().is_none()
            && e.builders_built().len() < quorum.max(1) as usize
            && self.published(e).is_none()
    }

    /// Entries a builder may claim at `now` (see [`QueueState::is_claimable`]).
    pub fn claimable(&self, now: Timestamp, quorum: u32) -> Vec<&EntryRecord> {
        self.entries()
            .filter(|e| self.is_claimable(e, now, quorum))
            .collect()
    }

    /// Whether `builder` may claim `e` at `now`: it is claimable and
    /// `builder` has not reported a build of it already.
    pub fn claimable_by(
        &self,
        e: &EntryRecord,
        builder: &PublicKey,
        now: Timestamp,
        quorum: u32,
    ) -> bool {
        self.is_claimable(e, now, quorum) && !e.built().any(|r| r.builder == *builder)
    }

    /// Published generations of (repo, arch): generation → publish event id
    /// → manifest (two entries for one generation mean two publishers raced
    /// or one equivocated).
    pub fn generations(&self, repo: &Name, arch: &Name) -> Option<&Generations> {
        self.generations.get(&(repo.clone(), arch.clone()))
    }

    /// The newest generation of (repo, arch); of two with the same number,
    /// the one with the smaller event id.
    pub fn latest_generation(&self, repo: &Name, arch: &Name) -> Option<Generation> {
        let (_, by_id) = self.generations(repo, arch)?.last_key_value()?;
        let (id, m) = by_id.first_key_value()?;
        Some(Generation {
            event: *id,
            manifest: m.clone(),
        })
    }

    /// The history of (repo, arch): from the latest generation back along the `previous`
    /// links to generation 1, newest first. Manifests off this chain (losers of a race, see
    /// `docs/protocol.md`) are not in it.
    pub fn chain(&self, repo: &Name, arch: &Name) -> Vec<Generation> {
        let mut out = Vec::new();
        let Some(gens) = self.generations(repo, arch) else {
            return out;
        };
        let mut cur = self.latest_generation(repo, arch);
        while let Some(g) = cur {
            let prev = g.manifest.previous;
            let number = g.manifest.generation;
            out.push(g);
            cur = prev.and_then(|p| {
                let m = gens.get(&number.checked_sub(1)?)?.get(&p)?;
                Some(Generation {
                    event: p,
                    manifest: m.clone(),
                })
            });
        }
        out
    }

    /// Every (repo, arch) with a published generation.
    pub fn published_repos(&self) -> impl Iterator<Item = &(Name, Name)> {
        self.generations.keys()
    }

    /// `remove` events by (repo, pkgbase).
    pub fn removals(&self) -> &BTreeMap<(Name, Name), BTreeSet<EventRef>> {
        &self.removals
    }

    /// BLAKE3 over the applied event ids (see the [module docs](self)).
    pub fn digest(&self) -> Hash {
        *self.digest.0.get_or_init(|| {
            let mut h = blake3::Hasher::new();
            h.update(b"pacmesh/state-digest/v1\0");
            h.update(&(self.applied.len() as u64).to_be_bytes());
            for id in &self.applied {
                h.update(id.as_bytes());
            }
            Hash::from(h.finalize())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::{FileName, ManifestPackage, Sha256, SigningKey, Source};

    const T0: u64 = 1_767_225_600_000;

    fn key(n: u8) -> PublicKey {
        PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
    }
    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }
    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(T0 + ms)
    }

    /// Builds events with fake ids (the state does not check them).
    struct Mk {
        n: u64,
    }
    impl Mk {
        fn ev(&mut self, author: u8, body: EventBody) -> (Hash, Event) {
            self.n += 1;
            let prev = (self.n > 1).then(|| Hash::new(b"prev"));
            let ev = Event::new(key(author), self.n, prev, at(self.n), body);
            (Hash::new(format!("event {}", self.n)), ev)
        }
    }
    fn enqueue() -> EventBody {
        EventBody::Enqueue(QueueEntry::new(
            name("extra"),
            Source::Aur {
                pkgbase: name("hello"),
            },
        ))
    }
    fn art(tag: &str) -> Artifact {
        Artifact {
            file_name: FileName::new(format!("{tag}-1.0-1-x86_64.pkg.tar.zst")).unwrap(),
            blake3: Hash::new(tag),
            sha256: Sha256::digest(tag),
            size: 10,
        }
    }
    fn claim(entry: Hash, attempt: u32, until: u64) -> EventBody {
        EventBody::Claim {
            entry,
            attempt,
            lease_until: at(until),
        }
    }
    fn built(entry: Hash, attempt: u32, tag: &str) -> EventBody {
        EventBody::Built {
            entry,
            attempt,
            artifacts: vec![art(tag)],
            log: Hash::new(b"log"),
            source_commit: None,
        }
    }

    fn apply_all(s: &mut QueueState, evs: &[(Hash, Event)]) {
        for (id, e) in evs {
            assert!(s.apply(*id, e));
        }
    }

    #[test]
    fn waiting_claimed_expired_built() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let (eid, e) = mk.ev(2, enqueue());
        apply_all(&mut s, &[(eid, e.clone())]);
        assert!(!s.apply(eid, &e), "re-applying is a no-op");
        let ent = s.entry(&eid).unwrap();
        assert_eq!(s.status(ent, at(0)), EntryStatus::Waiting);
        assert_eq!(s.claimable(at(0), 1).len(), 1);

        let c = mk.ev(3, claim(eid, 1, 10_000));
        apply_all(&mut s, &[c]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(s.status(ent, at(5_000)).label(), "claimed");
        assert!(s.claimable(at(5_000), 1).is_empty());
        // Lease expiry: claimable again.
        assert_eq!(s.status(ent, at(10_000)), EntryStatus::Waiting);
        assert_eq!(s.claimable(at(10_000), 1).len(), 1);
        // Renewal extends it; a stale re-delivery of the old claim does not shrink it.
        let renew = mk.ev(3, claim(eid, 1, 20_000));
        apply_all(&mut s, &[renew]);
        assert!(s.claimable(at(15_000), 1).is_empty());

        let b = mk.ev(3, built(eid, 1, "hello"));
        apply_all(&mut s, &[b]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(s.status(ent, at(15_000)).label(), "built");
        assert_eq!(
            ent.live_claims(at(15_000)).count(),
            0,
            "the report fences the claim"
        );
        assert!(s.claimable(at(15_000), 1).is_empty());
        // With quorum 2 another builder may claim, the first may not.
        assert_eq!(s.claimable(at(15_000), 2).len(), 1);
        assert!(s.claimable_by(ent, &key(4), at(15_000), 2));
        assert!(!s.claimable_by(ent, &key(3), at(15_000), 2));
    }

    #[test]
    fn old_attempt_report_does_not_fence_newer_claim() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let (eid, e) = mk.ev(2, enqueue());
        let c1 = mk.ev(3, claim(eid, 1, 10_000));
        let c2 = mk.ev(3, claim(eid, 2, 30_000));
        let b1 = mk.ev(3, built(eid, 1, "hello"));
        apply_all(&mut s, &[(eid, e), c1, c2, b1]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(ent.reports.len(), 1, "recorded");
        let live: Vec<_> = ent.live_claims(at(20_000)).collect();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].attempt, 2, "attempt 2 still stands");
        assert_eq!(ent.current_claim(at(20_000)).unwrap().attempt, 2);
        // A report for attempt 2 fences it.
        let b2 = mk.ev(3, built(eid, 2, "hello"));
        apply_all(&mut s, &[b2]);
        assert_eq!(s.entry(&eid).unwrap().live_claims(at(20_000)).count(), 0);
    }

    #[test]
    fn cancel_removes_from_claimable_and_is_sticky() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let (eid, e) = mk.ev(2, enqueue());
        let cancel = mk.ev(2, EventBody::Cancel { entry: eid });
        apply_all(&mut s, &[(eid, e), cancel]);
        assert!(s.claimable(at(0), 1).is_empty());
        let ent = s.entry(&eid).unwrap();
        assert_eq!(s.status(ent, at(0)), EntryStatus::Cancelled { by: key(2) });
        let c = mk.ev(3, claim(eid, 1, 10_000));
        apply_all(&mut s, &[c]);
        assert_eq!(s.status(s.entry(&eid).unwrap(), at(0)).label(), "cancelled");
    }

    #[test]
    fn failed_is_final_and_claim_overrides_display() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let (eid, e) = mk.ev(2, enqueue());
        let c = mk.ev(3, claim(eid, 1, 10_000));
        let f = mk.ev(
            3,
            EventBody::Failed {
                entry: eid,
                attempt: 1,
                reason: "makepkg exit 4".into(),
                log: None,
            },
        );
        apply_all(&mut s, &[(eid, e), c, f]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(
            s.status(ent, at(1_000)),
            EntryStatus::Failed {
                by: key(3),
                reason: "makepkg exit 4",
                log: None
            }
        );
        assert!(s.claimable(at(1_000), 1).is_empty());
    }

    #[test]
    fn published_when_artifacts_appear_in_a_manifest() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let (eid, e) = mk.ev(2, enqueue());
        let b = mk.ev(3, built(eid, 1, "hello"));
        apply_all(&mut s, &[(eid, e), b]);
        let m = RepoManifest {
            version: 1,
            repo: name("extra"),
            arch: name("x86_64"),
            generation: 1,
            previous: None,
            time: at(0),
            publisher: key(4),
            db: Hash::new(b"db"),
            files_db: Hash::new(b"files"),
            db_sig: Hash::new(b"sig"),
            files_db_sig: None,
            packages: vec![ManifestPackage {
                file_name: art("hello").file_name,
                pkgname: name("hello"),
                version: "1.0-1".into(),
                blake3: Hash::new("hello"),
                sha256: Sha256::digest("hello"),
                size: 10,
                sig: Hash::new(b"pkgsig"),
            }],
        };
        let p_body = EventBody::Publish(m);
        let p = mk.ev(4, p_body.clone());
        let pid = p.0;
        apply_all(&mut s, &[p]);
        let ent = s.entry(&eid).unwrap();
        match s.status(ent, at(0)) {
            EntryStatus::Published(r) => assert_eq!((r.generation, r.event), (1, pid)),
            other => panic!("{other:?}"),
        }
        let g = s
            .latest_generation(&name("extra"), &name("x86_64"))
            .unwrap();
        assert_eq!(g.event, pid);
        assert!(s.claimable(at(0), 5).is_empty());
        let roots = referenced_blobs(&p_body);
        for h in [
            Hash::new("hello"),
            Hash::new(b"pkgsig"),
            Hash::new(b"db"),
            Hash::new(b"sig"),
        ] {
            assert!(roots.contains(&h));
        }
        assert_eq!(roots.len(), 5);
        let b = built(eid, 1, "x");
        assert_eq!(referenced_blobs(&b).len(), 2);
        assert!(referenced_blobs(&enqueue()).is_empty());
    }

    #[test]
    fn review_blocks_claims_until_a_maintainer_approves() {
        let mut mk = Mk { n: 0 };
        let mut s = QueueState::new();
        let mut q = QueueEntry::new(
            name("extra"),
            Source::Aur {
                pkgbase: name("hello"),
            },
        );
        q.review = Some("+depends=(curl)".into());
        let (eid, e) = mk.ev(2, EventBody::Enqueue(q));
        apply_all(&mut s, &[(eid, e)]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(
            s.status(ent, at(0)),
            EntryStatus::Review {
                diff: "+depends=(curl)"
            }
        );
        assert!(
            s.claimable(at(0), 1).is_empty(),
            "not claimable before approval"
        );
        // An approve for another entry changes nothing.
        let other = mk.ev(
            2,
            EventBody::Approve {
                entry: Hash::new(b"x"),
            },
        );
        apply_all(&mut s, &[other]);
        assert!(s.claimable(at(0), 1).is_empty());
        let a = mk.ev(2, EventBody::Approve { entry: eid });
        apply_all(&mut s, &[a]);
        let ent = s.entry(&eid).unwrap();
        assert_eq!(s.status(ent, at(0)), EntryStatus::Waiting);
        assert_eq!(ent.approved.unwrap().by, key(2));
        assert_eq!(s.claimable(at(0), 1).len(), 1);
        // An approve that arrives before its enqueue counts too (order independence).
        let mut rev = QueueState::new();
        let evs: Vec<_> = {
            let mut mk = Mk { n: 0 };
            let mut q = QueueEntry::new(name("extra"), Source::Aur { pkgbase: name("a") });
            q.review = Some("d".into());
            let (eid, e) = mk.ev(2, EventBody::Enqueue(q));
            vec![mk.ev(2, EventBody::Approve { entry: eid }), (eid, e)]
        };
        apply_all(&mut rev, &evs);
        assert_eq!(rev.claimable(at(0), 1).len(), 1);
    }

    #[test]
    fn order_independent_state_and_digest() {
        let mut mk = Mk { n: 0 };
        let (eid, e) = mk.ev(2, enqueue());
        let evs = vec![
            (eid, e),
            mk.ev(3, claim(eid, 1, 10_000)),
            mk.ev(3, claim(eid, 2, 30_000)),
            mk.ev(5, claim(eid, 1, 5_000)),
            mk.ev(3, built(eid, 1, "hello")),
            mk.ev(
                5,
                EventBody::Failed {
                    entry: eid,
                    attempt: 1,
                    reason: "x".into(),
                    log: None,
                },
            ),
            mk.ev(
                2,
                EventBody::Remove {
                    pkgbase: name("old"),
                    repo: name("extra"),
                },
            ),
        ];
        let mut fwd = QueueState::new();
        apply_all(&mut fwd, &evs);
        let mut rev = QueueState::new();
        let mut r = evs.clone();
        r.reverse();
        apply_all(&mut rev, &r);
        assert_eq!(fwd, rev);
        assert_eq!(fwd.digest(), rev.digest());
        // Before the enqueue arrives the entry is an orphan, not listed.
        let mut partial = QueueState::new();
        apply_all(&mut partial, &r[..r.len() - 1]);
        assert_eq!(partial.entries().count(), 0);
        assert_eq!(partial.orphans().count(), 1);
        assert_ne!(partial.digest(), fwd.digest());
        assert_eq!(QueueState::new().digest(), QueueState::new().digest());
        // The digest is cached, and the cache follows every applied event: `partial`, asked
        // above, then given the last event, is `fwd` with `fwd`'s digest.
        let (last_id, last) = &r[r.len() - 1];
        assert!(partial.apply(*last_id, last));
        assert_eq!(partial.digest(), fwd.digest());
        assert_eq!(partial, fwd);
        assert!(!partial.apply(*last_id, last), "applied twice");
        assert_eq!(partial.digest(), fwd.digest());
    }
}
