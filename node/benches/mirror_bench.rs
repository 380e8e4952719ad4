//! Mirror benchmarks, with the reference measured in the same run:
//!
//! 1. **Incremental sync**: a node publishes a repository of `PACMESH_BENCH_PACKAGES` (2000)
//!    packages of `PACMESH_BENCH_PKG_KIB` (16) KiB; a mirror syncs it; one package changes; the
//!    mirror syncs again. Bytes on the wire (both directions, counted by a TCP relay in front
//!    of the node) and time, against the changed package + databases + signatures; beside
//!    `rsync -a --delete` of the same generation directories.
//! 2. **Providers**: `PACMESH_BENCH_GIB` (1) GiB in 4 blobs fetched by the fetch engine from 1
//!    and from 3 provider nodes over HTTP, unthrottled (loopback, CPU-bound) and with each
//!    provider's upload limited to `PACMESH_BENCH_UPLINK_MIB` (40) MiB/s by the relay.
//! 3. **Initial sync over libp2p**: a published generation of `PACMESH_BENCH_MESH_MIB` (1024) MiB
//!    in `PACMESH_BENCH_MESH_PACKAGES` (16) packages; an empty mirror (the code of `pacmesh
//!    mirror --bootstrap`) joins 1 and then 3 provider peers on the mesh and syncs it; the same
//!    with the mirror following 1 and 3 of the same providers over HTTP (`--follow`) as the
//!    same-run reference.
//!
//! `cargo bench -p pacmesh-node --bench mirror_bench` (or `--profile dev` to skip the release
//! build of every dependency; the figures then name the profile).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use pacmesh_node::core::Core;
use pacmesh_node::fetch::{FetchConfig, Fetcher, http_sources};
use pacmesh_node::generation::generation_dir;
use pacmesh_node::ingest::{Ingest, IngestConfig};
use pacmesh_node::keys::NodeKey;
use pacmesh_node::mirror::{Mirror, MirrorConfig};
use pacmesh_node::publisher::{PublisherConfig, publish_once};
use pacmesh_node::store::{BlobStore, DbConfig, FsStore, open_db};
use pacmesh_protocol::{
    Artifact, BuilderPolicy, EventBody, FileName, Hash, MeshPolicy, Name, PublicKey, QueueEntry,
    RepoPolicy, Sha256, Signed, SigningKey, Source, Timestamp,
};
use pacmesh_repo::package::testutil::SyntheticPackage;

const REPO: &str = "bench";
const ARCH: &str = "x86_64";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn pk(n: u8) -> PublicKey {
    PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
}

fn policy() -> Vec<u8> {
    let p = MeshPolicy {
        version: 1,
        root: pk(1),
        policy_version: 1,
        time: Timestamp::from_millis(1_767_225_600_000),
        repos: vec![RepoPolicy {
            name: Name::new(REPO).unwrap(),
            arches: vec![Name::new(ARCH).unwrap()],
        }],
        maintainers: vec![pk(2)],
        publishers: vec![pk(4)],
        builders: BuilderPolicy::Any,
        quorum: 1,
        lease_secs: 600,
        build_timeout_secs: 3600,
    };
    Signed::sign(&SigningKey::from_bytes(&[1; 32]), &p)
        .unwrap()
        .to_bytes()
}

fn open_core(dir: &Path, store: Option<Arc<FsStore>>) -> Arc<Core> {
    std::fs::create_dir_all(dir).unwrap();
    let db = open_db(&dir.join("db"), &DbConfig::default()).unwrap();
    let (ingest, _) = Ingest::open(&db, pk(1), Some(&policy()), IngestConfig::default()).unwrap();
    let blobs = store.unwrap_or_else(|| Arc::new(FsStore::open(dir, &db).unwrap().0));
    Core::new(
        NodeKey::from_seed(&[3; 32]),
        Some(NodeKey::from_seed(&[4; 32])),
        ingest,
        blobs,
        dir.to_path_buf(),
    )
}

/// Like [`open_core`] with node key `[seed; 32]` (libp2p peers need distinct keys).
fn open_core_seeded(dir: &Path, store: Option<Arc<FsStore>>, seed: u8) -> Arc<Core> {
    std::fs::create_dir_all(dir).unwrap();
    let db = open_db(&dir.join("db"), &DbConfig::default()).unwrap();
    let (ingest, _) = Ingest::open(&db, pk(1), Some(&policy()), IngestConfig::default()).unwrap();
    let blobs = store.unwrap_or_else(|| Arc::new(FsStore::open(dir, &db).unwrap().0));
    Core::new(
        NodeKey::from_seed(&[seed; 32]),
        Some(NodeKey::from_seed(&[4; 32])),
        ingest,
        blobs,
        dir.to_path_buf(),
    )
}

fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Enqueues one entry with `pkgs` built (one `built` per 200 artifacts' worth of entries).
fn add_entry(core: &Core, base: &str, pkgs: &[SyntheticPackage]) {
    let entry = core
        .submit_as(
            &NodeKey::from_seed(&[2; 32]),
            EventBody::Enqueue(QueueEntry::new(
                Name::new(REPO).unwrap(),
                Source::Aur {
                    pkgbase: Name::new(base).unwrap(),
                },
            )),
        )
        .unwrap();
    let artifacts = pkgs
        .iter()
        .map(|p| {
            let bytes = p.archive_bytes();
            Artifact {
                file_name: FileName::new(p.file_name()).unwrap(),
                blake3: core.blobs.import_bytes(&bytes).unwrap(),
                sha256: Sha256::digest(&bytes),
                size: bytes.len() as u64,
            }
        })
        .collect();
    let log = core.blobs.import_bytes(b"log\n").unwrap();
    core.submit(EventBody::Built {
        entry,
        attempt: 1,
        artifacts,
        log,
        source_commit: None,
    })
    .unwrap();
}

fn package(i: usize, version: &str, kib: usize) -> SyntheticPackage {
    SyntheticPackage::new(&format!("pkg{i:05}"), version).file(
        &format!("usr/share/pkg{i:05}/data"),
        &noise(kib << 10, (i as u64) << 8 | version.len() as u64),
    )
}

/// A TCP relay to `upstream`: counts bytes both ways; limits upstream→client to `bps` over
/// all its connections together, like one provider's uplink (0: no limit).
struct Relay {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
}

/// A shared byte budget: `(start, bytes sent)`.
type Uplink = Arc<std::sync::Mutex<(Instant, u64)>>;

fn relay(upstream: SocketAddr, bps: u64) -> Relay {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let bytes = Arc::new(AtomicU64::new(0));
    let b = bytes.clone();
    let uplink: Uplink = Arc::new(std::sync::Mutex::new((Instant::now(), 0)));
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(u) = TcpStream::connect(upstream) else {
                continue;
            };
            let _ = c.set_nodelay(true);
            let _ = u.set_nodelay(true);
            let pipe = |mut from: TcpStream,
                        mut to: TcpStream,
                        b: Arc<AtomicU64>,
                        limit: Option<Uplink>| {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        b.fetch_add(n as u64, Ordering::Relaxed);
                        if let Some(up) = &limit {
                            let due = {
                                let mut g = up.lock().unwrap();
                                if g.0.elapsed() > Duration::from_secs(1) && g.1 == 0 {
                                    g.0 = Instant::now();
                                }
                                g.1 += n as u64;
                                g.0 + Duration::from_secs_f64(g.1 as f64 / bps as f64)
                            };
                            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                                std::thread::sleep(wait);
                            }
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
            pipe(
                c.try_clone().unwrap(),
                u.try_clone().unwrap(),
                b.clone(),
                None,
            );
            pipe(u, c, b.clone(), (bps > 0).then(|| uplink.clone()));
        }
    });
    Relay { addr, bytes }
}

fn serve(rt: &tokio::runtime::Runtime, core: Arc<Core>) -> SocketAddr {
    rt.block_on(async {
        let (addr, server) = pacmesh_node::http::bind(core, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        tokio::spawn(server);
        addr
    })
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn incremental(rt: &tokio::runtime::Runtime, dir: &Path) {
    let n = env("PACMESH_BENCH_PACKAGES", 2000) as usize;
    let kib = env("PACMESH_BENCH_PKG_KIB", 16) as usize;
    println!("== incremental sync: {n} packages of {kib} KiB, 1 changed");
    let node = open_core(&dir.join("node"), None);
    let t = Instant::now();
    let all: Vec<SyntheticPackage> = (0..n).map(|i| package(i, "1-1", kib)).collect();
    for (k, chunk) in all.chunks(200).enumerate() {
        add_entry(&node, &format!("batch{k}"), chunk);
    }
    publish_once(&node, &PublisherConfig::default()).unwrap();
    println!(
        "setup (build {n} packages, publish generation 1): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let addr = serve(rt, node.clone());
    let wire = relay(addr, 0);

    let mut cfg = MirrorConfig::new(
        dir.join("policy.cbor"),
        dir.join("out"),
        vec![format!("http://{}", wire.addr)],
    );
    std::fs::write(&cfg.policy, policy()).unwrap();
    cfg.data_dir = dir.join("mirror");
    cfg.progress = false;
    let mirror = rt
        .block_on(async move {
            tokio::task::spawn_blocking(move || Mirror::open(cfg))
                .await
                .unwrap()
        })
        .unwrap();
    let t = Instant::now();
    let got = rt.block_on(mirror.once()).unwrap();
    assert_eq!(got.len(), 1);
    println!(
        "initial mirror sync: {:.2} s, {:.1} MiB on the wire",
        t.elapsed().as_secs_f64(),
        mib(wire.bytes.load(Ordering::Relaxed))
    );
    // The same initial sync with one durable import per blob (file fsync, directory fsync and
    // index flush each: how the mirror imported before batching), into a second mirror.
    {
        let mut cfg = MirrorConfig::new(
            dir.join("policy.cbor"),
            dir.join("out-each"),
            vec![format!("http://{addr}")],
        );
        cfg.data_dir = dir.join("mirror-each");
        cfg.progress = false;
        let m2 = rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || Mirror::open(cfg))
                    .await
                    .unwrap()
            })
            .unwrap();
        m2.core.blobs.set_deferred_durability(false);
        let t = Instant::now();
        let got = rt.block_on(m2.once()).unwrap();
        assert_eq!(got.len(), 1);
        println!(
            "initial mirror sync, one fsync + index flush per blob (before batching; same run): {:.2} s",
            t.elapsed().as_secs_f64()
        );
        drop(m2);
        let _ = std::fs::remove_dir_all(dir.join("out-each"));
        let _ = std::fs::remove_dir_all(dir.join("mirror-each"));
    }
    // rsync reference, initial copy.
    let rsync_dst = dir.join("rsync-dst");
    let gen1 = generation_dir(&node.data_dir, REPO, ARCH, 1);
    let have_rsync = std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if have_rsync {
        let o = std::process::Command::new("rsync")
            .args(["-a", "--delete"])
            .arg(format!("{}/", gen1.display()))
            .arg(format!("{}/", rsync_dst.display()))
            .output()
            .unwrap();
        assert!(o.status.success());
    }

    // One package changes: generation 2.
    add_entry(&node, "changed", &[package(7, "2-1", kib)]);
    let m = publish_once(&node, &PublisherConfig::default()).unwrap();
    let m = &m[0];
    let changed = m
        .packages
        .iter()
        .find(|p| p.pkgname.as_str() == "pkg00007")
        .unwrap();
    let size = |h: &Hash| node.blobs.info(h).unwrap().unwrap().size;
    let baseline = changed.size
        + size(&changed.sig)
        + size(&m.db)
        + size(&m.db_sig)
        + size(&m.files_db)
        + m.files_db_sig.as_ref().map_or(0, size);
    wire.bytes.store(0, Ordering::Relaxed);
    let (f0, s0) = (
        mirror.bytes_fetched.load(Ordering::Relaxed),
        mirror.bytes_synced.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    let got = rt.block_on(mirror.once()).unwrap();
    let took = t.elapsed();
    assert_eq!(got.len(), 1, "switched to generation 2");
    let on_wire = wire.bytes.load(Ordering::Relaxed);
    println!(
        "incremental mirror sync: {:.0} ms; {on_wire} bytes on the wire (sync answers {} B, blob payload {} B)",
        took.as_secs_f64() * 1e3,
        mirror.bytes_synced.load(Ordering::Relaxed) - s0,
        mirror.bytes_fetched.load(Ordering::Relaxed) - f0,
    );
    println!(
        "baseline (changed package + its .sig + db + files db + their .sig): {baseline} bytes -> ratio {:.3} (target < 1.1), time target < 1 s",
        on_wire as f64 / baseline as f64
    );
    if have_rsync {
        let gen2 = generation_dir(&node.data_dir, REPO, ARCH, 2);
        let t = Instant::now();
        let o = std::process::Command::new("rsync")
            .args(["-a", "--delete", "--stats"])
            .arg(format!("{}/", gen2.display()))
            .arg(format!("{}/", rsync_dst.display()))
            .output()
            .unwrap();
        let took = t.elapsed();
        assert!(o.status.success());
        let stats = String::from_utf8_lossy(&o.stdout);
        let field = |k: &str| {
            stats
                .lines()
                .find(|l| l.starts_with(k))
                .map(|l| l[k.len()..].trim().to_string())
                .unwrap_or_default()
        };
        println!(
            "rsync -a --delete (local, same generation trees): {:.0} ms; transferred file size {}; sent {}",
            took.as_secs_f64() * 1e3,
            field("Total transferred file size:"),
            field("Total bytes sent:"),
        );
    } else {
        println!("rsync: not installed (bash .ci/prereqs installs it); reference skipped");
    }
}

/// A reader of `len` pseudo-random bytes.
struct Noise {
    left: u64,
    x: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize & !7;
        let n = if n == 0 {
            (self.left as usize).min(buf.len())
        } else {
            n
        };
        for c in buf[..n].chunks_mut(8) {
            self.x ^= self.x << 13;
            self.x ^= self.x >> 7;
            self.x ^= self.x << 17;
            let b = self.x.to_le_bytes();
            c.copy_from_slice(&b[..c.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn providers(rt: &tokio::runtime::Runtime, dir: &Path) {
    let gib = env("PACMESH_BENCH_GIB", 1);
    let uplink = env("PACMESH_BENCH_UPLINK_MIB", 40) << 20;
    let total = gib << 30;
    println!("== fetch {gib} GiB (4 blobs) from 1 and from 3 providers");
    // One content store shared by three provider nodes (each its own event store and HTTP).
    let pdir = dir.join("providers");
    std::fs::create_dir_all(&pdir).unwrap();
    let sdb = open_db(&pdir.join("store-db"), &DbConfig::default()).unwrap();
    let store = Arc::new(FsStore::open(&pdir, &sdb).unwrap().0);
    let blobs: Vec<(Hash, u64)> = (0..4u64)
        .map(|i| {
            let len = total / 4;
            let h = store
                .import_reader(
                    &mut Noise {
                        left: len,
                        x: 0x1234_5678 + i,
                    },
                    None,
                )
                .unwrap();
            (h, len)
        })
        .collect();
    let addrs: Vec<SocketAddr> = (0..3)
        .map(|i| {
            serve(
                rt,
                open_core(&pdir.join(format!("p{i}")), Some(store.clone())),
            )
        })
        .collect();
    let run = |label: &str, urls: Vec<String>| {
        let fdir = dir.join("fetch");
        let _ = std::fs::remove_dir_all(&fdir);
        std::fs::create_dir_all(&fdir).unwrap();
        let db = open_db(&fdir.join("db"), &DbConfig::default()).unwrap();
        let dest = Arc::new(FsStore::open(&fdir, &db).unwrap().0);
        let f = Fetcher::new(
            dest.clone(),
            fdir.join("partial"),
            http_sources(&urls, Duration::from_secs(120)),
            FetchConfig::default(),
        );
        let t = Instant::now();
        let results: Vec<_> = rt.block_on(
            stream::iter(blobs.iter())
                .map(|(h, len)| f.fetch(*h, Some(*len), None))
                .buffer_unordered(4)
                .collect::<Vec<_>>(),
        );
        let took = t.elapsed().as_secs_f64();
        for r in results {
            r.unwrap();
        }
        for (h, _) in &blobs {
            assert!(dest.has(h).unwrap());
        }
        println!(
            "{label}: {took:.2} s, {:.0} MiB/s (verified, into the store)",
            mib(total) / took
        );
        drop(f);
        drop(dest);
        drop(db);
        let _ = std::fs::remove_dir_all(&fdir);
        took
    };
    let url = |a: &SocketAddr| format!("http://{a}");
    let one = run("1 provider, loopback", vec![url(&addrs[0])]);
    let three = run("3 providers, loopback", addrs.iter().map(url).collect());
    println!(
        "ratio 1/3 providers (loopback, CPU-bound on this machine): {:.2}",
        one / three
    );
    let relays: Vec<Relay> = addrs.iter().map(|a| relay(*a, uplink)).collect();
    let one = run(
        &format!("1 provider, {} MiB/s uplink", uplink >> 20),
        vec![url(&relays[0].addr)],
    );
    let three = run(
        &format!("3 providers, {} MiB/s uplink each", uplink >> 20),
        relays.iter().map(|r| url(&r.addr)).collect(),
    );
    println!(
        "ratio 1/3 providers (uplink-limited): {:.2} (target > 1)",
        one / three
    );
}

/// Starts the libp2p network of `core` on 127.0.0.1 (a provider that announces no build
/// slots and fetches nothing); returns its full address.
fn start_net(
    rt: &tokio::runtime::Runtime,
    core: &Arc<Core>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> String {
    let caps = pacmesh_protocol::Capabilities {
        arch: Name::new(ARCH).unwrap(),
        microarch: 0,
        cores: 1,
        memory_bytes: 0,
        disk_free_bytes: 0,
        tags: vec![],
        profile: Name::new("host").unwrap(),
        load: 0,
        slots: 0,
        busy: 0,
    };
    let cfg = pacmesh_node::net::NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap: vec![],
        mdns: false,
        relay_server: false,
        relays: vec![],
        announce_interval: Duration::from_secs(5),
        sync_interval: Duration::from_secs(10),
        max_connections: 64,
        capabilities: Arc::new(move || caps.clone()),
        replicate: pacmesh_node::net::replicate::Wants::default(),
        blob_http_port: None,
    };
    let (h, _task) = rt
        .block_on(pacmesh_node::net::start(core.clone(), cfg, stop))
        .unwrap();
    let a = h.listen_addrs()[0].clone();
    format!("{a}/p2p/{}", h.peer_id)
}

fn mesh_initial(rt: &tokio::runtime::Runtime, dir: &Path) {
    let total_mib = env("PACMESH_BENCH_MESH_MIB", 1024);
    let n = env("PACMESH_BENCH_MESH_PACKAGES", 16).max(1);
    let each = ((total_mib << 20) / n) as usize;
    println!(
        "== initial mirror sync of {total_mib} MiB ({n} packages of {} MiB) from 1 and from 3 providers: libp2p (--bootstrap) and HTTP (--follow)",
        each >> 20
    );
    let pdir = dir.join("mesh-providers");
    std::fs::create_dir_all(&pdir).unwrap();
    let sdb = open_db(&pdir.join("store-db"), &DbConfig::default()).unwrap();
    let store = Arc::new(FsStore::open(&pdir, &sdb).unwrap().0);
    let publisher = open_core_seeded(&pdir.join("p0"), Some(store.clone()), 3);
    let t = Instant::now();
    let entry = publisher
        .submit_as(
            &NodeKey::from_seed(&[2; 32]),
            EventBody::Enqueue(QueueEntry::new(
                Name::new(REPO).unwrap(),
                Source::Aur {
                    pkgbase: Name::new("big").unwrap(),
                },
            )),
        )
        .unwrap();
    let mut artifacts = Vec::new();
    for i in 0..n as usize {
        let mut p = SyntheticPackage::new(&format!("big{i:03}"), "1-1").file(
            &format!("usr/share/big{i:03}/data"),
            &noise(each, 77 + i as u64),
        );
        p.compression = pacmesh_repo::package::Compression::None;
        let bytes = p.archive_bytes();
        artifacts.push(Artifact {
            file_name: FileName::new(p.file_name()).unwrap(),
            blake3: store.import_bytes(&bytes).unwrap(),
            sha256: Sha256::digest(&bytes),
            size: bytes.len() as u64,
        });
    }
    let log = store.import_bytes(b"log\n").unwrap();
    publisher
        .submit(EventBody::Built {
            entry,
            attempt: 1,
            artifacts,
            log,
            source_commit: None,
        })
        .unwrap();
    publish_once(&publisher, &PublisherConfig::default()).unwrap();
    println!(
        "setup (packages, publish): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let providers = [
        publisher,
        open_core_seeded(&pdir.join("p1"), Some(store.clone()), 11),
        open_core_seeded(&pdir.join("p2"), Some(store.clone()), 12),
    ];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let p2p: Vec<String> = providers
        .iter()
        .map(|c| start_net(rt, c, stop_rx.clone()))
        .collect();
    let http: Vec<String> = providers
        .iter()
        .map(|c| format!("http://{}", serve(rt, c.clone())))
        .collect();
    let policy_path = dir.join("policy.cbor");
    std::fs::write(&policy_path, policy()).unwrap();
    let run = |label: &str, boot: Vec<String>, follow: Vec<String>| -> f64 {
        let mdir = dir.join("mesh-mirror");
        let _ = std::fs::remove_dir_all(&mdir);
        let mut cfg = MirrorConfig::new(policy_path.clone(), mdir.join("out"), follow);
        cfg.data_dir = mdir.join("data");
        cfg.progress = false;
        cfg.mdns = false;
        if !boot.is_empty() {
            cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        }
        let want_peers = boot.len();
        cfg.bootstrap = boot;
        let mirror = rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || Mirror::open(cfg))
                    .await
                    .unwrap()
            })
            .unwrap();
        let (mstop_tx, mstop_rx) = tokio::sync::watch::channel(false);
        if want_peers > 0 {
            let (h, _task) = rt
                .block_on(pacmesh_node::mirror_mesh::start(
                    &mirror.core,
                    mirror.config(),
                    mstop_rx,
                ))
                .unwrap();
            let _ = mirror.core.net.set(h.clone());
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let synced = mirror
                    .core
                    .ingest()
                    .state()
                    .latest_generation(&Name::new(REPO).unwrap(), &Name::new(ARCH).unwrap())
                    .is_some();
                if synced && h.connected().len() >= want_peers {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the mirror did not sync the events"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        } else {
            rt.block_on(mirror.sync_all());
        }
        let t = Instant::now();
        let got = rt.block_on(mirror.step()).unwrap();
        let took = t.elapsed().as_secs_f64();
        assert_eq!(got.len(), 1, "switched to the generation");
        println!(
            "{label}: {took:.2} s, {:.0} MiB/s (fetched, verified, durable, materialised)",
            mib(mirror.bytes_fetched.load(Ordering::Relaxed)) / took
        );
        let _ = mstop_tx.send(true);
        drop(mirror);
        rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
        let _ = std::fs::remove_dir_all(&mdir);
        took
    };
    let one = run("libp2p, 1 provider", p2p[..1].to_vec(), vec![]);
    let three = run("libp2p, 3 providers", p2p.clone(), vec![]);
    println!(
        "ratio 1/3 providers (libp2p, loopback): {:.2} (target > 1)",
        one / three
    );
    let one_h = run("HTTP, 1 provider", vec![], http[..1].to_vec());
    let three_h = run("HTTP, 3 providers", vec![], http.clone());
    println!(
        "ratio 1/3 providers (HTTP, loopback): {:.2}",
        one_h / three_h
    );
    let _ = stop_tx.send(true);
    rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    drop(providers);
    let _ = std::fs::remove_dir_all(&pdir);
}

fn main() {
    // `cargo bench` passes --bench; nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = tempfile::Builder::new()
        .prefix("pacmesh-mirror-bench-")
        .tempdir_in(std::env::var("PACMESH_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()))
        .unwrap();
    let only = std::env::var("PACMESH_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "incremental" {
        incremental(&rt, t.path());
    }
    if only.is_empty() || only == "providers" {
        providers(&rt, t.path());
    }
    if only.is_empty() || only == "mesh" {
        mesh_initial(&rt, t.path());
    }
}
