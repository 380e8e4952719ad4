//! End to end with real processes: `pacmesh node` and `pacmesh demo` as child processes on
//! 127.0.0.1, real makepkg in bubblewrap, and real pacman installing from the node over HTTP
//! with `SigLevel = Required DatabaseRequired`.
//!
//! Needs root (pacman insists on it even with `--root`), bwrap, makepkg, pacman and gpg; each
//! test skips with a printed notice when they are missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[path = "common/procs.rs"]
mod procs;
use procs::*;
use serde_json::Value;

#[test]
fn demo_publishes_and_pacman_installs_over_http() {
    if skip(&["bwrap", "makepkg", "pacman", "pacman-key", "gpg"], true) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let demo_dir = t.path().join("demo");
    let mut demo = Proc::spawn(&["demo", "--dir", s(&demo_dir), "--http", "127.0.0.1:0"]);
    let server = demo.wait_line("Server = ", Duration::from_secs(600));
    let server = server.trim().trim_start_matches("Server = ").to_string();
    let asc = demo_dir.join("pacmesh-demo.asc");
    let fpr = pacmesh_ok(&[
        "key",
        "show",
        "--key",
        s(&demo_dir.join("keys/node.key")),
        "--fingerprint",
    ]);
    let pacman = Pacman::new(
        &t.path().join("pacman"),
        "pacmesh-demo",
        &server,
        &asc,
        fpr.trim(),
    );

    let o = pacman.install(&["pacmesh-hello", "pacmesh-split-bin", "pacmesh-epoch"]);
    assert!(o.status.success(), "pacman -Sy: {}", show(&o));
    let hello = std::fs::read_to_string(pacman.root().join("usr/bin/pacmesh-hello")).unwrap();
    assert!(hello.contains("hello from pacmesh"), "{hello}");
    assert!(pacman.root().join("usr/bin/pacmesh-split").is_file());
    assert!(pacman.root().join("etc/pacmesh-epoch.conf").is_file());
    // A pacman.conf without the key trusted refuses the same repository.
    let stranger = Pacman::new(
        &t.path().join("pacman2"),
        "pacmesh-demo",
        &server,
        &asc,
        fpr.trim(),
    );
    let _ = run(
        Command::new("pacman-key")
            .arg("--gpgdir")
            .arg(stranger.gpgdir())
            .arg("--config")
            .arg(stranger.conf())
            .args(["--delete", fpr.trim()]),
        Duration::from_secs(60),
    );
    let o = stranger.install(&["pacmesh-hello"]);
    assert!(
        !o.status.success(),
        "pacman must refuse an untrusted repository: {}",
        show(&o)
    );

    // Ctrl-C stops the demo cleanly.
    demo.signal("-INT");
    assert_eq!(demo.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Keys, a policy and a node process on a fresh data dir.
struct Mesh {
    dir: PathBuf,
    maintainer: PathBuf,
    stranger: PathBuf,
    node_key: PathBuf,
    policy: PathBuf,
}

impl Mesh {
    fn new(dir: &Path) -> Mesh {
        let keys = dir.join("keys");
        let k = |n: &str| {
            let p = keys.join(n);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let (root, maintainer, stranger, node_key) = (
            k("root.key"),
            k("maint.key"),
            k("stranger.key"),
            k("node.key"),
        );
        let public = |p: &Path| {
            let out = pacmesh_ok(&["key", "show", "--key", s(p)]);
            out.lines()
                .find_map(|l| l.strip_prefix("public key: "))
                .unwrap()
                .trim()
                .to_string()
        };
        let policy = dir.join("policy.cbor");
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
            &public(&maintainer),
            "--publisher",
            &public(&node_key),
            "--lease-secs",
            "6",
            "--out",
            s(&policy),
        ]);
        Mesh {
            dir: dir.to_path_buf(),
            maintainer,
            stranger,
            node_key,
            policy,
        }
    }

    fn start(&self, extra: &[&str]) -> (Proc, String) {
        let data = self.dir.join("data");
        let mut args = vec![
            "node",
            "--policy",
            s(&self.policy),
            "--key",
            s(&self.node_key),
            "--publisher-key",
            s(&self.node_key),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
        ];
        args.extend_from_slice(extra);
        let p = Proc::spawn(&args);
        let base = p.listening("http listening on ", Duration::from_secs(60));
        (p, base)
    }
}

fn write_pkgbuild(dir: &Path, name: &str, build: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("PKGBUILD"),
        format!(
            "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='test package'\narch=('any')\nlicense=('MIT')\n\
             build() {{\n{build}\n}}\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/data\" <<<'{name}'\n}}\n"
        ),
    )
    .unwrap();
    d
}

#[test]
fn node_refuses_bad_events_and_keeps_running() {
    // The node runs with --no-build: nothing to skip for.
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&["--no-build"]);
    let pkg = write_pkgbuild(t.path(), "refused-pkg", "true");

    // Enqueued by a key that is not a maintainer: refused with the reason, nothing stored.
    let o = pacmesh(&[
        "queue",
        "add",
        "--key",
        s(&mesh.stranger),
        "--node",
        &base,
        "--dir",
        s(&pkg),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("maintainer"), "{err}");
    // A good one is accepted.
    let id = pacmesh_ok(&[
        "queue",
        "add",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        "--dir",
        s(&pkg),
    ]);
    let id = id.trim();
    let before = json(&format!("{base}/api/v1/status"));
    assert_eq!(before["events"]["accepted"], 1, "{before}");

    let events = format!("{base}/api/v1/events");
    // Garbage, truncated, oversized bytes.
    let (code, v) = http_post(&events, b"\xff\x00garbage");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let (code, _) = http_post(&events, &[0xa1; 8 << 20]);
    assert!(code == 413 || code == 0, "oversized: {code}");
    // The stored event itself, replayed: a harmless duplicate; truncated: refused.
    let q = json(&format!("{base}/api/v1/entries/{id}"));
    assert_eq!(q["id"], id);
    let status_before = json(&format!("{base}/api/v1/status"));
    // Sign a fresh event by the maintainer, then tamper with its signature.
    let (_, head) = http_get(&format!("{base}/api/v1/policy"));
    assert!(!head.is_empty());
    let key = pacmesh_node::keys::NodeKey::load(&mesh.maintainer).unwrap();
    let author = pacmesh_protocol::PublicKey::from(key.signing_key());
    let hd = json(&format!("{base}/api/v1/authors/{author}/head"));
    assert_eq!(hd["seq"], 1);
    let ev = pacmesh_protocol::Event::new(
        author,
        2,
        Some(hd["id"].as_str().unwrap().parse().unwrap()),
        pacmesh_protocol::Timestamp::now(),
        pacmesh_protocol::EventBody::Cancel {
            entry: id.parse().unwrap(),
        },
    );
    let signed = pacmesh_protocol::Signed::sign(key.signing_key(), &ev).unwrap();
    let mut bad = signed.clone();
    bad.sig[0] ^= 1;
    let (code, v) = http_post(&events, &bad.to_bytes());
    assert_eq!(code, 400, "bad signature: {v}");
    let bytes = signed.to_bytes();
    let (code, v) = http_post(&events, &bytes[..bytes.len() - 3]);
    assert_eq!(code, 400, "truncated: {v}");
    let after = json(&format!("{base}/api/v1/status"));
    assert_eq!(
        after["state_digest"], status_before["state_digest"],
        "rejections change nothing"
    );
    assert!(
        after["events"]["rejected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
            >= 4
    );
    // The real one goes through; replaying it is a duplicate and changes nothing.
    let (code, v) = http_post(&events, &bytes);
    assert_eq!((code, v["result"].as_str()), (200, Some("accepted")), "{v}");
    let digest = json(&format!("{base}/api/v1/status"))["state_digest"].clone();
    let (code, v) = http_post(&events, &bytes);
    assert_eq!(
        (code, v["result"].as_str()),
        (200, Some("duplicate")),
        "{v}"
    );
    assert_eq!(
        json(&format!("{base}/api/v1/status"))["state_digest"],
        digest
    );
    let entries = wait_queue(&base, "cancelled", Duration::from_secs(5), |e| {
        state_of(e, "refused-pkg") == Some("cancelled")
    });
    assert_eq!(entries.len(), 1);
    assert_eq!(http_get(&format!("{base}/health")).0, 200);
    // The CLI views work against it.
    let ls = pacmesh_ok(&["queue", "ls", "--node", &base]);
    assert!(
        ls.contains("refused-pkg") && ls.contains("cancelled"),
        "{ls}"
    );
    let st = pacmesh_ok(&["status", "--node", &base]);
    assert!(st.contains("queue") && st.contains("1 cancelled"), "{st}");
}

#[test]
fn failed_build_reports_and_kill_9_restart_publishes_once() {
    if skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    let (mut node, base) = mesh.start(&[]);
    let add = |dir: &Path| {
        pacmesh_ok(&[
            "queue",
            "add",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &base,
            "--dir",
            s(dir),
        ])
        .trim()
        .to_string()
    };
    // A failing build reports Failed with the log tail; the next entry still builds and publishes.
    add(&write_pkgbuild(
        t.path(),
        "broken-pkg",
        "echo 'compiler exploded here' >&2; false",
    ));
    add(&write_pkgbuild(t.path(), "first-pkg", "true"));
    let entries = wait_queue(&base, "first published", Duration::from_secs(300), |e| {
        state_of(e, "first-pkg") == Some("published") && state_of(e, "broken-pkg") == Some("failed")
    });
    let broken = entries.iter().find(|e| e["name"] == "broken-pkg").unwrap();
    let reason = broken["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("compiler exploded here"),
        "the log tail is in the reason: {reason}"
    );
    wait_served(&base);
    let db_url = format!("{base}/test/os/x86_64/test.db");
    let (code, db_before) = http_get(&db_url);
    assert_eq!(code, 200);

    // A slow build, killed with SIGKILL while it runs.
    add(&write_pkgbuild(t.path(), "slow-pkg", "sleep 4"));
    wait_queue(&base, "slow claimed", Duration::from_secs(120), |e| {
        state_of(e, "slow-pkg") == Some("claimed")
    });
    std::thread::sleep(Duration::from_millis(1500));
    node.signal("-KILL");
    node.wait_exit(Duration::from_secs(10))
        .map(|_| ())
        .unwrap_or(());
    drop(node);

    let (_node, base) = mesh.start(&[]);
    // The repository served before the kill is served again at once.
    let (code, db_again) = http_get(&format!("{base}/test/os/x86_64/test.db"));
    assert_eq!(code, 200);
    assert_eq!(
        db_again, db_before,
        "generation 1 stays served while the slow build reruns"
    );
    let entries = wait_queue(&base, "slow published", Duration::from_secs(300), |e| {
        state_of(e, "slow-pkg") == Some("published")
    });
    wait_served(&base);
    let st = json(&format!("{base}/api/v1/status"));
    let gens = st["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 1, "{st}");
    assert_eq!(
        gens[0]["generation"], 2,
        "one generation per published build: {st}"
    );
    assert_eq!(gens[0]["packages"], 2, "{st}");
    let (code, db_after) = http_get(&format!("{base}/test/os/x86_64/test.db"));
    assert_eq!(code, 200);
    assert_ne!(db_after, db_before, "generation 2 is served");
    // The slow entry was built by exactly one completed attempt.
    let slow = entries.iter().find(|e| e["name"] == "slow-pkg").unwrap();
    let detail = json(&format!(
        "{base}/api/v1/entries/{}",
        slow["id"].as_str().unwrap()
    ));
    let built: Vec<&Value> = detail["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "built")
        .collect();
    assert_eq!(built.len(), 1, "{detail:#}");
}
