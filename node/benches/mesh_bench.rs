//! Mesh benchmarks (issue 5, "Performance"): real `pacmesh node` processes on 127.0.0.1, each
//! with its own data dir and key, default configuration (`[mesh]` intervals and claim step as
//! shipped), mDNS off, bootstrap addresses given. Every figure is printed beside a reference
//! measured in the same run.
//!
//! ```text
//! cargo bench -p pacmesh-node --bench mesh_bench                  # every scenario
//! cargo bench -p pacmesh-node --bench mesh_bench -- propagation   # or memory, replication, duplicates
//! ```
//!
//! - **propagation**: a maintainer-signed `enqueue` POSTed to node 0; the time until every
//!   node has accepted (verified, stored durably, applied) it. "Accepted" is read from each
//!   node's own log line (`pacmesh_node::core` at debug level, timestamped by the node with
//!   microseconds), so no polling sits in the measurement. Reference: a bare gossipsub mesh
//!   of the same size and the same dial graph (TCP + noise + yamux on 127.0.0.1, default
//!   gossipsub config, no validation) in this process, publishing raw bytes of the same length.
//! - **memory**: VmRSS of every node of an idle 10-node mesh (builders and a publisher).
//!   Reference: a lone node with no peers.
//! - **replication**: a blob fetched by a fresh node with `POST /api/v1/blobs/HASH/fetch`
//!   (`pacmesh blob fetch`), from one provider and from four, once over the providers' blob
//!   listeners (the default) and once with `--blob-http off` (libp2p only, noise + yamux);
//!   the share of bytes that came over HTTP is checked for each. References: curl from
//!   `python3 -m http.server` (plain file) and from the node's own blob GET.
//! - **duplicates**: entries (tiny PKGBUILD folders, real makepkg in bubblewrap) enqueued at
//!   once over equal builders: how many were built twice, and the makespan against the sum of
//!   build times divided by the number of builders.
//!
//! Environment: `PACMESH_BENCH_ENQUEUES` (200), `PACMESH_BENCH_SIZES` ("10,50"),
//! `PACMESH_BENCH_BLOB_MIB` (1024), `PACMESH_BENCH_FETCH_RUNS` (2),
//! `PACMESH_BENCH_DUP_ENTRIES` (200), `PACMESH_BENCH_DUP_BUILDERS` (4); for diagnostics
//! `PACMESH_BENCH_LOG` (the nodes' `RUST_LOG`) and `PACMESH_BENCH_ECHO` (print their logs);
//! `PACMESH_BENCH_TRANSPORT=quic` (nodes listen on QUIC instead of TCP);
//! `PACMESH_BENCH_BIN` (the `pacmesh` binary the nodes run, for A/B runs of two builds);
//! `PACMESH_BENCH_HOLD=SECS` (propagation: print the nodes' pids and pause before measuring, to
//! profile an idle mesh); `PACMESH_BENCH_THREADS` (propagation: the nodes' `--threads`, 1; or
//! `default`, one per core).

#[path = "../tests/common/procs.rs"]
mod procs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pacmesh_node::keys::NodeKey;
use pacmesh_protocol::{
    Event, EventBody, Hash, Name, PublicKey, QueueEntry, Signed, Source, Timestamp,
};
use serde_json::Value;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

// ---------------------------------------------------------------------------------------------
// Node processes and their logs

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The UTC timestamp tracing-subscriber puts first on a line (`2026-11-21T09:33:00.123456Z`).
fn parse_ts(line: &str) -> Option<f64> {
    let t = line.split_whitespace().next()?;
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, mo, da) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut h = time.split(':');
    let (hh, mm) = (
        h.next()?.parse::<i64>().ok()?,
        h.next()?.parse::<i64>().ok()?,
    );
    let ss = h.next()?.parse::<f64>().ok()?;
    Some((days_from_civil(y, mo, da) * 86400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for c in it.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A log line of a node, with the node's own timestamp.
struct LogLine {
    at: f64,
    text: String,
}

/// A `pacmesh node` child process; killed on drop.
struct NodeProc {
    child: Child,
    http: String,
    p2p: String,
    logs: mpsc::Receiver<LogLine>,
}

impl NodeProc {
    fn spawn(args: &[String], rust_log: &str) -> NodeProc {
        // PACMESH_BENCH_LOG overrides the nodes' log filter (PACMESH_BENCH_ECHO shows it).
        let rust_log = std::env::var("PACMESH_BENCH_LOG").unwrap_or_else(|_| rust_log.into());
        // PACMESH_BENCH_BIN runs the nodes from another build (A/B comparisons of two
        // versions in alternating runs on the same machine).
        let bin = std::env::var("PACMESH_BENCH_BIN").unwrap_or_else(|_| procs::BIN.into());
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pacmesh node");
        let (out_tx, out_rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (log_tx, logs) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        let echo = std::env::var_os("PACMESH_BENCH_ECHO").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let line = strip_ansi(&line);
                if echo || line.contains(" ERROR ") {
                    eprintln!("[node] {line}");
                }
                if let Some(at) = parse_ts(&line) {
                    let _ = log_tx.send(LogLine { at, text: line });
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut http, mut p2p) = (String::new(), String::new());
        while http.is_empty() || p2p.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = out_rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("node {args:?} did not start within 120 s"));
            if let Some(a) = line.split("p2p listening on ").nth(1) {
                if p2p.is_empty() {
                    p2p = a.trim().to_string();
                }
            } else if let Some(a) = line.split("http listening on ").nth(1) {
                http = a.trim().to_string();
            }
        }
        // Keep draining stdout so that the child never blocks on it.
        std::thread::spawn(move || while out_rx.recv().is_ok() {});
        NodeProc {
            child,
            http,
            p2p,
            logs,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a log line containing every needle; returns the node's timestamp of it.
    /// Waits for a log line containing all of `needles` and returns its time; also returns the
    /// time of the first line passed on the way that contains all of `note` (if not empty).
    fn wait_log_noting(
        &self,
        needles: &[&str],
        note: &[&str],
        deadline: Instant,
    ) -> (Option<f64>, Option<f64>) {
        let mut noted = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(l) if needles.iter().all(|n| l.text.contains(n)) => return (Some(l.at), noted),
                Ok(l) => {
                    if noted.is_none()
                        && !note.is_empty()
                        && note.iter().all(|n| l.text.contains(n))
                    {
                        noted = Some(l.at);
                    }
                }
                Err(_) => return (None, noted),
            }
        }
    }

    fn status(&self) -> Value {
        procs::json(&format!("{}/api/v1/status", self.http))
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// The nodes' libp2p listen address: TCP (+ noise + yamux), or QUIC with
/// `PACMESH_BENCH_TRANSPORT=quic`.
fn listen_addr() -> &'static str {
    match std::env::var("PACMESH_BENCH_TRANSPORT").as_deref() {
        Ok("quic") => "/ip4/127.0.0.1/udp/0/quic-v1",
        _ => "/ip4/127.0.0.1/tcp/0",
    }
}

/// CPU time (user + system) a process has used so far, in ms (`/proc/PID/stat`, clock ticks
/// of 10 ms).
fn cpu_ms(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) in parentheses.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            Some(ticks * 10)
        })
        .unwrap_or(0)
}

fn cpu_all(nodes: &[NodeProc]) -> u64 {
    nodes.iter().map(|n| cpu_ms(n.pid())).sum()
}

/// Each node dials up to two earlier nodes (the previous one and a pseudo-random one), so the
/// graph is connected; the pacmesh nodes then find more peers through kademlia.
fn boot_targets(i: usize) -> Vec<usize> {
    match i {
        0 => vec![],
        1 => vec![0],
        _ => {
            let a = i - 1;
            let b = (i.wrapping_mul(2_654_435_761) >> 7) % (i - 1);
            if a == b { vec![a] } else { vec![a, b] }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys, policy, events

/// A maintainer's event log, signed here (sequence numbers from 1).
struct Maintainer {
    key: NodeKey,
    seq: u64,
    prev: Option<Hash>,
}

impl Maintainer {
    fn sign(&mut self, body: EventBody) -> (Hash, Vec<u8>) {
        self.seq += 1;
        let ev = Event::new(
            PublicKey::from(self.key.signing_key()),
            self.seq,
            self.prev,
            Timestamp::now(),
            body,
        );
        let s = Signed::sign(self.key.signing_key(), &ev).unwrap();
        let id = s.id();
        self.prev = Some(id);
        (id, s.to_bytes())
    }

    fn enqueue(&mut self, source: Source) -> (Hash, Vec<u8>) {
        self.sign(EventBody::Enqueue(QueueEntry::new(
            Name::new("bench").unwrap(),
            source,
        )))
    }
}

fn post_event(base: &str, bytes: &[u8]) {
    let (code, v) = procs::http_post(&format!("{base}/api/v1/events"), bytes);
    assert_eq!(code, 200, "event refused: {v}");
}

/// Keys and a signed policy for one benchmark mesh.
struct Mesh {
    dir: PathBuf,
    policy: PathBuf,
    keys: Vec<PathBuf>,
    maint: Maintainer,
}

impl Mesh {
    /// `n` node keys; with `publisher`, node 0's key may publish.
    fn new(dir: &Path, n: usize, publisher: bool) -> Mesh {
        let kd = dir.join("keys");
        std::fs::create_dir_all(&kd).unwrap();
        let gen_key = |name: &str| {
            let p = kd.join(name);
            let k = NodeKey::generate().unwrap();
            k.save_new(&p).unwrap();
            (p, k)
        };
        let (root, _) = gen_key("root.key");
        let (_, maint) = gen_key("maint.key");
        let keys: Vec<(PathBuf, NodeKey)> =
            (0..n).map(|i| gen_key(&format!("node{i}.key"))).collect();
        let policy = dir.join("policy.cbor");
        let mut args = vec![
            "mesh".to_string(),
            "init".into(),
            "--key".into(),
            procs::s(&root).into(),
            "--repo".into(),
            "bench".into(),
            "--arch".into(),
            pacmesh_node::config::host_arch(),
            "--maintainer".into(),
            maint.public_hex(),
            "--out".into(),
            procs::s(&policy).into(),
        ];
        if publisher {
            args.extend(["--publisher".into(), keys[0].1.public_hex()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        procs::pacmesh_ok(&argv);
        Mesh {
            dir: dir.to_path_buf(),
            policy,
            keys: keys.into_iter().map(|(p, _)| p).collect(),
            maint: Maintainer {
                key: maint,
                seq: 0,
                prev: None,
            },
        }
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("data{i}"))
    }

    /// Starts node `i` bootstrapping from `boot` (multiaddrs).
    fn start(&self, i: usize, boot: &[String], extra: &[&str], rust_log: &str) -> NodeProc {
        let mut args: Vec<String> = [
            "node",
            "--policy",
            procs::s(&self.policy),
            "--key",
            procs::s(&self.keys[i]),
            "--data-dir",
            procs::s(&self.data_dir(i)),
            "--http",
            "127.0.0.1:0",
            "--listen",
            listen_addr(),
            "--no-mdns",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        for b in boot {
            args.extend(["--bootstrap".into(), b.clone()]);
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        NodeProc::spawn(&args, rust_log)
    }

    /// Starts `n` nodes along [`boot_targets`].
    fn start_all(&self, n: usize, extra: &[&str], rust_log: &str) -> Vec<NodeProc> {
        let mut nodes: Vec<NodeProc> = Vec::new();
        for i in 0..n {
            let boot: Vec<String> = boot_targets(i)
                .into_iter()
                .map(|j| nodes[j].p2p.clone())
                .collect();
            nodes.push(self.start(i, &boot, extra, rust_log));
        }
        nodes
    }
}

/// Waits until every node has a live announcement of `want` other nodes (their gossip reaches
/// everyone). Nodes are asked in parallel and a node that has them all is not asked again:
/// asking fifty busy nodes one after the other took 5–10 s per round at start-up, which is
/// what an earlier version of this measurement mostly measured.
fn wait_announced(nodes: &[NodeProc], want: usize, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}/api/v1/status", n.http))
        .collect();
    let mut lacking: Vec<usize> = (0..nodes.len()).collect();
    let mut fewest = 0;
    loop {
        let counts: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = lacking
                .iter()
                .map(|&i| {
                    let url = &urls[i];
                    s.spawn(move || {
                        procs::json(url)["peers"]
                            .as_array()
                            .map_or(0, |p| p.iter().filter(|x| x["live"] == true).count())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        fewest = counts.iter().copied().min().unwrap_or(fewest);
        lacking = lacking
            .into_iter()
            .zip(counts)
            .filter(|(_, c)| *c < want)
            .map(|(i, _)| i)
            .collect();
        if lacking.is_empty() {
            return t0.elapsed();
        }
        eprintln!(
            "propagation: {:.1?}: {} nodes still lack some announcements (fewest known: {fewest})",
            t0.elapsed(),
            lacking.len()
        );
        assert!(
            t0.elapsed() < timeout,
            "mesh not formed within {timeout:?}: nodes {lacking:?} still lack some"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: propagation

struct Latencies {
    /// Seen by all, milliseconds.
    all: Vec<f64>,
    lost: usize,
    /// Accepted by the node it was posted to (HTTP + ingest), milliseconds (pacmesh only).
    first: Vec<f64>,
    /// Every node's own latency for every event, milliseconds (pacmesh only): its shape tells
    /// hop latency (a smooth tail) from gossipsub's lazy push (clusters a heartbeat apart).
    each: Vec<f64>,
}

/// A histogram of `v` in 50 ms buckets up to 1 s, one line.
fn histogram(v: &[f64]) -> String {
    let mut b = [0usize; 21];
    for x in v {
        b[((x / 50.0) as usize).min(20)] += 1;
    }
    b.iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| {
            if i == 20 {
                format!("≥1000:{n}")
            } else {
                format!("{}:{n}", i * 50)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn summary(l: &Latencies) -> String {
    let s = sorted(l.all.clone());
    format!(
        "{:.1} / {:.1} / {:.1} / {:.1} ms{}",
        pct(&s, 50.0),
        pct(&s, 90.0),
        pct(&s, 99.0),
        s.last().copied().unwrap_or(f64::NAN),
        if l.lost > 0 {
            format!(" ({} not seen by all within 10 s)", l.lost)
        } else {
            String::new()
        }
    )
}

/// Returns (pacmesh latencies, event length, RSS of the idle nodes after the run in KiB).
fn pacmesh_propagation(n: usize, m: usize) -> (Latencies, usize, Vec<u64>) {
    let t = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new(t.path(), n, false);
    let t0 = Instant::now();
    // Fifty nodes share two cores here: each runs one async worker thread (`threads = 1`,
    // examples/node.toml), as a node alone on its machine would not compete with forty-nine
    // others for the cores. PACMESH_BENCH_THREADS=N changes it, `default` is one per core.
    let threads = std::env::var("PACMESH_BENCH_THREADS").unwrap_or_else(|_| "1".into());
    let mut extra = vec!["--no-build"];
    if threads != "default" {
        extra.extend(["--threads", threads.as_str()]);
    }
    eprintln!("propagation: async worker threads per node: {threads}");
    let nodes = mesh.start_all(n, &extra, "warn,pacmesh_node::core=debug");
    let started = t0.elapsed();
    let formed = wait_announced(&nodes, n - 1, Duration::from_secs(300));
    eprintln!(
        "propagation: {n} nodes started in {started:.1?}, every announcement everywhere {formed:.1?} later"
    );
    // Steady state: the start-up work (first announcements and sync rounds spread over their
    // intervals, kademlia bootstrap, identify, extra work while events of the start settle)
    // is over; the measurement begins 30 s after the last node started (and at least 3 s
    // after every announcement was everywhere). At 15 s the idle CPU of 50 nodes still
    // varied from 0.6 to 1.9 cores between runs.
    let steady = t0 + started + Duration::from_secs(30);
    std::thread::sleep(
        steady
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(3)),
    );
    if let Some(hold) = std::env::var("PACMESH_BENCH_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        // For profiling an idle mesh by hand: the nodes' pids, then a pause.
        let pids: Vec<String> = nodes.iter().map(|n| n.pid().to_string()).collect();
        eprintln!("propagation: holding {hold} s; pids {}", pids.join(" "));
        std::thread::sleep(Duration::from_secs(hold));
    }
    // Idle cost of the mesh: CPU of all nodes over 5 s without events.
    let (c0, i0) = (cpu_all(&nodes), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_ms_per_s = (cpu_all(&nodes) - c0) as f64 / i0.elapsed().as_secs_f64();
    let c1 = cpu_all(&nodes);
    let run_start = Instant::now();
    let warm = 5;
    let mut all = Vec::new();
    let mut first = Vec::new();
    let mut each = Vec::new();
    let mut lost = 0;
    let mut len = 0;
    // Per event: the last node's latency, its index, when the gossip message reached it.
    let mut last: Vec<(f64, usize, Option<f64>)> = Vec::new();
    for k in 0..warm + m {
        let (id, bytes) = mesh.maint.enqueue(Source::Git {
            url: format!("https://example.invalid/bench-{k}.git"),
            rev: None,
            subdir: None,
        });
        len = bytes.len();
        let needle = format!("event={}", id.fmt_short());
        let sent = now_unix();
        post_event(&nodes[0].http, &bytes);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut worst: Option<f64> = Some(sent);
        let mut slowest: Option<(f64, usize, Option<f64>)> = None;
        for (i, node) in nodes.iter().enumerate() {
            let (seen, arrived) = node.wait_log_noting(
                &[" accepted", &needle],
                &[" gossip received", &needle],
                deadline,
            );
            if k >= warm
                && let Some(at) = seen
                && slowest.is_none_or(|(w, _, _)| at > w)
            {
                slowest = Some((at, i, arrived));
            }
            if i == 0
                && k >= warm
                && let Some(at) = seen
            {
                first.push((at - sent) * 1000.0);
            }
            if k >= warm
                && let Some(at) = seen
            {
                each.push((at - sent) * 1000.0);
            }
            worst = match (worst, seen) {
                (Some(w), Some(s)) => Some(w.max(s)),
                _ => None,
            };
        }
        if k >= warm {
            match worst {
                Some(w) => all.push((w - sent) * 1000.0),
                None => lost += 1,
            }
            // Where the last node's time went: arrival by gossip (or none: by sync), then ingest.
            if let Some((at, i, arrived)) = slowest {
                last.push((
                    (at - sent) * 1000.0,
                    i,
                    arrived.map(|a| (a - sent) * 1000.0),
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(20 + (k as u64 * 7919) % 30));
    }
    last.sort_by(|a, b| b.0.total_cmp(&a.0));
    let show: Vec<String> = last
        .iter()
        .take(5)
        .map(|(t, i, a)| match a {
            Some(a) => format!("{t:.0} ms at node {i} (gossip arrived at {a:.0} ms)"),
            None => format!("{t:.0} ms at node {i} (not by gossip)"),
        })
        .collect();
    eprintln!(
        "propagation: {n} nodes, slowest last deliveries: {}",
        show.join("; ")
    );
    let busy = (cpu_all(&nodes) - c1) as f64;
    let run_s = run_start.elapsed().as_secs_f64();
    eprintln!(
        "propagation: {n} nodes: CPU of all nodes idle {:.0} ms/s ({:.1} ms/s per node); during the run {:.0} ms/s; per event per node, beyond idle: {:.2} ms",
        idle_ms_per_s,
        idle_ms_per_s / n as f64,
        busy / run_s,
        (busy - idle_ms_per_s * run_s) / ((warm + m) * n) as f64,
    );
    // Gossip copies per event (gossipsub's metrics, every node, events topic only).
    let (mut recv_all, mut recv_unique, mut sent) = (0.0, 0.0, 0.0);
    for node in &nodes {
        let (_, body) = procs::http_get(&format!("{}/metrics", node.http));
        let text = String::from_utf8_lossy(&body);
        let sum = |name: &str| -> f64 {
            text.lines()
                .filter(|l| l.starts_with(name) && l.contains("/events/"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        recv_all += sum("libp2p_gossipsub_topic_msg_recv_counts_unfiltered_total{");
        recv_unique += sum("libp2p_gossipsub_topic_msg_recv_counts_total{");
        sent += sum("libp2p_gossipsub_topic_msg_sent_counts_total{");
    }
    let per = ((warm + m) * n) as f64;
    eprintln!(
        "propagation: {n} nodes: gossip messages per event and node: {:.1} received ({:.2} of them new), {:.1} sent",
        recv_all / per,
        recv_unique / per,
        sent / per,
    );
    std::thread::sleep(Duration::from_secs(5));
    let rss = nodes.iter().map(|n| rss_kib(n.pid())).collect();
    (
        Latencies {
            all,
            lost,
            first,
            each,
        },
        len,
        rss,
    )
}

/// The bare gossipsub reference: `n` swarms in this process, same dial graph.
fn gossip_reference(n: usize, m: usize, len: usize) -> Latencies {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let r = rt.block_on(gossip_reference_async(n, m, len));
    rt.shutdown_timeout(Duration::from_secs(2));
    r
}

async fn gossip_reference_async(n: usize, m: usize, len: usize) -> Latencies {
    use futures::StreamExt;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, gossipsub, noise, tcp, yamux};

    let topic = gossipsub::IdentTopic::new("bench");
    // (node, message number, when); node == n marks the publication itself.
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::channel::<(usize, u64, Instant)>(65536);
    let mut cmds = Vec::new();
    let mut addrs: Vec<Multiaddr> = Vec::new();
    for i in 0..n {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| {
                gossipsub::Behaviour::<
                    gossipsub::IdentityTransform,
                    gossipsub::AllowAllSubscriptionFilter,
                >::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
            .build();
        swarm.behaviour_mut().subscribe(&topic).unwrap();
        swarm
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
                break address;
            }
        };
        for j in boot_targets(i) {
            swarm.dial(addrs[j].clone()).unwrap();
        }
        addrs.push(addr);
        let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        cmds.push(cmd_tx);
        let (tx, topic) = (ev_tx.clone(), topic.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = swarm.select_next_some() => {
                        if let SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) = ev {
                            let k = u64::from_le_bytes(message.data[..8].try_into().unwrap());
                            let _ = tx.try_send((i, k, Instant::now()));
                        }
                    }
                    cmd = cmd_rx.recv() => match cmd {
                        Some(data) => {
                            let k = u64::from_le_bytes(data[..8].try_into().unwrap());
                            let at = Instant::now();
                            if swarm.behaviour_mut().publish(topic.clone(), data).is_ok() {
                                let _ = tx.try_send((n, k, at));
                            }
                        }
                        None => return,
                    }
                }
            }
        });
    }
    // Publishes message `k` at node 0; the time until all others have it.
    let mut round = async |k: u64, timeout: Duration| -> Option<f64> {
        let mut data = vec![0u8; len.max(8)];
        data[..8].copy_from_slice(&k.to_le_bytes());
        cmds[0].send(data).await.ok()?;
        let deadline = tokio::time::Instant::now() + timeout;
        let (mut sent, mut worst, mut got) = (None::<Instant>, None::<Instant>, 0usize);
        while sent.is_none() || got < n - 1 {
            let (who, kk, at) = tokio::time::timeout_at(deadline, ev_rx.recv())
                .await
                .ok()??;
            if kk != k {
                continue;
            }
            if who == n {
                sent = Some(at);
            } else {
                got += 1;
                worst = Some(worst.map_or(at, |w| w.max(at)));
            }
        }
        Some((worst? - sent?).as_secs_f64() * 1000.0)
    };
    // Until the mesh carries a message to everyone, then a few more for warm-up.
    let mut k = 1u64 << 40;
    let t0 = Instant::now();
    while round(k, Duration::from_secs(2)).await.is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "reference gossipsub mesh of {n} did not form"
        );
        k += 1;
    }
    for _ in 0..5 {
        k += 1;
        round(k, Duration::from_secs(5)).await;
    }
    let mut all = Vec::new();
    let mut lost = 0;
    let cpu0 = cpu_ms(std::process::id());
    for j in 0..m as u64 {
        match round(j, Duration::from_secs(10)).await {
            Some(ms) => all.push(ms),
            None => lost += 1,
        }
        tokio::time::sleep(Duration::from_millis(20 + (j * 7919) % 30)).await;
    }
    // Idle work (heartbeats) included: an upper bound of the cost of one message.
    eprintln!(
        "propagation: bare gossipsub, {n} swarms in one process: CPU per event per swarm {:.2} ms",
        (cpu_ms(std::process::id()) - cpu0) as f64 / (m * n) as f64
    );
    drop(cmds);
    Latencies {
        all,
        lost,
        first: Vec::new(),
        each: Vec::new(),
    }
}

fn propagation() {
    let m = env_num("PACMESH_BENCH_ENQUEUES", 200) as usize;
    let sizes: Vec<usize> = std::env::var("PACMESH_BENCH_SIZES")
        .unwrap_or_else(|_| "10,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!();
    println!("### Queue propagation: enqueue at node 0 → accepted by every node ({m} enqueues)");
    println!();
    println!(
        "| nodes | pacmesh p50 / p90 / p99 / max | of which at node 0 (HTTP + ingest), p50 | bare gossipsub p50 / p90 / p99 / max | p99 ratio | target |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | --- |");
    for &n in &sizes {
        let (lat, len, rss) = pacmesh_propagation(n, m);
        let reference = gossip_reference(n, m, len);
        let target = match n {
            10 => "p99 < 50 ms",
            50 => "p99 < 200 ms",
            _ => "-",
        };
        let p99 = |l: &Latencies| pct(&sorted(l.all.clone()), 99.0);
        println!(
            "| {n} | {} | {:.1} ms | {} | {:.1}× | {target} |",
            summary(&lat),
            pct(&sorted(lat.first.clone()), 50.0),
            summary(&reference),
            p99(&lat) / p99(&reference),
        );
        eprintln!(
            "propagation: {n} nodes, per-node latency histogram (50 ms buckets, count): {}",
            histogram(&lat.each)
        );
        let rs = sorted(rss.iter().map(|k| *k as f64 / 1024.0).collect());
        eprintln!(
            "propagation: events of {len} bytes; RSS of the {n} idle nodes after the run: median {:.1} MB, max {:.1} MB",
            pct(&rs, 50.0),
            rs.last().unwrap()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario: memory

fn memory() {
    let n = 10;
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path(), n + 1, true);
    // A lone node (no peers), as the reference.
    let lone = mesh.start(n, &[], &["--no-build"], "warn");
    let pubkey = procs::s(&mesh.keys[0]).to_string();
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..n {
        let boot: Vec<String> = boot_targets(i)
            .into_iter()
            .map(|j| nodes[j].p2p.clone())
            .collect();
        let extra: Vec<&str> = if i == 0 {
            vec!["--publisher-key", &pubkey]
        } else {
            vec![]
        };
        nodes.push(mesh.start(i, &boot, &extra, "warn"));
    }
    wait_announced(&nodes, n - 1, Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(20));
    let rss = sorted(
        nodes
            .iter()
            .map(|p| rss_kib(p.pid()) as f64 / 1024.0)
            .collect(),
    );
    let lone_rss = rss_kib(lone.pid()) as f64 / 1024.0;
    println!();
    println!("### Memory: idle nodes of a {n}-node mesh (VmRSS after 20 s idle)");
    println!();
    println!("| measure | RSS | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| mesh node, max of {n} (publisher + 9 builders) | {:.1} MB | < 60 MB |",
        rss.last().unwrap()
    );
    println!("| mesh node, median | {:.1} MB | - |", pct(&rss, 50.0));
    println!("| lone node, no peers (reference) | {lone_rss:.1} MB | - |");
}

// ---------------------------------------------------------------------------------------------
// Scenario: replication

/// Writes `mib` MiB of deterministic incompressible bytes; returns their BLAKE3.
fn make_blob(path: &Path, mib: u64) -> Hash {
    let mut xof = blake3::Hasher::new()
        .update(b"pacmesh mesh bench blob")
        .finalize_xof();
    let mut h = blake3::Hasher::new();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..mib {
        xof.fill(&mut buf);
        h.update(&buf);
        f.write_all(&buf).unwrap();
    }
    f.flush().unwrap();
    Hash::from(h.finalize())
}

/// Places the blob in a node's content store directory before the node starts; the store
/// adopts it at open (hashing it).
fn seed(data_dir: &Path, blob: &Path, hash: &Hash) {
    let hex = hash.to_hex();
    let d = data_dir.join("blobs").join("blobs").join(&hex[..2]);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::hard_link(blob, d.join(&hex)).unwrap();
}

/// A fresh node `k` joins `providers`, then fetches `hash`; returns (wall seconds, answer).
/// One fetch by a fresh node: wall seconds, the request's answer, and the CPU time (ms) the
/// fetcher and the providers used during it.
fn fetch_run(
    mesh: &Mesh,
    k: usize,
    providers: &[&NodeProc],
    hash: &Hash,
) -> (f64, Value, (u64, u64)) {
    let boot: Vec<String> = providers.iter().map(|p| p.p2p.clone()).collect();
    let f = mesh.start(k, &boot, &["--no-build"], "warn");
    // Every provider's announcement seen (they are up and talking to it).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = f.status();
        let c = st["peers"]
            .as_array()
            .map_or(0, |p| p.iter().filter(|x| x["live"] == true).count());
        if c >= providers.len() {
            break;
        }
        assert!(Instant::now() < deadline, "fetcher not connected: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let cpu_p = || providers.iter().map(|p| cpu_ms(p.pid())).sum::<u64>();
    let (f0, p0) = (cpu_ms(f.pid()), cpu_p());
    let t0 = Instant::now();
    let v = pacmesh_node::blob_fetch::request_fetch(&f.http, hash).expect("blob fetch");
    let wall = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ms(f.pid()) - f0, cpu_p() - p0);
    // Bytes that came from the providers' blob HTTP listeners.
    let http_bytes = ureq::get(&format!("{}/metrics", f.http))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("pacmesh_replicated_http_bytes_total ")?
                    .parse::<f64>()
                    .ok()
            })
        })
        .unwrap_or(0.0);
    let mut v = v;
    v["http_bytes"] = http_bytes.into();
    drop(f);
    let _ = std::fs::remove_dir_all(mesh.data_dir(k));
    (wall, v, cpu)
}

/// curl URL into `out`; returns seconds.
fn curl(url: &str, out: &Path) -> f64 {
    let o = procs::run(
        Command::new("curl").args([
            "-sS",
            "--noproxy",
            "*",
            "-o",
            procs::s(out),
            "-w",
            "%{time_total} %{size_download}",
            url,
        ]),
        Duration::from_secs(600),
    );
    assert!(o.status.success(), "curl {url}: {}", procs::show(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    let _ = std::fs::remove_file(out);
    text.split_whitespace().next().unwrap().parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn replication() {
    if procs::skip(&["curl", "python3"], false) {
        return;
    }
    let mib = env_num("PACMESH_BENCH_BLOB_MIB", 1024);
    let runs = env_num("PACMESH_BENCH_FETCH_RUNS", 2) as usize;
    let t = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    // Per path (blob listener, libp2p only): a first fetch and `runs` more, from 1 and from 4.
    let fetchers = 2 * (2 + 2 * runs);
    let mesh = Mesh::new(t.path(), 4 + fetchers, false);
    let srv = t.path().join("www");
    std::fs::create_dir_all(&srv).unwrap();
    let blob = srv.join("blob.bin");
    let t0 = Instant::now();
    let hash = make_blob(&blob, mib);
    eprintln!(
        "replication: {mib} MiB blob {} written in {:.1?}",
        hash.fmt_short(),
        t0.elapsed()
    );
    for i in 0..4 {
        seed(&mesh.data_dir(i), &blob, &hash);
    }
    let size_mib = mib as f64;
    let rate = |secs: f64| size_mib / secs;
    let mut rows: Vec<String> = Vec::new();
    // `cpu`: CPU time of the fetcher and of the providers during a mesh fetch, in ms.
    let mut row_cpu = |what: &str, secs: f64, cpu: Option<(u64, u64)>| {
        let cpu = cpu.map_or("–".to_string(), |(f, p)| {
            format!("{:.2} / {:.2} s", f as f64 / 1e3, p as f64 / 1e3)
        });
        rows.push(format!(
            "| {what} | {:.2} s | {:.0} MiB/s | {cpu} |",
            secs,
            rate(secs)
        ));
    };
    // The share of the bytes that came over the blob listeners, checked per path.
    let over_http = |v: &Value| v["http_bytes"].as_f64().unwrap_or(0.0) / (mib << 20) as f64;
    let mut next = 4;
    let mut best_of: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
    for (path, args) in [
        ("blob listener", &["--no-build"][..]),
        ("libp2p only", &["--no-build", "--blob-http", "off"][..]),
    ] {
        let p0 = mesh.start(0, &[], args, "warn");
        let (w, v, c) = fetch_run(&mesh, next, &[&p0], &hash);
        next += 1;
        row_cpu(
            &format!("{path}: 1 provider, first request (provider computes the outboard)"),
            w,
            Some(c),
        );
        let http = path == "blob listener";
        let check = |v: &Value| {
            assert_eq!(v["size"].as_u64(), Some(mib << 20), "{v}");
            let share = over_http(v);
            assert!(
                if http { share >= 0.99 } else { share == 0.0 },
                "{path}: {:.0} % over HTTP",
                share * 100.0
            );
        };
        check(&v);
        let mut one = Vec::new();
        for _ in 0..runs {
            let (w, v, c) = fetch_run(&mesh, next, &[&p0], &hash);
            next += 1;
            check(&v);
            one.push(w);
            row_cpu(&format!("{path}: 1 provider → 1 fetcher"), w, Some(c));
        }
        // Four providers (their outboards computed by a first fetch).
        let others: Vec<NodeProc> = (1..4)
            .map(|i| mesh.start(i, &[p0.p2p.clone()], args, "warn"))
            .collect();
        let four: Vec<&NodeProc> = std::iter::once(&p0).chain(others.iter()).collect();
        let (w, _, c) = fetch_run(&mesh, next, &four, &hash);
        next += 1;
        row_cpu(
            &format!("{path}: 4 providers, first request (3 compute the outboard)"),
            w,
            Some(c),
        );
        let mut many = Vec::new();
        for _ in 0..runs {
            let (w, v, c) = fetch_run(&mesh, next, &four, &hash);
            next += 1;
            check(&v);
            many.push(w);
            row_cpu(&format!("{path}: 4 providers → 1 fetcher"), w, Some(c));
        }
        if http {
            // The node's own blob GET, for the table below (this provider has a listener).
            for _ in 0..runs {
                let out = t.path().join("download.bin");
                let s = curl(&format!("{}/api/v1/blobs/{hash}", p0.http), &out);
                row_cpu(
                    "curl ← the node's blob GET (hashes the file, then streams it)",
                    s,
                    None,
                );
            }
        }
        drop(others);
        drop(p0);
        best_of.push((path, one, many));
    }

    // References: plain HTTP on loopback, same file, same disk.
    let port = free_port();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .arg("--directory")
        .arg(&srv)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "http.server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = t.path().join("download.bin");
    let mut plain = Vec::new();
    for _ in 0..runs {
        let s = curl(&format!("http://127.0.0.1:{port}/blob.bin"), &out);
        plain.push(s);
        row_cpu(
            "curl ← python3 -m http.server (plain file, no verification)",
            s,
            None,
        );
    }
    let _ = server.kill();
    let _ = server.wait();
    // The disk's floor for a durable copy: write the size and fsync it (the content store
    // fsyncs every imported blob).
    let mut disk = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        {
            let mut f = std::fs::File::create(&out).unwrap();
            let buf = vec![0x5au8; 1 << 20];
            for _ in 0..mib {
                f.write_all(&buf).unwrap();
            }
            f.sync_all().unwrap();
        }
        let s = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_file(&out);
        disk.push(s);
        row_cpu("disk: write the same size and fsync (no network)", s, None);
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!();
    println!(
        "### Replication of a {mib} MiB blob on loopback (`pacmesh blob fetch`, wall time of the request)"
    );
    println!();
    println!("| transfer | time | rate | CPU: fetcher / providers |");
    println!("| --- | ---: | ---: | ---: |");
    for r in rows {
        println!("{r}");
    }
    println!();
    for (path, one, many) in &best_of {
        println!(
            "best of {runs}, {path}: 1 provider {:.0} MiB/s (target ≥ 400), 4 providers {:.0} MiB/s (target ≥ 1 provider); plain HTTP {:.0} MiB/s ({:.2}× of plain)",
            rate(best(one)),
            rate(best(many)),
            rate(best(&plain)),
            best(&plain) / best(one),
        );
    }
    println!("disk write + fsync {:.0} MiB/s", rate(best(&disk)));
}

// ---------------------------------------------------------------------------------------------
// Scenario: duplicate builds

fn duplicates() {
    if procs::skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let entries = env_num("PACMESH_BENCH_DUP_ENTRIES", 200) as usize;
    let b = env_num("PACMESH_BENCH_DUP_BUILDERS", 4) as usize;
    let t = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::new(t.path(), b, false);
    let mut nodes: Vec<NodeProc> = Vec::new();
    for i in 0..b {
        let boot: Vec<String> = nodes.iter().map(|n| n.p2p.clone()).take(1).collect();
        nodes.push(mesh.start(i, &boot, &[], "warn"));
    }
    wait_announced(&nodes, b - 1, Duration::from_secs(120));
    // The folders, uploaded as snapshots first; the events are then posted back to back.
    let client = pacmesh_node::client::Client::new(&nodes[0].http);
    let mut events = Vec::new();
    for i in 0..entries {
        let name = format!("bench-dup-{i:03}");
        let d = t.path().join("pkgs").join(&name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("PKGBUILD"),
            format!(
                "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='mesh bench package'\narch=('any')\nlicense=('MIT')\n\
                 package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/data\" <<<'{name}'\n}}\n"
            ),
        )
        .unwrap();
        let tar = pacmesh_node::source::snapshot_dir(&d).unwrap();
        let snapshot = client.put_blob(&tar).unwrap();
        events.push(mesh.maint.enqueue(Source::Dir {
            path: d.display().to_string(),
            snapshot: Some(snapshot),
        }));
    }
    let t0 = now_unix();
    for (_, bytes) in &events {
        post_event(&nodes[0].http, bytes);
    }
    eprintln!(
        "duplicates: {entries} entries enqueued in {:.2} s",
        now_unix() - t0
    );
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let q = procs::json(&format!("{}/api/v1/queue", nodes[0].http));
        let es = q["entries"].as_array().cloned().unwrap_or_default();
        let done = es
            .iter()
            .filter(|e| matches!(e["status"]["state"].as_str(), Some("built" | "failed")))
            .count();
        if done == entries {
            break;
        }
        assert!(Instant::now() < deadline, "not all built within an hour");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Late duplicate reports would arrive within a few seconds.
    std::thread::sleep(Duration::from_secs(5));
    let (mut twice, mut failed, mut multi_claim) = (0usize, 0usize, 0usize);
    let (mut sum_build, mut last) = (0f64, 0f64);
    let mut per_builder: std::collections::BTreeMap<String, usize> = Default::default();
    for (id, _) in &events {
        let e = procs::json(&format!("{}/api/v1/entries/{id}", nodes[0].http));
        if e["status"]["state"] == "failed" {
            failed += 1;
            eprintln!("failed: {}", e["status"]);
        }
        let claims = e["claims"].as_array().cloned().unwrap_or_default();
        if claims.len() > 1 {
            multi_claim += 1;
        }
        let built: Vec<&Value> = e["reports"]
            .as_array()
            .map(|r| r.iter().filter(|r| r["outcome"] == "built").collect())
            .unwrap_or_default();
        if built.len() > 1 {
            twice += 1;
        }
        for r in built {
            let builder = r["builder"].as_str().unwrap();
            *per_builder.entry(builder[..8].to_string()).or_default() += 1;
            let at = r["time"].as_f64().unwrap() / 1000.0;
            last = last.max(at);
            if let Some(c) = claims.iter().find(|c| c["builder"] == builder) {
                sum_build += at - c["time"].as_f64().unwrap() / 1000.0;
            }
        }
    }
    let makespan = last - t0;
    let ideal = sum_build / b as f64;
    println!();
    println!("### Duplicate builds: {entries} entries over {b} equal builders (enqueued at once)");
    println!();
    println!("| measure | value | target |");
    println!("| --- | ---: | --- |");
    println!(
        "| built twice | {twice} of {entries} ({:.1} %) | < 2 % |",
        twice as f64 * 100.0 / entries as f64
    );
    println!("| failed | {failed} | 0 (all built) |");
    println!(
        "| entries claimed by more than one builder (crossed claims, settled by rank) | {multi_claim} | - |"
    );
    println!(
        "| builds per builder | {} | - |",
        per_builder
            .values()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(" / ")
    );
    println!(
        "| sum of build times (claim → built report) | {sum_build:.1} s ({:.2} s per build) | - |",
        sum_build / (entries - failed).max(1) as f64
    );
    println!("| makespan (first enqueue → last built report) | {makespan:.1} s | - |");
    println!(
        "| makespan / (sum / {b}) | {:.2}× | ≤ 1.3× |",
        makespan / ideal
    );
}

fn main() {
    // `cargo bench` passes `--bench`; other words select scenarios.
    let picked: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = ["propagation", "memory", "replication", "duplicates"];
    for p in &picked {
        if !all.contains(&p.as_str()) {
            eprintln!("unknown scenario {p:?}; choose from {all:?}");
            std::process::exit(2);
        }
    }
    let want = |s: &str| picked.is_empty() || picked.iter().any(|p| p == s);
    println!(
        "mesh benchmark: {} cores, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if want("propagation") {
        propagation();
    }
    if want("memory") {
        memory();
    }
    if want("replication") {
        replication();
    }
    if want("duplicates") {
        duplicates();
    }
}
