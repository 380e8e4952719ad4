//! A one-node test environment for the executor: a temp data dir with sled, the content store
//! and ingest opened on a policy signed here, a `Core`, and a maintainer key.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pacmesh_node::core::Core;
use pacmesh_node::executor::{self, ExecutorConfig};
use pacmesh_node::ingest::{Ingest, IngestConfig};
use pacmesh_node::keys::NodeKey;
use pacmesh_node::state::{EntryRecord, ReportOutcome};
use pacmesh_node::store::{BlobStore, DbConfig, FsStore, open_db};
use pacmesh_protocol::{
    BuilderPolicy, Capabilities, EventBody, Hash, MeshPolicy, Name, PublicKey, QueueEntry,
    RepoPolicy, Signed, SigningKey, Source, Timestamp,
};
use tokio::sync::watch;

pub const ROOT: u8 = 1;
pub const MAINT: u8 = 2;
pub const NODE: u8 = 3;

pub fn sk(n: u8) -> SigningKey {
    SigningKey::from_bytes(&[n; 32])
}
pub fn pk(n: u8) -> PublicKey {
    PublicKey::from(&sk(n))
}
pub fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The architecture the test node builds for (this machine's).
pub fn arch() -> &'static str {
    std::env::consts::ARCH
}

pub fn policy_bytes(lease_secs: u32) -> Vec<u8> {
    let p = MeshPolicy {
        version: 1,
        root: pk(ROOT),
        policy_version: 1,
        time: Timestamp::now(),
        repos: vec![RepoPolicy {
            name: name("extra"),
            arches: vec![name(arch())],
        }],
        maintainers: vec![pk(ROOT), pk(MAINT)],
        publishers: vec![pk(ROOT)],
        builders: BuilderPolicy::Any,
        quorum: 1,
        lease_secs,
        build_timeout_secs: 300,
    };
    Signed::sign(&sk(ROOT), &p).unwrap().to_bytes()
}

/// Whether builds can run here; prints a notice when not.
pub fn can_build() -> bool {
    match pacmesh_sandbox::preflight() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("NOTICE: skipping a build test: the sandbox cannot run here: {e}");
            false
        }
    }
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub core: Arc<Core>,
}

pub fn open_core(dir: &Path, lease_secs: u32) -> Arc<Core> {
    let db = open_db(&dir.join("db"), &DbConfig::default()).unwrap();
    let (ingest, _) = Ingest::open(
        &db,
        pk(ROOT),
        Some(&policy_bytes(lease_secs)),
        IngestConfig::default(),
    )
    .unwrap();
    let (blobs, _) = FsStore::open(&dir.join("blobs"), &db).unwrap();
    Core::new(
        NodeKey::from_seed(&[NODE; 32]),
        None,
        ingest,
        Arc::new(blobs),
        dir.to_path_buf(),
    )
}

impl Env {
    pub fn new() -> Env {
        Self::with_lease(600)
    }

    pub fn with_lease(lease_secs: u32) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let core = open_core(dir.path(), lease_secs);
        Env { dir, core }
    }

    /// Drops the core (all other holders must be gone) and opens the data dir again.
    pub fn reopen(self, lease_secs: u32) -> Env {
        let Env { dir, core } = self;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&core) > 1 {
            assert!(Instant::now() < deadline, "the core is still held");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(core);
        let core = open_core(dir.path(), lease_secs);
        Env { dir, core }
    }

    pub fn config(&self) -> ExecutorConfig {
        let caps = Capabilities {
            arch: name(arch()),
            microarch: 0,
            cores: 2,
            memory_bytes: 4 << 30,
            disk_free_bytes: 10 << 30,
            tags: vec![name("test")],
            profile: name("host"),
            load: 0,
            slots: 1,
            busy: 0,
        };
        let mut c = ExecutorConfig::new(self.dir.path(), caps);
        c.tick = Duration::from_millis(200);
        c.grace = Duration::from_secs(2);
        c.default_timeout = Duration::from_secs(120);
        c.packager = "pacmesh test <test@pacmesh.invalid>".into();
        c
    }

    /// Starts the executor; returns the shutdown switch and the task.
    pub fn start(
        &self,
        cfg: ExecutorConfig,
    ) -> (
        watch::Sender<bool>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let (tx, rx) = watch::channel(false);
        let h = tokio::spawn(executor::run(self.core.clone(), cfg, rx));
        (tx, h)
    }

    /// Enqueues `entry` as the maintainer.
    pub fn enqueue(&self, entry: QueueEntry) -> Hash {
        let maint = NodeKey::from_seed(&[MAINT; 32]);
        self.core
            .submit_as(&maint, EventBody::Enqueue(entry))
            .unwrap()
    }

    pub fn entry(&self, source: Source) -> QueueEntry {
        QueueEntry::new(name("extra"), source)
    }

    /// Uploads the snapshot of `dir` and returns a `dir` source for it.
    pub fn dir_source(&self, dir: &Path) -> Source {
        let tar = pacmesh_node::source::snapshot_dir(dir).unwrap();
        let h = self.core.blobs.import_bytes(&tar).unwrap();
        Source::Dir {
            path: dir.display().to_string(),
            snapshot: Some(h),
        }
    }

    pub fn record(&self, id: &Hash) -> EntryRecord {
        self.core.ingest().state().entry(id).unwrap().clone()
    }

    /// Polls the entry until `pred` holds (panics after `secs`).
    pub async fn wait(
        &self,
        id: &Hash,
        secs: u64,
        what: &str,
        pred: impl Fn(&EntryRecord) -> bool,
    ) -> EntryRecord {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.record(id);
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_report(&self, id: &Hash, secs: u64) -> (u32, ReportOutcome) {
        let r = self
            .wait(id, secs, "a report", |r| !r.reports.is_empty())
            .await;
        let rep = r.reports.values().next().unwrap();
        (rep.attempt, rep.outcome.clone())
    }

    /// `job-*` dirs left in the executor's work root.
    pub fn job_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path().join("executor"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("job-"))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// examples/packages/NAME
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/packages")
        .join(name)
}

/// A PKGBUILD folder made of `files`.
pub fn folder(parent: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let d = parent.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for (f, content) in files {
        std::fs::write(d.join(f), content).unwrap();
    }
    d
}

/// A PKGBUILD with no sources whose build() runs `body`.
pub fn pkgbuild(pkgname: &str, body: &str) -> String {
    format!(
        "pkgname={pkgname}\npkgver=1.0\npkgrel=1\npkgdesc='test'\narch=('any')\nlicense=('MIT')\n\
         build() {{\n  {body}\n}}\n\
         package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{pkgname}/README\" <<<\"hi\"\n}}\n"
    )
}
