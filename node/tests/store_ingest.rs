//! Event store, policy and ingest pipeline: hostile and honest inputs,
//! restarts, `kill -9`, start-up cost.
//!
//! `cargo test -p pacmesh-node --test store_ingest`

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use pacmesh_node::ingest::{
    Ingest, IngestConfig, IngestOutcome, OpenError, PolicyChange, PolicyUpdateError, RejectReason,
};
use pacmesh_node::state::EntryStatus;
use pacmesh_node::store::{BlobStore, DbConfig, FsStore, open_db};
use pacmesh_protocol::{
    BuilderPolicy, Event, EventBody, Hash, Limits, MeshPolicy, Name, PolicyError, PublicKey,
    QueueEntry, RepoPolicy, Signed, SigningKey, Source, Timestamp, signing_message,
};

const ROOT: u8 = 1;
const MAINT: u8 = 2;
const BUILDER: u8 = 3;
const PUBLISHER: u8 = 4;
const STRANGER: u8 = 9;
const T0: u64 = 1_767_225_600_000;

fn sk(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}
fn pk(n: u8) -> PublicKey {
    PublicKey::from(&sk(n))
}
fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn policy(version: u64, maintainers: &[u8], builders: Option<&[u8]>) -> Vec<u8> {
    let p = MeshPolicy {
        version: 1,
        root: pk(ROOT),
        policy_version: version,
        time: Timestamp::from_millis(T0),
        repos: vec![RepoPolicy {
            name: name("extra"),
            arches: vec![name("x86_64")],
        }],
        maintainers: maintainers.iter().map(|n| pk(*n)).collect(),
        publishers: vec![pk(PUBLISHER)],
        builders: match builders {
            None => BuilderPolicy::Any,
            Some(b) => BuilderPolicy::Keys(b.iter().map(|n| pk(*n)).collect()),
        },
        quorum: 1,
        lease_secs: 600,
        build_timeout_secs: 3600,
    };
    Signed::sign(&sk(ROOT), &p).unwrap().to_bytes()
}

fn default_policy() -> Vec<u8> {
    policy(1, &[ROOT, MAINT], Some(&[BUILDER]))
}

/// Signs events with proper per-author chains.
#[derive(Default)]
struct Authors {
    next: HashMap<u8, (u64, Option<Hash>)>,
}

impl Authors {
    fn event(&mut self, who: u8, body: EventBody) -> (Hash, Vec<u8>) {
        let (seq, prev) = self.next.get(&who).copied().unwrap_or((1, None));
        let ev = Event::new(pk(who), seq, prev, Timestamp::from_millis(T0 + seq), body);
        let s = Signed::sign(&sk(who), &ev).unwrap();
        let id = s.id();
        self.next.insert(who, (seq + 1, Some(id)));
        (id, s.to_bytes())
    }
    /// Signs an event at an explicit position without advancing the chain.
    fn at(&self, who: u8, seq: u64, prev: Option<Hash>, body: EventBody) -> (Hash, Vec<u8>) {
        let ev = Event::new(pk(who), seq, prev, Timestamp::from_millis(T0 + seq), body);
        let s = Signed::sign(&sk(who), &ev).unwrap();
        (s.id(), s.to_bytes())
    }
}

fn enqueue(pkgbase: &str) -> EventBody {
    EventBody::Enqueue(QueueEntry::new(
        name("extra"),
        Source::Aur {
            pkgbase: name(pkgbase),
        },
    ))
}
fn claim(entry: Hash, attempt: u32) -> EventBody {
    EventBody::Claim {
        entry,
        attempt,
        lease_until: Timestamp::from_millis(T0 + 600_000),
    }
}

fn open(dir: &Path, offered: Option<&[u8]>) -> Ingest {
    try_open(dir, offered).unwrap()
}
fn try_open(dir: &Path, offered: Option<&[u8]>) -> Result<Ingest, OpenError> {
    let db = open_db(&dir.join("db"), &DbConfig::default()).unwrap();
    Ingest::open(&db, pk(ROOT), offered, IngestConfig::default()).map(|(i, _)| i)
}

fn accepted(o: IngestOutcome) -> Hash {
    match o {
        IngestOutcome::Accepted { id } => id,
        other => panic!("expected Accepted, got {other:?}"),
    }
}

/// Feeds `bytes`, expects a rejection with `label`, and checks that nothing
/// changed. Returns the reason (its text is checked by callers).
fn refused(node: &mut Ingest, bytes: &[u8], label: &str) -> RejectReason {
    let digest = node.state().digest();
    let n = node.events().len();
    let heads = node.events().heads().clone();
    let before = node.counters().rejected(label);
    let r = match node.ingest(bytes) {
        IngestOutcome::Rejected { reason } => reason,
        other => panic!("expected a rejection ({label}), got {other:?}"),
    };
    assert_eq!(r.label(), label, "reason: {r}");
    assert_eq!(node.counters().rejected(label), before + 1);
    assert_eq!(
        node.state().digest(),
        digest,
        "state changed after a rejection"
    );
    assert_eq!(node.events().len(), n);
    assert_eq!(node.events().heads(), &heads);
    r
}

#[test]
fn ingest_can_move_between_threads() {
    fn send<T: Send>() {}
    send::<Ingest>();
    send::<FsStore>();
}

#[test]
fn accept_duplicate_and_reencoded_replay() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (id, bytes) = a.event(MAINT, enqueue("hello"));
    assert_eq!(accepted(node.ingest(&bytes)), id);
    assert_eq!(node.ingest(&bytes), IngestOutcome::Duplicate { id });
    // The same envelope re-encoded (it is canonical already, so round-trip
    // through decode → to_bytes) is the same id.
    let again = Signed::<Event>::from_bytes(&bytes, &Limits::default())
        .unwrap()
        .to_bytes();
    assert_eq!(node.ingest(&again), IngestOutcome::Duplicate { id });
    assert_eq!(node.counters().accepted, 1);
    assert_eq!(node.counters().duplicate, 2);
    assert_eq!(node.events().head(&pk(MAINT)), 1);
    let e = node.state().entry(&id).unwrap();
    assert_eq!(
        node.state().status(e, Timestamp::from_millis(T0)),
        EntryStatus::Waiting
    );
    assert_eq!(
        node.state().claimable(Timestamp::from_millis(T0), 1).len(),
        1
    );

    let (cid, c) = a.event(BUILDER, claim(id, 1));
    accepted(node.ingest(&c));
    // A lease far beyond 2 × lease_secs (600 s) is refused.
    let long = EventBody::Claim {
        entry: id,
        attempt: 2,
        lease_until: Timestamp::from_millis(T0 + 3_600_000),
    };
    let (_, lb) = a.at(BUILDER, 2, Some(cid), long);
    let r = refused(&mut node, &lb, "lease_too_long");
    assert!(
        r.to_string().contains("exceeds the maximum of 1200 s"),
        "{r}"
    );
    assert_eq!(
        node.state()
            .status(node.state().entry(&id).unwrap(), Timestamp::from_millis(T0))
            .label(),
        "claimed"
    );
}

#[test]
fn roles_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (entry, e) = a.event(MAINT, enqueue("hello"));
    accepted(node.ingest(&e));

    let (_, x) = a.event(STRANGER, enqueue("evil"));
    let r = refused(&mut node, &x, "not_allowed");
    assert!(r.to_string().contains("may not enqueue"), "{r}");
    assert!(r.to_string().contains(&pk(STRANGER).to_string()), "{r}");

    // A builder may not enqueue or cancel; a maintainer may not claim.
    let (_, x) = a.at(BUILDER, 1, None, enqueue("evil"));
    refused(&mut node, &x, "not_allowed");
    let (_, x) = a.at(BUILDER, 1, None, EventBody::Cancel { entry });
    refused(&mut node, &x, "not_allowed");
    let (_, x) = a.at(MAINT, 2, Some(entry), claim(entry, 1));
    let r = refused(&mut node, &x, "not_allowed");
    assert!(r.to_string().contains("may not claim"), "{r}");
    // Builders are restricted to the listed keys.
    let (_, x) = a.at(STRANGER, 1, None, claim(entry, 1));
    refused(&mut node, &x, "not_allowed");
    // The root holds only ROOT unless listed; here it is a maintainer.
    let (_, x) = a.at(ROOT, 1, None, enqueue("fine"));
    accepted(node.ingest(&x));
    // An unknown repository is refused with its own reason.
    let (_, x) = a.at(
        MAINT,
        2,
        Some(entry),
        EventBody::Enqueue(QueueEntry::new(
            name("core"),
            Source::Aur { pkgbase: name("a") },
        )),
    );
    let r = refused(&mut node, &x, "unknown_repo");
    assert!(r.to_string().contains("core"), "{r}");
    assert_eq!(node.counters().rejected("not_allowed"), 5);
    assert_eq!(node.counters().rejected_total(), 6);
}

#[test]
fn hostile_bytes_are_refused_and_the_node_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (_, good) = a.event(MAINT, enqueue("hello"));
    accepted(node.ingest(&good));
    let (_, next) = a.event(MAINT, enqueue("world"));

    // Bad signature: one bit of the signature flipped.
    let s = Signed::<Event>::from_bytes(&next, &Limits::default()).unwrap();
    let mut sig = s.sig;
    sig[10] ^= 1;
    let bad = Signed::<Event>::from_parts(s.payload.clone(), s.signer, sig).to_bytes();
    let r = refused(&mut node, &bad, "bad_signature");
    assert!(r.to_string().contains("bad signature"), "{r}");
    // Signature by another key than the author (valid for the signer).
    let forged_sig = {
        use ed25519_dalek::Signer;
        sk(STRANGER)
            .sign(&signing_message("event", &s.payload))
            .to_bytes()
    };
    let forged = Signed::<Event>::from_parts(s.payload.clone(), pk(STRANGER), forged_sig);
    let r = refused(&mut node, &forged.to_bytes(), "signer_mismatch");
    assert!(r.to_string().contains("signed by"), "{r}");

    // Every truncation of a valid event.
    for cut in [0, 1, 2, next.len() / 2, next.len() - 1] {
        refused(&mut node, &next[..cut], "truncated");
    }
    // Garbage.
    refused(&mut node, b"\xff\xff\xff\xff garbage", "malformed");
    refused(&mut node, &[0x1f; 64], "malformed");
    // Trailing bytes after a valid event.
    let mut trailing = next.clone();
    trailing.push(0);
    refused(&mut node, &trailing, "malformed");
    // Oversized input: refused before parsing.
    let huge = vec![0xa5; Limits::default().max_manifest_bytes + 1];
    let r = refused(&mut node, &huge, "too_large");
    assert!(r.to_string().contains("more than the limit"), "{r}");
    // A signed policy is not an event.
    refused(&mut node, &default_policy(), "wrong_kind");
    // An event from a newer pacmesh.
    let mut newer = Event::new(pk(MAINT), 2, None, Timestamp::from_millis(T0), enqueue("x"));
    newer.version = 7;
    newer.prev = Some(Hash::new(b"x"));
    let nb = Signed::sign(&sk(MAINT), &newer).unwrap().to_bytes();
    let r = refused(&mut node, &nb, "unsupported_version");
    assert!(r.to_string().contains("upgrade"), "{r}");
    // An envelope from a newer pacmesh ("version": 2 in the envelope map).
    let mut env2 = next.clone();
    let at = env2.windows(8).position(|w| w == b"\x67version").unwrap() + 8;
    assert_eq!(env2[at], 1);
    env2[at] = 2;
    let r = refused(&mut node, &env2, "unsupported_version");
    assert!(r.to_string().contains("signed envelope"), "{r}");
    // An invalid payload (seq 0).
    let zero = Event::new(pk(MAINT), 0, None, Timestamp::from_millis(T0), enqueue("x"));
    let zb = Signed::sign(&sk(MAINT), &zero).unwrap().to_bytes();
    refused(&mut node, &zb, "invalid");

    // Still working.
    accepted(node.ingest(&next));
    assert_eq!(node.counters().accepted, 2);
}

#[test]
fn oversized_event_for_its_kind() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    let limits = Limits {
        max_event_bytes: 120,
        max_manifest_bytes: 120,
        ..Limits::default()
    };
    let cfg = IngestConfig {
        limits,
        verify_on_open: false,
    };
    let (mut node, _) = Ingest::open(&db, pk(ROOT), Some(&default_policy()), cfg).unwrap();
    let mut a = Authors::default();
    let (_, e) = a.event(MAINT, enqueue("hello"));
    assert!(e.len() > 120);
    refused(&mut node, &e, "too_large");
}

#[test]
fn equivocation_and_broken_chains_are_refused_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (e1, b1) = a.event(MAINT, enqueue("one"));
    let (e2, b2) = a.event(MAINT, enqueue("two"));
    accepted(node.ingest(&b1));
    accepted(node.ingest(&b2));

    // Same (author, seq), different event.
    let (x, xb) = a.at(MAINT, 2, Some(e1), enqueue("other-two"));
    let r = refused(&mut node, &xb, "equivocation");
    assert_eq!(
        r,
        RejectReason::Equivocation {
            author: pk(MAINT),
            seq: 2,
            existing: e2,
            refused: x
        }
    );
    // Replaying the equivocating event again is refused again (not a duplicate).
    refused(&mut node, &xb, "equivocation");
    let conflicts = node.events().conflicts().unwrap();
    assert_eq!(conflicts.len(), 1);
    assert_eq!((conflicts[0].1, conflicts[0].2.id), (2, x));

    // seq 3 whose prev is not the stored seq 2.
    let (_, bad3) = a.at(MAINT, 3, Some(Hash::new(b"elsewhere")), enqueue("three"));
    let r = refused(&mut node, &bad3, "broken_chain");
    assert!(r.to_string().contains("names prev"), "{r}");

    // A gap: seq 5 arrives before 3 and 4: accepted, head stays at 2.
    let (e3, b3) = a.event(MAINT, enqueue("three"));
    let (e4, b4) = a.event(MAINT, enqueue("four"));
    let (_, b5) = a.event(MAINT, enqueue("five"));
    accepted(node.ingest(&b5));
    assert_eq!(node.events().head(&pk(MAINT)), 2);
    assert!(node.state().entry(&Hash::new(b"none")).is_none());
    // A seq 4 that seq 5 does not name as prev is refused.
    let (_, fake4) = a.at(MAINT, 4, Some(e3), enqueue("fake-four"));
    let r = refused(&mut node, &fake4, "broken_chain");
    assert!(
        r.to_string()
            .contains("is not the prev named by the stored seq 5"),
        "{r}"
    );
    // Filling the gap moves the head.
    accepted(node.ingest(&b4));
    assert_eq!(node.events().head(&pk(MAINT)), 2);
    accepted(node.ingest(&b3));
    assert_eq!(node.events().head(&pk(MAINT)), 5);
    assert!(node.state().entry(&e4).is_some());
    let after: Vec<u64> = node
        .events()
        .events_after(&pk(MAINT), 2, 10)
        .unwrap()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(after, vec![3, 4, 5]);
}

#[test]
fn policy_updates() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (entry, e) = a.event(MAINT, enqueue("hello"));
    accepted(node.ingest(&e));
    let (_, s1) = a.event(STRANGER, enqueue("later"));
    refused(&mut node, &s1, "not_allowed");

    // Same policy again: unchanged.
    assert_eq!(
        node.set_policy(&default_policy()),
        Ok(PolicyChange::Unchanged)
    );
    // Not newer.
    let same_version = policy(1, &[MAINT, STRANGER], None);
    assert!(matches!(
        node.set_policy(&same_version),
        Err(PolicyUpdateError::Policy(PolicyError::NotNewer {
            current: 1,
            offered: 1
        }))
    ));
    // Signed by someone else than the root.
    let mut p: MeshPolicy = {
        let s = Signed::<MeshPolicy>::from_bytes(&policy(5, &[STRANGER], None), &Limits::default())
            .unwrap();
        s.verify_and_decode(&Limits::default()).unwrap()
    };
    p.root = pk(STRANGER);
    let foreign = Signed::sign(&sk(STRANGER), &p).unwrap().to_bytes();
    assert!(matches!(
        node.set_policy(&foreign),
        Err(PolicyUpdateError::Policy(PolicyError::WrongRoot { .. }))
    ));
    // Garbage.
    assert!(matches!(
        node.set_policy(b"junk"),
        Err(PolicyUpdateError::Decode(_))
    ));
    assert_eq!(node.policy().policy_version, 1);

    // Version 2 adds the stranger as maintainer and revokes MAINT.
    let v2 = policy(2, &[STRANGER], Some(&[BUILDER]));
    assert_eq!(
        node.set_policy(&v2),
        Ok(PolicyChange::Replaced { from: 1, to: 2 })
    );
    accepted(node.ingest(&s1));
    let (_, m2) = a.event(MAINT, EventBody::Cancel { entry });
    refused(&mut node, &m2, "not_allowed");
    // Already accepted events of the revoked key stay.
    assert!(node.state().entry(&entry).is_some());
    let digest = node.state().digest();
    drop(node);

    // Persisted; an older policy offered at start-up is ignored.
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    let (node, report) = Ingest::open(
        &db,
        pk(ROOT),
        Some(&default_policy()),
        IngestConfig::default(),
    )
    .unwrap();
    assert_eq!(node.policy().policy_version, 2);
    assert!(
        report
            .offered_policy_ignored
            .unwrap()
            .contains("does not replace")
    );
    assert_eq!(node.state().digest(), digest);
    drop(node);
    drop(db);

    // Another mesh's root on the same directory.
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    let err = Ingest::open(&db, pk(STRANGER), None, IngestConfig::default())
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::WrongMesh { .. }), "{err}");
}

#[test]
fn no_policy_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        try_open(dir.path(), None),
        Err(OpenError::NoPolicy)
    ));
    let bad = policy(1, &[MAINT], None);
    let mut tampered = bad.clone();
    let n = tampered.len();
    tampered[n - 3] ^= 1;
    assert!(matches!(
        try_open(dir.path(), Some(&tampered)),
        Err(OpenError::BadPolicy { which: "given", .. })
    ));
}

#[test]
fn restart_keeps_events_policy_state_counters_generations_and_blobs() {
    use pacmesh_node::state::referenced_blobs;
    use pacmesh_protocol::{Artifact, FileName, ManifestPackage, RepoManifest, Sha256};

    let dir = tempfile::tempdir().unwrap();
    let mut a = Authors::default();
    let (digest, heads, counters, blob, entry, publish, junk);
    {
        let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
        let (mut node, _) = Ingest::open(
            &db,
            pk(ROOT),
            Some(&default_policy()),
            IngestConfig::default(),
        )
        .unwrap();
        let (blobs, _) = FsStore::open(dir.path(), &db).unwrap();
        // Pins every blob an accepted event refers to.
        let ingest_and_pin = |node: &mut Ingest, bytes: &[u8]| {
            let id = accepted(node.ingest(bytes));
            let s = Signed::<Event>::from_bytes(bytes, &Limits::default()).unwrap();
            let ev = s.verify_and_decode(&Limits::default()).unwrap();
            for h in referenced_blobs(&ev.body) {
                blobs.pin(&h, &format!("event:{id}")).unwrap();
            }
            id
        };
        let (e, b) = a.event(MAINT, enqueue("hello"));
        entry = e;
        ingest_and_pin(&mut node, &b);
        ingest_and_pin(&mut node, &a.event(BUILDER, claim(entry, 1)).1);
        let pkg = b"a package".as_slice();
        blob = blobs.import_bytes(pkg).unwrap();
        let log = blobs.import_bytes(b"build log").unwrap();
        junk = blobs.import_bytes(b"unreferenced").unwrap();
        let file_name = FileName::new("hello-1.0-1-x86_64.pkg.tar.zst").unwrap();
        let built = EventBody::Built {
            entry,
            attempt: 1,
            artifacts: vec![Artifact {
                file_name: file_name.clone(),
                blake3: blob,
                sha256: Sha256::digest(pkg),
                size: pkg.len() as u64,
            }],
            log,
            source_commit: None,
        };
        ingest_and_pin(&mut node, &a.event(BUILDER, built).1);
        refused(&mut node, b"junk", "malformed");
        node.set_policy(&policy(3, &[ROOT, MAINT], Some(&[BUILDER])))
            .unwrap();
        ingest_and_pin(&mut node, &a.event(MAINT, enqueue("world")).1);
        let manifest = RepoManifest {
            version: 1,
            repo: name("extra"),
            arch: name("x86_64"),
            generation: 1,
            previous: None,
            time: Timestamp::from_millis(T0),
            publisher: pk(PUBLISHER),
            db: blobs.import_bytes(b"db").unwrap(),
            files_db: blobs.import_bytes(b"files").unwrap(),
            db_sig: blobs.import_bytes(b"db sig").unwrap(),
            files_db_sig: None,
            packages: vec![ManifestPackage {
                file_name,
                pkgname: name("hello"),
                version: "1.0-1".into(),
                blake3: blob,
                sha256: Sha256::digest(pkg),
                size: pkg.len() as u64,
                sig: blobs.import_bytes(b"pkg sig").unwrap(),
            }],
        };
        publish = ingest_and_pin(
            &mut node,
            &a.event(PUBLISHER, EventBody::Publish(manifest)).1,
        );
        digest = node.state().digest();
        heads = node.events().heads().clone();
        counters = node.counters().clone();
    }
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    let (node, report) = Ingest::open(&db, pk(ROOT), None, IngestConfig::default()).unwrap();
    assert_eq!(report.events, 5);
    assert!(report.skipped.is_empty());
    assert_eq!(node.policy().policy_version, 3);
    assert_eq!(node.state().digest(), digest);
    assert_eq!(node.events().heads(), &heads);
    assert_eq!(node.counters(), &counters);
    assert_eq!(counters.accepted, 5);
    assert_eq!(counters.rejected("malformed"), 1);
    let e = node.state().entry(&entry).unwrap();
    assert_eq!(e.claims.len(), 1);
    match node.state().status(e, Timestamp::from_millis(T0)) {
        EntryStatus::Published(p) => assert_eq!((p.generation, p.event), (1, publish)),
        other => panic!("{other:?}"),
    }
    let g = node
        .state()
        .latest_generation(&name("extra"), &name("x86_64"))
        .unwrap();
    assert_eq!(g.event, publish);
    let (blobs, _) = FsStore::open(dir.path(), &db).unwrap();
    assert_eq!(blobs.read(&blob).unwrap(), b"a package");
    let mut pins = blobs.pins(&blob).unwrap();
    pins.sort();
    assert_eq!(pins.len(), 2, "pinned by the built and the publish event");
    // GC keeps everything referenced, removes the unreferenced blob.
    let st = blobs.gc(Duration::ZERO).unwrap();
    assert_eq!(st.removed, 1);
    assert!(!blobs.has(&junk).unwrap());
    assert_eq!(blobs.len().unwrap(), 6);
    // And with full signature re-verification the result is the same.
    drop(node);
    let (node, report) = Ingest::open(
        &db,
        pk(ROOT),
        None,
        IngestConfig {
            verify_on_open: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(report.events, 5);
    assert_eq!(node.state().digest(), digest);
}

#[test]
fn batch_ingest_flushes_once_and_reports_each() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (_, b1) = a.event(MAINT, enqueue("one"));
    let (_, b2) = a.event(MAINT, enqueue("two"));
    let out = node.ingest_batch([&b1[..], &b1[..], b"junk", &b2[..]]);
    assert!(matches!(out[0], IngestOutcome::Accepted { .. }));
    assert!(matches!(out[1], IngestOutcome::Duplicate { .. }));
    assert!(matches!(out[2], IngestOutcome::Rejected { .. }));
    assert!(matches!(out[3], IngestOutcome::Accepted { .. }));
    assert_eq!(node.events().head(&pk(MAINT)), 2);
    assert_eq!(node.state().entries().count(), 2);
}

/// Accepts events in a child process, prints each accepted id, and is killed
/// with SIGKILL by the parent part of the test; every printed id must be there
/// after reopening.
#[test]
fn accepted_events_survive_kill_9() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if let Ok(dir) = std::env::var("PACMESH_KILL9_CHILD_DIR") {
        let mut node = open(Path::new(&dir), Some(&default_policy()));
        let mut a = Authors::default();
        for i in 0.. {
            let (id, b) = a.event(MAINT, enqueue(&format!("p{i}")));
            accepted(node.ingest(&b));
            println!("ACCEPTED {id}");
        }
        unreachable!();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "accepted_events_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PACMESH_KILL9_CHILD_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ids = Vec::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while ids.len() < 40 {
        let line = lines.next().expect("child ended early").unwrap();
        if let Some((_, id)) = line.split_once("ACCEPTED ") {
            ids.push(id.parse::<Hash>().unwrap());
        }
    }
    // SIGKILL: no destructors, no final flush.
    child.kill().unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let node = open(dir.path(), None);
    for id in &ids {
        assert!(
            node.events().contains(id).unwrap(),
            "accepted event {id} lost"
        );
        assert!(node.state().entry(id).is_some());
    }
    assert!(node.events().head(&pk(MAINT)) >= ids.len() as u64);
    assert_eq!(node.events().head(&pk(MAINT)) as usize, node.events().len());
}

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// 5000 events: start-up (open + rebuild) time and RSS, measured in a fresh
/// child process. Prints the figures; asserts RSS < 150 MB always and the
/// 1 s start-up budget only in optimized builds.
#[test]
fn startup_with_5000_events() {
    use std::process::Command;

    if let Ok(dir) = std::env::var("PACMESH_STARTUP_CHILD_DIR") {
        let verify = std::env::var("PACMESH_STARTUP_VERIFY").is_ok();
        let t = std::time::Instant::now();
        let db = open_db(&Path::new(&dir).join("db"), &DbConfig::default()).unwrap();
        let cfg = IngestConfig {
            verify_on_open: verify,
            ..Default::default()
        };
        let (node, report) = Ingest::open(&db, pk(ROOT), None, cfg).unwrap();
        let total = t.elapsed();
        assert_eq!(report.events, 5000);
        assert_eq!(node.state().entries().count(), 1250);
        println!(
            "STARTUP total_ms={} replay_ms={} rss_kib={}",
            total.as_millis(),
            report.elapsed.as_millis(),
            rss_kib().unwrap_or(0)
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let mut node = open(dir.path(), Some(&default_policy()));
        let mut a = Authors::default();
        let mut batch = Vec::new();
        for i in 0..1250 {
            let (entry, e) = a.event(MAINT, enqueue(&format!("pkg{i}")));
            batch.push(e);
            batch.push(a.event(BUILDER, claim(entry, 1)).1);
            batch.push(a.event(BUILDER, claim(entry, 2)).1);
            let f = EventBody::Failed {
                entry,
                attempt: 1,
                reason: "makepkg exit 4".into(),
                log: None,
            };
            batch.push(a.event(BUILDER, f).1);
        }
        let t = std::time::Instant::now();
        for chunk in batch.chunks(500) {
            let out = node.ingest_batch(chunk.iter().map(|v| v.as_slice()));
            assert!(
                out.iter()
                    .all(|o| matches!(o, IngestOutcome::Accepted { .. }))
            );
        }
        eprintln!("ingest 5000 events in batches of 500: {:?}", t.elapsed());
        assert_eq!(node.events().len(), 5000);
    }
    for verify in [false, true] {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "startup_with_5000_events",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PACMESH_STARTUP_CHILD_DIR", dir.path());
        if verify {
            cmd.env("PACMESH_STARTUP_VERIFY", "1");
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.split_once("STARTUP ").map(|(_, rest)| rest))
            .unwrap_or_else(|| {
                panic!(
                    "child failed: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        eprintln!("start-up with 5000 events (verify_on_open={verify}): {line}");
        let field = |k: &str| -> u64 {
            line.split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap()
        };
        assert!(field("rss_kib=") < 150 * 1024, "RSS over budget: {line}");
        if !verify && !cfg!(debug_assertions) {
            assert!(field("total_ms=") < 1000, "start-up over budget: {line}");
        }
    }
}

#[test]
fn corrupt_stored_event_is_skipped_then_repaired_by_a_fresh_copy() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authors::default();
    let (id1, b1) = a.event(MAINT, enqueue("one"));
    let (id2, b2) = a.event(MAINT, enqueue("two"));
    {
        let mut node = open(dir.path(), Some(&default_policy()));
        accepted(node.ingest(&b1));
        accepted(node.ingest(&b2));
    }
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    // Bit rot in the stored copy of event 2.
    let mut rotten = b2.clone();
    let n = rotten.len();
    rotten[n - 70] ^= 0x40;
    db.open_tree("events")
        .unwrap()
        .insert(id2.as_bytes(), rotten)
        .unwrap();
    let (mut node, report) = Ingest::open(&db, pk(ROOT), None, IngestConfig::default()).unwrap();
    assert_eq!(report.events, 1);
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, id2);
    assert!(node.state().entry(&id1).is_some());
    assert!(node.state().entry(&id2).is_none());
    // A peer sends the event again: verified, stored bytes repaired, applied.
    assert_eq!(node.ingest(&b2), IngestOutcome::Accepted { id: id2 });
    assert!(node.state().entry(&id2).is_some());
    assert_eq!(node.ingest(&b2), IngestOutcome::Duplicate { id: id2 });
    drop(node);
    let (node, report) = Ingest::open(&db, pk(ROOT), None, IngestConfig::default()).unwrap();
    assert!(report.skipped.is_empty());
    assert_eq!(node.events().get(&id2).unwrap().unwrap(), b2);
}

#[test]
fn anti_entropy_between_two_stores_converges() {
    use pacmesh_protocol::{Message, SyncResponse};

    let da = tempfile::tempdir().unwrap();
    let db_ = tempfile::tempdir().unwrap();
    let mut a_node = open(da.path(), Some(&default_policy()));
    let mut b_node = open(db_.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let mut all = Vec::new();
    for i in 0..30 {
        let (entry, e) = a.event(MAINT, enqueue(&format!("p{i}")));
        all.push(e);
        all.push(a.event(BUILDER, claim(entry, 1)).1);
    }
    for e in &all {
        accepted(a_node.ingest(e));
    }
    // B has some of them already, including one after a gap.
    for e in [&all[0], &all[2], &all[9]] {
        accepted(b_node.ingest(e));
    }
    assert_ne!(a_node.state().digest(), b_node.state().digest());
    let mut rounds = 0;
    loop {
        rounds += 1;
        let req = b_node.sync_request(7);
        // Over the wire and back.
        let req = pacmesh_protocol::SyncRequest::decode(&req.encode().unwrap(), &Limits::default())
            .unwrap();
        let resp = a_node.sync_response(&req).unwrap();
        assert!(resp.events.len() <= 7);
        let resp = SyncResponse::decode(&resp.encode().unwrap(), &Limits::default()).unwrap();
        for o in b_node.ingest_sync_response(&resp) {
            assert!(
                !matches!(o, IngestOutcome::Rejected { .. }),
                "{o:?} in round {rounds}"
            );
        }
        if resp.complete {
            break;
        }
        assert!(rounds < 30, "sync does not converge");
    }
    assert_eq!(a_node.state().digest(), b_node.state().digest());
    assert_eq!(a_node.events().heads(), b_node.events().heads());
    // Nothing more to send.
    let resp = a_node.sync_response(&b_node.sync_request(100)).unwrap();
    assert!(resp.complete && resp.events.is_empty());
}

/// An event kind from a newer pacmesh: stored and forwarded (it keeps the
/// author's chain intact), counted, never acted on; strangers may not send one.
#[test]
fn unknown_event_kinds_are_kept_but_not_acted_on() {
    use ed25519_dalek::Signer;

    fn unknown_kind(who: u8, seq: u64, prev: Option<Hash>) -> (Hash, Vec<u8>) {
        let ev = Event::new(
            pk(who),
            seq,
            prev,
            Timestamp::from_millis(T0),
            EventBody::Cancel {
                entry: Hash::new(b"x"),
            },
        );
        let mut payload = Signed::sign(&sk(who), &ev).unwrap().payload;
        // Same length, so the CBOR stays well-formed: "cancel" -> "cancal".
        let at = payload.windows(6).position(|w| w == b"cancel").unwrap();
        payload[at..at + 6].copy_from_slice(b"cancal");
        let sig = sk(who).sign(&signing_message("event", &payload)).to_bytes();
        let s = Signed::<Event>::from_parts(payload, pk(who), sig);
        (s.id(), s.to_bytes())
    }

    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let (id, bytes) = unknown_kind(BUILDER, 1, None);
    let decoded = Signed::<Event>::from_bytes(&bytes, &Limits::default())
        .unwrap()
        .verify_and_decode(&Limits::default())
        .unwrap();
    assert!(matches!(decoded.body, EventBody::Unknown { .. }));
    assert_eq!(accepted(node.ingest(&bytes)), id);
    assert_eq!(node.state().unknown_kinds(), 1);
    assert_eq!(node.state().entries().count(), 0);
    assert_eq!(node.state().orphans().count(), 0);
    assert_eq!(node.events().head(&pk(BUILDER)), 1);
    let (_, stranger) = unknown_kind(STRANGER, 1, None);
    refused(&mut node, &stranger, "not_allowed");
    // The stored bytes are what a peer gets in a sync response.
    let resp = node
        .sync_response(&pacmesh_protocol::SyncRequest {
            version: 1,
            heads: vec![],
            max_events: 10,
        })
        .unwrap();
    assert_eq!(resp.events.len(), 1);
    assert_eq!(resp.events[0].to_bytes(), bytes);
    let digest = node.state().digest();
    drop(node);
    let node = open(dir.path(), None);
    assert_eq!(node.state().unknown_kinds(), 1);
    assert_eq!(node.state().digest(), digest);
}

/// Thousands of mutations of valid events (bit flips, byte replacements,
/// truncations, insertions, splices): never a panic, never a new event, the
/// state never changes; the node still accepts a good event afterwards.
#[test]
fn mutated_events_never_change_the_state() {
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let mut a = Authors::default();
    let (entry, e1) = a.event(MAINT, enqueue("hello"));
    let (_, e2) = a.event(BUILDER, claim(entry, 1));
    let f = EventBody::Failed {
        entry,
        attempt: 1,
        reason: "makepkg exit 4".into(),
        log: Some(Hash::new(b"log")),
    };
    let (_, e3) = a.event(BUILDER, f);
    for e in [&e1, &e2, &e3] {
        accepted(node.ingest(e));
    }
    let digest = node.state().digest();
    let n = node.events().len();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let originals = [&e1, &e2, &e3];
    for round in 0..3000 {
        let mut m = originals[round % 3].clone();
        match rng.below(5) {
            0 => {
                let i = rng.below(m.len());
                m[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            2 => {
                let cut = rng.below(m.len());
                m.truncate(cut);
            }
            3 => {
                let i = rng.below(m.len());
                m.insert(i, rng.next() as u8);
            }
            _ => {
                let other = originals[rng.below(3)];
                let i = rng.below(m.len());
                let j = rng.below(other.len());
                m.truncate(i);
                m.extend_from_slice(&other[j..]);
            }
        }
        match node.ingest(&m) {
            IngestOutcome::Accepted { id } => panic!("mutation {round} accepted as {id}"),
            IngestOutcome::Duplicate { .. } | IngestOutcome::Rejected { .. } => {}
        }
    }
    assert_eq!(node.state().digest(), digest);
    assert_eq!(node.events().len(), n);
    assert!(node.counters().rejected_total() > 2500);
    accepted(node.ingest(&a.event(MAINT, enqueue("after")).1));
}

/// The gossip path: `precheck` verifies the signature once when a message arrives; the ingest
/// of the `Prechecked` value does not verify it again but still applies every stateful check,
/// and the author's role under the policy current at ingest time.
#[test]
fn prechecked_events_are_ingested_with_every_stateful_check() {
    use pacmesh_node::ingest::precheck;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let mut node = open(dir.path(), Some(&default_policy()));
    let limits = Limits::default();
    let mut a = Authors::default();
    let pre = |node: &Ingest, bytes: &[u8]| precheck(Arc::from(bytes), node.policy(), &limits);

    // Accepted, then a duplicate.
    let (id, e) = a.event(MAINT, enqueue("hello"));
    let p = pre(&node, &e).unwrap();
    assert_eq!(p.id(), id);
    assert!(p.forward_early());
    assert_eq!(accepted(node.ingest_prechecked(&p)), id);
    assert_eq!(node.ingest_prechecked(&p), IngestOutcome::Duplicate { id });
    assert_eq!(node.ingest(&e), IngestOutcome::Duplicate { id });
    assert!(node.state().entry(&id).is_some());

    // Bad signatures and strangers never get a Prechecked value.
    let (_, mut bad) = a.at(MAINT, 2, Some(id), enqueue("x"));
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(pre(&node, &bad).is_err());
    let (_, x) = a.at(STRANGER, 1, None, enqueue("evil"));
    assert_eq!(pre(&node, &x).unwrap_err().label(), "not_allowed");
    assert!(pre(&node, &[0xff; 64]).is_err());

    // Equivocation is still caught: a second event signed for an occupied sequence number.
    let (_, other) = a.at(MAINT, 1, None, enqueue("other"));
    let p = pre(&node, &other).unwrap();
    match node.ingest_prechecked(&p) {
        IngestOutcome::Rejected { reason } => assert_eq!(reason.label(), "equivocation"),
        o => panic!("expected an equivocation, got {o:?}"),
    }

    // Prechecked under a policy that is replaced before the ingest: the role is checked again.
    let (_, b) = a.event(BUILDER, claim(id, 1));
    let p = pre(&node, &b).unwrap();
    let digest = node.state().digest();
    node.set_policy(&policy(2, &[ROOT, MAINT], Some(&[])))
        .unwrap();
    match node.ingest_prechecked(&p) {
        IngestOutcome::Rejected { reason } => assert_eq!(reason.label(), "not_allowed"),
        o => panic!("expected a refusal under the new policy, got {o:?}"),
    }
    assert_eq!(node.state().digest(), digest);
}
