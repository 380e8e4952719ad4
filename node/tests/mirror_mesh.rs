//! Mirrors on the libp2p mesh, with real processes on 127.0.0.1: three `pacmesh node`
//! processes (node 0 publishes; nodes 1 and 2 hold the packages, as two builders with
//! reproducible output would) and a `pacmesh mirror --bootstrap` process that follows them over
//! libp2p only (no `--follow`). Real pacman with `SigLevel = Required DatabaseRequired`
//! installs, upgrades and downgrades from the mirror.
//!
//! An in-test libp2p peer ([`proxy`]) speaks pacmesh's sync and blob protocols by forwarding to
//! node 0's HTTP API: honestly, corrupting every range it serves, or slowly (to kill a mirror
//! mid-fetch).
//!
//! `cargo test -p pacmesh-node --test mirror_mesh`. The pacman part needs root, pacman,
//! pacman-key and gpg, and is skipped with a notice without them (the rest still runs).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use pacmesh_node::client::Client;
use pacmesh_node::keys::NodeKey;
use pacmesh_protocol::{BLOBS_VERSION, BlobAnswer, BlobRequest, BlobWant, Hash, Sha256};
use pacmesh_repo::package::testutil::SyntheticPackage;
use pacmesh_repo::sign::OpenPgpKey;
use serde_json::Value;

#[path = "common/procs.rs"]
mod procs;
use procs::*;
#[path = "common/mirror_util.rs"]
mod mirror_util;
use mirror_util::*;

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

/// A package of `mib` MiB of incompressible content (stored uncompressed: `.pkg.tar`).
fn big(name: &str, mib: usize) -> SyntheticPackage {
    let mut p = SyntheticPackage::new(name, "1.0-1").file(
        &format!("usr/share/{name}/noise"),
        &noise(mib << 20, name.len() as u64),
    );
    p.compression = pacmesh_repo::package::Compression::None;
    p
}

struct Node {
    _proc: Proc,
    http: String,
    p2p: String,
}

/// Keys, a policy and three node processes.
struct Mesh {
    dir: PathBuf,
    policy: PathBuf,
    keys: Vec<PathBuf>,
    maint: NodeKey,
    builder: NodeKey,
    nodes: Vec<Node>,
}

fn listening(p: &Proc, what: &str) -> String {
    p.listening(what, Duration::from_secs(60))
}

impl Mesh {
    fn new(dir: &Path) -> Mesh {
        let keys_dir = dir.join("keys");
        let k = |n: &str| {
            let p = keys_dir.join(n);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let (root, maint, builder) = (k("root.key"), k("maint.key"), k("builder.key"));
        let keys: Vec<PathBuf> = (0..3).map(|i| k(&format!("node{i}.key"))).collect();
        let public = |p: &Path| NodeKey::load(p).unwrap().public_hex();
        let policy = dir.join("policy.cbor");
        pacmesh_ok(&[
            "mesh",
            "init",
            "--key",
            s(&root),
            "--repo",
            REPO,
            "--arch",
            ARCH,
            "--maintainer",
            &public(&maint),
            "--publisher",
            &public(&keys[0]),
            "--out",
            s(&policy),
        ]);
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            "[mesh]\nannounce_interval_ms = 500\nsync_interval_ms = 1000\n",
        )
        .unwrap();
        let mut nodes: Vec<Node> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let data = dir.join(format!("node{i}"));
            let mut args: Vec<String> = [
                "node",
                "--config",
                s(&config),
                "--policy",
                s(&policy),
                "--key",
                s(key),
                "--data-dir",
                s(&data),
                "--http",
                "127.0.0.1:0",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-mdns",
                "--no-build",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect();
            if i == 0 {
                args.extend(["--publisher-key".into(), s(key).into()]);
            }
            for n in &nodes {
                args.extend(["--bootstrap".into(), n.p2p.clone()]);
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let proc = Proc::spawn(&argv);
            let p2p = listening(&proc, "p2p listening on ");
            let http = listening(&proc, "http listening on ");
            nodes.push(Node {
                _proc: proc,
                http,
                p2p,
            });
        }
        Mesh {
            dir: dir.to_path_buf(),
            policy,
            keys,
            maint: NodeKey::load(&maint).unwrap(),
            builder: NodeKey::load(&builder).unwrap(),
            nodes,
        }
    }

    /// Enqueues `pkgbase` at node 1, puts the packages into nodes 1 and 2 (their builders'
    /// output), reports the build there as the builder, and waits until node 0 replicated the
    /// packages over libp2p, published and serves generation `expect`.
    fn publish(&self, pkgbase: &str, pkgs: &[SyntheticPackage], expect: u64) {
        let c1 = Client::new(&self.nodes[1].http);
        let c2 = Client::new(&self.nodes[2].http);
        enqueue_and_report_built(&c1, &[&c2], &self.maint, &self.builder, pkgbase, pkgs);
        wait_until(
            &format!("node 0 serves generation {expect}"),
            Duration::from_secs(90),
            || node_served(&self.nodes[0].http) == Some(expect),
        );
    }

    /// Starts `pacmesh mirror` into `DIR/name` joining the mesh through `bootstrap` only.
    fn mirror(&self, name: &str, bootstrap: &[&str]) -> Mirror {
        let (out, data) = (self.dir.join(name), self.dir.join(format!("{name}-data")));
        let mut args = vec![
            "mirror",
            "--policy",
            s(&self.policy),
            "--out",
            s(&out),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--interval",
            "1",
            "--keep",
            "5",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ];
        for b in bootstrap {
            args.extend(["--bootstrap", b]);
        }
        let proc = Proc::spawn(&args);
        let p2p = listening(&proc, "p2p listening on ");
        let http = listening(&proc, "mirror http listening on ");
        Mirror { proc, http, p2p }
    }

    fn pgp(&self) -> OpenPgpKey {
        let k = NodeKey::load(&self.keys[0]).unwrap();
        OpenPgpKey::from_ed25519_secret(k.seed(), "t <t@pacmesh.invalid>").unwrap()
    }

    fn p2p(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.p2p.as_str()).collect()
    }
}

struct Mirror {
    proc: Proc,
    http: String,
    p2p: String,
}

impl Mirror {
    fn status(&self) -> Value {
        json(&format!("{}/api/v1/status", self.http))
    }

    fn kill9(mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

fn peer_id_of(p2p: &str) -> libp2p::PeerId {
    p2p.rsplit('/').next().unwrap().parse().unwrap()
}

/// Reads a database, its signature and every package it lists from the mirror, checking the
/// signatures (publisher's OpenPGP key) and the SHA-256 the database states. Returns the
/// generation.
fn check_set(base: &str, pgp: &OpenPgpKey) -> Result<u64, String> {
    let (code, db, g) = get(&format!("{base}/{REPO}/os/{ARCH}/{REPO}.db"));
    if code != 200 {
        return Err(format!("db: HTTP {code}"));
    }
    let g: u64 = g
        .ok_or("no generation header")?
        .parse()
        .map_err(|_| "bad generation header")?;
    let dir = format!("{base}/{REPO}/gen/{g}/os/{ARCH}");
    let (code, sig, _) = get(&format!("{dir}/{REPO}.db.sig"));
    if code != 200 {
        return Err(format!("db.sig: HTTP {code}"));
    }
    pgp.verify_detached(&db, &sig)
        .map_err(|e| format!("generation {g}: database signature: {e}"))?;
    let parsed = pacmesh_repo::db::Database::from_archives(REPO, &db, None)
        .map_err(|e| format!("database: {e}"))?;
    for e in parsed.entries.values() {
        let (code, bytes, _) = get(&format!("{dir}/{}", e.filename));
        if code != 200 {
            return Err(format!("generation {g}: {}: HTTP {code}", e.filename));
        }
        let got = Sha256::digest(&bytes).to_hex();
        if e.sha256sum.as_deref() != Some(got.as_str()) {
            return Err(format!("generation {g}: {}: sha256 {got}", e.filename));
        }
        let (code, psig, _) = get(&format!("{dir}/{}.sig", e.filename));
        if code != 200 {
            return Err(format!("generation {g}: {}.sig: HTTP {code}", e.filename));
        }
        pgp.verify_detached(&bytes, &psig)
            .map_err(|err| format!("generation {g}: {}: package signature: {err}", e.filename))?;
    }
    Ok(g)
}

fn readme(p: &Pacman, name: &str) -> String {
    std::fs::read_to_string(p.root().join(format!("usr/share/{name}/README"))).unwrap_or_default()
}

/// The main scenario over libp2p: the mirror joins the mesh (bootstrap addresses only),
/// serves generation 1; pacman installs from it; generation 2 upgrades (`-Syu`); a rollback to
/// generation 1 downgrades (`-Suu`). The nodes see the mirror as a peer that does not build;
/// the mirror serves blobs to the mesh.
#[test]
fn a_mirror_on_the_mesh_serves_generations_pacman_upgrades_and_rolls_back() {
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    mesh.publish("hello", &[SyntheticPackage::new("hello", "1.0-1")], 1);
    let mirror = mesh.mirror("out", &mesh.p2p());
    wait_until(
        "mirror serves generation 1",
        Duration::from_secs(60),
        || mirror_served(&mirror.http) == Some(1),
    );
    let pgp = mesh.pgp();
    assert_eq!(check_set(&mirror.http, &pgp), Ok(1));
    let st = mirror.status();
    assert!(st["follow"].as_array().unwrap().is_empty(), "{st:#}");
    let connected: Vec<&str> = st["peers_connected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    for n in &mesh.nodes {
        let id = peer_id_of(&n.p2p).to_string();
        assert!(connected.contains(&id.as_str()), "{id} not in {st:#}");
    }
    assert!(st["bytes_fetched"].as_u64().unwrap() > 0, "{st:#}");

    // The nodes know the mirror from its announcements, as a peer with no build slots: it is
    // never ranked as a builder.
    let mirror_peer = peer_id_of(&mirror.p2p).to_string();
    wait_until(
        "node 0 knows the mirror's announcement",
        Duration::from_secs(30),
        || {
            json(&format!("{}/api/v1/status", mesh.nodes[0].http))["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["peer_id"] == mirror_peer.as_str()))
        },
    );
    let st0 = json(&format!("{}/api/v1/status", mesh.nodes[0].http));
    let me = st0["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer_id"] == mirror_peer.as_str())
        .unwrap()
        .clone();
    assert_eq!(me["slots"], 0, "{me:#}");
    assert_eq!(me["tags"], serde_json::json!(["mirror"]), "{me:#}");

    // The mirror is a provider: a libp2p peer asks it for the database blob by hash.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = proxy::start(&rt, &mesh.nodes[0].http);
    let (_, db, _) = get(&format!("{}/{REPO}/os/{ARCH}/{REPO}.db", mirror.http));
    let db_hash = Hash::new(&db);
    client.dial(mirror.p2p.parse().unwrap());
    let mirror_id = peer_id_of(&mirror.p2p);
    wait_until("connected to the mirror", Duration::from_secs(10), || {
        client.seen().connected.contains(&mirror_id)
    });
    let answer = client.ask(
        peer_id_of(&mirror.p2p),
        BlobRequest {
            version: BLOBS_VERSION,
            hash: db_hash,
            want: BlobWant::Range {
                offset: 0,
                len: 1 << 20,
            },
        },
    );
    match answer {
        Ok(BlobAnswer::Data { bytes }) => assert_eq!(Hash::new(&bytes), db_hash),
        other => panic!("the mirror did not serve the database blob: {other:?}"),
    }

    let pacman = can_pacman().then(|| {
        let asc = t.path().join("publisher.asc");
        std::fs::write(
            &asc,
            pacmesh_ok(&["key", "openpgp", "--key", s(&mesh.keys[0])]),
        )
        .unwrap();
        let fpr = pacmesh_ok(&["key", "show", "--key", s(&mesh.keys[0]), "--fingerprint"]);
        let p = Pacman::new(
            &t.path().join("pacman"),
            REPO,
            &format!("{}/$repo/os/$arch", mirror.http),
            &asc,
            fpr.trim(),
        );
        let o = p.install(&["hello"]);
        assert!(o.status.success(), "pacman -Sy hello: {}", show(&o));
        assert_eq!(readme(&p, "hello"), "hello 1.0-1\n");
        p
    });

    // Generation 2: hello 2.0. pacman -Syu upgrades from the mirror.
    mesh.publish("hello", &[SyntheticPackage::new("hello", "2.0-1")], 2);
    wait_until(
        "mirror serves generation 2",
        Duration::from_secs(60),
        || mirror_served(&mirror.http) == Some(2),
    );
    assert_eq!(check_set(&mirror.http, &pgp), Ok(2));
    if let Some(p) = &pacman {
        let o = p.pacman(&["-Syudd"]);
        assert!(o.status.success(), "pacman -Syu: {}", show(&o));
        assert_eq!(readme(p, "hello"), "hello 2.0-1\n", "upgraded");
    }

    // Rollback to generation 1 (generation 3 equals it): pacman -Suu downgrades.
    let o = run(
        std::process::Command::new(BIN).args([
            "repo",
            "rollback",
            REPO,
            "1",
            "--key",
            s(&mesh.keys[0]),
            "--node",
            &mesh.nodes[0].http,
        ]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "rollback: {}", show(&o));
    wait_until(
        "mirror serves generation 3",
        Duration::from_secs(60),
        || mirror_served(&mirror.http) == Some(3),
    );
    assert_eq!(check_set(&mirror.http, &pgp), Ok(3));
    if let Some(p) = &pacman {
        let o = p.pacman(&["-Syuudd"]);
        assert!(o.status.success(), "pacman -Suu: {}", show(&o));
        assert_eq!(readme(p, "hello"), "hello 1.0-1\n", "downgraded");
    }
    // The earlier generations stay readable at their pinned paths.
    let kept = mirror.status()["repos"][0]["kept"].clone();
    assert_eq!(kept, serde_json::json!([1, 2, 3]));
    assert_eq!(
        get(&format!("{}/{REPO}/gen/2/os/{ARCH}/{REPO}.db", mirror.http)).0,
        200
    );
    // `--once` on the mesh (and following node 1 over HTTP as well): joins, syncs, serves the
    // newest generation, exits 0.
    let out2 = t.path().join("once-out");
    let o = run(
        std::process::Command::new(BIN).args([
            "mirror",
            "--policy",
            s(&mesh.policy),
            "--out",
            s(&out2),
            "--data-dir",
            s(&t.path().join("once-data")),
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
            "--bootstrap",
            &mesh.nodes[2].p2p,
            "--bootstrap",
            &mesh.nodes[0].p2p,
            "--follow",
            &mesh.nodes[1].http,
            "--once",
        ]),
        Duration::from_secs(90),
    );
    assert!(o.status.success(), "mirror --once: {}", show(&o));
    assert_eq!(
        pacmesh_node::mirror::served_generation(&out2, REPO, ARCH),
        Some(3),
        "{}",
        show(&o)
    );
    // No node ever claimed anything (nothing was enqueued to build; the mirror never claims).
    let st0 = json(&format!("{}/api/v1/status", mesh.nodes[0].http));
    assert_eq!(
        st0["claims"].as_array().map_or(0, |c| c.len()),
        0,
        "{st0:#}"
    );
}

/// A libp2p peer that corrupts every range it serves is caught at the first bad segment,
/// banned, and the package comes from the honest peers: the mirror never serves corrupt bytes.
/// A mirror killed (-9) in the middle of a slow fetch keeps serving the previous generation,
/// and at restart resumes (fetches less than the package) and serves the new one complete.
#[test]
fn a_corrupting_peer_is_banned_and_a_killed_mirror_resumes() {
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let liar = proxy::start(&rt, &mesh.nodes[0].http);
    let liar_id = liar.peer_id.to_string();
    let pgp = mesh.pgp();

    // Generation 1 (small); the proxy is honest for now: it is a provider like the nodes.
    mesh.publish("hello", &[SyntheticPackage::new("hello", "1.0-1")], 1);
    let mut boot = vec![liar.addr.to_string()];
    boot.extend(mesh.p2p().iter().map(|x| x.to_string()));
    let boot: Vec<&str> = boot.iter().map(String::as_str).collect();
    let mirror = mesh.mirror("out", &boot);
    wait_until(
        "mirror serves generation 1",
        Duration::from_secs(60),
        || mirror_served(&mirror.http) == Some(1),
    );
    wait_until(
        "mirror connected to all four",
        Duration::from_secs(30),
        || {
            mirror.status()["peers_connected"]
                .as_array()
                .is_some_and(|p| p.len() >= 4)
        },
    );

    // Generation 2: a package of six 4 MiB segments. Every connected holder is asked for some
    // segment (the first four go to four different peers); the proxy now corrupts every range
    // of that package it serves.
    let big1 = big("big", 22);
    *liar.only.lock().unwrap() = Some(Hash::new(big1.archive_bytes()));
    liar.mode.store(proxy::CORRUPT, Ordering::SeqCst);
    mesh.publish("big", &[big1], 2);
    wait_until(
        "mirror serves generation 2",
        Duration::from_secs(90),
        || mirror_served(&mirror.http) == Some(2),
    );
    assert_eq!(
        check_set(&mirror.http, &pgp),
        Ok(2),
        "never the corrupt bytes"
    );
    let seen = liar.seen();
    assert!(
        seen.corrupted >= 1,
        "the liar was asked for a segment of the package"
    );
    let mirror_id = peer_id_of(&mirror.p2p);
    wait_until(
        "the mirror dropped the liar",
        Duration::from_secs(10),
        || liar.seen().closed.contains(&mirror_id),
    );
    let st = mirror.status();
    assert!(
        st["bad_sources"][&liar_id].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    assert!(
        !st["peers_connected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == liar_id.as_str()),
        "banned: {st:#}"
    );
    mirror.kill9();

    // kill -9 mid-fetch: generation 3's large package comes slowly, through the (now honest,
    // throttled) proxy only.
    liar.mode.store(proxy::HONEST, Ordering::SeqCst);
    liar.throttle.store(6 << 20, Ordering::SeqCst);
    let big2 = big("big2", 40);
    let big2_len = big2.archive_bytes().len() as u64;
    mesh.publish("big2", &[big2], 3);
    let mirror = mesh.mirror("out", &[&liar.addr.to_string()]);
    let partial = t.path().join("out-data/partial");
    let segments_done = || mirror_util::segments_done(&partial);
    wait_until("the mirror is mid-fetch", Duration::from_secs(60), || {
        segments_done() >= 3
    });
    mirror.kill9();
    let out = t.path().join("out");
    assert_eq!(
        pacmesh_node::mirror::served_generation(&out, REPO, ARCH),
        Some(2),
        "a killed mirror serves the old generation"
    );
    assert!(!pacmesh_node::mirror::gen_dir(&out, REPO, ARCH, 3).exists());
    let done = segments_done();
    assert!((3..10).contains(&done), "partial download kept: {done}");

    // Restart through the nodes (fast): resumes, serves generation 3 complete.
    let mirror = mesh.mirror("out", &mesh.p2p());
    wait_until(
        "mirror serves generation 3",
        Duration::from_secs(90),
        || mirror_served(&mirror.http) == Some(3),
    );
    let fetched = mirror.status()["bytes_fetched"].as_u64().unwrap();
    assert!(
        fetched + (2 << 22) <= big2_len,
        "resumed: fetched {fetched} of {big2_len} after the restart"
    );
    assert_eq!(check_set(&mirror.http, &pgp), Ok(3));
}

/// An in-test libp2p peer that speaks `/pacmesh/sync/1` and `/pacmesh/blobs/1` by forwarding
/// to a node's HTTP API (`POST /api/v1/sync`, `GET /api/v1/blobs/H[/outboard]`), honestly, or
/// flipping a byte of every range it serves, or throttled; it can also ask a peer for a blob.
mod proxy {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures::StreamExt;
    use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, noise, tcp, yamux};
    use pacmesh_node::net::codec::{BlobCodec, MsgCodec};
    use pacmesh_protocol::{
        BLOBS_VERSION, BlobAnswer, BlobRequest, BlobResponse, BlobWant, Hash, Limits, Message,
        SyncRequest, SyncResponse,
    };
    use tokio::sync::mpsc;

    pub const HONEST: u8 = 0;
    pub const CORRUPT: u8 = 1;

    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        sync: request_response::Behaviour<MsgCodec<SyncRequest, SyncResponse>>,
        blobs: request_response::Behaviour<BlobCodec>,
    }

    type Reply = std::sync::mpsc::Sender<Result<BlobAnswer, String>>;

    enum Cmd {
        Dial(Multiaddr),
        Ask(PeerId, BlobRequest, Reply),
        Blob(ResponseChannel<BlobResponse>, BlobResponse),
        Sync(ResponseChannel<SyncResponse>, SyncResponse),
    }

    #[derive(Default, Clone)]
    pub struct Seen {
        pub connected: HashSet<PeerId>,
        pub closed: HashSet<PeerId>,
        pub ranges: u32,
        pub corrupted: u32,
    }

    pub struct Proxy {
        tx: mpsc::UnboundedSender<Cmd>,
        seen: Arc<Mutex<Seen>>,
        pub mode: Arc<AtomicU8>,
        /// With [`CORRUPT`]: corrupt only this blob's ranges (every blob when `None`).
        pub only: Arc<Mutex<Option<Hash>>>,
        /// Bytes per second over all ranges served (0: no limit).
        pub throttle: Arc<AtomicU64>,
        pub addr: Multiaddr,
        pub peer_id: PeerId,
    }

    impl Proxy {
        pub fn seen(&self) -> Seen {
            self.seen.lock().unwrap().clone()
        }

        pub fn dial(&self, a: Multiaddr) {
            self.tx.send(Cmd::Dial(a)).unwrap();
        }

        /// Asks `peer` for a blob (dial it first); waits up to 20 s.
        pub fn ask(&self, peer: PeerId, req: BlobRequest) -> Result<BlobAnswer, String> {
            let (tx, rx) = std::sync::mpsc::channel();
            self.tx.send(Cmd::Ask(peer, req, tx)).unwrap();
            rx.recv_timeout(Duration::from_secs(20))
                .map_err(|e| e.to_string())?
        }
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    }

    /// The answer `upstream` (a node's HTTP base) gives to `req`.
    fn forward_blob(upstream: &str, req: &BlobRequest) -> BlobAnswer {
        let a = agent();
        let refused = |e: String| BlobAnswer::Refused { reason: e };
        match req.want {
            BlobWant::Outboard => {
                let url = format!("{upstream}/api/v1/blobs/{}/outboard", req.hash);
                let mut r = match a.get(&url).call() {
                    Ok(r) => r,
                    Err(e) => return refused(e.to_string()),
                };
                if r.status() == 404 {
                    return BlobAnswer::NotFound;
                }
                let bytes = r.body_mut().read_to_vec().unwrap_or_default();
                match pacmesh_node::fetch::Outboard::decode(&bytes) {
                    Ok(ob) => BlobAnswer::Outboard {
                        size: ob.len,
                        segments: if ob.cvs.is_empty() {
                            vec![req.hash]
                        } else {
                            ob.cvs.iter().map(|c| Hash::from_bytes(*c)).collect()
                        },
                    },
                    Err(e) => refused(e.to_string()),
                }
            }
            BlobWant::Range { offset, len } => {
                let url = format!("{upstream}/api/v1/blobs/{}", req.hash);
                let mut r = match a
                    .get(&url)
                    .header("range", format!("bytes={offset}-{}", offset + len - 1))
                    .call()
                {
                    Ok(r) => r,
                    Err(e) => return refused(e.to_string()),
                };
                if r.status() == 404 {
                    return BlobAnswer::NotFound;
                }
                if !r.status().is_success() {
                    return refused(format!("HTTP {}", r.status()));
                }
                let bytes = r
                    .body_mut()
                    .with_config()
                    .limit(64 << 20)
                    .read_to_vec()
                    .unwrap_or_default();
                BlobAnswer::Data { bytes }
            }
            // A forwarder holds nothing itself.
            BlobWant::Have { .. } => BlobAnswer::NotFound,
        }
    }

    fn forward_sync(upstream: &str, req: &SyncRequest) -> Option<SyncResponse> {
        let body = req.encode().ok()?;
        let mut r = agent()
            .post(format!("{upstream}/api/v1/sync"))
            .header("content-type", "application/cbor")
            .send(&body[..])
            .ok()?;
        let bytes = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .ok()?;
        SyncResponse::decode(&bytes, &Limits::default()).ok()
    }

    pub fn start(rt: &tokio::runtime::Runtime, upstream: &str) -> Proxy {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mode = Arc::new(AtomicU8::new(HONEST));
        let only: Arc<Mutex<Option<Hash>>> = Arc::default();
        let throttle = Arc::new(AtomicU64::new(0));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let key = identity::Keypair::generate_ed25519();
        let peer_id = key.public().to_peer_id();
        let (s2, m2, t2, tx2, o2) = (
            seen.clone(),
            mode.clone(),
            throttle.clone(),
            tx.clone(),
            only.clone(),
        );
        let upstream = upstream.to_string();
        // When the throttled link is next free.
        let next_free = Arc::new(Mutex::new(Instant::now()));
        rt.spawn(async move {
            let rr = || {
                request_response::Config::default().with_request_timeout(Duration::from_secs(60))
            };
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .unwrap()
                .with_behaviour(|_| Behaviour {
                    sync: request_response::Behaviour::with_codec(
                        MsgCodec::new(Limits::default()),
                        [(
                            StreamProtocol::new(pacmesh_protocol::SYNC_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        rr(),
                    ),
                    blobs: request_response::Behaviour::with_codec(
                        BlobCodec::new(Limits::default()),
                        [(
                            StreamProtocol::new(pacmesh_protocol::BLOBS_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        rr(),
                    ),
                })
                .unwrap()
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
                .build();
            swarm
                .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
                .unwrap();
            let mut waiters: HashMap<OutboundRequestId, Reply> = HashMap::new();
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => match ev {
                        SwarmEvent::NewListenAddr { address, .. } => {
                            let _ = addr_tx.send(address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id())));
                        }
                        SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                            s2.lock().unwrap().connected.insert(peer_id);
                        }
                        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
                            s2.lock().unwrap().closed.insert(peer_id);
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Blobs(request_response::Event::Message { message, .. })) => match message {
                            request_response::Message::Request { request, channel, .. } => {
                                let (up, s3, m3, t3, tx3, nf, o3) = (upstream.clone(), s2.clone(), m2.clone(), t2.clone(), tx2.clone(), next_free.clone(), o2.clone());
                                tokio::task::spawn_blocking(move || {
                                    let mut answer = forward_blob(&up, &request);
                                    if let BlobAnswer::Data { bytes } = &mut answer {
                                        let mut seen = s3.lock().unwrap();
                                        seen.ranges += 1;
                                        let target = o3.lock().unwrap().is_none_or(|h| h == request.hash);
                                        if m3.load(Ordering::SeqCst) == CORRUPT && target && !bytes.is_empty() {
                                            bytes[0] ^= 0xff; // the lie
                                            seen.corrupted += 1;
                                        }
                                        drop(seen);
                                        let bps = t3.load(Ordering::SeqCst);
                                        if bps > 0 {
                                            let due = {
                                                let mut g = nf.lock().unwrap();
                                                let start = (*g).max(Instant::now());
                                                *g = start + Duration::from_secs_f64(bytes.len() as f64 / bps as f64);
                                                *g
                                            };
                                            std::thread::sleep(due.saturating_duration_since(Instant::now()));
                                        }
                                    }
                                    let _ = tx3.send(Cmd::Blob(channel, BlobResponse { version: BLOBS_VERSION, answer }));
                                });
                            }
                            request_response::Message::Response { request_id, response } => {
                                if let Some(w) = waiters.remove(&request_id) {
                                    let _ = w.send(Ok(response.answer));
                                }
                            }
                        },
                        SwarmEvent::Behaviour(BehaviourEvent::Blobs(request_response::Event::OutboundFailure { request_id, error, .. })) => {
                            if let Some(w) = waiters.remove(&request_id) {
                                let _ = w.send(Err(error.to_string()));
                            }
                        }
                        SwarmEvent::Behaviour(BehaviourEvent::Sync(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. }, ..
                        })) => {
                            let (up, tx3) = (upstream.clone(), tx2.clone());
                            tokio::task::spawn_blocking(move || {
                                if let Some(resp) = forward_sync(&up, &request) {
                                    let _ = tx3.send(Cmd::Sync(channel, resp));
                                }
                            });
                        }
                        _ => {}
                    },
                    Some(cmd) = rx.recv() => match cmd {
                        Cmd::Dial(a) => { let _ = swarm.dial(a); }
                        Cmd::Ask(peer, req, reply) => {
                            let id = swarm.behaviour_mut().blobs.send_request(&peer, req);
                            waiters.insert(id, reply);
                        }
                        Cmd::Blob(ch, resp) => { let _ = swarm.behaviour_mut().blobs.send_response(ch, resp); }
                        Cmd::Sync(ch, resp) => { let _ = swarm.behaviour_mut().sync.send_response(ch, resp); }
                    },
                }
            }
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Proxy {
            tx,
            seen,
            mode,
            only,
            throttle,
            addr,
            peer_id,
        }
    }
}
