//! Update detection (`[watch]`) against the local AUR stand-in and a real `pacmesh node`
//! process: a watched package is built at once; bumping its PKGBUILD and `LastModified` is
//! detected and rebuilt; a change beyond pkgver/pkgrel/checksums waits for a maintainer's
//! approval; `queue why` shows what upstream has; a package the AUR does not know is reported.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "executor_env.rs"]
    pub mod executor_env;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::path::Path;
use std::time::Duration;

use common::aur_standin::{AurStandin, RpcMode, info};
use common::node_proc::*;
use serde_json::Value;

fn pkgbuild(dir: &Path, ver: &str, extra: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("PKGBUILD"),
        format!(
            "pkgname=wpkg\npkgver={ver}\npkgrel=1\npkgdesc='watched'\narch=('any')\nlicense=('MIT')\n\
             package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/wpkg/version\" <<<\"$pkgver\"\n{extra}}}\n"
        ),
    )
    .unwrap();
}

fn newest<'a>(entries: &'a [Value]) -> Option<&'a Value> {
    entries
        .iter()
        .filter(|e| e["name"] == "aur/wpkg")
        .max_by_key(|e| e["enqueued_at"].as_u64())
}

fn why(base: &str, pkg: &str) -> Value {
    let out = pacmesh_ok(&["queue", "why", pkg, "--node", base, "--json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn watched_aur_package_is_built_updated_and_reviewed() {
    if !(have("bwrap") && have("makepkg")) {
        eprintln!("SKIPPED: needs bwrap and makepkg");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    let w = t.path().join("wpkg-work");
    pkgbuild(&w, "1.0", "");
    aur.push("wpkg", &w, "1.0");
    aur.set_info(info("wpkg", "wpkg", "1.0-1", 100, &[], &[]));

    let mesh = Mesh::new(t.path());
    let cfg = t.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[watch]\naur = [\"wpkg\", \"not-in-aur\"]\ninterval_secs = 1\nkey = \"{}\"\n",
            mesh.maintainer.display()
        ),
    )
    .unwrap();
    let (_node, base) = mesh.start(&["--config", s(&cfg), "--aur-url", &aur.url]);
    let q = |what: &str, pred: &dyn Fn(&Value) -> bool| {
        wait_queue(&base, what, Duration::from_secs(300), |e| {
            newest(e).is_some_and(pred)
        })
    };
    // Built at once.
    q("first build", &|e| e["status"]["state"] == "published");
    let v = why(&base, "wpkg");
    assert_eq!(v["published"][0]["version"], "1.0-1", "{v:#}");
    assert_eq!(v["upstream"]["version"], "1.0-1", "{v:#}");
    assert!(
        v["answer"].as_str().unwrap().contains("up to date"),
        "{v:#}"
    );
    let v = why(&base, "not-in-aur");
    assert_eq!(v["upstream"]["reported"], "not in the AUR", "{v:#}");
    // Several rounds have run by now, each one batched RPC request; nothing was enqueued twice.
    std::thread::sleep(Duration::from_secs(3));
    let n = json(&format!("{base}/api/v1/queue"))["entries"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(n, 1, "an unchanged package is not enqueued again");
    let before = aur.requests();
    std::thread::sleep(Duration::from_secs(3));
    let rounds = aur.requests() - before;
    assert!(
        (1..=4).contains(&rounds),
        "one request per round, got {rounds} in 3 s"
    );

    // A version bump upstream: detected and rebuilt without review.
    pkgbuild(&w, "1.1", "");
    aur.push("wpkg", &w, "1.1");
    aur.set_info(info("wpkg", "wpkg", "1.1-1", 200, &[], &[]));
    wait_queue(&base, "1.1 published", Duration::from_secs(300), |_| {
        why(&base, "wpkg")["published"][0]["version"] == "1.1-1"
    });

    // A change to what the PKGBUILD runs: enqueued, but waits for review.
    pkgbuild(
        &w,
        "1.2",
        "  install -Dm644 /dev/stdin \"$pkgdir/usr/share/wpkg/new\" <<<'x'\n",
    );
    aur.push("wpkg", &w, "1.2 with a new file");
    aur.set_info(info("wpkg", "wpkg", "1.2-1", 300, &[], &[]));
    let entries = q("1.2 awaits review", &|e| e["status"]["state"] == "review");
    let id = newest(&entries).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = why(&base, "wpkg");
    let diff = v["entries"][0]["review"].as_str().unwrap();
    assert!(
        diff.contains("+  install -Dm644 /dev/stdin \"$pkgdir/usr/share/wpkg/new\""),
        "{diff}"
    );
    assert!(
        v["answer"].as_str().unwrap().contains("out of date"),
        "{v:#}"
    );
    std::thread::sleep(Duration::from_secs(3));
    let e = json(&format!("{base}/api/v1/entries/{id}"));
    assert_eq!(e["status"]["state"], "review");
    assert!(e["claims"].as_array().unwrap().is_empty());
    pacmesh_ok(&[
        "queue",
        "approve",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        &id,
    ]);
    wait_queue(&base, "1.2 published", Duration::from_secs(300), |_| {
        why(&base, "wpkg")["published"][0]["version"] == "1.2-1"
    });
}

/// In process, no builds: a node whose key is not a maintainer only reports; a maintainer key
/// enqueues once; RPC errors leave the recorded state alone (the change is seen next round);
/// the example config's `[watch]` section parses.
#[test]
fn updates_are_reported_without_a_maintainer_key_and_errors_change_nothing() {
    use common::executor_env::{Env, MAINT};
    use pacmesh_node::keys::NodeKey;
    use pacmesh_node::watch::{WatchSection, check_once, observed};
    let env = Env::new();
    let aur = AurStandin::start(&env.dir.path().join("aur"));
    aur.set_info(info("rpkg", "rpkg-base", "2.0-1", 5, &[], &[]));
    let w = WatchSection {
        aur: vec!["rpkg".into()],
        ..Default::default()
    };
    let r = check_once(&env.core, &w, &aur.url, None).unwrap();
    assert_eq!(r.reported, vec!["rpkg".to_string()]);
    assert!(r.enqueued.is_empty());
    assert_eq!(env.core.ingest().state().entries().count(), 0);
    let v = pacmesh_node::why::why(&env.core, "rpkg", pacmesh_protocol::Timestamp::now());
    let answer = v["answer"].as_str().unwrap();
    assert!(answer.contains("may not enqueue"), "{answer}");
    assert_eq!(v["upstream"]["version"], "2.0-1");

    let maint = NodeKey::from_seed(&[MAINT; 32]);
    let r = check_once(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    let r = check_once(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty(), "not enqueued twice: {r:?}");
    assert_eq!(env.core.ingest().state().entries().count(), 1);

    // Errors: clear, and the recorded state is kept.
    let before = observed(&env.core.data_dir, "rpkg").unwrap();
    aur.set_info(info("rpkg", "rpkg-base", "2.1-1", 6, &[], &[]));
    for (mode, want) in [
        (
            RpcMode::Error("Too many package results.".into()),
            "Too many",
        ),
        (RpcMode::Malformed, ""),
        (RpcMode::ServerError, "500"),
    ] {
        aur.set_mode(mode);
        let e = format!(
            "{:#}",
            check_once(&env.core, &w, &aur.url, Some(&maint)).unwrap_err()
        );
        assert!(e.contains(want), "{e}");
        assert_eq!(observed(&env.core.data_dir, "rpkg").unwrap(), before);
    }
    aur.set_mode(RpcMode::Normal);
    let r = check_once(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert_eq!(
        r.enqueued.len(),
        1,
        "the change is seen once the RPC answers: {r:?}"
    );

    // The example configuration parses, [watch] included.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/node.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let file: pacmesh_node::config::ConfigFile = toml::from_str(&text).unwrap();
    assert!(file.watch.aur.is_empty());
    let file: pacmesh_node::config::ConfigFile =
        toml::from_str("[watch]\naur = [\"a\"]\ninterval_secs = 5\nreview = false\n").unwrap();
    assert_eq!(file.watch.aur, vec!["a".to_string()]);
    assert!(
        toml::from_str::<pacmesh_node::config::ConfigFile>("[watch]\naur_pkgs = []\n").is_err()
    );
}
