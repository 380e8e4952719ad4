//! Operations benchmark: the status page with 5000 queue entries (budget 200 ms server time)
//! and a `/metrics` scrape (budget 20 ms), both rendered in-process and fetched over HTTP on
//! 127.0.0.1; the same run's `GET /health` round trip is the reference for the HTTP overhead.
//!
//! `cargo bench -p pacmesh-node --bench ops_bench` (set `PACMESH_BENCH_ENTRIES` to change 5000).
//! The queue: 5000 `git` entries, a third of them claimed by the node, one in ten failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pacmesh_node::core::{Core, sign_next};
use pacmesh_node::ingest::{Ingest, IngestConfig, IngestOutcome};
use pacmesh_node::keys::NodeKey;
use pacmesh_node::store::{DbConfig, FsStore, open_db};
use pacmesh_node::web::{IndexQuery, render_index};
use pacmesh_protocol::{
    BuilderPolicy, EventBody, MeshPolicy, Name, PublicKey, QueueEntry, RepoPolicy, Signed, Source,
    Timestamp,
};

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, T) {
    let mut out = None;
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        out = Some(f());
        v.push(t.elapsed());
    }
    let max = *v.iter().max().unwrap();
    (median(v), max, out.unwrap())
}

fn main() {
    let n: usize = std::env::var("PACMESH_BENCH_ENTRIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir().unwrap();
    let root = NodeKey::from_seed(&[1; 32]);
    let node = NodeKey::from_seed(&[3; 32]);
    let root_pk = PublicKey::from(root.signing_key());
    let policy = MeshPolicy {
        version: 1,
        root: root_pk,
        policy_version: 1,
        time: Timestamp::now(),
        repos: vec![RepoPolicy {
            name: name("extra"),
            arches: vec![name("x86_64")],
        }],
        maintainers: vec![root_pk],
        publishers: vec![root_pk],
        builders: BuilderPolicy::Any,
        quorum: 1,
        lease_secs: 3600,
        build_timeout_secs: 3600,
    };
    let policy = Signed::sign(root.signing_key(), &policy)
        .unwrap()
        .to_bytes();
    let db = open_db(&dir.path().join("db"), &DbConfig::default()).unwrap();
    let (ingest, _) = Ingest::open(&db, root_pk, Some(&policy), IngestConfig::default()).unwrap();
    let (blobs, _) = FsStore::open(&dir.path().join("blobs"), &db).unwrap();
    let core: Arc<Core> = Core::new(
        node,
        None,
        ingest,
        Arc::new(blobs),
        dir.path().to_path_buf(),
    );

    let t = Instant::now();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let entry = QueueEntry::new(
            name("extra"),
            Source::Git {
                url: format!("https://git.example.org/pkg-{i:05}.git"),
                rev: None,
                subdir: None,
            },
        );
        let bytes = sign_next(&core.ingest(), &root, EventBody::Enqueue(entry)).unwrap();
        match core.ingest_bytes(&bytes) {
            IngestOutcome::Accepted { id } => ids.push(id),
            other => panic!("{other:?}"),
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if i % 3 == 0 {
            core.submit(EventBody::Claim {
                entry: *id,
                attempt: 1,
                lease_until: Timestamp::now().saturating_add(Duration::from_secs(3600)),
            })
            .unwrap();
        }
        if i % 10 == 1 {
            core.submit(EventBody::Failed {
                entry: *id,
                attempt: 1,
                reason: "phase build: makepkg exited with code 4; log: error: frobnicator.c:42"
                    .into(),
                log: None,
            })
            .unwrap();
        }
    }
    let events = core.ingest().state().applied_len();
    println!(
        "setup: {n} entries, {events} events ingested in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // In-process: what the handlers do.
    let all = IndexQuery {
        limit: Some("all".into()),
        ..Default::default()
    };
    let (page_med, page_max, html) = time(20, || render_index(&core, &all, Timestamp::now()));
    let (dflt_med, _, _) = time(20, || {
        render_index(&core, &IndexQuery::default(), Timestamp::now())
    });
    let (met_med, met_max, text) = time(50, || pacmesh_node::metrics::scrape(&core));
    assert!(
        html.matches("<tr data-state=").count() == n,
        "every entry is rendered"
    );
    assert!(text.contains("pacmesh_queue_entries{state=\"claimed\"}"));

    // Over HTTP on 127.0.0.1 (axum, the same handlers).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (addr, server) = rt
        .block_on(pacmesh_node::http::bind(
            core.clone(),
            "127.0.0.1:0".parse().unwrap(),
        ))
        .unwrap();
    rt.spawn(server);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let get = |path: &str| {
        let mut r = agent.get(&format!("http://{addr}{path}")).call().unwrap();
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap()
            .len()
    };
    get("/health");
    let (health_med, _, _) = time(50, || get("/health"));
    let (http_page_med, http_page_max, bytes) = time(20, || get("/?limit=all"));
    let (http_met_med, http_met_max, mbytes) = time(50, || get("/metrics"));

    println!();
    println!("| measurement | median | max | budget |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| status page, {n} entries, all rows, rendered in-process | {:.1} ms | {:.1} ms | 200 ms |",
        ms(page_med),
        ms(page_max)
    );
    println!(
        "| status page, default view (first 1000 rows), in-process | {:.1} ms | | 200 ms |",
        ms(dflt_med)
    );
    println!(
        "| status page over HTTP, all rows ({} KiB) | {:.1} ms | {:.1} ms | 200 ms |",
        bytes / 1024,
        ms(http_page_med),
        ms(http_page_max)
    );
    println!(
        "| /metrics scrape, in-process | {:.2} ms | {:.2} ms | 20 ms |",
        ms(met_med),
        ms(met_max)
    );
    println!(
        "| /metrics over HTTP ({} bytes) | {:.2} ms | {:.2} ms | 20 ms |",
        mbytes,
        ms(http_met_med),
        ms(http_met_max)
    );
    println!(
        "| reference: GET /health over HTTP, same run | {:.2} ms | | |",
        ms(health_med)
    );
    let ok = http_page_med < Duration::from_millis(200) && http_met_med < Duration::from_millis(20);
    println!();
    println!("within budget: {ok}");
}
