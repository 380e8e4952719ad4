//! The verify-then-apply pipeline for events, and the node's current mesh
//! policy.
//!
//! ```text
//! bytes ─▶ size cap ─▶ Signed<Event> envelope decode (limits) ─▶ id known? ─▶ Duplicate
//!       ─▶ signature (verify_strict) ─▶ payload decode + validate ─▶ author = signer
//!       ─▶ policy role for the body kind ─▶ (author, seq) checks ─▶ store + flush ─▶ apply
//! ```
//!
//! Events received from peers skip the wait for the flush ([`Ingest::ingest_deferred`]): they
//! are applied once written and become durable with the store's periodic flush (500 ms).
//!
//! Every refusal is a [`RejectReason`] with a stable [`RejectReason::label`],
//! counted in [`Counters`] and logged (`warn`) with the reason. A refusal
//! changes nothing that was accepted before.
//!
//! # Per-author sequence rules
//!
//! - The same event again (same id) is a harmless [`IngestOutcome::Duplicate`]
//!   — detected from the envelope alone (is the id applied?), before any
//!   signature check, so gossip re-deliveries cost one hash. An event that is
//!   stored but not applied (a flush failed after the insert, or the stored
//!   copy did not decode at start-up) is verified again, its stored bytes
//!   rewritten, and applied. The id is computed over the
//!   canonical envelope, so a re-encoded copy is a duplicate too.
//! - A *different* event at a stored (author, seq) is an **equivocation**:
//!   refused, and the first such event per slot is kept as evidence
//!   ([`crate::store::EventStore::conflicts`]).
//! - An event whose `prev` disagrees with the stored event at seq − 1, or
//!   that the stored event at seq + 1 does not name as its `prev`, is a
//!   **broken chain** (also an equivocation by its author): refused and
//!   recorded the same way.
//! - A **gap** (seq beyond head + 1) is accepted, stored and applied — the
//!   queue state does not depend on arrival order (see [`crate::state`]) —
//!   but the author's contiguous head only moves when the gap is filled,
//!   and anti-entropy asks peers for what follows the head.
//!
//! # Leases
//!
//! A `claim` whose `lease_until` lies more than 2 × the policy's
//! `lease_secs` after the claim's own `time` is refused (`lease_too_long`):
//! leases are kept alive by heartbeats (re-claims), and an unbounded lease
//! would block an entry for good. (`time` is the builder's claim; a node
//! does not compare it with its own clock here.)
//!
//! # Authorization is checked once, at arrival
//!
//! An event is authorized against the policy current when it arrives.
//! Stored events are not re-authorized when a newer policy revokes a key
//! (the derived state would otherwise change without any event, and depend
//! on which policy each node saw first); revocation stops a key's *new*
//! events.
//!
//! # Start-up
//!
//! [`Ingest::open`] replays every stored event into a fresh
//! [`QueueState`]. Stored bytes were verified before they were stored, and
//! the database is the node's own, so by default signatures are **not**
//! re-verified; each event's id is recomputed from its bytes and its payload
//! decoded and validated (which catches corruption), on all cores, then
//! applied in id order. [`IngestConfig::verify_on_open`] turns full
//! re-verification on. A stored event that no longer decodes is skipped,
//! logged and listed in [`OpenReport::skipped`]; if a peer sends it again it
//! is verified, its stored copy rewritten, and applied.
//!
//! Measured with 5000 events (`tests/store_ingest.rs:
//! startup_with_5000_events`, a fresh child process, release build, this
//! 2-core VM at load ≈ 6): start-up (open sled + policy + rebuild) 0.46–0.59 s
//! (replay 0.40–0.50 s), RSS ≈ 18 MB; with `verify_on_open` 1.17–1.26 s.
//! Most of the replay is public-key validation inside the protocol decoder
//! (signer and author, ≈ 40 µs each under that load).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pacmesh_protocol::{
    AuthorHead, DecodeError, Event, EventBody, Hash, Limits, MeshPolicy, Message, Name,
    PolicyError, PublicKey, RepoManifest, SYNC_VERSION, Signed, SyncRequest, SyncResponse,
    VerifyError,
};

use crate::state::QueueState;
use crate::store::events::{EventStore, EventStoreError, InsertError, NewEvent, StoredEvent};

/// Meta key of the mesh root.
const META_ROOT: &str = "root";
/// Meta key of the current signed policy.
const META_POLICY: &str = "policy";
/// Meta key of the counters (JSON).
const META_COUNTERS: &str = "counters";

/// Why an event was refused. [`RejectReason::label`] is the counter name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// Longer than the largest event the limits allow; not parsed.
    #[error("event is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The envelope or the payload did not decode or validate (truncated,
    /// malformed, newer version, wrong kind, invalid field, too large for
    /// its kind).
    #[error("{0}")]
    Decode(DecodeError),
    /// The signature is bad, or the payload names another author.
    #[error("{0}")]
    Signature(VerifyError),
    /// The author lacks the role, or names a repository not in the policy.
    #[error("{0}")]
    Policy(PolicyError),
    /// Another event already holds (author, seq).
    #[error(
        "equivocation: seq {seq} of {author} is already event {existing}; refused event {refused}"
    )]
    Equivocation {
        /// The author.
        author: PublicKey,
        /// The seq.
        seq: u64,
        /// The stored event.
        existing: Hash,
        /// The refused event.
        refused: Hash,
    },
    /// The event's `prev` link contradicts a stored neighbour.
    #[error("broken chain: event {refused} (seq {seq} of {author}) {detail}")]
    BrokenChain {
        /// The author.
        author: PublicKey,
        /// The refused event's seq.
        seq: u64,
        /// The refused event.
        refused: Hash,
        /// What contradicts what.
        detail: String,
    },
    /// A claim whose lease runs longer than twice the policy's
    /// `lease_secs` past the claim's own time: leases are renewed by
    /// heartbeat, and an unbounded lease would block an entry for good.
    #[error(
        "claim lease of {lease_secs} s (from the claim's time) exceeds the maximum of {max_secs} s (2 × policy lease_secs)"
    )]
    LeaseTooLong {
        /// Requested lease, seconds after the event's time.
        lease_secs: u64,
        /// The maximum.
        max_secs: u64,
    },
    /// A `publish` whose manifest names another publisher than its signer.
    #[error("manifest publisher {publisher} is not the event's signer {signer}")]
    ManifestPublisher {
        /// The manifest's `publisher`.
        publisher: PublicKey,
        /// The signer.
        signer: PublicKey,
    },
    /// A `publish` whose manifest's `previous` is not a known `publish` of the generation
    /// before it in the same repository and architecture.
    #[error("manifest chain: {repo}/{arch} generation {generation}: {detail}")]
    ManifestChain {
        /// Repository.
        repo: Name,
        /// Architecture.
        arch: Name,
        /// The refused generation.
        generation: u64,
        /// `true`: `previous` is not known here (yet) — anti-entropy may bring it.
        unknown: bool,
        /// What is wrong.
        detail: String,
    },
    /// The node could not store the event (not the sender's fault; retry
    /// later).
    #[error("storage failure: {0}")]
    Storage(String),
}

impl RejectReason {
    /// A stable, metric-friendly name for the reason.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::TooLarge { .. } => "too_large",
            RejectReason::Decode(d) => decode_label(d),
            RejectReason::Signature(VerifyError::BadSignature { .. }) => "bad_signature",
            RejectReason::Signature(VerifyError::SignerMismatch { .. }) => "signer_mismatch",
            RejectReason::Signature(VerifyError::Decode(d)) => decode_label(d),
            RejectReason::Signature(_) => "bad_signature",
            RejectReason::Policy(PolicyError::UnknownRepo { .. }) => "unknown_repo",
            RejectReason::Policy(_) => "not_allowed",
            RejectReason::Equivocation { .. } => "equivocation",
            RejectReason::BrokenChain { .. } => "broken_chain",
            RejectReason::LeaseTooLong { .. } => "lease_too_long",
            RejectReason::ManifestPublisher { .. } => "manifest_publisher",
            RejectReason::ManifestChain { unknown: true, .. } => "unknown_previous",
            RejectReason::ManifestChain { .. } => "broken_manifest_chain",
            RejectReason::Storage(_) => "storage",
        }
    }

    /// Whether the sender is to blame (for peer scoring / gossip
    /// validation: `Reject` vs `Ignore`).
    pub fn is_peer_fault(&self) -> bool {
        !matches!(
            self,
            RejectReason::Storage(_) | RejectReason::ManifestChain { unknown: true, .. }
        )
    }
}

fn decode_label(d: &DecodeError) -> &'static str {
    match d {
        DecodeError::TooLarge { .. } => "too_large",
        DecodeError::Truncated { .. } => "truncated",
        DecodeError::NewerVersion { .. }
        | DecodeError::InvalidVersion { .. }
        | DecodeError::MissingVersion { .. } => "unsupported_version",
        DecodeError::WrongKind { .. } => "wrong_kind",
        DecodeError::TooMany { .. } | DecodeError::Invalid { .. } => "invalid",
        _ => "malformed",
    }
}

fn classify_verify(e: VerifyError) -> RejectReason {
    match e {
        VerifyError::Decode(DecodeError::TooLarge { len, max, .. }) => {
            RejectReason::TooLarge { len, max }
        }
        VerifyError::Decode(d) => RejectReason::Decode(d),
        other => RejectReason::Signature(other),
    }
}

/// An event whose envelope decoded and whose signature verified, with the author's role
/// checked under some policy: the cheap, stateless part of the checks, done once when a gossip
/// message arrives. Only [`precheck`] makes one, so holding one proves that `bytes` carry a
/// valid signature of `event`; [`Ingest::ingest_prechecked`] relies on it and does not verify
/// the signature a second time (it checks the role again, under the policy current then).
#[derive(Debug, Clone)]
pub struct Prechecked {
    bytes: Arc<[u8]>,
    id: Hash,
    event: Event,
}

impl Prechecked {
    /// The signed bytes.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The event id.
    pub fn id(&self) -> Hash {
        self.id
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Whether the event may be forwarded before it is stored (see docs/threat-model.md,
    /// "Forwarding before storing"): everything but a `publish`, whose manifest chain needs the
    /// state, so that only the full ingest decides.
    pub fn forward_early(&self) -> bool {
        !matches!(self.event.body, EventBody::Publish(_))
    }
}

/// The stateless checks, for gossip validation: size cap, envelope, signature, payload,
/// author = signer, the author's role under `policy`, the lease cap. The full ingest then checks
/// the rest (duplicates, sequence numbers, equivocation, manifest chains) and the role again.
pub fn precheck(
    bytes: Arc<[u8]>,
    policy: &MeshPolicy,
    limits: &Limits,
) -> Result<Prechecked, RejectReason> {
    let signed = envelope(&bytes, limits)?;
    let event = authorized(&signed, policy, limits)?;
    Ok(Prechecked {
        id: signed.id(),
        bytes,
        event,
    })
}

/// The size cap and the envelope decode (no signature check yet: a duplicate is recognised by
/// its id first, for the cost of one hash).
fn envelope(bytes: &[u8], limits: &Limits) -> Result<Signed<Event>, RejectReason> {
    let max = Event::max_bytes(limits);
    if bytes.len() > max {
        return Err(RejectReason::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Signed::<Event>::from_bytes(bytes, limits).map_err(|e| match e {
        DecodeError::TooLarge { len, max, .. } => RejectReason::TooLarge { len, max },
        other => RejectReason::Decode(other),
    })
}

/// The signature, the payload, author = signer, the author's role under `policy` and the lease
/// cap of a claim: the checks that need no state.
fn authorized(
    signed: &Signed<Event>,
    policy: &MeshPolicy,
    limits: &Limits,
) -> Result<Event, RejectReason> {
    let ev = signed.verify_and_decode(limits).map_err(classify_verify)?;
    permitted(&ev, policy)?;
    Ok(ev)
}

/// The author's role under `policy` and the lease cap of a claim.
fn permitted(ev: &Event, policy: &MeshPolicy) -> Result<(), RejectReason> {
    policy
        .authorize(&ev.author, &ev.body)
        .map_err(RejectReason::Policy)?;
    if let EventBody::Claim { lease_until, .. } = &ev.body {
        let lease_secs = lease_until.saturating_since(ev.time).as_secs();
        let max_secs = 2 * u64::from(policy.lease_secs);
        if lease_secs > max_secs {
            return Err(RejectReason::LeaseTooLong {
                lease_secs,
                max_secs,
            });
        }
    }
    Ok(())
}

/// What happened to an ingested event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored durably and applied to the state.
    Accepted {
        /// The event id.
        id: Hash,
    },
    /// Already stored; nothing changed.
    Duplicate {
        /// The event id.
        id: Hash,
    },
    /// Refused; nothing changed.
    Rejected {
        /// Why.
        reason: RejectReason,
    },
}

/// Event counters: accepted, duplicate, and rejected per
/// [`RejectReason::label`]. Persisted best-effort in the `meta` tree
/// (written with each accepted event; made durable by the next flush).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counters {
    /// Events accepted.
    pub accepted: u64,
    /// Duplicates seen.
    pub duplicate: u64,
    /// Rejections by reason label.
    pub rejected: BTreeMap<String, u64>,
}

impl Counters {
    /// Rejections with `label`.
    pub fn rejected(&self, label: &str) -> u64 {
        self.rejected.get(label).copied().unwrap_or(0)
    }
    /// All rejections.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}

/// Settings of [`Ingest`].
#[derive(Debug, Clone, Default)]
pub struct IngestConfig {
    /// Decoding limits.
    pub limits: Limits,
    /// Re-verify every stored signature at start-up (see the module docs).
    pub verify_on_open: bool,
}

/// What [`Ingest::open`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Events replayed into the state.
    pub events: usize,
    /// Stored events that could not be replayed, with the reason.
    pub skipped: Vec<(Hash, String)>,
    /// Time to replay.
    pub elapsed: Duration,
    /// The policy version in force.
    pub policy_version: u64,
    /// A policy offered at open that was not used (older than the stored
    /// one), with the reason.
    pub offered_policy_ignored: Option<String>,
}

/// Why the node's storage could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] EventStoreError),
    /// The data directory belongs to another mesh.
    #[error("the data directory belongs to mesh {stored}, not {given}")]
    WrongMesh {
        /// Root recorded in the store.
        stored: PublicKey,
        /// Root given.
        given: PublicKey,
    },
    /// No policy stored and none given.
    #[error("no mesh policy: give one (pacmesh mesh init makes it)")]
    NoPolicy,
    /// The given or stored policy is not acceptable.
    #[error("{which} mesh policy: {error}")]
    BadPolicy {
        /// "stored" or "given".
        which: &'static str,
        /// Why.
        error: PolicyUpdateError,
    },
}

/// Why a policy was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyUpdateError {
    /// The envelope did not decode.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// Wrong root, bad signature, not newer, invalid.
    #[error("{0}")]
    Policy(#[from] PolicyError),
    /// Could not be stored.
    #[error("storage failure: {0}")]
    Storage(String),
}

/// The result of [`Ingest::set_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyChange {
    /// The offered policy is the current one.
    Unchanged,
    /// Replaced.
    Replaced {
        /// Previous `policy_version`.
        from: u64,
        /// New `policy_version`.
        to: u64,
    },
}

/// Event store + derived state + current policy + counters.
pub struct Ingest {
    events: EventStore,
    state: QueueState,
    root: PublicKey,
    policy: MeshPolicy,
    policy_signed: Signed<MeshPolicy>,
    limits: Limits,
    counters: Counters,
    /// Ids stored in the current call but not applied yet (batch dedupe).
    pending: BTreeSet<Hash>,
    /// `publish` events stored in the current call but not applied yet: id → (repo, arch,
    /// generation), so a batch may carry a chain of generations.
    pending_publish: BTreeMap<Hash, (Name, Name, u64)>,
}

fn parse_policy(
    bytes: &[u8],
    root: &PublicKey,
    limits: &Limits,
) -> Result<(Signed<MeshPolicy>, MeshPolicy), PolicyUpdateError> {
    let signed = Signed::<MeshPolicy>::from_bytes(bytes, limits)?;
    let p = MeshPolicy::verify_initial(&signed, root, limits)?;
    Ok((signed, p))
}

/// Decodes a stored event for replay (see the module docs on start-up).
fn decode_stored(id: &Hash, bytes: &[u8], limits: &Limits, verify: bool) -> Result<Event, String> {
    let signed = Signed::<Event>::from_bytes(bytes, limits).map_err(|e| e.to_string())?;
    if signed.id() != *id {
        return Err(format!("stored under {id} but its id is {}", signed.id()));
    }
    if verify {
        return signed.verify_and_decode(limits).map_err(|e| e.to_string());
    }
    let ev = Event::decode(&signed.payload, limits).map_err(|e| e.to_string())?;
    if ev.author != signed.signer {
        return Err(format!(
            "author {} is not the signer {}",
            ev.author, signed.signer
        ));
    }
    Ok(ev)
}

/// Decodes stored events on every core (key validation — point
/// decompression of signer and author — dominates the cost), in order.
fn decode_all(stored: &[StoredEvent], limits: &Limits, verify: bool) -> Vec<Result<Event, String>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads < 2 || stored.len() < 256 {
        return stored
            .iter()
            .map(|s| decode_stored(&s.id, &s.bytes, limits, verify))
            .collect();
    }
    let chunk = stored.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = stored
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|s| decode_stored(&s.id, &s.bytes, limits, verify))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoding does not panic"))
            .collect()
    })
}

impl Ingest {
    /// Opens the event store in `db` for the mesh named by `root`, loads or
    /// installs the policy, and rebuilds the state from the stored events.
    ///
    /// `offered_policy` (the `--policy` file) replaces the stored policy if
    /// it is newer; an older one is ignored (reported in
    /// [`OpenReport::offered_policy_ignored`]); with no stored policy it is
    /// required.
    pub fn open(
        db: &sled::Db,
        root: PublicKey,
        offered_policy: Option<&[u8]>,
        cfg: IngestConfig,
    ) -> Result<(Self, OpenReport), OpenError> {
        let limits = cfg.limits;
        let events = EventStore::open(db)?;
        match events.meta(META_ROOT)? {
            Some(b) => {
                let stored = PublicKey::from_slice(&b)
                    .map_err(|e| EventStoreError::Corrupt(format!("stored mesh root: {e}")))?;
                if stored != root {
                    return Err(OpenError::WrongMesh {
                        stored,
                        given: root,
                    });
                }
            }
            None => events.set_meta(META_ROOT, root.as_bytes(), false)?,
        }
        let stored = events
            .meta(META_POLICY)?
            .map(|b| parse_policy(&b, &root, &limits))
            .transpose()
            .map_err(|error| OpenError::BadPolicy {
                which: "stored",
                error,
            })?;
        let offered = offered_policy
            .map(|b| parse_policy(b, &root, &limits))
            .transpose()
            .map_err(|error| OpenError::BadPolicy {
                which: "given",
                error,
            })?;
        let mut ignored = None;
        let (policy_signed, policy) = match (stored, offered) {
            (None, None) => return Err(OpenError::NoPolicy),
            (Some(s), None) => s,
            (None, Some(o)) => {
                events.set_meta(META_POLICY, &o.0.to_bytes(), false)?;
                o
            }
            (Some(s), Some(o)) => {
                if o.1.policy_version > s.1.policy_version {
                    events.set_meta(META_POLICY, &o.0.to_bytes(), false)?;
                    o
                } else {
                    if o.0 != s.0 {
                        let msg = format!(
                            "offered policy version {} does not replace stored version {}",
                            o.1.policy_version, s.1.policy_version
                        );
                        tracing::warn!("{msg}");
                        ignored = Some(msg);
                    }
                    s
                }
            }
        };
        events.flush()?;
        let counters = events
            .meta(META_COUNTERS)?
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();

        let t = Instant::now();
        let mut state = QueueState::new();
        let mut skipped = Vec::new();
        let mut n = 0;
        let stored: Vec<_> = events.iter().collect::<Result<_, _>>()?;
        for (se, decoded) in stored
            .iter()
            .zip(decode_all(&stored, &limits, cfg.verify_on_open))
        {
            match decoded {
                Ok(ev) => {
                    state.apply(se.id, &ev);
                    n += 1;
                }
                Err(why) => {
                    tracing::error!(event = %se.id.fmt_short(), %why, "stored event skipped at start-up");
                    skipped.push((se.id, why));
                }
            }
        }
        let report = OpenReport {
            events: n,
            skipped,
            elapsed: t.elapsed(),
            policy_version: policy.policy_version,
            offered_policy_ignored: ignored,
        };
        tracing::info!(
            events = n,
            skipped = report.skipped.len(),
            ms = report.elapsed.as_millis() as u64,
            policy_version = policy.policy_version,
            "event store opened"
        );
        let ingest = Ingest {
            events,
            state,
            root,
            policy,
            policy_signed,
            limits,
            counters,
            pending: BTreeSet::new(),
            pending_publish: BTreeMap::new(),
        };
        Ok((ingest, report))
    }

    /// The mesh root.
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// The policy in force.
    pub fn policy(&self) -> &MeshPolicy {
        &self.policy
    }

    /// The policy in force, signed (to hand to peers).
    pub fn signed_policy(&self) -> &Signed<MeshPolicy> {
        &self.policy_signed
    }

    /// The derived queue state.
    pub fn state(&self) -> &QueueState {
        &self.state
    }

    /// The event store (read access: heads, events_after, conflicts).
    pub fn events(&self) -> &EventStore {
        &self.events
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The decoding limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replaces the policy with `bytes` (a `Signed<MeshPolicy>`) if it is
    /// signed by the mesh root and its `policy_version` is higher; persists
    /// it durably before returning.
    pub fn set_policy(&mut self, bytes: &[u8]) -> Result<PolicyChange, PolicyUpdateError> {
        let signed = Signed::<MeshPolicy>::from_bytes(bytes, &self.limits)?;
        if signed == self.policy_signed {
            return Ok(PolicyChange::Unchanged);
        }
        let p = self.policy.accept_update(&signed, &self.limits)?;
        self.events
            .set_meta(META_POLICY, &signed.to_bytes(), true)
            .map_err(|e| PolicyUpdateError::Storage(e.to_string()))?;
        let change = PolicyChange::Replaced {
            from: self.policy.policy_version,
            to: p.policy_version,
        };
        tracing::info!(
            from = self.policy.policy_version,
            to = p.policy_version,
            "mesh policy replaced"
        );
        self.policy = p;
        self.policy_signed = signed;
        Ok(change)
    }

    /// Verifies, stores (durably) and applies one `Signed<Event>`. See the
    /// [module docs](self).
    pub fn ingest(&mut self, bytes: &[u8]) -> IngestOutcome {
        self.ingest_with(bytes, None, true)
    }

    /// Like [`Ingest::ingest`], but the event is applied once it is written, without waiting
    /// for the store's flush: it becomes durable with the store's periodic flush (every
    /// 500 ms) or the next durable ingest, whichever comes first.
    ///
    /// For events received from peers only: a crash before the flush loses them here, and
    /// anti-entropy fetches them again from the peers that hold them (they are signed by their
    /// authors, who made them durable before gossiping them); a hole this leaves in an
    /// author's log is a gap, accepted like any other and filled by sync. Events this node
    /// signs or accepts from a client keep [`Ingest::ingest`].
    pub fn ingest_deferred(&mut self, bytes: &[u8]) -> IngestOutcome {
        self.ingest_with(bytes, None, false)
    }

    /// [`Ingest::ingest_deferred`] for an event from gossip whose signature [`precheck`]
    /// verified: the signature is not verified again (the role is, under the current policy).
    pub fn ingest_prechecked(&mut self, p: &Prechecked) -> IngestOutcome {
        self.ingest_with(&p.bytes, Some((&p.id, &p.event)), false)
    }

    fn ingest_with(
        &mut self,
        bytes: &[u8],
        verified: Option<(&Hash, &Event)>,
        durable: bool,
    ) -> IngestOutcome {
        let r = self
            .check_and_store_with(bytes, verified)
            .and_then(|c| match c {
                Checked::Duplicate(id) => Ok(Checked::Duplicate(id)),
                Checked::New(id, ev) => {
                    if durable {
                        self.events
                            .flush()
                            .map_err(|e| RejectReason::Storage(e.to_string()))?;
                    }
                    Ok(Checked::New(id, ev))
                }
            });
        self.pending.clear();
        self.pending_publish.clear();
        self.finish(r)
    }

    /// Like [`Ingest::ingest`] for many events (a sync response), with one
    /// flush for the batch. Events are applied only after the flush.
    pub fn ingest_batch<'a>(
        &mut self,
        batch: impl IntoIterator<Item = &'a [u8]>,
    ) -> Vec<IngestOutcome> {
        let batch: Vec<&[u8]> = batch.into_iter().collect();
        let mut checked: Vec<Result<Checked, RejectReason>> =
            batch.iter().map(|b| self.check_and_store(b)).collect();
        // A `publish` may arrive before the one it follows (authors are sent in key order):
        // retry those once the rest of the batch is stored, while that makes progress.
        loop {
            let mut progress = false;
            for (i, b) in batch.iter().enumerate() {
                if matches!(
                    checked[i],
                    Err(RejectReason::ManifestChain { unknown: true, .. })
                ) {
                    let again = self.check_and_store(b);
                    progress |= again.is_ok();
                    checked[i] = again;
                }
            }
            if !progress {
                break;
            }
        }
        let any_new = checked.iter().any(|c| matches!(c, Ok(Checked::New(..))));
        let flushed = if any_new {
            self.events
                .flush()
                .map_err(|e| RejectReason::Storage(e.to_string()))
        } else {
            Ok(())
        };
        self.pending.clear();
        self.pending_publish.clear();
        checked
            .into_iter()
            .map(|c| match (&flushed, c) {
                (Err(e), Ok(Checked::New(..))) => self.finish(Err(e.clone())),
                (_, c) => self.finish(c),
            })
            .collect()
    }

    fn finish(&mut self, r: Result<Checked, RejectReason>) -> IngestOutcome {
        match r {
            Ok(Checked::New(id, ev)) => {
                self.state.apply(id, &ev);
                self.counters.accepted += 1;
                tracing::debug!(event = %id.fmt_short(), author = %ev.author.fmt_short(), seq = ev.seq, kind = ev.body.kind(), "event accepted");
                // Best effort: made durable by the next flush.
                if let Ok(json) = serde_json::to_vec(&self.counters) {
                    let _ = self.events.set_meta(META_COUNTERS, &json, false);
                }
                IngestOutcome::Accepted { id }
            }
            Ok(Checked::Duplicate(id)) => {
                self.counters.duplicate += 1;
                IngestOutcome::Duplicate { id }
            }
            Err(reason) => {
                *self
                    .counters
                    .rejected
                    .entry(reason.label().to_owned())
                    .or_default() += 1;
                tracing::warn!(reason = reason.label(), "event rejected: {reason}");
                IngestOutcome::Rejected { reason }
            }
        }
    }

    /// A sync request carrying this node's contiguous heads (at most
    /// [`Limits::max_sync_heads`] authors).
    pub fn sync_request(&self, max_events: u32) -> SyncRequest {
        SyncRequest {
            version: SYNC_VERSION,
            heads: self
                .events
                .heads()
                .iter()
                .take(self.limits.max_sync_heads)
                .map(|(author, seq)| AuthorHead {
                    author: *author,
                    seq: *seq,
                })
                .collect(),
            max_events,
        }
    }

    /// Answers a peer's sync request: per author (ours, in key order), the
    /// stored events after the peer's head (after 0 for authors it did not
    /// list), oldest first, within `max_events`, [`Limits::max_sync_events`]
    /// and [`Limits::max_sync_bytes`]. `complete` says whether everything
    /// was sent.
    pub fn sync_response(&self, req: &SyncRequest) -> Result<SyncResponse, EventStoreError> {
        let theirs: BTreeMap<PublicKey, u64> =
            req.heads.iter().map(|h| (h.author, h.seq)).collect();
        let max_events = (req.max_events as usize).min(self.limits.max_sync_events);
        // Room for the response's own framing.
        let max_bytes = self.limits.max_sync_bytes.saturating_sub(1024);
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut complete = true;
        'authors: for author in self.events.heads().keys() {
            let after = theirs.get(author).copied().unwrap_or(0);
            let room = max_events - events.len();
            // Ask for one more than fits to learn whether anything is left.
            for (_, se) in self.events.events_after(author, after, room + 1)? {
                if events.len() >= max_events || bytes + se.bytes.len() > max_bytes {
                    complete = false;
                    break 'authors;
                }
                match Signed::<Event>::from_bytes(&se.bytes, &self.limits) {
                    Ok(s) => {
                        bytes += se.bytes.len();
                        events.push(s);
                    }
                    Err(e) => {
                        tracing::error!(event = %se.id.fmt_short(), "stored event not sent: {e}")
                    }
                }
            }
        }
        Ok(SyncResponse {
            version: SYNC_VERSION,
            events,
            complete,
        })
    }

    /// Ingests the events of a sync response as one batch (each verified
    /// like a gossiped event; one flush).
    pub fn ingest_sync_response(&mut self, resp: &SyncResponse) -> Vec<IngestOutcome> {
        let wire: Vec<Vec<u8>> = resp.events.iter().map(|s| s.to_bytes()).collect();
        self.ingest_batch(wire.iter().map(|b| b.as_slice()))
    }

    /// The manifest chain rule (see `docs/protocol.md`): the manifest names its signer as
    /// publisher, and generation G > 1 names as `previous` a known `publish` of generation
    /// G − 1 of the same repository and architecture. Which of several linked manifests is
    /// served is decided by [`QueueState::latest_generation`], not here.
    fn check_manifest(&self, author: &PublicKey, m: &RepoManifest) -> Result<(), RejectReason> {
        if m.publisher != *author {
            return Err(RejectReason::ManifestPublisher {
                publisher: m.publisher,
                signer: *author,
            });
        }
        let Some(prev) = m.previous else {
            return Ok(());
        };
        let chain_err = |unknown: bool, detail: String| RejectReason::ManifestChain {
            repo: m.repo.clone(),
            arch: m.arch.clone(),
            generation: m.generation,
            unknown,
            detail,
        };
        let want = m.generation - 1;
        let linked = self
            .state
            .generations(&m.repo, &m.arch)
            .and_then(|g| g.get(&want))
            .is_some_and(|by_id| by_id.contains_key(&prev))
            || self
                .pending_publish
                .get(&prev)
                .is_some_and(|(r, a, g)| *r == m.repo && *a == m.arch && *g == want);
        if linked {
            return Ok(());
        }
        if self.state.contains(&prev) || self.pending.contains(&prev) {
            return Err(chain_err(
                false,
                format!("previous {prev} is not generation {want} of this repository"),
            ));
        }
        Err(chain_err(
            true,
            format!("previous {prev} (generation {want}) is not known here"),
        ))
    }

    /// Everything but the flush and the apply.
    fn check_and_store(&mut self, bytes: &[u8]) -> Result<Checked, RejectReason> {
        self.check_and_store_with(bytes, None)
    }

    /// [`Ingest::check_and_store`]; `verified` is the id and event of `bytes` when their
    /// signature was verified already (a [`Prechecked`]).
    fn check_and_store_with(
        &mut self,
        bytes: &[u8],
        verified: Option<(&Hash, &Event)>,
    ) -> Result<Checked, RejectReason> {
        let storage = |e: EventStoreError| RejectReason::Storage(e.to_string());
        let (id, ev) = match verified {
            Some((id, ev)) => {
                if self.state.contains(id) || self.pending.contains(id) {
                    return Ok(Checked::Duplicate(*id));
                }
                permitted(ev, &self.policy)?;
                (*id, ev.clone())
            }
            None => {
                let signed = envelope(bytes, &self.limits)?;
                let id = signed.id();
                if self.state.contains(&id) || self.pending.contains(&id) {
                    return Ok(Checked::Duplicate(id));
                }
                (id, authorized(&signed, &self.policy, &self.limits)?)
            }
        };
        if let EventBody::Publish(m) = &ev.body {
            self.check_manifest(&ev.author, m)?;
        }
        if self.events.contains(&id).map_err(storage)? {
            // Stored but not applied: a flush failed after the insert, or
            // the stored copy did not decode at start-up. Rewrite the bytes
            // (they verify) and apply.
            self.events.rewrite(&id, bytes).map_err(storage)?;
            self.pending.insert(id);
            return Ok(Checked::New(id, Box::new(ev)));
        }

        let author = ev.author;
        let seq = ev.seq;
        let conflict = |events: &EventStore, reason: RejectReason| {
            match events.record_conflict(&author, seq, &id, bytes) {
                Ok(true) => {
                    tracing::warn!(author = %author.fmt_short(), seq, "equivocation evidence recorded")
                }
                Ok(false) => {}
                Err(e) => tracing::error!("could not record equivocation evidence: {e}"),
            }
            reason
        };
        if let Some(slot) = self.events.slot(&author, seq).map_err(storage)? {
            return Err(conflict(
                &self.events,
                RejectReason::Equivocation {
                    author,
                    seq,
                    existing: slot.id,
                    refused: id,
                },
            ));
        }
        if seq > 1
            && let Some(before) = self.events.slot(&author, seq - 1).map_err(storage)?
            && Some(before.id) != ev.prev
        {
            let detail = format!(
                "names prev {}, but the stored seq {} is {}",
                ev.prev
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into()),
                seq - 1,
                before.id
            );
            return Err(conflict(
                &self.events,
                RejectReason::BrokenChain {
                    author,
                    seq,
                    refused: id,
                    detail,
                },
            ));
        }
        if let Some(after) = self.events.slot(&author, seq + 1).map_err(storage)?
            && after.prev != Some(id)
        {
            let detail = format!(
                "is not the prev named by the stored seq {} ({})",
                seq + 1,
                after
                    .prev
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into()),
            );
            return Err(conflict(
                &self.events,
                RejectReason::BrokenChain {
                    author,
                    seq,
                    refused: id,
                    detail,
                },
            ));
        }
        let new = NewEvent {
            id,
            author,
            seq,
            prev: ev.prev,
            bytes,
        };
        match self.events.insert_deferred(&new) {
            Ok(true) => {
                self.pending.insert(id);
                if let EventBody::Publish(m) = &ev.body {
                    self.pending_publish
                        .insert(id, (m.repo.clone(), m.arch.clone(), m.generation));
                }
                Ok(Checked::New(id, Box::new(ev)))
            }
            Ok(false) => Ok(Checked::Duplicate(id)),
            Err(InsertError::SeqTaken { existing, .. }) => Err(conflict(
                &self.events,
                RejectReason::Equivocation {
                    author,
                    seq,
                    existing,
                    refused: id,
                },
            )),
            Err(InsertError::Store(e)) => Err(storage(e)),
        }
    }
}

enum Checked {
    New(Hash, Box<Event>),
    Duplicate(Hash),
}
