//! `pacmesh queue why` and the review gate (`CI_HUMAN_REVIEW`) against a real `pacmesh node`
//! process building a packages tree: why a package is published, failed (with its log tail)
//! or unknown; a version bump of a reviewed folder builds at once; a change beyond
//! pkgver/pkgrel/checksums waits (never claimed) until a maintainer signs `queue approve`,
//! which a non-maintainer key cannot do; `queue why` shows the diff awaiting review.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::time::Duration;

use common::aur_standin::{commit_dir, write};
use common::node_proc::*;
use serde_json::Value;

fn pkgbuild(name: &str, ver: &str, build: &str) -> String {
    format!(
        "pkgname={name}\npkgver={ver}\npkgrel=1\npkgdesc='review test'\narch=('any')\nlicense=('MIT')\n\
         build() {{\n  {build}\n}}\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/x\" <<<'{name}'\n}}\n"
    )
}

fn newest<'a>(entries: &'a [Value], name: &str) -> Option<&'a Value> {
    entries
        .iter()
        .filter(|e| e["name"] == name)
        .max_by_key(|e| e["enqueued_at"].as_u64())
}

fn newest_state<'a>(entries: &'a [Value], name: &str) -> Option<&'a str> {
    newest(entries, name).and_then(|e| e["status"]["state"].as_str())
}

fn why(base: &str, pkg: &str) -> Value {
    let out = pacmesh_ok(&["queue", "why", pkg, "--node", base, "--json"]);
    serde_json::from_str(&out).unwrap()
}

#[test]
fn queue_why_and_review_gate_on_a_tree() {
    if !(have("bwrap") && have("makepkg")) {
        eprintln!("SKIPPED: needs bwrap and makepkg");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("tree-work");
    write(
        &w,
        &[
            ("app/PKGBUILD", &pkgbuild("app", "1.0", "true")),
            ("app/.CI/config", "CI_HUMAN_REVIEW=true\n"),
            (
                "broken/PKGBUILD",
                &pkgbuild("broken", "1.0", "echo BROKEN-MARK; false"),
            ),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &w, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let cache = t.path().join("cache");
    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&[]);
    let sync = || {
        pacmesh_ok(&[
            "tree",
            "sync",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &base,
            "--git",
            &url,
            "--cache-dir",
            s(&cache),
        ])
    };
    sync();
    wait_queue(&base, "first sync built", Duration::from_secs(300), |e| {
        newest_state(e, "tree/app") == Some("published")
            && newest_state(e, "tree/broken") == Some("failed")
    });

    // Published: the answer names the version and generation.
    let v = why(&base, "app");
    assert_eq!(v["entries"][0]["state"], "published", "{v:#}");
    assert_eq!(v["published"][0]["version"], "1.0-1", "{v:#}");
    assert!(
        v["answer"].as_str().unwrap().contains("published in test/"),
        "{v:#}"
    );
    // Failed: the reason and the tail of the log.
    let v = why(&base, "broken");
    assert_eq!(v["entries"][0]["state"], "failed", "{v:#}");
    let tail = v["entries"][0]["log_tail"].to_string();
    assert!(tail.contains("BROKEN-MARK"), "{v:#}");
    assert!(v["answer"].as_str().unwrap().contains("failed on"), "{v:#}");
    // Unknown.
    let v = why(&base, "nothing-here");
    assert!(v["entries"].as_array().unwrap().is_empty());
    assert!(
        v["answer"].as_str().unwrap().contains("not queued"),
        "{v:#}"
    );
    // Plain text works too.
    let text = pacmesh_ok(&["queue", "why", "broken", "--node", &base]);
    assert!(text.contains("failed") && text.contains("| "), "{text}");

    // A version bump of the reviewed folder needs no review: built and published.
    write(&w, &[("app/PKGBUILD", &pkgbuild("app", "1.1", "true"))]);
    commit_dir(&repo, &w, "app 1.1", 1_700_000_100);
    sync();
    wait_queue(&base, "app 1.1 published", Duration::from_secs(300), |e| {
        newest_state(e, "tree/app") == Some("published")
            && e.iter().filter(|x| x["name"] == "tree/app").count() == 2
    });
    assert_eq!(why(&base, "app")["published"][0]["version"], "1.1-1");

    // A change to what the PKGBUILD runs waits for review, and is never claimed meanwhile.
    write(
        &w,
        &[(
            "app/PKGBUILD",
            &pkgbuild("app", "1.2", "echo reviewed-change"),
        )],
    );
    commit_dir(&repo, &w, "app 1.2: new build step", 1_700_000_200);
    sync();
    let entries = wait_queue(
        &base,
        "app 1.2 awaits review",
        Duration::from_secs(30),
        |e| e.iter().filter(|x| x["name"] == "tree/app").count() == 3,
    );
    let id = newest(&entries, "tree/app").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_secs(4));
    let entries = json(&format!("{base}/api/v1/queue"))["entries"]
        .as_array()
        .cloned()
        .unwrap();
    assert_eq!(
        newest_state(&entries, "tree/app"),
        Some("review"),
        "{entries:#?}"
    );
    let e = json(&format!("{base}/api/v1/entries/{id}"));
    assert!(
        e["claims"].as_array().unwrap().is_empty(),
        "claimed before approval: {e:#}"
    );
    let v = why(&base, "app");
    let first = &v["entries"][0];
    assert_eq!(first["state"], "review", "{v:#}");
    let diff = first["review"].as_str().unwrap();
    assert!(diff.contains("+  echo reviewed-change"), "{diff}");
    assert!(diff.contains("-  true"), "{diff}");
    assert_eq!(
        v["published"][0]["version"], "1.1-1",
        "the last good version stays"
    );
    let text = pacmesh_ok(&["queue", "why", "app", "--node", &base]);
    assert!(
        text.contains("change awaiting review") && text.contains("reviewed-change"),
        "{text}"
    );

    // Only a maintainer may approve; an entry that needs no review is refused.
    let o = pacmesh(&[
        "queue",
        "approve",
        "--key",
        s(&mesh.node_key),
        "--node",
        &base,
        &id,
    ]);
    assert!(
        !o.status.success(),
        "a non-maintainer approved: {}",
        show(&o)
    );
    let failed_id = newest(&entries, "tree/broken").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let o = pacmesh(&[
        "queue",
        "approve",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        &failed_id,
    ]);
    assert!(!o.status.success());
    assert!(
        show(&o).contains("does not wait for review"),
        "{}",
        show(&o)
    );
    // The maintainer approves: it is built and published.
    let out = pacmesh_ok(&[
        "queue",
        "approve",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        &id[..16],
    ]);
    assert!(out.contains("approved entry"), "{out}");
    wait_queue(&base, "app 1.2 published", Duration::from_secs(300), |e| {
        newest_state(e, "tree/app") == Some("published")
    });
    let v = why(&base, "app");
    assert_eq!(v["published"][0]["version"], "1.2-1", "{v:#}");
    assert!(v["entries"][0]["approved_by"].is_string(), "{v:#}");
}
