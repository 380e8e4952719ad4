//! Node benchmark: resident memory idle and with 5000 events, start-up time with 5000 events,
//! and the time from `queue add` to "claimed" on one node.
//!
//! `cargo bench -p pacmesh-node --bench node_bench` (set `PACMESH_BENCH_EVENTS` to change 5000).
//! Runs `pacmesh node` as a child process on 127.0.0.1 and reads its RSS from /proc.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pacmesh_node::keys::NodeKey;
use pacmesh_protocol::{
    Event, EventBody, Hash, Name, PublicKey, QueueEntry, Signed, Source, Timestamp,
};

const BIN: &str = env!("CARGO_BIN_EXE_pacmesh");

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn pacmesh(args: &[&str]) -> String {
    let o = Command::new(BIN).args(args).output().expect("run pacmesh");
    assert!(
        o.status.success(),
        "pacmesh {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Starts a node and returns it with its base URL and the time until it listened.
fn start(dir: &Path, policy: &Path, build: bool) -> (Child, String, Duration) {
    let data = dir.join("data");
    let key = dir.join("node.key");
    let mut args = vec![
        "node",
        "--policy",
        policy.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--no-mdns",
    ];
    if !build {
        args.push("--no-build");
    }
    let t0 = Instant::now();
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut base = String::new();
    for line in out.lines().map_while(Result::ok) {
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.trim().to_string();
            break;
        }
    }
    (child, base, t0.elapsed())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn main() {
    let n: u64 = std::env::var("PACMESH_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    for k in ["root.key", "maint.key", "node.key"] {
        pacmesh(&["key", "gen", "--out", dir.join(k).to_str().unwrap()]);
    }
    let maint = NodeKey::load(&dir.join("maint.key")).unwrap();
    let policy = dir.join("policy.cbor");
    pacmesh(&[
        "mesh",
        "init",
        "--key",
        dir.join("root.key").to_str().unwrap(),
        "--repo",
        "bench",
        "--arch",
        "x86_64",
        "--maintainer",
        &maint.public_hex(),
        "--out",
        policy.to_str().unwrap(),
    ]);

    // Idle node.
    let (mut node, base, _) = start(dir, &policy, false);
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(node.id());

    // n Enqueue events, signed here and posted one by one.
    let author = PublicKey::from(maint.signing_key());
    let a = agent();
    let mut prev: Option<Hash> = None;
    let t0 = Instant::now();
    for seq in 1..=n {
        let entry = QueueEntry::new(
            Name::new("bench").unwrap(),
            Source::Git {
                url: format!("https://example.invalid/pkg-{seq}.git"),
                rev: None,
                subdir: None,
            },
        );
        let ev = Event::new(
            author,
            seq,
            prev,
            Timestamp::now(),
            EventBody::Enqueue(entry),
        );
        let signed = Signed::sign(maint.signing_key(), &ev).unwrap();
        prev = Some(signed.id());
        let r = a
            .post(&format!("{base}/api/v1/events"))
            .send(&signed.to_bytes()[..])
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let ingest_time = t0.elapsed();
    let loaded = rss_kib(node.id());
    let _ = node.kill();
    let _ = node.wait();

    // Restart with n events in the store.
    let (mut node, _base, startup) = start(dir, &policy, false);
    std::thread::sleep(Duration::from_millis(300));
    let restarted = rss_kib(node.id());
    let _ = node.kill();
    let _ = node.wait();

    // queue add -> claimed, on a fresh node that builds.
    let t2 = tempfile::tempdir().unwrap();
    for k in ["root.key", "maint.key", "node.key"] {
        std::fs::copy(dir.join(k), t2.path().join(k)).unwrap();
    }
    let (mut node, base, _) = start(t2.path(), &policy, true);
    let pkg = t2.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("PKGBUILD"),
        "pkgname=bench-pkg\npkgver=1\npkgrel=1\narch=(any)\npackage() { :; }\n",
    )
    .unwrap();
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let out = pacmesh(&[
            "queue",
            "add",
            "--key",
            t2.path().join("maint.key").to_str().unwrap(),
            "--node",
            &base,
            "--dir",
            pkg.to_str().unwrap(),
        ]);
        let id = out.trim().to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut r = a
                .get(&format!("{base}/api/v1/entries/{id}"))
                .call()
                .unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
            if let Some(c) = v["claims"].as_array().and_then(|c| c.first()) {
                let claimed = c["time"].as_u64().unwrap();
                let enq = v["enqueued_at"].as_u64().unwrap();
                latencies.push(claimed.saturating_sub(enq));
                break;
            }
            assert!(Instant::now() < deadline, "not claimed");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the build finish before the next one.
        std::thread::sleep(Duration::from_secs(4));
    }
    let _ = node.kill();
    let _ = node.wait();
    latencies.sort();

    println!("node benchmark ({n} events)");
    println!("| measure | pacmesh | target |");
    println!("| --- | --- | --- |");
    println!("| idle RSS | {:.1} MB | < 40 MB |", idle as f64 / 1024.0);
    println!(
        "| RSS after ingesting {n} events over HTTP | {:.1} MB | < 150 MB |",
        loaded as f64 / 1024.0
    );
    println!(
        "| RSS after restart with {n} events | {:.1} MB | < 150 MB |",
        restarted as f64 / 1024.0
    );
    println!(
        "| start-up with {n} events (spawn to HTTP listening) | {:.0} ms | < 1000 ms |",
        startup.as_secs_f64() * 1000.0
    );
    println!(
        "| ingest {n} events over HTTP, one request each | {:.2} s ({:.2} ms/event) | - |",
        ingest_time.as_secs_f64(),
        ingest_time.as_secs_f64() * 1000.0 / n as f64
    );
    println!(
        "| queue add -> claimed (enqueue event time to claim event time; median of {}, max) | {} ms, {} ms | < 100 ms |",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies.last().unwrap()
    );
}
