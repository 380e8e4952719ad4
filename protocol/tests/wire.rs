//! Wire-format golden tests: every message, built from fixed keys, times and
//! hashes, must encode to exactly the annotated bytes in `tests/golden/`, and
//! those bytes must decode back to the same value. A change to any field name,
//! order, type or to the signing context shows up here.
//!
//! To regenerate after an intentional format change (which also needs a
//! version bump and a README version-history entry):
//! `PACMESH_BLESS=1 cargo test -p pacmesh-protocol --test wire`.

mod common;

use std::path::PathBuf;

use common::*;
use pacmesh_protocol::hexdump::{annotate, parse_hex};
use pacmesh_protocol::*;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.txt"))
}

fn render<T: Message>(title: &str, signed: &Signed<T>) -> String {
    format!(
        "## {title}\n## id: {}\n## payload ({} bytes):\n{}## envelope ({} bytes):\n{}",
        signed.id(),
        signed.payload.len(),
        annotate(&signed.payload),
        signed.to_bytes().len(),
        annotate(&signed.to_bytes()),
    )
}

fn check_golden(name: &str, actual: &str) -> String {
    let path = golden_path(name);
    if std::env::var_os("PACMESH_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with PACMESH_BLESS=1 to create)",
            path.display()
        )
    });
    if actual != expected {
        let (n, (a, e)) = actual
            .lines()
            .chain(std::iter::repeat("<end>"))
            .zip(expected.lines().chain(std::iter::repeat("<end>")))
            .enumerate()
            .find(|(_, (a, e))| a != e)
            .unwrap();
        panic!(
            "wire format of {name} changed at line {}:\n  golden: {e}\n  actual: {a}\n\
             If intended: bump the message version, add a README version-history entry, \
             and re-bless with PACMESH_BLESS=1.\nFull actual dump:\n{actual}",
            n + 1
        );
    }
    expected
}

/// The envelope bytes of a golden file (the dump after `## envelope`).
fn envelope_bytes(golden: &str) -> Vec<u8> {
    let i = golden.find("## envelope").expect("envelope section");
    parse_hex(&golden[i..]).unwrap()
}

fn golden_signed<T: Message + PartialEq + std::fmt::Debug>(
    name: &str,
    title: &str,
    key: &SigningKey,
    value: &T,
) {
    let signed = Signed::sign(key, value).unwrap();
    let golden = check_golden(name, &render(title, &signed));
    // The frozen bytes decode, verify and give back the value.
    let bytes = envelope_bytes(&golden);
    assert_eq!(bytes, signed.to_bytes());
    let limits = Limits::default();
    let back = Signed::<T>::from_bytes(&bytes, &limits).unwrap();
    assert_eq!(&back.verify_and_decode(&limits).unwrap(), value);
    assert!(golden.contains(&format!("## id: {}", Hash::new(&bytes))));
}

#[test]
fn event_wire_format_per_body_kind() {
    for (kind, key, body) in all_bodies() {
        let seq = if kind == "enqueue" { 1 } else { 7 };
        let ev = event(&key, seq, body);
        golden_signed(
            &format!("event_{kind}"),
            &format!("Signed<Event> with body `{kind}`, seq {seq}"),
            &key,
            &ev,
        );
    }
}

/// `after` (added without a version bump): present only when not empty, so the plain
/// `enqueue` golden above is unchanged, and an old node's decoder (which ignores unknown map
/// keys) reads this one as the same entry without it.
#[test]
fn enqueue_with_after_wire_format() {
    let mut q = queue_entry();
    q.after = vec![h("dependency entry")];
    let key = maintainer();
    let ev = event(&key, 1, EventBody::Enqueue(q.clone()));
    golden_signed(
        "event_enqueue_after",
        "Signed<Event> with body `enqueue` naming an entry to build first, seq 1",
        &key,
        &ev,
    );
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct OldQueueEntry {
        repo: Name,
        source: Source,
        arches: Vec<Name>,
        needs: Vec<Requirement>,
        source_date_epoch: Option<u64>,
        timeout_secs: Option<u32>,
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&q, &mut bytes).unwrap();
    let old: OldQueueEntry = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(old.repo, q.repo);
    // And a new node reads an entry without the key as `after: []`.
    let mut plain = Vec::new();
    ciborium::into_writer(&queue_entry(), &mut plain).unwrap();
    let back: QueueEntry = ciborium::from_reader(plain.as_slice()).unwrap();
    assert!(back.after.is_empty());
}

/// `review` (added without a version bump, like `after`): present only when set; an old
/// node's decoder reads the entry without it, a new one reads a plain entry as `None`.
#[test]
fn enqueue_with_review_wire_format() {
    let mut q = queue_entry();
    q.review = Some("-depends=(glibc)\n+depends=(glibc curl)\n".into());
    let key = maintainer();
    let ev = event(&key, 1, EventBody::Enqueue(q.clone()));
    golden_signed(
        "event_enqueue_review",
        "Signed<Event> with body `enqueue` that waits for a maintainer's review, seq 1",
        &key,
        &ev,
    );
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct OldQueueEntry {
        repo: Name,
        source: Source,
        arches: Vec<Name>,
        needs: Vec<Requirement>,
        source_date_epoch: Option<u64>,
        timeout_secs: Option<u32>,
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&q, &mut bytes).unwrap();
    let old: OldQueueEntry = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(old.repo, q.repo);
    let mut plain = Vec::new();
    ciborium::into_writer(&queue_entry(), &mut plain).unwrap();
    let back: QueueEntry = ciborium::from_reader(plain.as_slice()).unwrap();
    assert!(back.review.is_none());
    // The review text is capped.
    let mut big = queue_entry();
    big.review = Some("x".repeat(pacmesh_protocol::MAX_REVIEW_BYTES + 1));
    let limits = Limits::default();
    let signed = Signed::sign(&key, &event(&key, 1, EventBody::Enqueue(big))).unwrap();
    let back = Signed::<Event>::from_bytes(&signed.to_bytes(), &limits).unwrap();
    let err = back.verify_and_decode(&limits).unwrap_err().to_string();
    assert!(
        err.contains("review"),
        "an oversized review must be refused: {err}"
    );
}

/// `pkgrel_bump` and `cascade` (added without a version bump, like `after`): present only when
/// set, so the other enqueue goldens are unchanged; an old node's decoder reads the entry
/// without them, a new one reads a plain entry as no bump and no cascade.
#[test]
fn enqueue_with_pkgrel_bump_and_cascade_wire_format() {
    let mut q = queue_entry();
    q.pkgrel_bump = Some(PkgrelBump {
        version: "1:1.0-1".into(),
        count: 2,
    });
    q.cascade = vec![name("libfoo")];
    q.after = vec![h("trigger entry")];
    let key = maintainer();
    let ev = event(&key, 1, EventBody::Enqueue(q.clone()));
    golden_signed(
        "event_enqueue_bump",
        "Signed<Event> with body `enqueue`: a rebuild (pkgrel bump) triggered by libfoo, seq 1",
        &key,
        &ev,
    );
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct OldQueueEntry {
        repo: Name,
        source: Source,
        arches: Vec<Name>,
        needs: Vec<Requirement>,
        source_date_epoch: Option<u64>,
        timeout_secs: Option<u32>,
        #[serde(default)]
        after: Vec<Hash>,
    }
    let mut bytes = Vec::new();
    ciborium::into_writer(&q, &mut bytes).unwrap();
    let old: OldQueueEntry = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!((old.repo, old.after), (q.repo.clone(), q.after.clone()));
    let mut plain = Vec::new();
    ciborium::into_writer(&queue_entry(), &mut plain).unwrap();
    let back: QueueEntry = ciborium::from_reader(plain.as_slice()).unwrap();
    assert!(back.pkgrel_bump.is_none() && back.cascade.is_empty());
    // Bad bumps and over-long cascades are refused by validation.
    let limits = Limits::default();
    let refused = |q: QueueEntry| {
        let signed = Signed::sign(&key, &event(&key, 1, EventBody::Enqueue(q))).unwrap();
        let back = Signed::<Event>::from_bytes(&signed.to_bytes(), &limits).unwrap();
        back.verify_and_decode(&limits).unwrap_err().to_string()
    };
    for (version, count) in [("1.0-1", 0), ("1.0", 1), ("1.0-1;rm -rf /", 1), ("", 1)] {
        let mut bad = queue_entry();
        bad.pkgrel_bump = Some(PkgrelBump {
            version: version.into(),
            count,
        });
        let err = refused(bad);
        assert!(err.contains("pkgrel_bump"), "{version:?}/{count}: {err}");
    }
    let mut long = queue_entry();
    long.cascade = (0..=MAX_CASCADE).map(|i| name(&format!("p{i}"))).collect();
    assert!(refused(long).contains("cascade"));
}

#[test]
fn pkgrel_bumps_follow_arch_practice() {
    let b = |s: &str| PkgrelBump::after(s).map(|b| (b.version.clone(), b.count, b.bumped()));
    let t = |v: &str, c: u32, x: &str| Some((v.to_string(), c, x.to_string()));
    assert_eq!(b("1.0-1"), t("1.0-1", 1, "1.0-1.1"));
    assert_eq!(b("1.0-1.1"), t("1.0-1", 2, "1.0-1.2"));
    assert_eq!(b("2:1.2.3-4.9"), t("2:1.2.3-4", 10, "2:1.2.3-4.10"));
    assert_eq!(b("1.0-1.a"), t("1.0-1.a", 1, "1.0-1.a.1"));
    assert_eq!(b("1.0"), None);
    assert_eq!(b("-1"), None);
}

#[test]
fn policy_wire_format() {
    golden_signed(
        "policy",
        "Signed<MeshPolicy>, policy_version 1",
        &root(),
        &policy(1),
    );
}

#[test]
fn announcement_wire_format() {
    golden_signed(
        "announcement",
        "Signed<Announcement>",
        &builder(),
        &announcement(),
    );
}

#[test]
fn manifest_wire_format() {
    golden_signed(
        "manifest",
        "Signed<RepoManifest> (a manifest on its own, e.g. served by a mirror)",
        &publisher(),
        &manifest(),
    );
    // The bare manifest decodes with the manifest limit.
    let bare = manifest().encode().unwrap();
    assert_eq!(
        RepoManifest::decode(&bare, &Limits::default()).unwrap(),
        manifest()
    );
}

fn golden_bare<T: Message + PartialEq + std::fmt::Debug>(name: &str, title: &str, value: &T) {
    let bytes = value.encode().unwrap();
    let rendered = format!(
        "## {title}\n## message ({} bytes):\n{}",
        bytes.len(),
        annotate(&bytes)
    );
    let golden = check_golden(name, &rendered);
    let i = golden.find("## message").unwrap();
    let frozen = parse_hex(&golden[i..]).unwrap();
    assert_eq!(frozen, bytes);
    assert_eq!(&T::decode(&frozen, &Limits::default()).unwrap(), value);
}

#[test]
fn sync_wire_format() {
    let k = maintainer();
    let first = Signed::sign(&k, &event(&k, 1, EventBody::Enqueue(queue_entry()))).unwrap();
    golden_bare(
        "sync_request",
        "SyncRequest (unsigned; the libp2p connection authenticates the peer)",
        &SyncRequest {
            version: SYNC_VERSION,
            heads: vec![
                AuthorHead {
                    author: pk(&maintainer()),
                    seq: 0,
                },
                AuthorHead {
                    author: pk(&builder()),
                    seq: 41,
                },
            ],
            max_events: 1000,
        },
    );
    golden_bare(
        "sync_response",
        "SyncResponse carrying one Signed<Event> (the enqueue example)",
        &SyncResponse {
            version: SYNC_VERSION,
            events: vec![first],
            complete: true,
        },
    );
}

#[test]
fn signing_context_is_fixed() {
    assert_eq!(
        signing_message("event", b"\x01\x02"),
        b"pacmesh/v1/event\x00\x01\x02".to_vec()
    );
}

#[test]
fn topic_and_protocol_names() {
    let root = pk(&root());
    assert_eq!(SYNC_PROTOCOL, "/pacmesh/sync/1");
    assert_eq!(BLOBS_PROTOCOL, "/pacmesh/blobs/2");
    assert_eq!(
        events_topic(&root),
        format!("/pacmesh/{}/events/2", root.to_hex())
    );
    assert_eq!(policy(1).events_topic(), events_topic(&root));
    assert_eq!(
        announce_topic(&root),
        format!("/pacmesh/{}/announce/2", root.to_hex())
    );
}

#[test]
fn fixed_keys_are_what_the_docs_say() {
    // Keys from seeds [n; 32], as used in the README's examples.
    assert_eq!(
        pk(&root()).to_hex(),
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
    );
}

#[test]
fn readme_examples_match_golden_files() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut all_golden = String::new();
    for e in std::fs::read_dir(dir.join("tests/golden")).unwrap() {
        all_golden.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
        all_golden.push('\n');
    }
    let mut checked = 0;
    for block in readme.split("```text\n").skip(1) {
        let block = &block[..block.find("```").unwrap()];
        if block.starts_with("## ") {
            assert!(
                all_golden.contains(block),
                "README example no longer matches tests/golden (run protocol/gen_readme_examples.py):\n{}",
                block.lines().next().unwrap()
            );
            checked += 1;
        }
    }
    assert!(checked >= 12, "only {checked} README examples found");
}
