//! Named schedules and manual triggers against a real `pacmesh node` process: a watched tree
//! is synced by the node itself; a `[[schedule]]` firing every 2 s enqueues the
//! `CI_ON_TRIGGER` folders of that name and only those (not stacked on a waiting build), and
//! `queue why` shows the next firing; `queue add --tree URL [--all]` and `queue add --all`.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::time::{Duration, Instant};

use common::aur_standin::{commit_dir, write};
use common::node_proc::*;
use serde_json::Value;

fn pkgbuild(name: &str) -> String {
    format!(
        "pkgname={name}\npkgver=1\npkgrel=1\narch=('any')\nlicense=('MIT')\n\
         package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/x\" <<<'{name}'\n}}\n"
    )
}

fn live<'a>(entries: &'a [Value], name: &str) -> Vec<&'a Value> {
    entries
        .iter()
        .filter(|e| e["name"] == name && e["status"]["state"] != "cancelled")
        .collect()
}

#[test]
fn a_schedule_fires_and_enqueues_its_trigger_folders_only() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("tree-work");
    write(
        &work,
        &[
            ("t-fast/PKGBUILD", &pkgbuild("t-fast")),
            ("t-fast/.CI/config", "CI_ON_TRIGGER=fast\n"),
            ("t-daily/PKGBUILD", &pkgbuild("t-daily")),
            ("t-daily/.CI/config", "CI_ON_TRIGGER=daily\n"),
            ("t-plain/PKGBUILD", &pkgbuild("t-plain")),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &work, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());

    let mesh = Mesh::new(t.path());
    let cfg = t.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[watch]\ninterval_secs = 1\nkey = \"{}\"\n[[watch.tree]]\nurl = \"{url}\"\n\
             [[schedule]]\nname = \"fast\"\nevery = \"2s\"\n",
            mesh.maintainer.display()
        ),
    )
    .unwrap();
    // No builds: the entries stay waiting, which is what this test looks at.
    let (_node, base) = mesh.start(&["--config", s(&cfg), "--no-build"]);
    // The node syncs the tree by itself (first sync: every folder).
    let entries = wait_queue(&base, "first sync", Duration::from_secs(30), |e| {
        ["tree/t-fast", "tree/t-daily", "tree/t-plain"]
            .iter()
            .all(|n| !live(e, n).is_empty())
    });
    // Cancel them, so that a firing has something to do (a waiting build is not stacked on).
    for e in &entries {
        pacmesh_ok(&[
            "queue",
            "cancel",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &base,
            e["id"].as_str().unwrap(),
        ]);
    }
    let entries = wait_queue(&base, "fast fired", Duration::from_secs(20), |e| {
        live(e, "tree/t-fast").len() == 1
    });
    assert!(live(&entries, "tree/t-daily").is_empty(), "{entries:#?}");
    assert!(live(&entries, "tree/t-plain").is_empty(), "{entries:#?}");
    // Several more firings: nothing stacked on the waiting t-fast, nothing else enqueued.
    std::thread::sleep(Duration::from_secs(5));
    let q = json(&format!("{base}/api/v1/queue"));
    let entries = q["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "{entries:#?}");
    assert_eq!(live(entries, "tree/t-fast").len(), 1);
    // queue why: the tree, the folder's trigger and the next firing.
    let v: Value = serde_json::from_str(&pacmesh_ok(&[
        "queue", "why", "t-fast", "--node", &base, "--json",
    ]))
    .unwrap();
    let w = v["watched"].as_array().unwrap();
    assert!(
        w.iter()
            .any(|x| x["source"] == "tree" && x["on_trigger"] == "fast"),
        "{v:#}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sched = w.iter().find(|x| x["source"] == "schedule").unwrap();
    assert_eq!(sched["name"], "fast");
    let next = sched["next_at"].as_u64().unwrap();
    assert!(next + 3 >= now && next <= now + 3, "{sched:#} (now {now})");
    let text = pacmesh_ok(&["queue", "why", "t-fast", "--node", &base]);
    assert!(
        text.contains("schedule   fast (every 2s): next firing"),
        "{text}"
    );
}

#[test]
fn queue_add_tree_and_all() {
    if !(have("bwrap") && have("makepkg")) {
        eprintln!("SKIPPED: needs bwrap and makepkg");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("tree-work");
    write(
        &work,
        &[
            ("q-one/PKGBUILD", &pkgbuild("q-one")),
            ("q-two/PKGBUILD", &pkgbuild("q-two")),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &work, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&[]);
    let key = s(&mesh.maintainer).to_string();
    let cache = t.path().join("cache");
    let add = |extra: &[&str]| {
        let mut a = vec!["queue", "add", "--key", &key, "--node", &base];
        a.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_pacmesh"))
            .args(&a)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .unwrap()
    };
    // Misuse: clear usage errors.
    let o = add(&["--all", "--dir", "."]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be used with"),
        "{}",
        show(&o)
    );
    let o = add(&["--tree", &url, "--timeout", "5"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("apply to one entry"));
    let o = add(&["--all"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing is published"),
        "{}",
        show(&o)
    );

    // --tree URL: the first sync, every folder.
    let o = add(&["--tree", &url]);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("q-one") && out.contains("q-two"), "{out}");
    wait_queue(&base, "both published", Duration::from_secs(300), |e| {
        state_of(e, "tree/q-one") == Some("published")
            && state_of(e, "tree/q-two") == Some("published")
    });
    // Again: nothing changed.
    let o = add(&["--tree", &url]);
    assert!(o.status.success(), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("nothing to enqueue"),
        "{}",
        show(&o)
    );
    // --all: every folder regardless.
    let o = add(&["--tree", &url, "--all", "--json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 2, "{v:#}");
    // queue add --all: every published package base, from its last source.
    let deadline = Instant::now() + Duration::from_secs(120);
    while json(&format!("{base}/api/v1/queue"))["entries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| matches!(e["status"]["state"].as_str(), Some("waiting" | "claimed")))
    {
        assert!(Instant::now() < deadline, "the rebuilds did not finish");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The rebuilds of unchanged folders were published with a pkgrel bump (the same version
    // again would be refused by the publisher: one file name, other bytes).
    let published_version = |pkg: &str| -> String {
        let v: Value = serde_json::from_str(&pacmesh_ok(&[
            "queue", "why", pkg, "--node", &base, "--json",
        ]))
        .unwrap();
        v["published"][0]["version"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let wait_versions = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while published_version("q-one") != want || published_version("q-two") != want {
            assert!(
                Instant::now() < deadline,
                "rebuilds not published as {want}: {}",
                pacmesh_ok(&["queue", "why", "q-one", "--node", &base, "--json"])
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    };
    wait_versions("1-1.1");
    let o = add(&["--all", "--json"]);
    assert!(o.status.success(), "{}", show(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["tree/q-one", "tree/q-two"], "{v:#}");
    let q = json(&format!("{base}/api/v1/queue"));
    assert_eq!(q["entries"].as_array().unwrap().len(), 6);
    // ... and `queue add --all` bumps again.
    wait_versions("1-1.2");
}
