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
        let data = self.dir.join(format!("data{i}"));
        let mut args: Vec<String> = [
            "node",
            "--config",
            s(&self.config),
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
        let p2p = proc
            .wait_line("p2p listening on ", Duration::from_secs(60))
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        let http = proc
            .wait_line("http listening on ", Duration::from_secs(60))
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
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
