//! Packages trees (Chaotic-AUR layout) synced with `pacmesh tree sync` into a `pacmesh node`
//! process: interferes applied (checked in the built packages), CI_PACKAGE_BUMP,
//! BUILDER_EXTRA_TIMEOUT, dependency order, bad folders failing alone, removed folders
//! removing all their split packages, [deploy NAME], and misspelled deploys refused whole.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::path::Path;
use std::time::Duration;

use common::aur_standin::{commit_dir, write};
use common::node_proc::*;
use serde_json::Value;

fn simple(name: &str, build: &str, depends: &str) -> String {
    format!(
        "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='tree package'\narch=('any')\nlicense=('MIT')\n\
         depends=({depends})\nbuild() {{\n  {build}\n}}\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/x\" <<<'{name}'\n}}\n"
    )
}

const SPLIT: &str = "pkgbase=lib-a\npkgname=(lib-a lib-a-doc)\npkgver=1.0\npkgrel=1\narch=('any')\nlicense=('MIT')\n\
package_lib-a() {\n  pkgdesc='library'\n  install -Dm644 /dev/stdin \"$pkgdir/usr/lib/lib-a\" <<<'a'\n}\n\
package_lib-a-doc() {\n  pkgdesc='docs'\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/doc/lib-a\" <<<'d'\n}\n";

const SPLIT_SRCINFO: &str = "pkgbase = lib-a\n\tpkgver = 1.0\n\tpkgrel = 1\n\tarch = any\n\tlicense = MIT\n\npkgname = lib-a\n\tpkgdesc = library\n\npkgname = lib-a-doc\n\tpkgdesc = docs\n";

fn db(base: &str) -> pacmesh_repo::db::Database {
    let (code, bytes) = http_get(&format!(
        "{base}/test/os/{}/test.db",
        std::env::consts::ARCH
    ));
    assert_eq!(code, 200);
    pacmesh_repo::db::Database::from_archives("test", &bytes, None).unwrap()
}

fn sync(mesh: &Mesh, base: &str, url: &str, cache: &Path) -> std::process::Output {
    pacmesh(&[
        "tree",
        "sync",
        "--key",
        s(&mesh.maintainer),
        "--node",
        base,
        "--git",
        url,
        "--cache-dir",
        s(cache),
    ])
}

fn entry<'a>(entries: &'a [Value], name: &str) -> &'a Value {
    // The newest entry of that name (the queue lists entries by id, not by time).
    entries
        .iter()
        .filter(|e| e["name"] == name)
        .max_by_key(|e| e["enqueued_at"].as_u64())
        .unwrap_or_else(|| panic!("no entry {name}: {entries:#?}"))
}

#[test]
fn tree_sync_builds_interfered_folders_bumps_and_removes() {
    if !(have("bwrap") && have("makepkg") && have("patch")) {
        eprintln!("SKIPPED: needs bwrap, makepkg and patch");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("tree-work");
    write(
        &w,
        &[
            ("README.md", "a packages tree\n"),
            // A split package with interferes and a bump.
            ("lib-a/PKGBUILD", SPLIT),
            ("lib-a/.SRCINFO", SPLIT_SRCINFO),
            (
                "lib-a/.CI/config",
                "CI_PKGBUILD_SOURCE=custom\nCI_PACKAGE_BUMP=1.0-1/1\n",
            ),
            (
                "lib-a/.CI/PKGBUILD.append",
                "package_lib-a() {\n  pkgdesc='library, interfered'\n  install -Dm644 /dev/stdin \"$pkgdir/usr/lib/lib-a\" <<<'a'\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/lib-a/appended\" <<<'yes'\n}\n",
            ),
            // Depends on lib-a: built after it.
            ("app-b/PKGBUILD", &simple("app-b", "true", "'lib-a'")),
            (
                "app-b/.SRCINFO",
                "pkgbase = app-b\n\tpkgver = 1.0\n\tpkgrel = 1\n\tarch = any\n\tdepends = lib-a\n\npkgname = app-b\n",
            ),
            (
                "app-b/.CI/prepare",
                "sed -E -e \"s&^pkgdesc=.*&pkgdesc='prepared'&\" -i PKGBUILD\n",
            ),
            // Slower than the policy's 20 s timeout, but BUILDER_EXTRA_TIMEOUT=3 gives it 60 s.
            // (20 s, not less: on a loaded 2-core machine a trivial build once took over 10 s.)
            ("slow-extra/PKGBUILD", &simple("slow-extra", "sleep 25", "")),
            ("slow-extra/.CI/config", "BUILDER_EXTRA_TIMEOUT=3\n"),
            ("slow-plain/PKGBUILD", &simple("slow-plain", "sleep 25", "")),
            // Bad folders fail alone with a clear reason.
            ("bad-config/PKGBUILD", &simple("bad-config", "true", "")),
            (
                "bad-config/.CI/config",
                "CI_PKGBUILD_SOURCE=aur\nthis line is garbage\n",
            ),
            ("bad-patch/PKGBUILD", &simple("bad-patch", "true", "")),
            (
                "bad-patch/.CI/interfere.patch",
                "--- a/nothing.txt\n+++ b/nothing.txt\n@@ -1 +1 @@\n-old\n+new\n",
            ),
            ("not-a-package/notes.txt", "no PKGBUILD here\n"),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &w, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let cache = t.path().join("cache");

    let mesh = Mesh::with_policy_args(t.path(), &["--build-timeout-secs", "20"]);
    let (_node, base) = mesh.start(&[]);
    let o = sync(&mesh, &base, &url, &cache);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("6 package folders") && out.contains("last synced never"),
        "{out}"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad-config: .CI/config: line 2: not KEY=value"),
        "{err}"
    );

    let entries = wait_queue(&base, "tree built", Duration::from_secs(600), |e| {
        let done = |n: &str| matches!(state_of(e, n), Some("published" | "failed"));
        [
            "tree/lib-a",
            "tree/app-b",
            "tree/slow-extra",
            "tree/slow-plain",
            "tree/bad-config",
            "tree/bad-patch",
        ]
        .iter()
        .all(|n| done(n))
    });
    for n in ["tree/lib-a", "tree/app-b", "tree/slow-extra"] {
        assert_eq!(
            state_of(&entries, n),
            Some("published"),
            "{n}: {entries:#?}"
        );
    }
    let reason = |n: &str| {
        entry(&entries, n)["status"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        reason("tree/slow-plain").contains("timeout"),
        "{}",
        reason("tree/slow-plain")
    );
    assert!(
        reason("tree/bad-config").contains(".CI/config: line 2: not KEY=value"),
        "{}",
        reason("tree/bad-config")
    );
    assert!(
        reason("tree/bad-patch").contains("interfere.patch does not apply"),
        "{}",
        reason("tree/bad-patch")
    );

    // The repository: the bump and the interferes are in the packages.
    let d = db(&base);
    assert_eq!(d.get("lib-a").unwrap().version.as_str(), "1.0-1.1");
    assert_eq!(d.get("lib-a-doc").unwrap().version.as_str(), "1.0-1.1");
    assert_eq!(
        d.get("lib-a").unwrap().desc.as_deref(),
        Some("library, interfered")
    );
    assert_eq!(d.get("app-b").unwrap().desc.as_deref(), Some("prepared"));
    let (code, pkg) = http_get(&format!(
        "{base}/test/os/{}/{}",
        std::env::consts::ARCH,
        d.get("lib-a").unwrap().filename
    ));
    assert_eq!(code, 200);
    let f = t.path().join("lib-a.pkg.tar.zst");
    std::fs::write(&f, pkg).unwrap();
    let info = pacmesh_repo::package::read_package(&f).unwrap();
    assert!(
        info.files.iter().any(|p| p == "usr/share/lib-a/appended"),
        "{:?}",
        info.files
    );
    // Dependency order: app-b was claimed after lib-a was built; both pinned to the commit.
    let detail = |n: &str| {
        json(&format!(
            "{base}/api/v1/entries/{}",
            entry(&entries, n)["id"].as_str().unwrap()
        ))
    };
    let (lib, app) = (detail("tree/lib-a"), detail("tree/app-b"));
    let built_time = |d: &Value| {
        d["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["outcome"] == "built")
            .unwrap()["time"]
            .as_u64()
            .unwrap()
    };
    let first_claim = |d: &Value| {
        d["claims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["time"].as_u64().unwrap())
            .min()
            .unwrap()
    };
    assert!(first_claim(&app) >= built_time(&lib), "{lib:#} {app:#}");
    let commit1 = entry(&entries, "tree/lib-a")["source"]["rev"]
        .as_str()
        .unwrap()
        .to_string();

    // Second commit: lib-a's folder is removed, app-b is unchanged but deployed by name.
    std::fs::remove_dir_all(w.join("lib-a")).unwrap();
    let c2 = commit_dir(
        &repo,
        &w,
        "chore: drop lib-a\n\n[deploy app-b]",
        1_700_000_100,
    );
    let o = sync(&mesh, &base, &url, &cache);
    assert!(o.status.success(), "{}", show(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!("last synced {}", &commit1[..12])),
        "{out}"
    );
    assert!(out.contains("build   app-b (deploy in commit"), "{out}");
    assert!(out.contains("remove  lib-a"), "{out}");
    assert!(
        !out.contains("build   slow-plain"),
        "unchanged folders are not rebuilt: {out}"
    );
    // (Rebuilt with a pkgrel bump, 1.0-1.1, since 1.0-1 is published: see tests/rebuild.rs.)
    wait_queue(&base, "app-b rebuilt", Duration::from_secs(300), |e| {
        e.iter()
            .filter(|x| {
                x["name"] == "tree/app-b"
                    && matches!(x["status"]["state"].as_str(), Some("built" | "published"))
            })
            .count()
            == 2
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = db(&base);
        if d.get("lib-a").is_none() && d.get("lib-a-doc").is_none() && d.get("app-b").is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lib-a and lib-a-doc are still published"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let q = json(&format!("{base}/api/v1/queue"));
    let app_rev = q["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "tree/app-b")
        // The queue lists entries by id; the newest enqueue is the second sync's.
        .max_by_key(|e| e["enqueued_at"].as_u64())
        .unwrap()["source"]["rev"]
        .clone();
    assert_eq!(app_rev, c2.to_string().as_str());

    // A misspelled [deploy NAME]: the sync fails whole, nothing is submitted.
    write(
        &w,
        &[("slow-plain/PKGBUILD", &simple("slow-plain", "true", ""))],
    );
    commit_dir(&repo, &w, "fix: slow-plain [deploy app-bb]", 1_700_000_200);
    let before = json(&format!("{base}/api/v1/queue"))["entries"]
        .as_array()
        .unwrap()
        .len();
    let o = sync(&mesh, &base, &url, &cache);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("[deploy app-bb] names no package folder (did you mean app-b?)"),
        "{err}"
    );
    assert_eq!(
        json(&format!("{base}/api/v1/queue"))["entries"]
            .as_array()
            .unwrap()
            .len(),
        before
    );
}

/// The Chaotic-AUR folders of the shared corpus plan as a tree: every folder found, every
/// `.CI/config` parsed, nothing built (their sources need the internet).
#[test]
fn corpus_chaotic_folders_plan_as_a_tree() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/chaotic");
    if !corpus.is_dir() {
        eprintln!("NOTICE: {} is absent; skipped", corpus.display());
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let repo = git2::Repository::init_bare(t.path().join("t.git")).unwrap();
    let c = commit_dir(&repo, &corpus, "corpus", 1_700_000_000);
    let mut plan = pacmesh_node::tree::plan(&repo, c, None, None).unwrap();
    let names: Vec<&String> = plan.folders.keys().collect();
    assert_eq!(
        names,
        [
            "chaotic-keyring",
            "downgrade",
            "freecad-git",
            "munt",
            "radare2-git",
            "upscayl-ncnn"
        ]
    );
    assert!(plan.warnings.is_empty(), "{:?}", plan.warnings);
    let f = &plan.folders["freecad-git"];
    let ci = f.ci.as_ref().unwrap();
    assert!(ci.cache_sources);
    assert_eq!(ci.rebuild_triggers, ["boost"]);
    assert_eq!(ci.package_bump.as_ref().unwrap().count, 2);
    assert_eq!(plan.build.len(), 6);
    // munt is a split package base (munt, munt-daemon, ...): its pkgnames come from .SRCINFO.
    assert!(
        plan.folders["munt"].pkgnames.len() > 1,
        "{:?}",
        plan.folders["munt"].pkgnames
    );
    let order = pacmesh_node::tree::build_order(&mut plan);
    assert_eq!(order.len(), 6);
    // Trigger selection.
    let p = pacmesh_node::tree::plan(&repo, c, Some(c), Some("daily")).unwrap();
    assert!(
        p.build.is_empty(),
        "no corpus folder has CI_ON_TRIGGER=daily"
    );
}
