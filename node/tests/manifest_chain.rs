//! The manifest chain rule and the race between two publishers, with real stores (sled,
//! `FsStore`), real signatures and synthetic packages.
//!
//! `cargo test -p pacmesh-node --test manifest_chain`

use std::path::Path;
use std::sync::Arc;

use pacmesh_node::core::{Core, sign_next};
use pacmesh_node::ingest::{Ingest, IngestConfig, IngestOutcome};
use pacmesh_node::keys::NodeKey;
use pacmesh_node::publisher::{PublisherConfig, publish_once};
use pacmesh_node::store::{BlobStore, DbConfig, FsStore, open_db};
use pacmesh_protocol::{
    Artifact, BuilderPolicy, EventBody, FileName, Hash, MeshPolicy, Name, PublicKey, QueueEntry,
    RepoManifest, RepoPolicy, Sha256, Signed, SigningKey, Source, Timestamp,
};
use pacmesh_repo::package::testutil::SyntheticPackage;

const ROOT: u8 = 1;
const MAINT: u8 = 2;
const BUILDER: u8 = 3;
const PUB_A: u8 = 4;
const PUB_B: u8 = 5;
const STRANGER: u8 = 6;
const MAINT2: u8 = 7;
const BUILDER2: u8 = 8;
const REPO: &str = "mesh";
const ARCH: &str = "x86_64";

fn key(n: u8) -> NodeKey {
    NodeKey::from_seed(&[n; 32])
}
fn pk(n: u8) -> PublicKey {
    PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
}
fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn policy() -> Vec<u8> {
    let p = MeshPolicy {
        version: 1,
        root: pk(ROOT),
        policy_version: 1,
        time: Timestamp::from_millis(1_767_225_600_000),
        repos: vec![RepoPolicy {
            name: name(REPO),
            arches: vec![name(ARCH)],
        }],
        maintainers: vec![pk(MAINT), pk(MAINT2)],
        publishers: vec![pk(PUB_A), pk(PUB_B)],
        builders: BuilderPolicy::Any,
        quorum: 1,
        lease_secs: 600,
        build_timeout_secs: 3600,
    };
    Signed::sign(&SigningKey::from_bytes(&[ROOT; 32]), &p)
        .unwrap()
        .to_bytes()
}

fn open_node(dir: &Path, publisher: u8) -> Arc<Core> {
    let db = open_db(&dir.join("db"), &DbConfig::default()).unwrap();
    let (ingest, _) =
        Ingest::open(&db, pk(ROOT), Some(&policy()), IngestConfig::default()).unwrap();
    let (blobs, _) = FsStore::open(dir, &db).unwrap();
    Core::new(
        key(BUILDER),
        Some(key(publisher)),
        ingest,
        Arc::new(blobs),
        dir.to_path_buf(),
    )
}

/// Enqueue (maintainer) + build report (builder) of one synthetic package. Two nodes that
/// never talked use different maintainer and builder keys (a key signing on two nodes at once
/// would equivocate).
fn enqueue_built(core: &Core, pkgname: &str, version: &str, keys: (u8, u8)) -> Hash {
    let entry = core
        .submit_as(
            &key(keys.0),
            EventBody::Enqueue(QueueEntry::new(
                name(REPO),
                Source::Aur {
                    pkgbase: name(pkgname),
                },
            )),
        )
        .unwrap();
    let bytes = SyntheticPackage::new(pkgname, version).archive_bytes();
    let blake3 = core.blobs.import_bytes(&bytes).unwrap();
    let log = core.blobs.import_bytes(b"log\n").unwrap();
    let art = Artifact {
        file_name: FileName::new(format!("{pkgname}-{version}-{ARCH}.pkg.tar.zst")).unwrap(),
        blake3,
        sha256: Sha256::digest(&bytes),
        size: bytes.len() as u64,
    };
    core.submit_as(
        &key(keys.1),
        EventBody::Built {
            entry,
            attempt: 1,
            artifacts: vec![art],
            log,
            source_commit: None,
        },
    )
    .unwrap();
    entry
}

/// Anti-entropy from `from` to `to` (events) plus every blob `to` lacks (what replication
/// brings).
fn exchange(from: &Core, to: &Core) {
    let req = to.ingest().sync_request(10_000);
    let resp = from.ingest().sync_response(&req).unwrap();
    assert!(resp.complete);
    for o in to.ingest().ingest_sync_response(&resp) {
        assert!(
            !matches!(o, IngestOutcome::Rejected { .. }),
            "honest events refused: {o:?}"
        );
    }
    for h in from.blobs.list().unwrap() {
        if !to.blobs.has(&h).unwrap() {
            let data = from.blobs.read(&h).unwrap();
            to.blobs.import_bytes(&data).unwrap();
        }
    }
}

fn latest(core: &Core) -> (u64, Hash, Vec<String>) {
    let ingest = core.ingest();
    let g = ingest
        .state()
        .latest_generation(&name(REPO), &name(ARCH))
        .unwrap();
    let mut pkgs: Vec<String> = g
        .manifest
        .packages
        .iter()
        .map(|p| p.pkgname.to_string())
        .collect();
    pkgs.sort();
    (g.manifest.generation, g.event, pkgs)
}

#[test]
fn racing_publishers_converge_on_one_chain() {
    let t = tempfile::tempdir().unwrap();
    let a = open_node(&t.path().join("a"), PUB_A);
    let b = open_node(&t.path().join("b"), PUB_B);
    // Each publisher sees a different entry and publishes generation 1 without knowing the
    // other's: two generations 1 (same previous: none).
    enqueue_built(&a, "alpha", "1.0-1", (MAINT, BUILDER));
    enqueue_built(&b, "beta", "1.0-1", (MAINT2, BUILDER2));
    let ma = publish_once(&a, &PublisherConfig::default()).unwrap();
    let mb = publish_once(&b, &PublisherConfig::default()).unwrap();
    assert_eq!((ma.len(), mb.len()), (1, 1));
    let (_, ida, _) = latest(&a);
    let (_, idb, _) = latest(&b);
    assert_ne!(ida, idb);
    exchange(&a, &b);
    exchange(&b, &a);
    // Both now hold both; the winner is the generation with the smaller event id.
    let winner = ida.min(idb);
    assert_eq!(latest(&a).1, winner);
    assert_eq!(latest(&b).1, winner);
    let (winner_core, loser_core) = if winner == ida { (&a, &b) } else { (&b, &a) };
    // The loser's entry is in no generation on the chain: the loser re-publishes it on top of
    // the winner's generation 1 (so does the winner if it steps first: any publisher may).
    let again = publish_once(loser_core, &PublisherConfig::default()).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].generation, 2);
    assert_eq!(again[0].previous, Some(winner));
    let both = publish_once(winner_core, &PublisherConfig::default()).unwrap();
    assert!(both.iter().all(|m| m.previous == Some(winner)));
    exchange(loser_core, winner_core);
    exchange(winner_core, loser_core);
    let (g, id, pkgs) = latest(&a);
    assert_eq!(
        (g, pkgs.clone()),
        (2, vec!["alpha".to_string(), "beta".to_string()])
    );
    assert_eq!(latest(&b), (g, id, pkgs));
    // Chain: 2 → 1 (winner); the losing generation 1 is not in the history.
    let chain = a.ingest().state().chain(&name(REPO), &name(ARCH));
    assert_eq!(
        chain.iter().map(|g| g.event).collect::<Vec<_>>(),
        vec![id, winner]
    );
    // Nobody publishes again: the state is settled on both.
    assert!(
        publish_once(&a, &PublisherConfig::default())
            .unwrap()
            .is_empty()
    );
    assert!(
        publish_once(&b, &PublisherConfig::default())
            .unwrap()
            .is_empty()
    );
    // The same winner whatever the order the two generations 1 arrived in.
    assert_eq!(a.ingest().state().digest(), b.ingest().state().digest());
}

fn manifest_on(core: &Core, publisher: u8) -> (Hash, RepoManifest) {
    let ingest = core.ingest();
    let g = ingest
        .state()
        .latest_generation(&name(REPO), &name(ARCH))
        .unwrap();
    let mut m = (*g.manifest).clone();
    m.generation += 1;
    m.previous = Some(g.event);
    m.publisher = pk(publisher);
    m.time = Timestamp::now();
    (g.event, m)
}

fn submit(core: &Core, by: u8, m: RepoManifest) -> IngestOutcome {
    let bytes = sign_next(&core.ingest(), &key(by), EventBody::Publish(m)).unwrap();
    core.ingest_bytes(&bytes)
}

fn label(o: &IngestOutcome) -> &'static str {
    match o {
        IngestOutcome::Rejected { reason } => reason.label(),
        IngestOutcome::Accepted { .. } => "accepted",
        IngestOutcome::Duplicate { .. } => "duplicate",
    }
}

#[test]
fn manifests_off_the_chain_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let a = open_node(&t.path().join("a"), PUB_A);
    enqueue_built(&a, "alpha", "1.0-1", (MAINT, BUILDER));
    publish_once(&a, &PublisherConfig::default()).unwrap();
    let (first, m) = manifest_on(&a, PUB_A);

    // Not a publisher.
    let mut bad = m.clone();
    bad.publisher = pk(STRANGER);
    assert_eq!(label(&submit(&a, STRANGER, bad)), "not_allowed");
    // A publisher signing a manifest that names the other publisher (the protocol decoder
    // already refuses it; the ingest checks again).
    let o = submit(&a, PUB_B, m.clone());
    assert!(
        matches!(&o, IngestOutcome::Rejected { reason } if reason.to_string().contains("publisher")),
        "{o:?}"
    );
    // previous: an event nobody knows.
    let mut bad = m.clone();
    bad.previous = Some(Hash::new(b"unknown"));
    let o = submit(&a, PUB_A, bad);
    assert_eq!(label(&o), "unknown_previous");
    assert!(matches!(&o, IngestOutcome::Rejected { reason } if !reason.is_peer_fault()));
    // previous: a known event of the wrong generation, or not a publish at all.
    let mut bad = m.clone();
    bad.generation = 3;
    assert_eq!(label(&submit(&a, PUB_A, bad)), "broken_manifest_chain");
    let entry = a.ingest().state().entries().next().unwrap().id;
    let mut bad = m.clone();
    bad.previous = Some(entry);
    assert_eq!(label(&submit(&a, PUB_A, bad)), "broken_manifest_chain");
    // Nothing changed: generation 1 is still the latest.
    assert_eq!(latest(&a).0, 1);
    assert_eq!(latest(&a).1, first);
    // The right one is accepted.
    let mut good = m.clone();
    good.publisher = pk(PUB_B);
    assert_eq!(label(&submit(&a, PUB_B, good)), "accepted");
    assert_eq!(latest(&a).0, 2);
}

#[test]
fn a_sync_batch_may_carry_a_chain_in_any_order() {
    let t = tempfile::tempdir().unwrap();
    let a = open_node(&t.path().join("a"), PUB_A);
    enqueue_built(&a, "alpha", "1.0-1", (MAINT, BUILDER));
    publish_once(&a, &PublisherConfig::default()).unwrap();
    // Generation 2 by the other publisher (its own log), on top of A's generation 1.
    let (_, m) = manifest_on(&a, PUB_B);
    assert_eq!(label(&submit(&a, PUB_B, m)), "accepted");
    // A fresh node gets everything in one response with generation 2 first.
    let b = open_node(&t.path().join("b"), PUB_B);
    let mut resp = a
        .ingest()
        .sync_response(&b.ingest().sync_request(10_000))
        .unwrap();
    resp.events.sort_by_key(|e| {
        let ev = e.verify_and_decode(&Default::default()).unwrap();
        match ev.body {
            EventBody::Publish(m) => std::cmp::Reverse(m.generation),
            _ => std::cmp::Reverse(0),
        }
    });
    let outcomes = b.ingest().ingest_sync_response(&resp);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, IngestOutcome::Accepted { .. })),
        "{outcomes:?}"
    );
    assert_eq!(latest(&b).0, 2);
}

/// A mirror following a node over HTTP receives a new `publish` as a delta of the manifest it
/// holds (a fraction of its size), rebuilds it, verifies it and serves the generation.
#[test]
fn http_sync_sends_publish_events_as_deltas() {
    use pacmesh_node::mirror::{Mirror, MirrorConfig};
    use std::sync::atomic::Ordering;
    let t = tempfile::tempdir().unwrap();
    let node = open_node(&t.path().join("node"), PUB_A);
    let entry = node
        .submit_as(
            &key(MAINT),
            EventBody::Enqueue(QueueEntry::new(
                name(REPO),
                Source::Aur {
                    pkgbase: name("many"),
                },
            )),
        )
        .unwrap();
    let log = node.blobs.import_bytes(b"log\n").unwrap();
    let artifacts: Vec<Artifact> = (0..120)
        .map(|i| {
            let bytes = SyntheticPackage::new(&format!("p{i:03}"), "1.0-1").archive_bytes();
            Artifact {
                file_name: FileName::new(format!("p{i:03}-1.0-1-{ARCH}.pkg.tar.zst")).unwrap(),
                blake3: node.blobs.import_bytes(&bytes).unwrap(),
                sha256: Sha256::digest(&bytes),
                size: bytes.len() as u64,
            }
        })
        .collect();
    node.submit_as(
        &key(BUILDER),
        EventBody::Built {
            entry,
            attempt: 1,
            artifacts,
            log,
            source_commit: None,
        },
    )
    .unwrap();
    publish_once(&node, &PublisherConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(async {
        let (a, server) = pacmesh_node::http::bind(node.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        tokio::spawn(server);
        a
    });
    let policy_file = t.path().join("policy.cbor");
    std::fs::write(&policy_file, policy()).unwrap();
    let mut cfg = MirrorConfig::new(
        policy_file,
        t.path().join("out"),
        vec![format!("http://{addr}")],
    );
    cfg.data_dir = t.path().join("mirror");
    cfg.progress = false;
    let mirror = Mirror::open(cfg).unwrap();
    assert_eq!(rt.block_on(mirror.once()).unwrap().len(), 1);
    let first = mirror.bytes_synced.load(Ordering::Relaxed);

    enqueue_built(&node, "p007", "2.0-1", (MAINT, BUILDER));
    let m = publish_once(&node, &PublisherConfig::default()).unwrap();
    let manifest_len = pacmesh_protocol::encode(&m[0]).unwrap().len() as u64;
    assert!(manifest_len > 15_000, "{manifest_len}");
    let switched = rt.block_on(mirror.once()).unwrap();
    assert_eq!(switched.len(), 1);
    assert_eq!(switched[0].2, 2);
    let second = mirror.bytes_synced.load(Ordering::Relaxed) - first;
    assert!(
        second < manifest_len / 4,
        "generation 2's events took {second} bytes; its manifest alone is {manifest_len}"
    );
    // The rebuilt event is the publisher's, byte for byte (same id as on the node).
    let on_node = latest(&node).1;
    let on_mirror = mirror
        .core
        .ingest()
        .state()
        .latest_generation(&name(REPO), &name(ARCH))
        .unwrap()
        .event;
    assert_eq!(on_node, on_mirror);
}
