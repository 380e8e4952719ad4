//! Operating a node, with real `pacmesh node` processes on 127.0.0.1 and real makepkg in
//! bubblewrap: Prometheus metrics (checked by `promtool`), the status page, package history and
//! logs, a webhook receiver, SIGHUP reload, the disk guard, and SIGTERM handing a running build
//! back.

#[path = "common/ops_proc.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `promtool check metrics` on `text`, if promtool is installed (else a notice).
fn promtool_check(text: &str) {
    if !have("promtool") {
        eprintln!("NOTICE: promtool not installed (Debian: prometheus); skipping its check");
        return;
    }
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool check metrics refused /metrics:\n{}{}\n---\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn metrics_move_after_a_build_and_the_pages_show_it() {
    if !can_build() {
        return;
    }
    let mesh = Mesh::new(60);
    let (url, hooks, _rt) = receiver(false);
    let cfg = mesh.config(
        "n1",
        &format!("[[webhook]]\nurl = {url:?}\nevents = [\"publish\", \"package_update\"]\n"),
    );
    let node = NodeProc::start(&["--config", cfg.to_str().unwrap()]);

    let before = node.text("/metrics");
    promtool_check(&before);
    assert_eq!(
        sample(&before, "pacmesh_builds_total{outcome=\"success\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&before, "pacmesh_publishes_total"), Some(0.0));
    // OpenMetrics for scrapers that ask for it.
    let (code, om) = get(
        &node.url("/metrics"),
        &[("accept", "application/openmetrics-text; version=1.0.0")],
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8(om).unwrap().ends_with("# EOF\n"));

    let dir = mesh.pkgbuild("ops-hello", "  echo 'building ops-hello'");
    let id = mesh.enqueue(&node.base, &dir);
    let e = node.wait_state(&id, &["published"], Duration::from_secs(120));

    // The counters moved, and promtool still accepts the exposition.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let t = node.text("/metrics");
        if sample(&t, "pacmesh_publishes_total") == Some(1.0) || Instant::now() > deadline {
            break t;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    promtool_check(&after);
    for (series, want) in [
        ("pacmesh_builds_total{outcome=\"success\"}", 1.0),
        ("pacmesh_builds_total{outcome=\"failed\"}", 0.0),
        ("pacmesh_build_duration_seconds_count", 1.0),
        ("pacmesh_publishes_total", 1.0),
        ("pacmesh_queue_entries{state=\"published\"}", 1.0),
        ("pacmesh_queue_entries{state=\"waiting\"}", 0.0),
        (
            "pacmesh_repo_generation{repo=\"opsrepo\",arch=\"x86_64\"}",
            1.0,
        ),
        ("pacmesh_node_accepting_claims", 1.0),
    ] {
        if series.contains("x86_64") && std::env::consts::ARCH != "x86_64" {
            continue;
        }
        assert_eq!(sample(&after, series), Some(want), "{series} in\n{after}");
    }
    // enqueue, claim, built, publish at least; all accepted through the same ingest.
    let accepted = sample(
        &after,
        "pacmesh_events_total{result=\"accepted\",reason=\"\"}",
    )
    .unwrap();
    assert!(accepted >= 4.0, "{accepted}");
    assert!(sample(&after, "pacmesh_build_duration_seconds_sum").unwrap() > 0.0);

    // The status page lists the entry as published; the filter keeps it out of "failed".
    let page = node.text("/");
    assert!(
        page.contains("ops-hello") && page.contains("st-published"),
        "{page}"
    );
    assert!(page.contains("<table id=nodes>") && page.contains("(this node)"));
    assert!(page.contains("opsrepo/"), "generations table: {page}");
    let failed = node.text("/?state=failed");
    assert!(!failed.contains("ops-hello") && failed.contains("No entries."));
    let searched = node.text("/?q=nothing-like-this");
    assert!(!searched.contains(">ops-hello<"));

    // Package history: the build, its file, the generation.
    let pkg = node.text("/pkg?name=ops-hello");
    assert!(pkg.contains("ops-hello-1.0-1-any.pkg.tar.zst"), "{pkg}");
    assert!(pkg.contains("<td class=mono>1.0-1</td>"), "{pkg}");
    let (code, _) = get(&node.url("/pkg?name=no-such"), &[]);
    assert_eq!(code, 404);

    // The finished log: the log blob, zstd-compressed when accepted, plain otherwise.
    let log_hash = e["status"]["state"]
        .as_str()
        .and_then(|_| {
            node.json(&format!("/api/v1/entries/{id}"))["reports"][0]["log"]
                .as_str()
                .map(str::to_string)
        })
        .expect("a log");
    let (_, blob) = get(&node.url(&format!("/api/v1/blobs/{log_hash}")), &[]);
    assert!(String::from_utf8_lossy(&blob).contains("building ops-hello"));
    let (code, z) = get(
        &node.url(&format!("/logs/{id}")),
        &[("accept-encoding", "gzip, zstd")],
    );
    assert_eq!(code, 200);
    assert!(z.len() < blob.len(), "compressed");
    assert_eq!(zstd::decode_all(&z[..]).unwrap(), blob);
    let (_, plain) = get(
        &node.url(&format!("/logs/{id}")),
        &[("accept-encoding", "identity")],
    );
    assert_eq!(plain, blob);
    let (code, html) = get(
        &node.url(&format!("/logs/{id}")),
        &[("accept", "text/html")],
    );
    assert_eq!(code, 200);
    assert!(String::from_utf8(html).unwrap().contains("EventSource"));
    let (code, _) = get(&node.url("/logs/nothex"), &[]);
    assert_eq!(code, 400);

    // Scripts get JSON, and plain output carries no colour codes when not on a terminal.
    let st: Value =
        serde_json::from_str(&pacmesh_ok(&["status", "--json", "--node", &node.base])).unwrap();
    assert_eq!(st["health"]["accepting_claims"], true);
    let plain = pacmesh_ok(&["queue", "ls", "--node", &node.base]);
    assert!(
        plain.contains("ops-hello") && !plain.contains('\x1b'),
        "{plain}"
    );

    // The publish and the package update were notified (unsigned: no secret configured).
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooks.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "{:?}", hooks.lock().unwrap());
        std::thread::sleep(Duration::from_millis(50));
    }
    let hooks = hooks.lock().unwrap().clone();
    let bodies: Vec<Value> = hooks
        .iter()
        .map(|g| serde_json::from_slice(&g.body).unwrap())
        .collect();
    let publish = bodies
        .iter()
        .find(|b| b["event"] == "publish")
        .expect("publish");
    assert_eq!(publish["generation"], 1);
    assert_eq!(publish["packages"][0]["name"], "ops-hello");
    let update = bodies
        .iter()
        .find(|b| b["event"] == "package_update")
        .expect("package_update");
    assert_eq!(update["updated"][0]["name"], "ops-hello");
    assert_eq!(update["updated"][0]["new_version"], "1.0-1");
    assert_eq!(update["updated"][0]["old_version"], Value::Null);
    assert!(
        hooks
            .iter()
            .all(|g| g.headers.get("x-pacmesh-signature-256").is_none())
    );
    assert!(
        bodies.iter().all(|b| b["event"] != "build_failed"),
        "not subscribed"
    );
}

/// One request the webhook receiver got.
#[derive(Debug, Clone)]
struct Got {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

/// A webhook receiver on 127.0.0.1 that answers 503 to the first request (when `fail_first`)
/// and 200 otherwise.
fn receiver(fail_first: bool) -> (String, Arc<Mutex<Vec<Got>>>, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let got = Arc::new(Mutex::new(Vec::<Got>::new()));
    let g = got.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let g = g.clone();
                async move {
                    let mut v = g.lock().unwrap();
                    v.push(Got {
                        headers,
                        body: body.to_vec(),
                    });
                    if fail_first && v.len() == 1 {
                        axum::http::StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            },
        ),
    );
    rt.spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), got, rt)
}

#[test]
fn a_webhook_receiver_gets_a_signed_failure_with_the_log_tail() {
    if !can_build() {
        return;
    }
    let (url, got, _rt) = receiver(true);
    let mesh = Mesh::new(60);
    let secret = mesh.dir.path().join("hook.secret");
    std::fs::write(&secret, "s3cret-for-the-test\n").unwrap();
    let cfg = mesh.config(
        "n1",
        &format!(
            "[[webhook]]\nurl = {url:?}\nsecret_file = {secret:?}\nevents = [\"build_failed\"]\nretry_delay_ms = 200\n"
        ),
    );
    let node = NodeProc::start(&["--config", cfg.to_str().unwrap()]);
    let dir = mesh.pkgbuild(
        "ops-broken",
        "  echo 'compiling the frobnicator'\n  echo 'error: frobnicator.c:42: no such frob' >&2\n  return 1",
    );
    let id = mesh.enqueue(&node.base, &dir);
    node.wait_state(&id, &["failed"], Duration::from_secs(120));

    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the retry did not arrive: {:?}",
            got.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = got.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        2,
        "one failure, one retry after the 503, nothing else"
    );
    let h = |g: &Got, k: &str| {
        g.headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        h(&got[0], "x-pacmesh-delivery"),
        h(&got[1], "x-pacmesh-delivery")
    );
    assert_eq!(got[0].body, got[1].body, "a retry sends the same bytes");
    let g = &got[1];
    assert_eq!(h(g, "x-pacmesh-event"), "build_failed");
    assert_eq!(h(g, "content-type"), "application/json");
    // The signature is HMAC-SHA256 of the exact body under the secret (without its newline).
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cret-for-the-test").unwrap();
    mac.update(&g.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(h(g, "x-pacmesh-signature-256"), want);

    let v: Value = serde_json::from_slice(&g.body).unwrap();
    assert_eq!(v["event"], "build_failed");
    assert_eq!(v["entry"], id);
    assert_eq!(v["name"], "ops-broken");
    assert_eq!(v["repo"], "opsrepo");
    assert!(v["reason"].as_str().unwrap().contains("build"), "{v:#}");
    let tail: Vec<&str> = v["log_tail"]
        .as_array()
        .expect("log tail")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tail.iter()
            .any(|l| l.contains("error: frobnicator.c:42: no such frob")),
        "{tail:#?}"
    );
    assert!(tail.iter().any(|l| l.contains("compiling the frobnicator")));

    let m = node.text("/metrics");
    assert_eq!(
        sample(
            &m,
            "pacmesh_webhook_deliveries_total{event=\"build_failed\",result=\"ok\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "pacmesh_builds_total{outcome=\"failed\"}"),
        Some(1.0)
    );
}

#[test]
fn disk_guard_sighup_reload_live_log_and_sigterm_hand_back() {
    if !can_build() {
        return;
    }
    let mesh = Mesh::new(120);
    let refuse = "[health]\nmin_free_disk_bytes = 1152921504606846976\n";
    let cfg = mesh.config("n1", refuse);
    let mut node = NodeProc::start(&["--config", cfg.to_str().unwrap()]);

    // Short of "disk" (a 1 EiB minimum): the node says why and claims nothing.
    let st = node.json("/api/v1/status");
    assert_eq!(st["health"]["accepting_claims"], false, "{st:#}");
    let why = st["health"]["refusals"][0].as_str().unwrap();
    assert!(
        why.starts_with("disk: ") && why.contains("min_free_disk_bytes"),
        "{why}"
    );
    assert!(
        node.text("/")
            .contains("This node refuses new builds: disk: ")
    );
    assert_eq!(
        sample(&node.text("/metrics"), "pacmesh_node_accepting_claims"),
        Some(0.0)
    );
    let dir = mesh.pkgbuild(
        "ops-slow",
        "  for i in $(seq 1 40); do echo \"tick $i\"; sleep 1; done",
    );
    let id = mesh.enqueue(&node.base, &dir);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        node.json(&format!("/api/v1/entries/{id}"))["status"]["state"],
        "waiting"
    );

    // SIGHUP with the limit lifted: the node claims and builds.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(refuse, "");
    std::fs::write(&cfg, text).unwrap();
    node.signal(libc::SIGHUP);
    node.wait_state(&id, &["claimed"], Duration::from_secs(30));
    assert_eq!(
        node.json("/api/v1/status")["health"]["accepting_claims"],
        true
    );
    node.wait_building(&id, Duration::from_secs(60));

    // The live log as text: lines arrive while the build prints one per second.
    let mut resp = agent()
        .get(&node.url(&format!("/logs/{id}")))
        .call()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader = BufReader::new(resp.body_mut().as_reader());
    let mut ticks: Vec<(u32, Instant)> = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(n) = line.trim().strip_prefix("tick ") {
            ticks.push((n.parse().unwrap(), Instant::now()));
        }
        if ticks.len() >= 4 {
            break;
        }
    }
    let (first, last) = (ticks[0], ticks[ticks.len() - 1]);
    assert!(last.0 > first.0, "{ticks:?}");
    // Lines after the backlog came one by one, as they were printed (a second apart).
    let live: Vec<_> = ticks.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        live.iter().any(|d| *d >= Duration::from_millis(500)),
        "all lines came at once: {live:?}"
    );
    drop(resp);

    // SIGTERM: the node stops, abandoning the build and handing its lease back.
    let t = Instant::now();
    node.signal(libc::SIGTERM);
    assert_eq!(node.wait_exit(Duration::from_secs(60)), Some(0));
    eprintln!("stopped in {:?}", t.elapsed());
    drop(node);

    // On the next start (not building) the entry is claimable at once: its lease was released
    // (a claim with the next attempt whose lease ends when it was made), not left to lapse.
    let node = NodeProc::start(&["--config", cfg.to_str().unwrap(), "--no-build"]);
    let e = node.json(&format!("/api/v1/entries/{id}"));
    assert_eq!(e["status"]["state"], "waiting", "{e:#}");
    let claims = e["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 1, "{e:#}");
    assert_eq!(claims[0]["attempt"], 2);
    assert!(claims[0]["lease_until"].as_u64() <= claims[0]["time"].as_u64());
    assert!(
        e["reports"].as_array().unwrap().is_empty(),
        "no report for the abandoned build"
    );
    let m = node.text("/metrics");
    assert_eq!(
        sample(&m, "pacmesh_queue_entries{state=\"waiting\"}"),
        Some(1.0)
    );
}
