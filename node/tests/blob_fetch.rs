//! `pacmesh blob fetch`: two real node processes on 127.0.0.1; a blob uploaded to one is
//! fetched by the other from the mesh (several 4 MiB segments, verified), and is then served
//! by it byte for byte. A hash nobody holds fails with a one-line reason.

use std::time::{Duration, Instant};

#[path = "common/procs.rs"]
mod procs;
use procs::*;

/// Starts a non-building node; returns it with its p2p and HTTP addresses.
fn start(
    dir: &std::path::Path,
    policy: &str,
    i: usize,
    boot: Option<&str>,
    extra: &[&str],
) -> (Proc, String, String, Option<String>) {
    let data = dir.join(format!("data{i}"));
    let mut args = vec![
        "node",
        "--policy",
        policy,
        "--data-dir",
        s(&data),
        "--http",
        "127.0.0.1:0",
        "--listen",
        "/ip4/127.0.0.1/tcp/0",
        "--no-mdns",
        "--no-build",
    ];
    if let Some(b) = boot {
        args.extend(["--bootstrap", b]);
    }
    args.extend(extra);
    let p = Proc::spawn(&args);
    let addr = |what: &str| p.listening(what, Duration::from_secs(60));
    // Printed first, when on.
    let blobs = (!extra.contains(&"off")).then(|| {
        p.wait_line("blobs served to peers at ", Duration::from_secs(60))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_string()
    });
    let p2p = addr("p2p listening on ");
    let http = addr("http listening on ");
    (p, p2p, http, blobs)
}

/// A policy for one repository `t`, written under `dir`.
fn policy(dir: &std::path::Path) -> std::path::PathBuf {
    let root = dir.join("root.key");
    pacmesh_ok(&["key", "gen", "--out", s(&root)]);
    let policy = dir.join("policy.cbor");
    pacmesh_ok(&[
        "mesh",
        "init",
        "--key",
        s(&root),
        "--repo",
        "t",
        "--out",
        s(&policy),
    ]);
    policy
}

/// 9 MiB and a bit (three segments, the last one short), uploaded to the node at `http`;
/// returns the bytes and their hash.
fn upload(http: &str) -> (Vec<u8>, String) {
    let mut blob = vec![0u8; (9 << 20) + 12345];
    let mut xof = blake3::Hasher::new()
        .update(b"blob fetch test")
        .finalize_xof();
    xof.fill(&mut blob);
    let (code, v) = {
        let mut r = lenient_agent()
            .put(&format!("{http}/api/v1/blobs"))
            .send(&blob[..])
            .unwrap();
        let code = r.status().as_u16();
        let v: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (code, v)
    };
    assert_eq!(code, 200, "{v}");
    let hash = v["blake3"].as_str().unwrap().to_string();
    assert_eq!(hash, blake3::hash(&blob).to_hex().as_str());
    (blob, hash)
}

/// Waits until the node at `http` lists a peer (its announcement arrived).
fn wait_for_peer(http: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = json(&format!("{http}/api/v1/status"));
        if st["peers"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node never heard of its peer: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter of the node at `http`'s `/metrics`.
fn metric(http: &str, name: &str) -> f64 {
    let (_, m) = http_get(&format!("{http}/metrics"));
    String::from_utf8_lossy(&m)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {}", String::from_utf8_lossy(&m)))
}

/// Over libp2p only (A serves no blob listener): extra direct connections for the segments.
#[test]
fn a_node_fetches_a_blob_from_its_peer_and_serves_it() {
    let t = tempfile::tempdir().unwrap();
    let policy = policy(t.path());
    let (a, a_p2p, a_http, _) = start(t.path(), s(&policy), 0, None, &["--blob-http", "off"]);
    let (blob, hash) = upload(&a_http);

    let (_b, _, b_http, _) = start(t.path(), s(&policy), 1, Some(&a_p2p), &[]);
    // B has not got it.
    let (code, _) = http_get(&format!("{b_http}/api/v1/blobs/{hash}"));
    assert_eq!(code, 404);
    wait_for_peer(&b_http);
    let out = pacmesh_ok(&["blob", "fetch", &hash, "--node", &b_http]);
    assert!(out.contains(&format!("{} bytes", blob.len())), "{out}");
    let (code, got) = http_get(&format!("{b_http}/api/v1/blobs/{hash}"));
    assert_eq!(code, 200);
    assert!(got == blob, "B serves other bytes than A holds");
    // The segments were asked over extra direct connections to A (BULK_CONNECTIONS in
    // net/mod.rs): B dialled A more than once.
    let (_, metrics) = http_get(&format!("{b_http}/metrics"));
    let metrics = String::from_utf8_lossy(&metrics);
    let dialled: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("libp2p_swarm_connections_established_total{")
                && l.to_lowercase().contains("dialer")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(dialled >= 2.0, "B dialled A {dialled} times:\n{metrics}");
    // Gossipsub's own metrics are exported (subscribed to the events and announce topics).
    let subscribed = metrics
        .lines()
        .filter(|l| {
            l.starts_with("libp2p_gossipsub_topic_subscription_status{") && l.ends_with(" 1")
        })
        .count();
    assert_eq!(subscribed, 2, "{metrics}");
    assert_eq!(metric(&b_http, "pacmesh_replicated_http_bytes_total"), 0.0);
    // Fetching again transfers nothing.
    let out = pacmesh_ok(&["blob", "fetch", &hash, "--node", &b_http, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["transferred"], 0, "{v}");

    // Nobody holds this one: exit 1 with the reason on one line.
    let missing = blake3::hash(b"nobody has this").to_hex().to_string();
    let o = pacmesh(&["blob", "fetch", &missing, "--node", &b_http]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no source could deliver it") && err.contains("does not have it"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Not a hash: exit 1, said so.
    let o = pacmesh(&["blob", "fetch", "xyz", "--node", &b_http]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a blake3 hash"));
    drop(a);
}

/// A announces its blob listener (the default, on its libp2p TCP address): B fetches the
/// segments there, over plain HTTP, verifies them, and holds the same bytes. The listener
/// answers blob requests only.
#[test]
fn a_node_fetches_from_its_peers_blob_listener() {
    let t = tempfile::tempdir().unwrap();
    let policy = policy(t.path());
    let (a, a_p2p, a_http, listener) = start(t.path(), s(&policy), 0, None, &[]);
    let listener = listener.unwrap();
    assert!(listener.starts_with("http://127.0.0.1:"), "{listener}");
    let (blob, hash) = upload(&a_http);
    // Ranges of blobs (at most one 4 MiB segment each) and outboards, nothing else of the
    // node's API; a whole blob is not hashed and sent per request.
    let (code, _) = http_get(&format!("{listener}/api/v1/blobs/{hash}"));
    assert_eq!(code, 400);
    let ranged = |range: &str| {
        let mut r = lenient_agent()
            .get(&format!("{listener}/api/v1/blobs/{hash}"))
            .header("range", range)
            .call()
            .unwrap();
        let cr = r
            .headers()
            .get("content-range")
            .map(|v| v.to_str().unwrap().to_string());
        let body = r
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_vec()
            .unwrap();
        (r.status().as_u16(), cr, body)
    };
    let (code, cr, got) = ranged("bytes=100-199");
    assert_eq!((code, got.as_slice()), (206, &blob[100..200]));
    assert_eq!(
        cr.as_deref(),
        Some(format!("bytes 100-199/{}", blob.len()).as_str())
    );
    let (code, cr, got) = ranged("bytes=0-");
    assert_eq!(code, 206);
    assert_eq!(got.as_slice(), &blob[..4 << 20], "one segment at most");
    assert_eq!(
        cr.as_deref(),
        Some(format!("bytes 0-{}/{}", (4 << 20) - 1, blob.len()).as_str())
    );
    let (code, _) = http_get(&format!("{listener}/api/v1/blobs/{hash}/outboard"));
    assert_eq!(code, 200);
    for path in ["/api/v1/status", "/api/v1/queue", "/metrics", "/"] {
        let (code, _) = http_get(&format!("{listener}{path}"));
        assert_eq!(code, 404, "{path} is served on the blob listener");
    }

    let (_b, _, b_http, _) = start(
        t.path(),
        s(&policy),
        1,
        Some(&a_p2p),
        &["--blob-http", "off"],
    );
    wait_for_peer(&b_http);
    // A's announcement carries the listener's port (B's status shows it).
    let st = json(&format!("{b_http}/api/v1/status"));
    let port = listener.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    assert_eq!(
        st["peers"][0]["blob_http_port"].as_u64(),
        Some(port),
        "{st:#}"
    );
    let out = pacmesh_ok(&["blob", "fetch", &hash, "--node", &b_http]);
    assert!(out.contains(&format!("{} bytes", blob.len())), "{out}");
    let (code, got) = http_get(&format!("{b_http}/api/v1/blobs/{hash}"));
    assert_eq!(code, 200);
    assert!(got == blob, "B serves other bytes than A holds");
    // Every segment came from the listener.
    let http_bytes = metric(&b_http, "pacmesh_replicated_http_bytes_total");
    assert!(
        http_bytes >= blob.len() as f64,
        "{http_bytes} bytes over HTTP"
    );
    drop(a);
}
