//! Two nodes behind real NATs meet through a relay and punch a direct connection.
//!
//! The test builds its own small internet out of network namespaces (root, `ip` and `nft`
//! needed; skipped with a notice otherwise):
//!
//! ```text
//!   a (192.168.1.2) ── ra [masquerade] 10.1.0.2 ──┐
//!                                                inet (10.1.0.1, 10.2.0.1): relay node
//!   b (192.168.2.2) ── rb [masquerade] 10.2.0.2 ──┘
//! ```
//!
//! `a` and `b` are `pacmesh node` processes, each behind its own router namespace doing
//! source NAT (nftables `masquerade`) and dropping unsolicited packets from outside, as home
//! routers do, so neither can be dialled from outside. The relay runs
//! in the middle namespace with `relay_server = true`. `a` reserves a circuit on it; `b` dials
//! `a` through the circuit; DCUtR then has both dial each other's observed (NAT'd) address at
//! once. The test asserts that `a` and `b` end up with a direct connection (the relayed one
//! closed and counted) and that a 12 MiB blob only `b` holds reaches `a` over it (blobs never
//! go through a relay, so the fetch succeeds only over the punched connection).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "common/node_proc.rs"]
mod node_proc;
use node_proc::*;
use serde_json::Value;

/// The namespaces of one test run, deleted on drop (after the nodes in them are killed).
struct Netns {
    prefix: String,
}

impl Netns {
    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in ["a", "b", "ra", "rb", "inet"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name(n)])
                .status();
        }
    }
}

fn sh(cmd: &str) -> Result<(), String> {
    let o = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| e.to_string())?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd}: {}", String::from_utf8_lossy(&o.stderr)))
    }
}

/// Builds the topology of the module docs; `Err` when this machine does not allow it.
fn topology() -> Result<Netns, String> {
    let ns = Netns {
        prefix: format!("pm{}", std::process::id()),
    };
    let (a, b, ra, rb, inet) = (
        ns.name("a"),
        ns.name("b"),
        ns.name("ra"),
        ns.name("rb"),
        ns.name("inet"),
    );
    for n in [&a, &b, &ra, &rb, &inet] {
        sh(&format!("ip netns add {n}"))?;
        sh(&format!("ip -n {n} link set lo up"))?;
    }
    let x = |n: &str, cmd: &str| sh(&format!("ip netns exec {n} {cmd}"));
    // A veth pair `l`/`r` with `l` in namespace `ln` and `r` in `rn`.
    let link = |ln: &str, l: &str, laddr: &str, rn: &str, r: &str, raddr: &str| {
        sh(&format!(
            "ip link add {l}{p} type veth peer name {r}{p} && ip link set {l}{p} netns {ln} name {l} && ip link set {r}{p} netns {rn} name {r}",
            p = ns.prefix
        ))?;
        x(ln, &format!("ip addr add {laddr} dev {l}"))?;
        x(rn, &format!("ip addr add {raddr} dev {r}"))?;
        x(ln, &format!("ip link set {l} up"))?;
        x(rn, &format!("ip link set {r} up"))
    };
    link(&inet, "ia", "10.1.0.1/24", &ra, "wan", "10.1.0.2/24")?;
    link(&inet, "ib", "10.2.0.1/24", &rb, "wan", "10.2.0.2/24")?;
    link(&ra, "lan", "192.168.1.1/24", &a, "eth", "192.168.1.2/24")?;
    link(&rb, "lan", "192.168.2.1/24", &b, "eth", "192.168.2.2/24")?;
    x(&a, "ip route add default via 192.168.1.1")?;
    x(&b, "ip route add default via 192.168.2.1")?;
    x(&ra, "ip route add default via 10.1.0.1")?;
    x(&rb, "ip route add default via 10.2.0.1")?;
    for n in [&inet, &ra, &rb] {
        x(n, "sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'")?;
    }
    for r in [&ra, &rb] {
        x(r, "nft add table ip nat")?;
        x(
            r,
            "nft add chain ip nat post '{ type nat hook postrouting priority 100; }'",
        )?;
        x(r, "nft add rule ip nat post oifname wan masquerade")?;
        // Like a home router: what arrives from outside for the router itself (not an
        // answer to a connection from inside, which conntrack forwards) is dropped silently,
        // not refused, so a hole-punching SYN that arrives before ours went out is lost (and
        // retransmitted) rather than reset.
        x(r, "nft add table ip filter")?;
        x(
            r,
            "nft add chain ip filter input '{ type filter hook input priority 0; policy accept; }'",
        )?;
        x(r, "nft add rule ip filter input iifname wan drop")?;
    }
    Ok(ns)
}

/// Runs `f` on a thread that has entered network namespace `ns` (the nodes' HTTP APIs listen
/// on their namespace's 127.0.0.1).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
            // SAFETY: setns on a valid namespace fd; it changes this thread only.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

struct Node {
    proc: Proc,
    ns: String,
    http: String,
    peer: String,
}

impl Node {
    fn get(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.http);
        in_ns(&self.ns, || json(&url))
    }

    /// This node's entry for peer `id` in its status, if it lists one.
    fn peer_entry(&self, id: &str) -> Option<Value> {
        self.get("/api/v1/status")["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["peer_id"] == id).cloned())
    }

    fn relayed_closed(&self) -> f64 {
        self.metric("pacmesh_relayed_connections_closed_total")
    }

    /// A metric of the node's `/metrics`; panics when it is not there (a renamed metric must
    /// not read as 0).
    fn metric(&self, name: &str) -> f64 {
        let url = format!("{}/metrics", self.http);
        let (_, m) = in_ns(&self.ns, || http_get(&url));
        let m = String::from_utf8_lossy(&m);
        m.lines()
            .find_map(|l| {
                l.strip_prefix(name)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {name} in the metrics of {}:\n{m}", self.ns))
    }
}

fn peer_id_of(key: &Path) -> String {
    pacmesh_ok(&["key", "show", "--key", s(key)])
        .lines()
        .find_map(|l| l.strip_prefix("node id:"))
        .unwrap_or_else(|| panic!("no peer id printed for {key:?}"))
        .trim()
        .to_string()
}

#[test]
fn nodes_behind_two_nats_punch_a_direct_connection_through_a_relay() {
    if skip(&["ip", "nft"], false) {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let ns = match topology() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: cannot build the NAT topology here: {e}");
            return;
        }
    };
    let t = tempfile::tempdir().unwrap();
    // Keys and a policy; the relay runs with the policy's publisher key, a and b with keys of
    // their own (they need no role to connect and exchange blobs).
    let mesh = Mesh::new(t.path());
    let key = |name: &str| -> PathBuf {
        let p = t.path().join(name);
        pacmesh_ok(&["key", "gen", "--out", s(&p)]);
        p
    };
    let keys = [mesh.node_key.clone(), key("a.key"), key("b.key")];
    let policy = mesh.policy.clone();
    let ids: Vec<String> = keys.iter().map(|k| peer_id_of(k)).collect();
    // A blob only b holds (three and a bit segments), placed in b's store before it starts.
    let blob: Vec<u8> = (0..12 * 1024 * 1024 + 5)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let hash = blake3::hash(&blob).to_hex().to_string();
    let dir = t.path().join("data-b/blobs/blobs").join(&hash[..2]);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hash), &blob).unwrap();

    let start = |i: usize, n: &str, listen: &str, mesh: &str, extra: &[&str]| -> Node {
        let config = t.path().join(format!("{n}.toml"));
        std::fs::write(
            &config,
            format!("[mesh]\nannounce_interval_ms = 1000\nsync_interval_ms = 1000\n{mesh}\n"),
        )
        .unwrap();
        let data = t.path().join(format!("data-{n}"));
        let netns = ns.name(n);
        // PACMESH_TEST_LOG: the nodes' log filter, for diagnosis.
        let log = format!(
            "RUST_LOG={}",
            std::env::var("PACMESH_TEST_LOG").unwrap_or_else(|_| "info".into())
        );
        let mut args = vec![
            "netns",
            "exec",
            &netns,
            "env",
            &log,
            BIN,
            "node",
            "--config",
            s(&config),
            "--policy",
            s(&policy),
            "--key",
            s(&keys[i]),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--listen",
            listen,
            "--no-mdns",
            "--no-build",
        ];
        args.extend(extra);
        let proc = Proc::spawn_cmd("ip", &args);
        let http = proc.listening("http listening on ", Duration::from_secs(60));
        Node {
            proc,
            ns: netns,
            http,
            peer: ids[i].clone(),
        }
    };
    // Kept to the end: the relay node runs as long as this binding lives.
    let _relay = start(
        0,
        "inet",
        "/ip4/0.0.0.0/tcp/4001",
        "relay_server = true",
        &[],
    );
    let relay_at = |net: &str| format!("/ip4/{net}/tcp/4001/p2p/{}", ids[0]);
    let a = start(
        1,
        "a",
        "/ip4/0.0.0.0/tcp/4002",
        &format!("relays = [\"{}\"]", relay_at("10.1.0.1")),
        &[],
    );
    a.proc.wait_line("p2p-circuit", Duration::from_secs(30));
    // b knows a only by its circuit address on the relay (as seen from b's side).
    let circuit = format!("{}/p2p-circuit/p2p/{}", relay_at("10.2.0.1"), ids[1]);
    let b = start(
        2,
        "b",
        "/ip4/0.0.0.0/tcp/4003",
        "",
        &[
            "--bootstrap",
            &relay_at("10.2.0.1"),
            "--bootstrap",
            &circuit,
        ],
    );

    // A direct connection between a and b: only hole punching can make one here.
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(60);
    loop {
        let pa = a.peer_entry(&b.peer);
        let pb = b.peer_entry(&a.peer);
        let direct = |p: &Option<Value>| {
            p.as_ref()
                .is_some_and(|p| p["connected"] == true && p["relayed"] == false)
        };
        if direct(&pa) && direct(&pb) && a.relayed_closed() + b.relayed_closed() >= 1.0 {
            eprintln!("direct connection after {:.1?}", t0.elapsed());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no direct connection between the NAT'd nodes within 60 s:\n a sees b: {pa:#?}\n b sees a: {pb:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // a fetches b's blob: over the punched connection (a relayed-only peer is never asked).
    let url = format!("{}/api/v1/blobs/{hash}/fetch", a.http);
    let (code, answer) = in_ns(&a.ns, || http_post(&url, b""));
    assert_eq!(code, 200, "{answer:#}");
    assert_eq!(
        answer["size"].as_u64(),
        Some(blob.len() as u64),
        "{answer:#}"
    );
    let stored = t
        .path()
        .join("data-a/blobs/blobs")
        .join(&hash[..2])
        .join(&hash);
    let got = std::fs::read(&stored).unwrap_or_else(|e| panic!("{stored:?}: {e}"));
    assert!(got == blob, "a's copy differs from b's");
    // b announced its blob listener, but behind its router nobody can reach it: a tried it
    // (at b's router's address, the address of the punched connection), gave up after the
    // connect timeout, and took every byte over the punched libp2p connection.
    assert_eq!(a.metric("pacmesh_replicated_http_bytes_total"), 0.0);
    assert!(a.metric("pacmesh_blob_http_fallbacks_total") >= 1.0);
    assert!(a.metric("pacmesh_replicated_bytes_total") >= blob.len() as f64);
}
