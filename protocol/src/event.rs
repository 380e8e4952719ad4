//! Events: the mesh's replicated log. Each event is signed by its author and
//! numbered in the author's own sequence, chained by `prev`, so a node that was
//! away can ask peers for exactly what it missed (anti-entropy).
//!
//! An entry in the build queue is identified by the [`Signed::id`] of the
//! `Enqueue` event that created it; `Cancel`, `Claim`, `Built` and `Failed`
//! refer to it by that id (their `entry` field).
//!
//! [`Signed::id`]: crate::Signed::id

use std::fmt;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{DecodeError, Limits, Message, check_len, check_text, invalid};
use crate::names::check_rel_path;
use crate::{
    FileName, Hash, Name, PublicKey, RepoManifest, Requirement, Sha256, Timestamp, tagged,
};

/// The newest event version this build understands and writes.
pub const EVENT_VERSION: u32 = 1;

/// One event in an author's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Format version ([`EVENT_VERSION`]).
    pub version: u32,
    /// The author; must be the key that signs the event.
    pub author: PublicKey,
    /// The author's sequence number: 1 for its first event, then +1 each time.
    pub seq: u64,
    /// The [`crate::Signed::id`] of the author's event `seq - 1`; `None`
    /// exactly when `seq == 1`.
    pub prev: Option<Hash>,
    /// When the author made the event (a claim, not trusted for safety).
    pub time: Timestamp,
    /// What happened.
    pub body: EventBody,
}

impl Event {
    /// A version-1 event.
    pub fn new(
        author: PublicKey,
        seq: u64,
        prev: Option<Hash>,
        time: Timestamp,
        body: EventBody,
    ) -> Self {
        Event {
            version: EVENT_VERSION,
            author,
            seq,
            prev,
            time,
            body,
        }
    }
}

/// What an event says. Wire form: `[kind, body]` (see README); kinds this
/// build does not know decode as [`EventBody::Unknown`] so that the author's
/// sequence stays intact and the event can still be stored and forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // a wire type, built once per message
pub enum EventBody {
    /// `enqueue` (maintainer): add an entry to the build queue.
    Enqueue(QueueEntry),
    /// `cancel` (maintainer): withdraw a queued entry.
    Cancel {
        /// The entry (id of its `Enqueue` event).
        entry: Hash,
    },
    /// `remove` (maintainer): remove a package base from a repository at the
    /// next publish.
    Remove {
        /// The package base.
        pkgbase: Name,
        /// The repository.
        repo: Name,
    },
    /// `claim` (builder): "I am building this entry until `lease_until`";
    /// renewed by repeating it with a later lease.
    Claim {
        /// The entry.
        entry: Hash,
        /// The builder's attempt number for this entry, from 1.
        attempt: u32,
        /// The lease end.
        lease_until: Timestamp,
    },
    /// `built` (builder): a successful build and its artifacts.
    Built {
        /// The entry.
        entry: Hash,
        /// The attempt this report closes.
        attempt: u32,
        /// The package files produced (at least one).
        artifacts: Vec<Artifact>,
        /// BLAKE3 of the build log blob.
        log: Hash,
        /// The source commit actually built (git sources), if known.
        source_commit: Option<String>,
    },
    /// `failed` (builder): a failed attempt.
    Failed {
        /// The entry.
        entry: Hash,
        /// The attempt this report closes.
        attempt: u32,
        /// One-line reason (e.g. "timeout after 3600 s", "makepkg exit 4").
        reason: String,
        /// BLAKE3 of the build log blob, if a log was produced.
        log: Option<Hash>,
    },
    /// `publish` (publisher): a new repository generation.
    Publish(RepoManifest),
    /// `approve` (maintainer): the change an entry's [`QueueEntry::review`] shows was read and
    /// may be built. Added after version 1 without a version bump: an older node decodes it
    /// as [`EventBody::Unknown`] (stored and forwarded, not acted on).
    Approve {
        /// The entry (id of its `Enqueue` event).
        entry: Hash,
    },
    /// A kind from a newer pacmesh. Decodes, validates as nothing, never
    /// encodes (forward the original [`crate::Signed`] bytes instead).
    Unknown {
        /// The kind string (at most 64 characters kept).
        kind: String,
    },
}

impl EventBody {
    /// The wire kind string.
    pub fn kind(&self) -> &str {
        match self {
            EventBody::Enqueue(_) => "enqueue",
            EventBody::Cancel { .. } => "cancel",
            EventBody::Remove { .. } => "remove",
            EventBody::Claim { .. } => "claim",
            EventBody::Built { .. } => "built",
            EventBody::Failed { .. } => "failed",
            EventBody::Publish(_) => "publish",
            EventBody::Approve { .. } => "approve",
            EventBody::Unknown { kind } => kind,
        }
    }

    /// The queue entry this event is about, if any.
    pub fn entry(&self) -> Option<&Hash> {
        match self {
            EventBody::Cancel { entry }
            | EventBody::Approve { entry }
            | EventBody::Claim { entry, .. }
            | EventBody::Built { entry, .. }
            | EventBody::Failed { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// A file produced by a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// e.g. `hello-1.0-1-x86_64.pkg.tar.zst`.
    pub file_name: FileName,
    /// Content hash: how peers fetch it.
    pub blake3: Hash,
    /// For pacman's database.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
}

/// Something to build: the body of an `Enqueue` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// The target repository (must be in the mesh policy).
    pub repo: Name,
    /// Where the PKGBUILD comes from.
    pub source: Source,
    /// Architectures to build for; empty means every architecture of the
    /// repository.
    #[serde(default)]
    pub arches: Vec<Name>,
    /// What a builder must have (`mem>=16G`, `tag=bigmem`, …), in addition to
    /// the target architecture.
    #[serde(default)]
    pub needs: Vec<Requirement>,
    /// `SOURCE_DATE_EPOCH` for the build; `None`: the builder derives it
    /// (commit time for git sources, else the enqueue event's time).
    pub source_date_epoch: Option<u64>,
    /// Build timeout in seconds; `None`: the policy's default.
    pub timeout_secs: Option<u32>,
    /// Entries (ids of their `Enqueue` events) to build first: dependencies, e.g. AUR
    /// packages this one depends on. A builder does not claim this entry while one of them is
    /// still to be built; when one failed or was cancelled, this entry fails too. Optional on
    /// the wire (absent = empty; added after version 1 without a version bump: older nodes
    /// ignore it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<Hash>,
    /// Set when the entry needs a maintainer's signed `approve` before any builder may claim
    /// it: the change to review (a unified diff of the PKGBUILD against what was built
    /// before, at most [`MAX_REVIEW_BYTES`]), e.g. an update that touches more than
    /// `pkgver`/`pkgrel`/checksums. Optional on the wire (absent = no review needed; added
    /// after version 1 without a version bump: older nodes ignore it, see the protocol
    /// README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<String>,
    /// A pkgrel bump for a rebuild of a version that is already published (a `[deploy NAME]`
    /// of an unchanged folder, a rebuild trigger): while the PKGBUILD's own
    /// `[epoch:]pkgver-pkgrel` is [`PkgrelBump::version`], the builder makes its pkgrel
    /// `pkgrel.count` (Arch's and Chaotic's `1` → `1.1` → `1.2`), so every builder produces the
    /// same new version; a PKGBUILD that moved on (a new pkgver or pkgrel) is built as it is.
    /// Decided when the entry is made, from what is published. Optional on the wire (absent =
    /// no bump; added after version 1 without a version bump: older nodes ignore it and build
    /// the unbumped version, which their publisher then refuses as "same version").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkgrel_bump: Option<PkgrelBump>,
    /// Set on entries enqueued automatically because other packages changed (rebuild triggers,
    /// soname changes): the package bases whose new versions led here, oldest first (the last
    /// one is the direct trigger). A cascade never enqueues a package base already in this
    /// list, and stops at [`MAX_CASCADE`] bases, so mutual triggers (A ↔ B) end. Optional on the
    /// wire (absent = empty; added after version 1 without a version bump).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cascade: Vec<Name>,
}

/// The largest [`QueueEntry::review`] text, in bytes (producers cut longer diffs and say so).
pub const MAX_REVIEW_BYTES: usize = 64 * 1024;

/// The longest [`QueueEntry::cascade`]: a rebuild cascade stops after this many package bases.
pub const MAX_CASCADE: usize = 16;

/// A pkgrel bump carried by a queue entry ([`QueueEntry::pkgrel_bump`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PkgrelBump {
    /// The PKGBUILD version the bump applies to, `[epoch:]pkgver-pkgrel` (at most 256 bytes of
    /// `[A-Za-z0-9._+:~-]`).
    pub version: String,
    /// The bump: pkgrel becomes `pkgrel.count` (at least 1).
    pub count: u32,
}

impl PkgrelBump {
    /// The bump that makes a rebuild newer than `published` (`[epoch:]pkgver-pkgrel`):
    /// `1.0-1` → `1.0-1` / 1 (built as `1.0-1.1`), `1.0-1.1` → `1.0-1` / 2 (`1.0-1.2`). A pkgrel
    /// whose part after the last dot is not a number (`1.0-1.a`) is bumped as a whole
    /// (`1.0-1.a` / 1). `None` for a text without `-pkgrel`.
    pub fn after(published: &str) -> Option<PkgrelBump> {
        let (ver, rel) = published.rsplit_once('-')?;
        if ver.is_empty() || rel.is_empty() {
            return None;
        }
        let (base, count) = match rel.rsplit_once('.') {
            Some((major, minor))
                if !major.is_empty()
                    && !minor.is_empty()
                    && minor.bytes().all(|b| b.is_ascii_digit()) =>
            {
                match minor.parse::<u32>() {
                    Ok(m) if m < u32::MAX => (major, m + 1),
                    _ => (rel, 1),
                }
            }
            _ => (rel, 1),
        };
        let b = PkgrelBump {
            version: format!("{ver}-{base}"),
            count,
        };
        b.check().ok().map(|()| b)
    }

    /// What the bumped version is when the PKGBUILD says [`PkgrelBump::version`].
    pub fn bumped(&self) -> String {
        format!("{}.{}", self.version, self.count)
    }

    fn check(&self) -> Result<(), DecodeError> {
        check_text("pkgrel_bump version", &self.version, 256)?;
        if self.version.is_empty()
            || !self.version.contains('-')
            || !self
                .version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+:~-".contains(&b))
        {
            return Err(invalid(
                "pkgrel_bump version",
                "must be [epoch:]pkgver-pkgrel of [A-Za-z0-9._+:~-]",
            ));
        }
        if self.count == 0 {
            return Err(invalid("pkgrel_bump count", "must be at least 1"));
        }
        Ok(())
    }
}

impl std::fmt::Display for PkgrelBump {
    /// `version/count`, the form of Chaotic's `CI_PACKAGE_BUMP`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.count)
    }
}

impl QueueEntry {
    /// An entry with no architectures (all), no requirements and defaults.
    pub fn new(repo: Name, source: Source) -> Self {
        QueueEntry {
            repo,
            source,
            arches: Vec::new(),
            needs: Vec::new(),
            source_date_epoch: None,
            timeout_secs: None,
            after: Vec::new(),
            review: None,
            pkgrel_bump: None,
            cascade: Vec::new(),
        }
    }

    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_len("enqueue arches", self.arches.len(), limits.max_list)?;
        check_len("enqueue needs", self.needs.len(), limits.max_list)?;
        check_len("enqueue after", self.after.len(), limits.max_keys)?;
        if let Some(r) = &self.review {
            check_len("enqueue review bytes", r.len(), MAX_REVIEW_BYTES)?;
        }
        if let Some(b) = &self.pkgrel_bump {
            b.check()?;
        }
        check_len("enqueue cascade", self.cascade.len(), MAX_CASCADE)?;
        self.source.validate(limits)
    }
}

/// Where a PKGBUILD comes from. Wire form: `[kind, body]` like
/// [`EventBody`]; unknown kinds decode as [`Source::Unknown`], which no
/// builder can build.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// `dir`: a PKGBUILD folder. `path` is as given on the enqueuing machine
    /// (for display); builders fetch `snapshot`, the BLAKE3 of a tar archive of
    /// the folder, from the mesh. Without a snapshot only the enqueuing node
    /// itself can build it.
    Dir {
        /// The folder on the enqueuing machine.
        path: String,
        /// Blob hash of the folder's tar archive.
        snapshot: Option<Hash>,
    },
    /// `git`: a git repository with a PKGBUILD.
    Git {
        /// Clone URL.
        url: String,
        /// Branch, tag or commit; `None`: the default branch.
        rev: Option<String>,
        /// Folder inside the repository holding the PKGBUILD.
        subdir: Option<String>,
    },
    /// `aur`: a package base from the AUR (git at `AUR_URL/PKGBASE.git`).
    Aur {
        /// The package base.
        pkgbase: Name,
    },
    /// `tree`: a packages tree, a git repository with one folder per package
    /// base (like Arch's packaging repositories).
    Tree {
        /// Clone URL.
        url: String,
        /// Branch, tag or commit; `None`: the default branch.
        rev: Option<String>,
        /// Package bases (folders) to build; empty: every folder with a
        /// PKGBUILD.
        pkgbases: Vec<Name>,
    },
    /// A source kind from a newer pacmesh.
    Unknown {
        /// The kind string.
        kind: String,
    },
}

impl Source {
    /// The wire kind string.
    pub fn kind(&self) -> &str {
        match self {
            Source::Dir { .. } => "dir",
            Source::Git { .. } => "git",
            Source::Aur { .. } => "aur",
            Source::Tree { .. } => "tree",
            Source::Unknown { kind } => kind,
        }
    }

    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        match self {
            Source::Dir { path, .. } => {
                check_text("dir path", path, limits.max_text)?;
                if path.is_empty() {
                    return Err(invalid("dir path", "is empty"));
                }
            }
            Source::Git { url, rev, subdir } => {
                check_url("git url", url, limits)?;
                if let Some(r) = rev {
                    check_rev(r, limits)?;
                }
                if let Some(s) = subdir {
                    check_rel_path(s).map_err(|r| invalid("git subdir", r))?;
                    check_text("git subdir", s, limits.max_text)?;
                }
            }
            Source::Aur { .. } | Source::Unknown { .. } => {}
            Source::Tree { url, rev, pkgbases } => {
                check_url("tree url", url, limits)?;
                if let Some(r) = rev {
                    check_rev(r, limits)?;
                }
                check_len("tree pkgbases", pkgbases.len(), limits.max_keys)?;
            }
        }
        Ok(())
    }
}

fn check_url(what: &'static str, url: &str, limits: &Limits) -> Result<(), DecodeError> {
    check_text(what, url, limits.max_text)?;
    if url.is_empty() {
        return Err(invalid(what, "is empty"));
    }
    if url.starts_with('-') {
        // Would be read as an option by git.
        return Err(invalid(what, "must not start with '-'"));
    }
    if url.chars().any(char::is_control) {
        return Err(invalid(what, "contains control characters"));
    }
    Ok(())
}

fn check_rev(rev: &str, limits: &Limits) -> Result<(), DecodeError> {
    check_text("git rev", rev, limits.max_text)?;
    if rev.is_empty() || rev.starts_with('-') || rev.chars().any(|c| c.is_control() || c == ' ') {
        return Err(invalid(
            "git rev",
            "must be non-empty, not start with '-', and have no spaces or control characters",
        ));
    }
    Ok(())
}

// ---- wire forms -------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct CancelW {
    entry: Hash,
}
#[derive(Serialize, Deserialize)]
struct ApproveW {
    entry: Hash,
}
#[derive(Serialize, Deserialize)]
struct RemoveW {
    pkgbase: Name,
    repo: Name,
}
#[derive(Serialize, Deserialize)]
struct ClaimW {
    entry: Hash,
    attempt: u32,
    lease_until: Timestamp,
}
#[derive(Serialize, Deserialize)]
struct BuiltW {
    entry: Hash,
    attempt: u32,
    artifacts: Vec<Artifact>,
    log: Hash,
    source_commit: Option<String>,
}
#[derive(Serialize, Deserialize)]
struct FailedW {
    entry: Hash,
    attempt: u32,
    reason: String,
    log: Option<Hash>,
}

impl Serialize for EventBody {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.kind();
        match self {
            EventBody::Enqueue(q) => tagged::serialize(s, k, q),
            EventBody::Cancel { entry } => tagged::serialize(s, k, &CancelW { entry: *entry }),
            EventBody::Approve { entry } => tagged::serialize(s, k, &ApproveW { entry: *entry }),
            EventBody::Remove { pkgbase, repo } => tagged::serialize(
                s,
                k,
                &RemoveW {
                    pkgbase: pkgbase.clone(),
                    repo: repo.clone(),
                },
            ),
            EventBody::Claim {
                entry,
                attempt,
                lease_until,
            } => tagged::serialize(
                s,
                k,
                &ClaimW {
                    entry: *entry,
                    attempt: *attempt,
                    lease_until: *lease_until,
                },
            ),
            EventBody::Built {
                entry,
                attempt,
                artifacts,
                log,
                source_commit,
            } => tagged::serialize(
                s,
                k,
                &BuiltW {
                    entry: *entry,
                    attempt: *attempt,
                    artifacts: artifacts.clone(),
                    log: *log,
                    source_commit: source_commit.clone(),
                },
            ),
            EventBody::Failed {
                entry,
                attempt,
                reason,
                log,
            } => tagged::serialize(
                s,
                k,
                &FailedW {
                    entry: *entry,
                    attempt: *attempt,
                    reason: reason.clone(),
                    log: *log,
                },
            ),
            EventBody::Publish(m) => tagged::serialize(s, k, m),
            EventBody::Unknown { kind } => Err(serde::ser::Error::custom(format!(
                "event body of unknown kind {kind:?} cannot be re-encoded; forward the original signed bytes"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for EventBody {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventBody;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event body [kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventBody, A::Error> {
                let kind = tagged::read_kind(&mut seq)?;
                let body = match kind.as_str() {
                    "enqueue" => EventBody::Enqueue(tagged::read_body(&mut seq)?),
                    "cancel" => {
                        let w: CancelW = tagged::read_body(&mut seq)?;
                        EventBody::Cancel { entry: w.entry }
                    }
                    "approve" => {
                        let w: ApproveW = tagged::read_body(&mut seq)?;
                        EventBody::Approve { entry: w.entry }
                    }
                    "remove" => {
                        let w: RemoveW = tagged::read_body(&mut seq)?;
                        EventBody::Remove {
                            pkgbase: w.pkgbase,
                            repo: w.repo,
                        }
                    }
                    "claim" => {
                        let w: ClaimW = tagged::read_body(&mut seq)?;
                        EventBody::Claim {
                            entry: w.entry,
                            attempt: w.attempt,
                            lease_until: w.lease_until,
                        }
                    }
                    "built" => {
                        let w: BuiltW = tagged::read_body(&mut seq)?;
                        EventBody::Built {
                            entry: w.entry,
                            attempt: w.attempt,
                            artifacts: w.artifacts,
                            log: w.log,
                            source_commit: w.source_commit,
                        }
                    }
                    "failed" => {
                        let w: FailedW = tagged::read_body(&mut seq)?;
                        EventBody::Failed {
                            entry: w.entry,
                            attempt: w.attempt,
                            reason: w.reason,
                            log: w.log,
                        }
                    }
                    "publish" => EventBody::Publish(tagged::read_body(&mut seq)?),
                    _ => EventBody::Unknown {
                        kind: tagged::skip_unknown(&mut seq, kind)?,
                    },
                };
                tagged::finish(&mut seq)?;
                Ok(body)
            }
        }
        d.deserialize_tuple(2, V)
    }
}

#[derive(Serialize, Deserialize)]
struct DirW {
    path: String,
    snapshot: Option<Hash>,
}
#[derive(Serialize, Deserialize)]
struct GitW {
    url: String,
    rev: Option<String>,
    subdir: Option<String>,
}
#[derive(Serialize, Deserialize)]
struct AurW {
    pkgbase: Name,
}
#[derive(Serialize, Deserialize)]
struct TreeW {
    url: String,
    rev: Option<String>,
    #[serde(default)]
    pkgbases: Vec<Name>,
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let k = self.kind();
        match self {
            Source::Dir { path, snapshot } => tagged::serialize(
                s,
                k,
                &DirW {
                    path: path.clone(),
                    snapshot: *snapshot,
                },
            ),
            Source::Git { url, rev, subdir } => tagged::serialize(
                s,
                k,
                &GitW {
                    url: url.clone(),
                    rev: rev.clone(),
                    subdir: subdir.clone(),
                },
            ),
            Source::Aur { pkgbase } => tagged::serialize(
                s,
                k,
                &AurW {
                    pkgbase: pkgbase.clone(),
                },
            ),
            Source::Tree { url, rev, pkgbases } => tagged::serialize(
                s,
                k,
                &TreeW {
                    url: url.clone(),
                    rev: rev.clone(),
                    pkgbases: pkgbases.clone(),
                },
            ),
            Source::Unknown { kind } => Err(serde::ser::Error::custom(format!(
                "source of unknown kind {kind:?} cannot be re-encoded"
            ))),
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Source;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a source [kind, body]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Source, A::Error> {
                let kind = tagged::read_kind(&mut seq)?;
                let src = match kind.as_str() {
                    "dir" => {
                        let w: DirW = tagged::read_body(&mut seq)?;
                        Source::Dir {
                            path: w.path,
                            snapshot: w.snapshot,
                        }
                    }
                    "git" => {
                        let w: GitW = tagged::read_body(&mut seq)?;
                        Source::Git {
                            url: w.url,
                            rev: w.rev,
                            subdir: w.subdir,
                        }
                    }
                    "aur" => {
                        let w: AurW = tagged::read_body(&mut seq)?;
                        Source::Aur { pkgbase: w.pkgbase }
                    }
                    "tree" => {
                        let w: TreeW = tagged::read_body(&mut seq)?;
                        Source::Tree {
                            url: w.url,
                            rev: w.rev,
                            pkgbases: w.pkgbases,
                        }
                    }
                    _ => Source::Unknown {
                        kind: tagged::skip_unknown(&mut seq, kind)?,
                    },
                };
                tagged::finish(&mut seq)?;
                Ok(src)
            }
        }
        d.deserialize_tuple(2, V)
    }
}

// ---- validation ---------------------------------------------------------------

impl Message for Event {
    const KIND: &'static str = "event";
    const VERSION: u32 = EVENT_VERSION;

    /// The larger of the event and manifest limits; [`Message::size_limit`]
    /// then holds every body but `Publish` to the event limit.
    fn max_bytes(limits: &Limits) -> usize {
        limits.max_event_bytes.max(limits.max_manifest_bytes)
    }

    fn size_limit(&self, limits: &Limits) -> usize {
        match self.body {
            EventBody::Publish(_) => Self::max_bytes(limits),
            _ => limits.max_event_bytes,
        }
    }

    fn claimed_signer(&self) -> Option<&PublicKey> {
        Some(&self.author)
    }

    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.seq == 0 {
            return Err(invalid("event seq", "sequence numbers start at 1"));
        }
        if (self.seq == 1) != self.prev.is_none() {
            return Err(invalid(
                "event prev",
                "must be absent exactly for the author's first event (seq 1)",
            ));
        }
        match &self.body {
            EventBody::Enqueue(q) => q.validate(limits)?,
            EventBody::Built {
                artifacts,
                source_commit,
                ..
            } => {
                if artifacts.is_empty() {
                    return Err(invalid("built artifacts", "a build report needs artifacts"));
                }
                check_len("built artifacts", artifacts.len(), limits.max_artifacts)?;
                let mut names: Vec<&str> = artifacts.iter().map(|a| a.file_name.as_str()).collect();
                names.sort_unstable();
                if names.windows(2).any(|w| w[0] == w[1]) {
                    return Err(invalid("built artifacts", "duplicate file name"));
                }
                if let Some(c) = source_commit {
                    check_text("built source_commit", c, 256)?;
                }
            }
            EventBody::Failed { reason, .. } => {
                check_text("failed reason", reason, limits.max_text)?
            }
            EventBody::Publish(m) => {
                m.validate(limits)?;
                if m.publisher != self.author {
                    return Err(invalid(
                        "publish",
                        "the manifest's publisher must be the event's author",
                    ));
                }
            }
            EventBody::Cancel { .. }
            | EventBody::Approve { .. }
            | EventBody::Remove { .. }
            | EventBody::Claim { .. }
            | EventBody::Unknown { .. } => {}
        }
        Ok(())
    }
}
