//! The mesh with real processes: several `pacmesh node` processes, each with its own data dir
//! and key, talking libp2p over 127.0.0.1 (mDNS off, bootstrap addresses given), real
//! makepkg in bubblewrap, and real pacman installing from the publisher's repository.
//!
//! Needs root (for pacman), bwrap, makepkg, pacman and gpg; each test skips with a printed
//! notice when they are missing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[path = "common/procs.rs"]
mod procs;
use procs::*;
use serde_json::Value;

/// Keys, a policy and any number of node processes.
struct Net {
    dir: PathBuf,
    maintainer: PathBuf,
    policy: PathBuf,
    config: PathBuf,
    keys: Vec<PathBuf>,
    publics: Vec<String>,
}

struct Node {
    proc: Proc,
    http: String,
    p2p: String,
}

fn public_of(p: &Path) -> String {
    let out = pacmesh_ok(&["key", "show", "--key", s(p)]);
    out.lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .trim()
        .to_string()
}

impl Net {
    /// `n` node keys; node 0 is the publisher. Leases of `lease` seconds.
    fn new(dir: &Path, n: usize, lease: u32) -> Net {
        let keys_dir = dir.join("keys");
        let k = |name: &str| {
            let p = keys_dir.join(name);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let root = k("root.key");
        let maintainer = k("maint.key");
        let keys: Vec<PathBuf> = (0..n).map(|i| k(&format!("node{i}.key"))).collect();
        let publics: Vec<String> = keys.iter().map(|p| public_of(p)).collect();
        let policy = dir.join("policy.cbor");
        let lease = lease.to_string();
        pacmesh_ok(&[
            "mesh",
            "init",
            "--key",
            s(&root),
            "--repo",
            "test",
            "--arch",
            "x86_64",
            "--maintainer",
            &public_of(&maintainer),
            "--publisher",
            &publics[0],
            "--lease-secs",
            &lease,
            "--out",
            s(&policy),
        ]);
        // Fast announcements and a short claim step keep the test short.
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            "[mesh]\nannounce_interval_ms = 500\nsync_interval_ms = 1000\nclaim_step_ms = 1500\n",
        )
        .unwrap();
        Net {
            dir: dir.to_path_buf(),
            maintainer,
            policy,
            config,
            keys,
            publics,
        }
    }

    /// Starts node `i` bootstrapping from `peers`.
    fn start(&self, i: usize, peers: &[&Node], extra: &[&str]) -> Node {
        self.start_with(i, peers, extra, "")
    }

    /// [`Net::start`] with more `[mesh]` config lines.
    fn start_with(&self, i: usize, peers: &[&Node], extra: &[&str], mesh: &str) -> Node {
        let config = if mesh.is_empty() {
            self.config.clone()
        } else {
            let c = self.dir.join(format!("node{i}.toml"));
            let base = std::fs::read_to_string(&self.config).unwrap();
            std::fs::write(&c, format!("{base}{mesh}\n")).unwrap();
            c
        };
        self.start_config(i, peers, extra, &config)
    }

    /// [`Net::start`] with the config file `config` instead of the test's own.
    fn start_config(&self, i: usize, peers: &[&Node], extra: &[&str], config: &Path) -> Node {
        let data = self.dir.join(format!("data{i}"));
        let mut args: Vec<String> = [
            "node",
            "--config",
            s(config),
            "--policy",
            s(&self.policy),
            "--key",
            s(&self.keys[i]),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-mdns",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        if i == 0 {
            args.extend(["--publisher-key".into(), s(&self.keys[0]).into()]);
        }
        for p in peers {
            args.extend(["--bootstrap".into(), p.p2p.clone()]);
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let proc = Proc::spawn(&argv);
        let p2p = proc.listening("p2p listening on ", Duration::from_secs(60));
        let http = proc.listening("http listening on ", Duration::from_secs(60));
        Node { proc, http, p2p }
    }

    fn enqueue(&self, node: &Node, dir: &Path, needs: &[&str]) -> String {
        let mut args = vec![
            "queue",
            "add",
            "--key",
            s(&self.maintainer),
            "--node",
            &node.http,
            "--dir",
            s(dir),
        ];
        for n in needs {
            args.extend(["--needs", n]);
        }
        pacmesh_ok(&args).trim().to_string()
    }
}

fn pkg(dir: &Path, name: &str, build: &str) -> PathBuf {
    let d = dir.join("pkgs").join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("PKGBUILD"),
        format!(
            "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='mesh test package'\narch=('any')\nlicense=('MIT')\n\
             build() {{\n{build}\n}}\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/data\" <<<'{name}'\n}}\n"
        ),
    )
    .unwrap();
    d
}

fn status(n: &Node) -> Value {
    json(&format!("{}/api/v1/status", n.http))
}

fn digest(n: &Node) -> String {
    status(n)["state_digest"].as_str().unwrap().to_string()
}

/// Waits until every node reports the same state digest; returns it.
fn converge(nodes: &[&Node], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let d: Vec<String> = nodes.iter().map(|n| digest(n)).collect();
        if d.iter().all(|x| *x == d[0]) {
            return d[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "no convergence within {timeout:?}: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn builders_of(node: &Node, id: &str) -> Vec<String> {
    let detail = json(&format!("{}/api/v1/entries/{id}", node.http));
    detail["reports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["outcome"] == "built")
        .map(|r| r["builder"].as_str().unwrap().to_string())
        .collect()
}

fn skip_unless_tools() -> bool {
    skip(&["bwrap", "makepkg", "pacman", "pacman-key", "gpg"], true)
}

/// Five processes: a publisher that does not build and four builders with different tags.
/// Entries are enqueued at one builder; each is built by a node whose tags match, exactly once,
/// replicated to the publisher, published once; pacman installs them from the publisher. A
/// node started afterwards reaches the same state digest.
#[test]
fn five_nodes_build_by_capability_publish_and_a_late_joiner_converges() {
    if skip_unless_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 6, 30);
    let n0 = net.start(0, &[], &["--no-build"]);
    let n1 = net.start(1, &[&n0], &["--tag", "alpha"]);
    let n2 = net.start(2, &[&n0], &["--tag", "beta"]);
    let n3 = net.start(3, &[&n1], &["--tag", "alpha"]);
    let n4 = net.start(4, &[&n2], &[]);
    let nodes = [&n0, &n1, &n2, &n3, &n4];
    // Everyone knows everyone's capabilities before work arrives.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes
        .iter()
        .any(|n| status(n)["peers"].as_array().map_or(0, |p| p.len()) < 4)
    {
        assert!(
            Instant::now() < deadline,
            "announcements: {:#}",
            status(&n1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let beta = net.enqueue(&n1, &pkg(t.path(), "mesh-beta", "true"), &["tag=beta"]);
    let alpha1 = net.enqueue(
        &n1,
        &pkg(t.path(), "mesh-alpha-one", "true"),
        &["tag=alpha"],
    );
    let alpha2 = net.enqueue(
        &n1,
        &pkg(t.path(), "mesh-alpha-two", "true"),
        &["tag=alpha"],
    );
    let any = net.enqueue(&n1, &pkg(t.path(), "mesh-any", "true"), &[]);
    let ids = [&beta, &alpha1, &alpha2, &any];

    let entries = wait_queue(
        &n0.http,
        "all published at the publisher",
        Duration::from_secs(300),
        |es| {
            ids.iter().all(|id| {
                es.iter()
                    .any(|e| e["id"] == id.as_str() && e["status"]["state"] == "published")
            })
        },
    );
    assert_eq!(entries.len(), 4);
    wait_served(&n0.http);

    // Who built what: capabilities decide.
    assert_eq!(
        builders_of(&n0, &beta),
        vec![net.publics[2].clone()],
        "tag=beta: only node 2"
    );
    for id in [&alpha1, &alpha2] {
        let b = builders_of(&n0, id);
        assert_eq!(b.len(), 1, "built once: {b:?}");
        assert!(
            b[0] == net.publics[1] || b[0] == net.publics[3],
            "tag=alpha: node 1 or 3, got {b:?}"
        );
    }
    let b = builders_of(&n0, &any);
    assert_eq!(b.len(), 1, "built once: {b:?}");
    assert_ne!(b[0], net.publics[0], "the publisher does not build");
    // Node 2 built from a snapshot uploaded to node 1: replication worked. Published once each.
    let st = status(&n0);
    let gens = st["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 1, "{st}");
    assert_eq!(gens[0]["packages"], 4, "{st}");
    assert!(gens[0]["generation"].as_u64().unwrap() <= 4, "{st}");

    // pacman installs from the publisher's repository.
    let asc = t.path().join("publisher.asc");
    std::fs::write(
        &asc,
        pacmesh_ok(&["key", "openpgp", "--key", s(&net.keys[0])]),
    )
    .unwrap();
    let fpr = pacmesh_ok(&["key", "show", "--key", s(&net.keys[0]), "--fingerprint"]);
    let pacman = Pacman::new(
        &t.path().join("pacman"),
        "test",
        &format!("{}/test/os/x86_64", n0.http),
        &asc,
        fpr.trim(),
    );
    let o = pacman.install(&["mesh-beta", "mesh-alpha-one", "mesh-alpha-two", "mesh-any"]);
    assert!(o.status.success(), "pacman: {}", show(&o));
    assert!(pacman.root().join("usr/share/mesh-beta/data").is_file());

    // Everyone agrees; a late joiner catches up within seconds.
    let d = converge(&nodes, Duration::from_secs(30));
    let t0 = Instant::now();
    let n5 = net.start(5, &[&n3], &["--no-build"]);
    let d5 = converge(&[&n0, &n5], Duration::from_secs(20));
    assert_eq!(d5, d);
    eprintln!("late joiner converged in {:?}", t0.elapsed());
    // `pacmesh status` shows the peers with their capabilities, and the digest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let out = loop {
        let out = pacmesh_ok(&["status", "--node", &n5.http]);
        if out.matches("peer ").count() >= 5 {
            break out;
        }
        assert!(Instant::now() < deadline, "peers not announced: {out}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.contains("tags beta"), "{out}");
    assert!(out.contains(&d), "{out}");
    drop(n5);
}

/// kill -9 of the node holding the claim mid-build: another node builds the entry after the
/// lease lapses; the killed node restarts, catches up and does not build it again.
#[test]
fn a_builder_killed_mid_build_loses_its_lease_and_another_builds() {
    if skip_unless_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 3, 5);
    let n0 = net.start(0, &[], &["--no-build"]);
    let n1 = net.start(1, &[&n0], &[]);
    let n2 = net.start(2, &[&n0], &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while [&n0, &n1, &n2]
        .iter()
        .any(|n| status(n)["peers"].as_array().map_or(0, |p| p.len()) < 2)
    {
        assert!(
            Instant::now() < deadline,
            "announcements: {:#}",
            status(&n1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = net.enqueue(&n0, &pkg(t.path(), "mesh-slow", "sleep 12"), &[]);
    // Who claimed?
    let deadline = Instant::now() + Duration::from_secs(60);
    let claimer = loop {
        let st = status(&n0);
        if let Some(c) = st["claims"].as_array().and_then(|c| c.first()) {
            break c["builder"].as_str().unwrap().to_string();
        }
        assert!(Instant::now() < deadline, "no claim: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let victim_idx = if claimer == net.publics[1] { 1 } else { 2 };
    let survivor_idx = 3 - victim_idx;
    let mut builders = [None, Some(n1), Some(n2)];
    let mut victim = builders[victim_idx].take().unwrap();
    std::thread::sleep(Duration::from_secs(2)); // in the middle of `sleep 12`
    victim.proc.signal("-KILL");
    victim.proc.wait_exit(Duration::from_secs(10));
    wait_queue(
        &n0.http,
        "published after the kill",
        Duration::from_secs(180),
        |es| {
            es.iter()
                .any(|e| e["id"] == id.as_str() && e["status"]["state"] == "published")
        },
    );
    let b = builders_of(&n0, &id);
    assert_eq!(
        b,
        vec![net.publics[survivor_idx].clone()],
        "the survivor built it"
    );
    // The killed node comes back, catches up, and does not build it again.
    drop(victim);
    let survivor = builders[survivor_idx].as_ref().unwrap();
    let back = net.start(victim_idx, &[&n0], &[]);
    converge(&[&n0, survivor, &back], Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(builders_of(&back, &id).len(), 1);
    let st = status(&back);
    assert_eq!(st["claims"].as_array().map_or(0, |c| c.len()), 0, "{st:#}");
}

/// Two groups that cannot reach each other enqueue on both sides; a node that connects them
/// heals the partition: all converge to one digest, every entry is published exactly once.
#[test]
fn a_partition_heals_into_one_state_and_one_publish_per_entry() {
    if skip_unless_tools() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 5, 30);
    // Side A: the publisher and a builder. Side B: two builders. Nobody knows the other side.
    let a0 = net.start(0, &[], &["--no-build"]);
    let a1 = net.start(1, &[&a0], &[]);
    let b2 = net.start(2, &[], &[]);
    let b3 = net.start(3, &[&b2], &[]);
    let ea = net.enqueue(&a1, &pkg(t.path(), "side-a", "true"), &[]);
    let eb = net.enqueue(&b3, &pkg(t.path(), "side-b", "true"), &[]);
    // Side A publishes its entry; side B builds its own but has no publisher.
    wait_queue(
        &a0.http,
        "side A published",
        Duration::from_secs(120),
        |es| {
            es.iter()
                .any(|e| e["id"] == ea.as_str() && e["status"]["state"] == "published")
        },
    );
    wait_queue(&b2.http, "side B built", Duration::from_secs(120), |es| {
        es.iter()
            .any(|e| e["id"] == eb.as_str() && e["status"]["state"] == "built")
    });
    assert!(
        json(&format!("{}/api/v1/queue", a0.http))["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["id"] != eb.as_str()),
        "side A must not know side B's entry while partitioned"
    );
    assert_ne!(digest(&a0), digest(&b2));
    // Heal: a node that reaches both sides.
    let bridge = net.start(4, &[&a1, &b3], &["--no-build"]);
    let all = [&a0, &a1, &b2, &b3, &bridge];
    wait_queue(&a0.http, "both published", Duration::from_secs(120), |es| {
        [&ea, &eb].iter().all(|id| {
            es.iter()
                .any(|e| e["id"] == id.as_str() && e["status"]["state"] == "published")
        })
    });
    wait_served(&a0.http);
    converge(&all, Duration::from_secs(30));
    for id in [&ea, &eb] {
        assert_eq!(builders_of(&a0, id).len(), 1, "built once: {id}");
    }
    let st = status(&a0);
    let gens = st["generations"].as_array().unwrap();
    assert_eq!(gens[0]["packages"], 2, "{st}");
    assert_eq!(gens[0]["generation"], 2, "one publish per entry: {st}");
}

/// A hostile libp2p peer run inside the test: it speaks gossipsub and pacmesh's blob protocol
/// but follows none of the rules.
mod hostile {
    use std::collections::HashSet;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::StreamExt;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
    use libp2p::{Multiaddr, PeerId, StreamProtocol, gossipsub, identity, noise, tcp, yamux};
    use pacmesh_node::net::codec::BlobCodec;
    use pacmesh_protocol::{
        BlobAnswer, BlobResponse, BlobWant, Hash, Limits, SEGMENT_BYTES, segment_count,
        segment_value,
    };
    use tokio::sync::mpsc;

    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        gossipsub: gossipsub::Behaviour,
        blobs: request_response::Behaviour<BlobCodec>,
    }

    pub enum Cmd {
        Dial(Multiaddr),
        Publish(String, Vec<u8>),
    }

    /// What the hostile peer saw.
    #[derive(Default)]
    pub struct Seen {
        pub connected: HashSet<PeerId>,
        pub closed: HashSet<PeerId>,
        pub ranges_served: u32,
    }

    pub struct Hostile {
        pub tx: mpsc::UnboundedSender<Cmd>,
        pub seen: Arc<Mutex<Seen>>,
        pub addr: Multiaddr,
    }

    /// Starts a hostile peer subscribed to `topic` that serves `blob` with a correct outboard
    /// and corrupted bytes.
    pub fn start(rt: &tokio::runtime::Runtime, topic: String, blob: Option<Vec<u8>>) -> Hostile {
        let (tx, mut rx) = mpsc::unbounded_channel::<Cmd>();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let s2 = seen.clone();
        rt.spawn(async move {
            let key = identity::Keypair::generate_ed25519();
            let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
                .with_tokio()
                .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
                .unwrap()
                .with_behaviour(|_key| {
                    // Speaks the mesh's gossip (anonymous messages), so that what it sends
                        // reaches the nodes' own validation.
                    let cfg = gossipsub::ConfigBuilder::default()
                        .validation_mode(gossipsub::ValidationMode::Anonymous)
                        .message_id_fn(|m: &gossipsub::Message| {
                            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                        })
                        .max_transmit_size(1 << 20)
                        .build()
                        .unwrap();
                    Behaviour {
                        gossipsub: gossipsub::Behaviour::new(
                            gossipsub::MessageAuthenticity::Anonymous,
                            cfg,
                        )
                        .unwrap(),
                        blobs: request_response::Behaviour::with_codec(
                            BlobCodec::new(Limits::default()),
                            [(
                                StreamProtocol::new(pacmesh_protocol::BLOBS_PROTOCOL),
                                ProtocolSupport::Full,
                            )],
                            request_response::Config::default(),
                        ),
                    }
                })
                .unwrap()
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
                .build();
            swarm
                .behaviour_mut()
                .gossipsub
                .subscribe(&gossipsub::IdentTopic::new(topic))
                .unwrap();
            swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
            let hash = blob.as_ref().map(Hash::new);
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
                        SwarmEvent::Behaviour(BehaviourEvent::Blobs(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. }, ..
                        })) => {
                            let answer = match (&blob, hash) {
                                (Some(b), Some(h)) if h == request.hash => match request.want {
                                    BlobWant::Outboard => {
                                        let size = b.len() as u64;
                                        let segments = (0..segment_count(size))
                                            .map(|i| {
                                                let s = (i * SEGMENT_BYTES) as usize;
                                                let e = (s + SEGMENT_BYTES as usize).min(b.len());
                                                segment_value(size, i, &b[s..e])
                                            })
                                            .collect();
                                        BlobAnswer::Outboard { size, segments }
                                    }
                                    BlobWant::Range { offset, len } => {
                                        s2.lock().unwrap().ranges_served += 1;
                                        let s = offset as usize;
                                        let e = (s + len as usize).min(b.len());
                                        let mut bytes = b[s..e].to_vec();
                                        bytes[0] ^= 0xff; // the lie
                                        BlobAnswer::Data { bytes }
                                    }
                                    // The lie again: "I keep it", with a made-up proof.
                                    BlobWant::Have { challenge } => BlobAnswer::Have {
                                        size: b.len() as u64,
                                        keeps: true,
                                        proof: challenge,
                                    },
                                },
                                _ => BlobAnswer::NotFound,
                            };
                            let _ = swarm.behaviour_mut().blobs.send_response(
                                channel,
                                BlobResponse { version: 1, answer },
                            );
                        }
                        _ => {}
                    },
                    Some(cmd) = rx.recv() => match cmd {
                        Cmd::Dial(a) => { let _ = swarm.dial(a); }
                        Cmd::Publish(topic, data) => {
                            let _ = swarm
                                .behaviour_mut()
                                .gossipsub
                                .publish(gossipsub::IdentTopic::new(topic), data);
                        }
                    },
                }
            }
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Hostile { tx, seen, addr }
    }
}

fn peer_id_of(p2p: &str) -> libp2p::PeerId {
    p2p.rsplit('/').next().unwrap().parse().unwrap()
}

/// A peer that gossips events signed by a non-maintainer and oversized junk is refused and
/// disconnected; a peer that serves corrupted blob bytes is caught on the first bad segment,
/// disconnected, and the blob is fetched from an honest peer; honest work completes.
#[test]
fn hostile_peers_are_refused_and_disconnected_and_honest_work_completes() {
    if skip_unless_tools() {
        return;
    }
    use pacmesh_protocol::{Event, EventBody, QueueEntry, Signed, SigningKey, Source, Timestamp};

    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 2, 30);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = json_root(&net);
    let topic = pacmesh_protocol::events_topic(&root);

    // A package whose snapshot spans three 4 MiB segments (incompressible filler).
    let dir = pkg(t.path(), "mesh-big", "true");
    let mut filler = vec![0u8; 9 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in filler.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.join("filler.bin"), &filler).unwrap();
    let snapshot = pacmesh_node::source::snapshot_dir(&dir).unwrap();
    assert!(snapshot.len() > 8 << 20);

    let liar = hostile::start(&rt, topic.clone(), Some(snapshot));
    let spammer = hostile::start(&rt, topic.clone(), None);
    // The builder knows the liar from the start; the publisher (which will hold the snapshot)
    // connects to the builder afterwards.
    let n1 = net.start(1, &[], &["--bootstrap", &liar.addr.to_string()]);
    let n1_id = peer_id_of(&n1.p2p);
    let n0 = net.start(0, &[&n1], &["--no-build"]);
    spammer
        .tx
        .send(hostile::Cmd::Dial(n1.p2p.parse().unwrap()))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(liar.seen.lock().unwrap().connected.contains(&n1_id)
        && spammer.seen.lock().unwrap().connected.contains(&n1_id))
    {
        assert!(Instant::now() < deadline, "hostile peers never connected");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // gossipsub subscriptions and mesh

    // 1. Events signed by a stranger, and junk bigger than any event.
    let stranger = SigningKey::from_bytes(&[77; 32]);
    let mut prev = None;
    for seq in 1..=6u64 {
        let q = QueueEntry::new(
            pacmesh_protocol::Name::new("test").unwrap(),
            Source::Aur {
                pkgbase: pacmesh_protocol::Name::new(format!("evil{seq}")).unwrap(),
            },
        );
        let ev = Event::new(
            (&stranger).into(),
            seq,
            prev,
            Timestamp::now(),
            EventBody::Enqueue(q),
        );
        let signed = Signed::sign(&stranger, &ev).unwrap();
        prev = Some(signed.id());
        let bytes = signed.to_bytes();
        spammer
            .tx
            .send(hostile::Cmd::Publish(topic.clone(), bytes))
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    spammer
        .tx
        .send(hostile::Cmd::Publish(topic.clone(), vec![0xa5; 512 << 10]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spammer.seen.lock().unwrap().closed.contains(&n1_id) {
        assert!(
            Instant::now() < deadline,
            "the spammer was not disconnected: {:#}",
            status(&n1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status(&n1);
    assert!(
        st["events"]["rejected"]["not_allowed"]
            .as_u64()
            .unwrap_or(0)
            >= 5,
        "{st:#}"
    );
    // The rejections are counted in the node's metrics, next to libp2p's own.
    let (code, body) = http_get(&format!("{}/metrics", n1.http));
    assert_eq!(code, 200);
    let metrics = String::from_utf8(body).unwrap();
    let rejected: f64 = metrics
        .lines()
        .find(|l| {
            l.starts_with("pacmesh_gossip_messages_total{")
                && l.contains("result=\"rejected\"")
                && l.contains("reason=\"not_allowed\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no rejected gossip counter: {metrics}"));
    assert!(rejected >= 5.0, "{rejected}");
    assert!(metrics.contains("pacmesh_peers_connected"), "{metrics}");
    assert!(
        metrics.contains("libp2p_gossipsub"),
        "libp2p's metrics are exported"
    );
    if have("promtool") {
        let m = t.path().join("metrics.txt");
        std::fs::write(&m, &metrics).unwrap();
        let o = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("promtool check metrics < {}", m.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "promtool: {}", show(&o));
    }
    // And it is refused when it comes back.
    spammer
        .tx
        .send(hostile::Cmd::Dial(n1.p2p.parse().unwrap()))
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let q = json(&format!("{}/api/v1/queue", n1.http));
    assert!(q["entries"].as_array().unwrap().is_empty(), "{q:#}");

    // 2. The liar's bytes never make it in: the builder drops it and builds from the honest copy.
    let id = net.enqueue(&n0, &dir, &[]);
    wait_queue(
        &n0.http,
        "published despite the liar",
        Duration::from_secs(180),
        |es| {
            es.iter()
                .any(|e| e["id"] == id.as_str() && e["status"]["state"] == "published")
        },
    );
    let seen = liar.seen.lock().unwrap();
    assert!(seen.ranges_served >= 1, "the liar was asked for a segment");
    assert!(seen.closed.contains(&n1_id), "the liar was disconnected");
    drop(seen);
    assert_eq!(builders_of(&n0, &id), vec![net.publics[1].clone()]);
}

fn json_root(net: &Net) -> pacmesh_protocol::PublicKey {
    public_of(&net.dir.join("keys/root.key")).parse().unwrap()
}

/// A node that is reachable only through a relay (it reserves a circuit on a relay server) is
/// reached by a node that knows nothing but its circuit address, and the queue flows to it.
#[test]
fn a_node_is_reachable_through_a_relay_circuit() {
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 3, 30);
    let relay = net.start_with(0, &[], &["--no-build"], "relay_server = true");
    let nat = net.start_with(
        1,
        &[],
        &["--no-build"],
        &format!("relays = [\"{}\"]", relay.p2p),
    );
    let circuit = nat.proc.listening("p2p-circuit", Duration::from_secs(30));
    assert!(circuit.contains(&relay.p2p), "{circuit}");
    let far = net.start(2, &[], &["--no-build", "--bootstrap", &circuit]);
    let dir = pkg(t.path(), "relayed", "true");
    let id = net.enqueue(&nat, &dir, &[]);
    wait_queue(
        &far.http,
        "the entry reached the far node",
        Duration::from_secs(30),
        |es| es.iter().any(|e| e["id"] == id.as_str()),
    );
    converge(&[&relay, &nat, &far], Duration::from_secs(30));
    // On loopback the far node also gets a direct connection to the NAT'd one (identify,
    // hole punching); then one of the two closes the relayed connection (counted in its
    // metrics) and the peer is not marked `relayed`, so blobs may be asked of it (a
    // relayed-only peer never is).
    let nat_id = peer_id_of(&nat.p2p).to_string();
    let closed = |n: &Node| {
        let (_, metrics) = http_get(&format!("{}/metrics", n.http));
        String::from_utf8_lossy(&metrics)
            .lines()
            .filter_map(|l| l.strip_prefix("pacmesh_relayed_connections_closed_total "))
            .filter_map(|v| v.trim().parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(&far);
        let p = st["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["peer_id"] == nat_id.as_str()).cloned());
        let circuit_closed = closed(&far) + closed(&nat) >= 1.0;
        if let Some(p) = &p
            && p["connected"] == true
            && p["relayed"] == false
            && circuit_closed
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the NAT'd node is still reached through the relay (closed circuit connection \
             recorded: {circuit_closed}): {p:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Periodic announcements are far apart (a minute here), yet a node that joins hears its
/// peer's capabilities within seconds, and the peer hears the joiner's: a new subscriber to the
/// announcements makes a node announce at its next capability check (within a second).
#[test]
fn a_joining_node_hears_announcements_without_waiting_for_the_period() {
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 2, 30);
    let config = t.path().join("slow.toml");
    std::fs::write(
        &config,
        "[mesh]\nannounce_interval_ms = 60000\nsync_interval_ms = 1000\n",
    )
    .unwrap();
    let a = net.start_config(0, &[], &["--no-build"], &config);
    // Past a's first periodic announcement, if its random phase put one this early.
    std::thread::sleep(Duration::from_secs(2));
    let b = net.start_config(1, &[&a], &["--no-build"], &config);
    let t0 = Instant::now();
    let knows = |n: &Node, other: &str| {
        status(n)["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["node"] == other && p["live"] == true))
    };
    while !(knows(&a, &net.publics[1]) && knows(&b, &net.publics[0])) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "announcements not exchanged within 20 s: a {:#}, b {:#}",
            status(&a)["peers"],
            status(&b)["peers"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A build running on one node is followed live from another: the publisher's `/logs/ENTRY`
/// relays the builder's lines over the mesh while the build still runs.
#[test]
fn a_live_log_is_followed_from_another_node() {
    if skip_unless_tools() {
        return;
    }
    use std::io::{BufRead, BufReader, Write};
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 2, 30);
    let n0 = net.start(0, &[], &["--no-build"]);
    let _builder = net.start(1, &[&n0], &[]);
    let id = net.enqueue(
        &n0,
        &pkg(
            t.path(),
            "mesh-ticks",
            "for i in 1 2 3 4 5 6 7 8; do echo \"tick $i $(date +%s%3N)\"; sleep 1; done",
        ),
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&n0)["claims"]
        .as_array()
        .is_none_or(|c| c.is_empty())
    {
        assert!(Instant::now() < deadline, "never claimed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let addr = n0.http.trim_start_matches("http://").to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        sock,
        "GET /logs/{id}?format=text HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut lines = BufReader::new(sock).lines();
    let mut seen = Vec::new();
    let mut lag: Vec<i64> = Vec::new();
    let t0 = Instant::now();
    while let Some(Ok(l)) = lines.next() {
        if l.contains("tick ") {
            // How late the line reached a reader of the other node: the line carries the time
            // it was printed (one machine, one clock); the relay polls every 250 ms.
            if let Some(printed) = l
                .split_whitespace()
                .last()
                .and_then(|x| x.parse::<i64>().ok())
            {
                lag.push(now_ms() - printed);
            }
            seen.push((t0.elapsed(), l.clone()));
            if seen.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(seen.len(), 3, "relayed lines: {seen:?}");
    eprintln!("live log lag across nodes (ms): {lag:?}");
    // The first line may come from the backlog; the later ones are live.
    assert!(lag.len() == 3 && lag[2] < 2000, "lag {lag:?}");
    // The lines arrive while the build runs on node 1, about one a second.
    let q = json(&format!("{}/api/v1/entries/{id}", n0.http));
    assert_eq!(q["status"]["state"], "claimed", "{q:#}");
    assert!(
        seen[2].0 - seen[1].0 > Duration::from_millis(500),
        "{seen:?}"
    );
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Builder retention (`[mesh] replicas = 2`): a builder that does not publish keeps its own
/// output while only one peer (the publisher) keeps it, and drops an artifact from its content
/// store once a second peer fetched it and proved it holds the bytes; its build log, kept by the
/// publisher alone, stays. The publisher keeps everything.
#[test]
fn a_builder_keeps_its_output_until_two_peers_keep_it() {
    if skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let net = Net::new(t.path(), 3, 30);
    let n0 = net.start(0, &[], &["--no-build"]);
    let n1 = net.start_with(1, &[&n0], &[], "replicas = 2\nretention_interval_ms = 300");
    let n2 = net.start(2, &[&n0, &n1], &["--no-build"]);
    let nodes = [&n0, &n1, &n2];
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes.iter().any(|n| {
        status(n)["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|x| x["live"] == true).count())
            < 2
    }) {
        assert!(
            Instant::now() < deadline,
            "announcements: {:#}",
            status(&n1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let id = net.enqueue(&n0, &pkg(t.path(), "mesh-kept", "true"), &[]);
    wait_queue(&n0.http, "published", Duration::from_secs(180), |es| {
        es.iter()
            .any(|e| e["id"] == id.as_str() && e["status"]["state"] == "published")
    });
    let detail = json(&format!("{}/api/v1/entries/{id}", n0.http));
    let report = &detail["reports"][0];
    assert_eq!(report["builder"], net.publics[1].as_str(), "{detail:#}");
    let artifact = report["artifacts"][0]["blake3"]
        .as_str()
        .unwrap()
        .to_string();
    let log = report["log"].as_str().unwrap().to_string();
    let holds = |n: &Node, h: &str| http_get(&format!("{}/api/v1/blobs/{h}", n.http)).0 == 200;
    assert!(
        holds(&n0, &artifact) && holds(&n0, &log),
        "the publisher has both"
    );
    // Only the publisher keeps them: several retention rounds later the builder still has both.
    std::thread::sleep(Duration::from_secs(3));
    assert!(holds(&n1, &artifact), "one replica is not enough");
    assert!(holds(&n1, &log));
    assert!(!holds(&n2, &artifact));
    // A second peer fetches the artifact (not the log).
    let (code, v) = http_post(&format!("{}/api/v1/blobs/{artifact}/fetch", n2.http), b"");
    assert_eq!(code, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while holds(&n1, &artifact) {
        assert!(
            Instant::now() < deadline,
            "the builder still holds its artifact with two replicas"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = String::from_utf8(http_get(&format!("{}/metrics", n1.http)).1).unwrap();
    assert!(
        metrics.contains("pacmesh_retention_released_total 1"),
        "{metrics}"
    );
    // The log has one replica: kept. The keepers keep theirs.
    std::thread::sleep(Duration::from_secs(2));
    assert!(holds(&n1, &log), "the log has only one replica");
    assert!(holds(&n0, &artifact) && holds(&n0, &log) && holds(&n2, &artifact));
}
