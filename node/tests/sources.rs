//! Sources against local stand-ins speaking the real protocols: the AUR (RPC v5 over HTTP and
//! git smart HTTP, see `common/aur_standin.rs`), git repositories, and a `pacmesh node`
//! process building what `pacmesh queue add --aur` enqueued.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use common::aur_standin::{AurStandin, RpcMode, info};
use common::node_proc::*;
use pacmesh_node::aur::{AurClient, AurError, resolve};
use pacmesh_node::source::{self, SourceConfig, SourceError};
use pacmesh_protocol::{Name, QueueEntry, Source};

fn pkgbuild(dir: &Path, name: &str, ver: &str, depends: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    let deps: Vec<String> = depends.iter().map(|d| format!("'{d}'")).collect();
    std::fs::write(
        dir.join("PKGBUILD"),
        format!(
            "pkgname={name}\npkgver={ver}\npkgrel=1\npkgdesc='test package'\narch=('any')\nlicense=('MIT')\n\
             depends=({})\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/version\" <<<'{ver}'\n}}\n",
            deps.join(" ")
        ),
    )
    .unwrap();
}

#[test]
fn aur_rpc_batches_1000_packages_and_reports_errors_clearly() {
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    let names: Vec<String> = (0..1000)
        .map(|i| format!("generated-package-number-{i:04}"))
        .collect();
    for n in &names {
        aur.set_info(info(n, n, "1.0-1", 1_700_000_000, &[], &[]));
    }
    let c = AurClient::new(&aur.url);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let got = c.info(&refs).unwrap();
    assert_eq!(got.len(), 1000);
    assert!(
        aur.requests() <= 10,
        "{} requests for 1000 packages",
        aur.requests()
    );
    assert_eq!(got[0].last_modified, 1_700_000_000);

    // Dependencies: AUR ones resolved (dependencies first), repository ones listed apart.
    aur.set_info(info(
        "app",
        "app",
        "1.0-1",
        1,
        &["libdep>=1.0", "glibc"],
        &["tooldep"],
    ));
    aur.set_info(info("libdep", "libdep-base", "1.0-1", 1, &["glibc"], &[]));
    aur.set_info(info("tooldep", "tooldep", "1.0-1", 1, &["libdep"], &[]));
    let r = resolve(&c, &["app"]).unwrap();
    assert_eq!(r.order, vec!["libdep-base", "tooldep", "app"]);
    assert_eq!(r.external.iter().collect::<Vec<_>>(), vec!["glibc"]);
    assert!(matches!(resolve(&c, &["nope"]), Err(AurError::NotFound(n)) if n == "nope"));
    // A cycle is reported, not followed forever.
    aur.set_info(info("cyc-a", "cyc-a", "1-1", 1, &["cyc-b"], &[]));
    aur.set_info(info("cyc-b", "cyc-b", "1-1", 1, &["cyc-a"], &[]));
    let e = resolve(&c, &["cyc-a"]).unwrap_err().to_string();
    assert!(
        e.contains("cycle") && e.contains("cyc-a -> cyc-b -> cyc-a"),
        "{e}"
    );

    aur.set_mode(RpcMode::Error("Too many package results.".into()));
    let e = c.info(&["app"]).unwrap_err();
    assert_eq!(e.to_string(), "AUR RPC error: Too many package results.");
    assert!(!e.is_transient());
    aur.set_mode(RpcMode::Malformed);
    let e = c.info(&["app"]).unwrap_err();
    assert!(
        matches!(e, AurError::Malformed { .. }) && e.to_string().contains("malformed answer"),
        "{e}"
    );
    aur.set_mode(RpcMode::ServerError);
    let e = c.info(&["app"]).unwrap_err();
    assert!(
        e.to_string().contains("HTTP 500") && e.is_transient(),
        "{e}"
    );
    let e = c.info(&["bad name!"]).unwrap_err();
    assert!(e.to_string().contains("not a valid package name"), "{e}");
    // Nobody listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = AurClient::new(&url).info(&["app"]).unwrap_err();
    assert!(
        matches!(e, AurError::Unreachable { .. }) && e.is_transient(),
        "{e}"
    );
}

#[test]
fn aur_sources_are_fetched_over_git_smart_http_and_pinned() {
    if !have("git") {
        eprintln!("SKIPPED: git is missing (git http-backend serves the stand-in)");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    let w = t.path().join("work/hello");
    pkgbuild(&w, "hello", "1.0", &[]);
    let c1 = aur.push("hello", &w, "one");
    let mut cfg = SourceConfig::new(t.path().join("git"));
    cfg.aur_url = aur.url.clone();
    let entry = |pkgbase: &str| {
        QueueEntry::new(
            Name::new("test").unwrap(),
            Source::Aur {
                pkgbase: Name::new(pkgbase).unwrap(),
            },
        )
    };
    let blobs = pacmesh_node::store::MemStore::new();
    let f = source::fetch(
        &entry("hello"),
        &blobs,
        &cfg,
        &t.path().join("o1"),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(f.commit.as_deref(), Some(c1.as_str()));
    assert!(
        std::fs::read_to_string(f.dir.join("PKGBUILD"))
            .unwrap()
            .contains("pkgver=1.0")
    );
    // A new commit is seen by the next fetch.
    pkgbuild(&w, "hello", "2.0", &[]);
    let c2 = aur.push("hello", &w, "two");
    let f = source::fetch(
        &entry("hello"),
        &blobs,
        &cfg,
        &t.path().join("o2"),
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(f.commit.as_deref(), Some(c2.as_str()));
    // A package base the AUR does not have: the real AUR serves an empty repository.
    git2::Repository::init_bare(t.path().join("aur/ghost.git")).unwrap();
    let e = source::fetch(
        &entry("ghost"),
        &blobs,
        &cfg,
        &t.path().join("o3"),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not (or no longer) in the AUR"),
        "{e}"
    );
    // No repository at all (HTTP 404): a clear, permanent error.
    let e = source::fetch(
        &entry("absent"),
        &blobs,
        &cfg,
        &t.path().join("o4"),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(e.to_string().contains("absent.git"), "{e}");
    // Unreachable host: transient (retried later), not a failure of the entry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    cfg.aur_url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let e = source::fetch(
        &entry("hello"),
        &blobs,
        &cfg,
        &t.path().join("o5"),
        &AtomicBool::new(false),
    )
    .unwrap_err();
    assert!(
        matches!(e, SourceError::Network(_)) && e.is_transient(),
        "{e:?}"
    );
}

#[test]
fn queue_add_aur_builds_the_aur_dependency_first() {
    if !(have("bwrap") && have("makepkg") && have("git")) {
        eprintln!("SKIPPED: needs bwrap, makepkg and git");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    let work = t.path().join("work");
    pkgbuild(&work.join("libdep"), "libdep", "1.0", &[]);
    pkgbuild(&work.join("app"), "app", "1.0", &["libdep>=1.0", "glibc"]);
    let dep_commit = aur.push("libdep", &work.join("libdep"), "libdep 1.0");
    let app_commit = aur.push("app", &work.join("app"), "app 1.0");
    aur.set_info(info("libdep", "libdep", "1.0-1", 1_700_000_000, &[], &[]));
    aur.set_info(info(
        "app",
        "app",
        "1.0-1",
        1_700_000_000,
        &["libdep>=1.0", "glibc"],
        &[],
    ));

    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&["--aur-url", &aur.url]);
    let o = pacmesh(&[
        "queue",
        "add",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        "--aur",
        "app",
        "--aur-url",
        &aur.url,
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("aur/libdep: enqueued as a dependency"),
        "{err}"
    );
    assert!(
        err.contains("glibc"),
        "repository dependencies are named: {err}"
    );
    let app_id = String::from_utf8_lossy(&o.stdout).trim().to_string();

    let entries = wait_queue(&base, "both published", Duration::from_secs(300), |e| {
        state_of(e, "aur/app") == Some("published")
            && state_of(e, "aur/libdep") == Some("published")
    });
    let detail = |name: &str| {
        let id = entries.iter().find(|e| e["name"] == name).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        json(&format!("{base}/api/v1/entries/{id}"))
    };
    let (dep, app) = (detail("aur/libdep"), detail("aur/app"));
    assert_eq!(app["id"], app_id.as_str());
    let built = |d: &serde_json::Value| {
        d["reports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["outcome"] == "built")
            .cloned()
            .unwrap()
    };
    // Pinned: the commit built is recorded.
    assert_eq!(built(&dep)["source_commit"], dep_commit.as_str());
    assert_eq!(built(&app)["source_commit"], app_commit.as_str());
    // Dependency first: app was claimed only after libdep's build was reported.
    let app_claimed = app["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["time"].as_u64().unwrap())
        .min()
        .unwrap();
    assert!(
        app_claimed >= built(&dep)["time"].as_u64().unwrap(),
        "app claimed at {app_claimed} before libdep was built: {dep:#} {app:#}"
    );

    // Enqueuing it again reuses the published dependency instead of building it twice.
    let o = pacmesh(&[
        "queue",
        "add",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        "--aur",
        "app",
        "--aur-url",
        &aur.url,
    ]);
    assert!(o.status.success(), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("aur/libdep: already published"), "{err}");
}
