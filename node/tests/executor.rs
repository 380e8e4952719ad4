//! The executor with real parts: sled, the content store, ingest, and sandbox builds with
//! bwrap + makepkg (skipped with a notice where the sandbox cannot run).
//!
//! `cargo test -p pacmesh-node --test executor`

#[path = "common/executor_env.rs"]
mod env;

use std::time::Duration;

use env::{Env, can_build, example, folder, pkgbuild};
use pacmesh_node::state::ReportOutcome;
use pacmesh_node::store::BlobStore;
use pacmesh_protocol::{EventBody, Source, Timestamp};

fn built(
    o: &ReportOutcome,
) -> (
    &Vec<pacmesh_protocol::Artifact>,
    pacmesh_protocol::Hash,
    Option<&String>,
) {
    match o {
        ReportOutcome::Built {
            artifacts,
            log,
            source_commit,
        } => (artifacts, *log, source_commit.as_ref()),
        other => panic!("expected a build, got {other:?}"),
    }
}

fn failed(o: &ReportOutcome) -> (&str, Option<pacmesh_protocol::Hash>) {
    match o {
        ReportOutcome::Failed { reason, log } => (reason, *log),
        other => panic!("expected a failure, got {other:?}"),
    }
}

async fn stop(
    tx: tokio::sync::watch::Sender<bool>,
    h: tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), h)
        .await
        .expect("the executor stops")
        .unwrap()
        .unwrap();
}

/// (a) a dir snapshot of examples/packages/pacmesh-hello is built; the artifact and the log
/// are in the content store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dir_snapshot_is_built() {
    if !can_build() {
        return;
    }
    let env = Env::new();
    let src = env.dir_source(&example("pacmesh-hello"));
    let id = env.enqueue(env.entry(src));
    let mut cfg = env.config();
    let (live_tx, mut live) = tokio::sync::broadcast::channel(4096);
    cfg.live_log = Some(live_tx);
    let (tx, h) = env.start(cfg);
    let (attempt, outcome) = env.wait_report(&id, 90).await;
    assert_eq!(attempt, 1);
    // Live log lines came through the broadcast channel.
    let mut lines = Vec::new();
    while let Ok(l) = live.try_recv() {
        assert_eq!((l.entry, l.attempt), (id, 1));
        lines.push(l.line);
    }
    assert!(lines.iter().any(|l| l.contains("phase build")), "{lines:?}");
    let (arts, log, commit) = built(&outcome);
    assert_eq!(commit, None);
    assert_eq!(arts.len(), 1);
    let a = &arts[0];
    assert!(
        a.file_name
            .as_str()
            .starts_with("pacmesh-hello-1.0.0-1-any.pkg.tar"),
        "{}",
        a.file_name
    );
    let bytes = env.core.blobs.read(&a.blake3).unwrap();
    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), a.blake3.to_hex());
    assert_eq!(bytes.len() as u64, a.size);
    let log_text = String::from_utf8(env.core.blobs.read(&log).unwrap()).unwrap();
    assert!(log_text.contains("pacmesh-hello"), "{log_text}");
    // GC roots for the report's blobs.
    assert!(
        env.core
            .blobs
            .pins(&a.blake3)
            .unwrap()
            .iter()
            .any(|p| p.starts_with("event:"))
    );
    let rec = env.record(&id);
    assert_eq!(rec.claims.values().next().unwrap().attempt, 1);
    stop(tx, h).await;
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
}

fn commit(repo: &git2::Repository, files: &[(&str, &str)], time: i64) -> git2::Oid {
    let wd = repo.workdir().unwrap().to_path_buf();
    let mut index = repo.index().unwrap();
    for (p, c) in files {
        std::fs::write(wd.join(p), c).unwrap();
        index.add_path(std::path::Path::new(p)).unwrap();
    }
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = git2::Signature::new("t", "t@example.invalid", &git2::Time::new(time, 0)).unwrap();
    let parent = repo.head().ok().and_then(|h| h.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    repo.commit(Some("HEAD"), &sig, &sig, "pkg", &tree, &parents)
        .unwrap()
}

/// (b) a git repository: by branch name and by abbreviated commit id; the commit is recorded
/// and its time is the build's SOURCE_DATE_EPOCH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_branch_and_short_commit_are_built() {
    if !can_build() {
        return;
    }
    let env = Env::new();
    let up = env.dir.path().join("upstream");
    let repo = git2::Repository::init(&up).unwrap();
    let hello = example("pacmesh-hello");
    let files: Vec<(String, String)> = ["PKGBUILD", "hello.sh"]
        .iter()
        .map(|f| {
            (
                f.to_string(),
                std::fs::read_to_string(hello.join(f)).unwrap(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let c1 = commit(&repo, &refs, 1_750_000_000);
    repo.branch("release", &repo.find_commit(c1).unwrap(), false)
        .unwrap();
    // A later commit on the default branch that must not be built by `release`.
    let _c2 = commit(&repo, &[("NOTES", "later\n")], 1_750_000_500);

    let url = up.display().to_string();
    let by_branch = env.enqueue(env.entry(Source::Git {
        url: url.clone(),
        rev: Some("release".into()),
        subdir: None,
    }));
    let by_short = env.enqueue(env.entry(Source::Git {
        url: format!("file://{url}"),
        rev: Some(c1.to_string()[..10].to_string()),
        subdir: None,
    }));
    let (tx, h) = env.start(env.config());
    for id in [by_branch, by_short] {
        let (_, outcome) = env.wait_report(&id, 90).await;
        let (arts, _, commit) = built(&outcome);
        assert_eq!(commit, Some(&c1.to_string()));
        // SOURCE_DATE_EPOCH = commit time: the package's builddate.
        let bytes = env.core.blobs.read(&arts[0].blake3).unwrap();
        let pkginfo = pkginfo_of(&bytes);
        assert!(pkginfo.contains("builddate = 1750000000"), "{pkginfo}");
    }
    // Deterministic: both entries gave the same package bytes.
    let a = built(&env.wait_report(&by_branch, 1).await.1).0[0].blake3;
    let b = built(&env.wait_report(&by_short, 1).await.1).0[0].blake3;
    assert_eq!(a, b);
    stop(tx, h).await;
}

fn pkginfo_of(pkg: &[u8]) -> String {
    let dec = zstd::stream::read::Decoder::new(pkg).unwrap();
    let mut ar = tar::Archive::new(dec);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().to_str() == Some(".PKGINFO") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            return s;
        }
    }
    panic!("no .PKGINFO");
}

/// (c) a failing PKGBUILD gives `failed` with the log tail; the next entry still builds.
/// (d) a snapshot with path traversal and an AUR entry give `failed` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_reported_and_the_queue_goes_on() {
    if !can_build() {
        return;
    }
    let env = Env::new();
    let bad = folder(
        env.dir.path(),
        "bad",
        &[(
            "PKGBUILD",
            &pkgbuild("pacmesh-bad", "echo 'compiler exploded: E1234' >&2; false"),
        )],
    );
    let bad_id = env.enqueue(env.entry(env.dir_source(&bad)));

    // A hostile snapshot: `../escaped` written byte for byte.
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..10].copy_from_slice(b"../escaped");
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"x"[..]).unwrap();
    let evil = env
        .core
        .blobs
        .import_bytes(&b.into_inner().unwrap())
        .unwrap();
    let evil_id = env.enqueue(env.entry(Source::Dir {
        path: "/evil".into(),
        snapshot: Some(evil),
    }));
    // A kind this node cannot build (a whole packages tree as one entry).
    let aur_id = env.enqueue(env.entry(Source::Tree {
        url: "https://example.invalid/packages.git".into(),
        rev: None,
        pkgbases: Vec::new(),
    }));
    let slow = folder(
        env.dir.path(),
        "slow",
        &[("PKGBUILD", &pkgbuild("pacmesh-slow", "sleep 60"))],
    );
    let mut e = env.entry(env.dir_source(&slow));
    e.timeout_secs = Some(3);
    let slow_id = env.enqueue(e);
    let good_id = env.enqueue(env.entry(env.dir_source(&example("pacmesh-hello"))));

    let (tx, h) = env.start(env.config());
    let (_, o) = env.wait_report(&bad_id, 90).await;
    let (reason, log) = failed(&o);
    assert!(reason.contains("compiler exploded: E1234"), "{reason}");
    assert!(reason.contains("build"), "{reason}");
    assert!(!reason.contains('\n') && reason.len() <= 1000, "{reason}");
    let log = String::from_utf8(env.core.blobs.read(&log.unwrap()).unwrap()).unwrap();
    assert!(log.contains("compiler exploded"), "{log}");

    let (_, o) = env.wait_report(&evil_id, 30).await;
    let (reason, _) = failed(&o);
    assert!(
        reason.contains("refused") && reason.contains(".."),
        "{reason}"
    );
    assert!(!env.dir.path().join("executor/escaped").exists());
    assert!(!env.dir.path().join("escaped").exists());

    let (_, o) = env.wait_report(&aur_id, 30).await;
    let (reason, _) = failed(&o);
    assert!(
        reason.contains("not supported by this node yet"),
        "{reason}"
    );

    let (_, o) = env.wait_report(&slow_id, 30).await;
    let (reason, _) = failed(&o);
    assert!(
        reason.contains("timeout") && reason.contains("timed out"),
        "{reason}"
    );

    let (_, o) = env.wait_report(&good_id, 90).await;
    built(&o);
    stop(tx, h).await;
    // Failed entries are not taken again.
    assert_eq!(env.record(&bad_id).reports.len(), 1);
}

/// (e) restart: a live claim of this node's own, left by a process that died, is taken again
/// at once with attempt + 1 (not after its 10-minute lease); stale work dirs go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_orphaned_claim_is_reclaimed_at_once() {
    if !can_build() {
        return;
    }
    let env = Env::new();
    let id = env.enqueue(env.entry(env.dir_source(&example("pacmesh-hello"))));
    // What the killed process left: a claim with a long lease and its work dir.
    env.core
        .submit(EventBody::Claim {
            entry: id,
            attempt: 1,
            lease_until: Timestamp::now().saturating_add(Duration::from_secs(600)),
        })
        .unwrap();
    let stale = env.dir.path().join("executor/job-0123456789abcdef-1/work");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("junk"), "x").unwrap();

    let (tx, h) = env.start(env.config());
    let (attempt, o) = env.wait_report(&id, 90).await;
    assert_eq!(attempt, 2);
    built(&o);
    stop(tx, h).await;
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
    let rec = env.record(&id);
    assert_eq!(rec.reports.len(), 1, "one report");
}

/// Shutdown mid-build abandons it (no report, sandbox killed, work dir removed); the next
/// start re-claims with attempt + 1 and builds it once. Also: the heartbeat renews the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_and_restart_builds_once() {
    if !can_build() {
        return;
    }
    // A 3-second lease: heartbeats every second.
    let env = Env::with_lease(3);
    let slow = folder(
        env.dir.path(),
        "slow",
        &[("PKGBUILD", &pkgbuild("pacmesh-slow", "sleep 17"))],
    );
    let id = env.enqueue(env.entry(env.dir_source(&slow)));
    let (tx, h) = env.start(env.config());
    let first = env
        .wait(&id, 30, "a claim", |r| !r.claims.is_empty())
        .await
        .claims
        .values()
        .next()
        .unwrap()
        .lease_until;
    // Renewed while the build runs.
    env.wait(&id, 10, "a renewal", |r| {
        r.claims.values().next().unwrap().lease_until > first
    })
    .await;
    assert_eq!(env.job_dirs().len(), 1);
    let t = std::time::Instant::now();
    stop(tx, h).await;
    // Far less than the 17 s the build still had to run: it was killed, not waited for.
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "abandoning took {:?}",
        t.elapsed()
    );
    assert!(
        env.record(&id).reports.is_empty(),
        "no report for an abandoned attempt"
    );
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
    assert!(!sandbox_running(&env), "the sandbox was killed");

    // Restart on the same data dir: attempt 2, built once.
    let env = env.reopen(3);
    let (tx, h) = env.start(env.config());
    let (attempt, o) = env.wait_report(&id, 90).await;
    assert_eq!(attempt, 2);
    built(&o);
    stop(tx, h).await;
    assert_eq!(env.record(&id).reports.len(), 1);
}

/// Whether a process of ours still runs in the env's work root.
fn sandbox_running(env: &Env) -> bool {
    let needle = std::fs::canonicalize(env.dir.path())
        .unwrap()
        .display()
        .to_string();
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(&needle) || c == b"sleep\x0017\x00")
            .unwrap_or(false)
    })
}

/// A problem of the node (here: no bwrap binary) ends attempts without a report and retries;
/// the last allowed attempt reports `failed` with "node error". Runs without a sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_faults_are_retried_then_reported() {
    let env = Env::new();
    let id = env.enqueue(env.entry(env.dir_source(&example("pacmesh-hello"))));
    let mut cfg = env.config();
    cfg.bwrap = "/nonexistent/pacmesh-test-bwrap".into();
    cfg.max_attempts = 2;
    cfg.retry_delay = Duration::from_millis(300);
    let (tx, h) = env.start(cfg);
    let (attempt, o) = env.wait_report(&id, 30).await;
    assert_eq!(attempt, 2, "attempt 1 ended without a report");
    let (reason, _) = failed(&o);
    assert!(
        reason.contains("node error (attempt 2 of 2, giving up)"),
        "{reason}"
    );
    stop(tx, h).await;
    let rec = env.record(&id);
    assert_eq!(rec.reports.len(), 1);
    assert!(env.job_dirs().is_empty(), "{:?}", env.job_dirs());
}

/// A running build is abandoned without a report when another builder's claim crosses ours
/// and ranks first, or when a maintainer cancels the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn superseded_builds_are_abandoned() {
    if !can_build() {
        return;
    }
    use pacmesh_node::keys::NodeKey;
    let env = Env::new();
    let slow = folder(
        env.dir.path(),
        "slow",
        &[("PKGBUILD", &pkgbuild("pacmesh-slow", "sleep 17"))],
    );
    let crossed = env.enqueue(env.entry(env.dir_source(&slow)));
    let (tx, h) = env.start(env.config());
    env.wait(&crossed, 30, "our claim", |r| !r.claims.is_empty())
        .await;
    // Another builder whose claim wins the ranking for this entry.
    let other = (10u8..=250)
        .map(|n| NodeKey::from_seed(&[n; 32]))
        .find(|k| {
            let pk = pacmesh_protocol::PublicKey::from(k.signing_key());
            pacmesh_protocol::claim_winner(&crossed, &env.core.public, &pk) == pk
        })
        .unwrap();
    let t = std::time::Instant::now();
    env.core
        .submit_as(
            &other,
            EventBody::Claim {
                entry: crossed,
                attempt: 1,
                lease_until: Timestamp::now().saturating_add(Duration::from_secs(600)),
            },
        )
        .unwrap();
    // The job dir goes when the build is abandoned.
    while !env.job_dirs().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(8), "not abandoned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(env.record(&crossed).reports.is_empty());

    // Cancel.
    let cancelled = env.enqueue(env.entry(env.dir_source(&slow)));
    env.wait(&cancelled, 30, "our claim", |r| !r.claims.is_empty())
        .await;
    let maint = NodeKey::from_seed(&[env::MAINT; 32]);
    let t = std::time::Instant::now();
    env.core
        .submit_as(&maint, EventBody::Cancel { entry: cancelled })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while !env.job_dirs().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(8), "not abandoned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(tx, h).await;
    assert!(env.record(&cancelled).reports.is_empty());
    assert!(env.record(&crossed).reports.is_empty());
}

/// The rank-proportional claim delay is waited out before claiming (runs without a sandbox:
/// only the claim is looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_delay_is_waited_out() {
    let env = Env::new();
    let id = env.enqueue(env.entry(env.dir_source(&example("pacmesh-hello"))));
    let mut cfg = env.config();
    cfg.bwrap = "/nonexistent/pacmesh-test-bwrap".into();
    cfg.tick = Duration::from_secs(30); // the delay's own wake-up must do
    let delay = Duration::from_millis(1500);
    cfg.claim_delay = Some(pacmesh_node::executor::ClaimDelay(std::sync::Arc::new(
        move |_, _, _| delay,
    )));
    let t = std::time::Instant::now();
    let (tx, h) = env.start(cfg);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        env.record(&id).claims.is_empty(),
        "claimed before the delay"
    );
    env.wait(&id, 10, "the claim", |r| !r.claims.is_empty())
        .await;
    let took = t.elapsed();
    assert!(took >= delay && took < Duration::from_secs(5), "{took:?}");
    stop(tx, h).await;
}
