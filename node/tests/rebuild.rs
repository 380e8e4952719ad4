//! Rebuilds against a `pacmesh node` process on 127.0.0.1, real makepkg in bubblewrap, real git
//! and (as root) real pacman: a `[deploy NAME]` of an unchanged folder is published with a new
//! pkgrel and pacman upgrades to it; a broken PKGBUILD fails once (no retry) and the old
//! version stays installable; rebuild triggers and soname changes cascade, and mutual triggers
//! stop; `CI_PKGBUILD_SOURCE` folders are built from the AUR, a git URL or a GitLab project with
//! the folder's `.CI/` on top, unreachable ones fail alone; download failures are retried with
//! backoff.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::aur_standin::{AurStandin, commit_dir, write};
use common::node_proc::*;
use serde_json::Value;

/// A one-file package; `extra` goes into the PKGBUILD before `package()`.
fn pkgbuild(name: &str, ver: &str, extra: &str) -> String {
    format!(
        "pkgname={name}\npkgver={ver}\npkgrel=1\npkgdesc='{name} package'\narch=('any')\nlicense=('MIT')\n{extra}\n\
         package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/version\" <<<'{ver}'\n}}\n"
    )
}

fn db(base: &str) -> pacmesh_repo::db::Database {
    let (code, bytes) = http_get(&format!(
        "{base}/test/os/{}/test.db",
        std::env::consts::ARCH
    ));
    assert_eq!(code, 200);
    pacmesh_repo::db::Database::from_archives("test", &bytes, None).unwrap()
}

fn version(base: &str, pkg: &str) -> Option<String> {
    db(base).get(pkg).map(|e| e.version.to_string())
}

/// Waits until `pkg` is published at `want`.
fn wait_version(base: &str, pkg: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, _) = http_get(&format!(
            "{base}/test/os/{}/test.db",
            std::env::consts::ARCH
        ));
        if code == 200 && version(base, pkg).as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pkg} not published at {want} within {timeout:?} (now {:?}): {:#}",
            if code == 200 {
                version(base, pkg)
            } else {
                None
            },
            json(&format!("{base}/api/v1/why/{pkg}"))
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sync(mesh: &Mesh, base: &str, url: &str, cache: &Path) -> String {
    let o = pacmesh(&[
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
    ]);
    assert!(o.status.success(), "{}", show(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn newest<'a>(entries: &'a [Value], name: &str) -> &'a Value {
    entries
        .iter()
        .filter(|e| e["name"] == name)
        .max_by_key(|e| e["enqueued_at"].as_u64())
        .unwrap_or_else(|| panic!("no entry {name}: {entries:#?}"))
}

fn state<'a>(entries: &'a [Value], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .filter(|e| e["name"] == name)
        .max_by_key(|e| e["enqueued_at"].as_u64())
        .and_then(|e| e["status"]["state"].as_str())
}

/// The installed version of `pkg` in a pacman root (its local database).
fn installed(root: &Path, pkg: &str) -> Option<String> {
    for e in std::fs::read_dir(root.join("var/lib/pacman/local"))
        .ok()?
        .flatten()
    {
        let desc = std::fs::read_to_string(e.path().join("desc")).unwrap_or_default();
        let field = |f: &str| {
            desc.split(&format!("%{f}%\n"))
                .nth(1)
                .and_then(|r| r.lines().next())
                .map(str::to_string)
        };
        if field("NAME").as_deref() == Some(pkg) {
            return field("VERSION");
        }
    }
    None
}

fn config(mesh: &Mesh, text: &str) -> std::path::PathBuf {
    let p = mesh.dir.join("node.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn forced_rebuild_gets_a_new_pkgrel_and_a_failure_keeps_the_old_version() {
    if skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("tree-work");
    write(
        &w,
        &[
            ("README.md", "a tree\n"),
            ("hello/PKGBUILD", &pkgbuild("hello", "1.0", "")),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &w, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let cache = t.path().join("cache");
    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&[]);
    sync(&mesh, &base, &url, &cache);
    wait_version(&base, "hello", "1.0-1", Duration::from_secs(60));

    let pacman = (!skip(&["pacman", "pacman-key", "gpg"], true)).then(|| {
        let asc = t.path().join("node.asc");
        std::fs::write(
            &asc,
            pacmesh_ok(&["key", "openpgp", "--key", s(&mesh.node_key)]),
        )
        .unwrap();
        let fpr = pacmesh_ok(&["key", "show", "--key", s(&mesh.node_key), "--fingerprint"]);
        let server = format!("{base}/$repo/os/$arch");
        Pacman::new(&t.path().join("pacman"), "test", &server, &asc, fpr.trim())
    });
    if let Some(p) = &pacman {
        let o = p.install(&["hello"]);
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(installed(&p.root(), "hello").as_deref(), Some("1.0-1"));
    }

    // [deploy hello] of the unchanged folder: rebuilt as 1.0-1.1, published, pacman upgrades.
    write(&w, &[("README.md", "a tree, again\n")]);
    commit_dir(&repo, &w, "chore: rebuild [deploy hello]", 1_700_000_100);
    let out = sync(&mesh, &base, &url, &cache);
    assert!(
        out.contains("build   hello (deploy in commit") && out.contains("rebuilt as 1.0-1.1"),
        "{out}"
    );
    wait_version(&base, "hello", "1.0-1.1", Duration::from_secs(60));
    let why = json(&format!("{base}/api/v1/why/hello"));
    assert_eq!(why["entries"][0]["pkgrel_bump"], "1.0-1/1", "{why:#}");
    if let Some(p) = &pacman {
        let o = p.install(&["hello"]);
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(installed(&p.root(), "hello").as_deref(), Some("1.0-1.1"));
    }

    // A broken PKGBUILD: failed once (a build failure is not retried), the reason is reported,
    // and the repository keeps 1.0-1.1.
    write(
        &w,
        &[(
            "hello/PKGBUILD",
            &pkgbuild(
                "hello",
                "1.1",
                "build() {\n  echo compile error >&2\n  false\n}\n",
            ),
        )],
    );
    commit_dir(&repo, &w, "feat(hello): 1.1 (broken)", 1_700_000_200);
    sync(&mesh, &base, &url, &cache);
    let entries = wait_queue(&base, "hello fails", Duration::from_secs(60), |e| {
        e.iter().filter(|x| x["name"] == "tree/hello").count() == 3
            && state(e, "tree/hello") == Some("failed")
    });
    let id = newest(&entries, "tree/hello")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let detail = json(&format!("{base}/api/v1/entries/{id}"));
    let claims: Vec<u64> = detail["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["attempt"].as_u64().unwrap())
        .collect();
    assert_eq!(claims, [1], "a build failure is not retried: {detail:#}");
    let why = json(&format!("{base}/api/v1/why/hello"));
    let answer = why["answer"].as_str().unwrap();
    assert!(
        answer.contains("hello 1.0-1.1 is in test/") && answer.contains("failed"),
        "{answer}"
    );
    assert!(
        why["entries"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("phase build"),
        "{why:#}"
    );
    assert_eq!(version(&base, "hello").as_deref(), Some("1.0-1.1"));
    if let Some(p) = &pacman {
        let fresh = Pacman::new(
            &t.path().join("pacman2"),
            "test",
            &format!("{base}/$repo/os/$arch"),
            &t.path().join("node.asc"),
            pacmesh_ok(&["key", "show", "--key", s(&mesh.node_key), "--fingerprint"]).trim(),
        );
        let o = fresh.install(&["hello"]);
        assert!(o.status.success(), "{}", show(&o));
        assert_eq!(
            installed(&fresh.root(), "hello").as_deref(),
            Some("1.0-1.1")
        );
        assert_eq!(installed(&p.root(), "hello").as_deref(), Some("1.0-1.1"));
    }
}

#[test]
fn rebuild_triggers_and_soname_changes_cascade_and_mutual_triggers_stop() {
    if skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let w = t.path().join("tree-work");
    let libx =
        |ver: &str, so: &str| pkgbuild("libx", ver, &format!("provides=('libfoo.so={so}-64')"));
    write(
        &w,
        &[
            // libx and app-trig trigger each other; app-so links against libfoo.so.
            ("libx/PKGBUILD", &libx("1.0", "1")),
            ("libx/.CI/config", "CI_REBUILD_TRIGGERS=app-trig\n"),
            ("app-trig/PKGBUILD", &pkgbuild("app-trig", "1.0", "")),
            (
                "app-trig/.CI/config",
                "CI_REBUILD_TRIGGERS=libx:unrelated\n",
            ),
            (
                "app-so/PKGBUILD",
                &pkgbuild("app-so", "1.0", "depends=('libfoo.so=1-64')"),
            ),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &w, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let cache = t.path().join("cache");
    let mesh = Mesh::new(t.path());
    // The node enqueues cascades with the maintainer's key (its own is only a publisher).
    let cfg = config(
        &mesh,
        &format!("[rebuild]\nkey = {:?}\n", s(&mesh.maintainer)),
    );
    let (_node, base) = mesh.start(&["--config", s(&cfg)]);
    sync(&mesh, &base, &url, &cache);
    for p in ["libx", "app-trig", "app-so"] {
        wait_version(&base, p, "1.0-1", Duration::from_secs(90));
    }
    // First publishes trigger nothing (nothing was built against a new package).
    std::thread::sleep(Duration::from_secs(1));
    let q = json(&format!("{base}/api/v1/queue"));
    assert_eq!(q["entries"].as_array().unwrap().len(), 3, "{q:#}");

    // libx 2.0 changes its soname version: app-trig (CI_REBUILD_TRIGGERS) and app-so (soname)
    // are rebuilt with a pkgrel bump, after libx.
    write(&w, &[("libx/PKGBUILD", &libx("2.0", "2"))]);
    commit_dir(&repo, &w, "feat(libx): 2.0", 1_700_000_100);
    sync(&mesh, &base, &url, &cache);
    wait_version(&base, "libx", "2.0-1", Duration::from_secs(60));
    wait_version(&base, "app-trig", "1.0-1.1", Duration::from_secs(60));
    wait_version(&base, "app-so", "1.0-1.1", Duration::from_secs(60));
    let entries = json(&format!("{base}/api/v1/queue"))["entries"]
        .as_array()
        .unwrap()
        .clone();
    let lib_id = newest(&entries, "tree/libx")["id"]
        .as_str()
        .unwrap()
        .to_string();
    for (n, why) in [("app-trig", "CI_REBUILD_TRIGGERS"), ("app-so", "libfoo.so")] {
        let w = json(&format!("{base}/api/v1/why/{n}"));
        let e = &w["entries"][0];
        assert_eq!(e["pkgrel_bump"], "1.0-1/1", "{w:#}");
        assert_eq!(e["cascade"], serde_json::json!(["libx"]), "{w:#}");
        assert_eq!(e["after"][0]["id"], lib_id.as_str(), "{w:#}");
        assert!(w["rebuild"]["why"].as_str().unwrap().contains(why), "{w:#}");
    }
    // app-trig's new version would trigger libx again: the cascade stops there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let w = json(&format!("{base}/api/v1/why/libx"));
        if w["rebuild"]["stopped"].is_string() || Instant::now() > deadline {
            break w;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        why["answer"]
            .as_str()
            .unwrap()
            .contains("cascade stopped: libx was already rebuilt in this cascade"),
        "{why:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let q = json(&format!("{base}/api/v1/queue"));
    let n = |name: &str| {
        q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == name)
            .count()
    };
    assert_eq!(
        (n("tree/libx"), n("tree/app-trig"), n("tree/app-so")),
        (2, 2, 2),
        "{q:#}"
    );
    assert_eq!(version(&base, "libx").as_deref(), Some("2.0-1"));
}

#[test]
fn upstream_pkgbuild_sources_are_overlaid_and_bad_ones_fail_alone() {
    if skip(&["bwrap", "makepkg", "git"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    // Upstream repositories: an AUR package base, a GitLab project, a plain git repository.
    let up = |name: &str, ver: &str| {
        let d = t.path().join("upstream").join(name);
        write(
            &d,
            &[
                ("PKGBUILD", &pkgbuild(name, ver, "")),
                (
                    ".CI/config",
                    "CI_PKGBUILD_SOURCE=custom\nthis upstream .CI is replaced\n",
                ),
            ],
        );
        d
    };
    let aur_commit = aur.push("up-aur", &up("up-aur", "2.0"), "upstream 2.0");
    aur.push("gl-project", &up("up-gl", "3.0"), "upstream 3.0");
    aur.set_gitlab_project(42, "gl-project");
    let git_bare = t.path().join("up-git.git");
    let git_repo = git2::Repository::init_bare(&git_bare).unwrap();
    let git_commit = commit_dir(
        &git_repo,
        &up("up-git", "4.0"),
        "upstream 4.0",
        1_700_000_000,
    );

    let appended =
        "package() {\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/overlaid\" <<<'yes'\n}\n";
    let w = t.path().join("tree-work");
    write(
        &w,
        &[
            // The folder's own (stale) PKGBUILD is replaced by upstream's; its .CI/ stays.
            ("up-aur/PKGBUILD", &pkgbuild("up-aur", "1.0", "")),
            ("up-aur/.CI/config", "CI_PKGBUILD_SOURCE=aur\n"),
            ("up-aur/.CI/PKGBUILD.append", appended),
            ("up-gl/PKGBUILD", &pkgbuild("up-gl", "1.0", "")),
            ("up-gl/.CI/config", "CI_PKGBUILD_SOURCE=gitlab:42\n"),
            ("up-git/PKGBUILD", &pkgbuild("up-git", "1.0", "")),
            (
                "up-git/.CI/config",
                &format!("CI_PKGBUILD_SOURCE=file://{}\n", git_bare.display()),
            ),
            // No such GitLab project: fails at once with the reason.
            ("up-gone/PKGBUILD", &pkgbuild("up-gone", "1.0", "")),
            ("up-gone/.CI/config", "CI_PKGBUILD_SOURCE=gitlab:99\n"),
            // Nothing listens there: transient, retried, then failed with the reason.
            ("up-down/PKGBUILD", &pkgbuild("up-down", "1.0", "")),
            (
                "up-down/.CI/config",
                "CI_PKGBUILD_SOURCE=http://127.0.0.1:9/nothing.git\n",
            ),
            ("plain/PKGBUILD", &pkgbuild("plain", "1.0", "")),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &w, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let mesh = Mesh::new(t.path());
    let cfg = config(
        &mesh,
        &format!(
            "gitlab_url = {:?}\n[build]\nretry_initial_secs = 1\nretry_max_secs = 2\nmax_attempts = 2\n",
            aur.url
        ),
    );
    let (_node, base) = mesh.start(&["--config", s(&cfg), "--aur-url", &aur.url]);
    sync(&mesh, &base, &url, &t.path().join("cache"));
    let names = ["up-aur", "up-gl", "up-git", "up-gone", "up-down", "plain"];
    let entries = wait_queue(&base, "tree done", Duration::from_secs(90), |e| {
        names
            .iter()
            .all(|n| matches!(state(e, &format!("tree/{n}")), Some("published" | "failed")))
    });
    for (n, v) in [
        ("up-aur", "2.0-1"),
        ("up-gl", "3.0-1"),
        ("up-git", "4.0-1"),
        ("plain", "1.0-1"),
    ] {
        assert_eq!(
            state(&entries, &format!("tree/{n}")),
            Some("published"),
            "{n}: {entries:#?}"
        );
        assert_eq!(version(&base, n).as_deref(), Some(v), "{n}");
    }
    // The folder's PKGBUILD.append was applied to the AUR's PKGBUILD.
    let d = db(&base);
    let (code, pkg) = http_get(&format!(
        "{base}/test/os/{}/{}",
        std::env::consts::ARCH,
        d.get("up-aur").unwrap().filename
    ));
    assert_eq!(code, 200);
    let f = t.path().join("up-aur.pkg.tar.zst");
    std::fs::write(&f, pkg).unwrap();
    let info = pacmesh_repo::package::read_package(&f).unwrap();
    assert!(
        info.files.iter().any(|p| p == "usr/share/overlaid"),
        "{:?}",
        info.files
    );
    // The upstream commit is recorded in the built event.
    let commit_of = |n: &str| {
        let id = newest(&entries, &format!("tree/{n}"))["id"]
            .as_str()
            .unwrap()
            .to_string();
        let d = json(&format!("{base}/api/v1/entries/{id}"));
        d["reports"][0]["source_commit"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(commit_of("up-aur"), aur_commit);
    assert_eq!(commit_of("up-git"), git_commit.to_string());
    let reason = |n: &str| {
        newest(&entries, &format!("tree/{n}"))["status"]["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        reason("up-gone").contains("no such GitLab project"),
        "{}",
        reason("up-gone")
    );
    let r = reason("up-down");
    assert!(
        r.contains("transient failure (attempt 2 of 2, giving up)")
            && r.contains("CI_PKGBUILD_SOURCE=http://127.0.0.1:9"),
        "{r}"
    );
}

/// A tiny HTTP server for one file on `port`, until the returned flag is dropped.
fn serve_file(port: u16, body: &'static str) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    l.set_nonblocking(true).unwrap();
    let s2 = stop.clone();
    std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            match l.accept() {
                Ok((mut c, _)) => {
                    c.set_nonblocking(false).unwrap();
                    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 4096];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    stop
}

#[test]
fn download_failures_are_retried_with_backoff_and_build_failures_are_not() {
    if skip(&["bwrap", "makepkg", "curl"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    // A port nobody listens on (yet).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let net = t.path().join("net");
    write(
        &net,
        &[(
            "PKGBUILD",
            &format!(
                "pkgname=netpkg\npkgver=1.0\npkgrel=1\narch=('any')\nlicense=('MIT')\n\
                 source=(\"data-$pkgver.txt::http://127.0.0.1:{port}/data.txt\")\nsha256sums=('SKIP')\n\
                 package() {{\n  install -Dm644 data-$pkgver.txt \"$pkgdir/usr/share/netpkg/data\"\n}}\n"
            ),
        )],
    );
    let broken = t.path().join("broken");
    write(
        &broken,
        &[(
            "PKGBUILD",
            &pkgbuild("broken", "1.0", "build() {\n  false\n}\n"),
        )],
    );
    let mesh = Mesh::new(t.path());
    let cfg = config(
        &mesh,
        "[build]\nretry_initial_secs = 2\nretry_max_secs = 4\nmax_attempts = 6\n",
    );
    let (_node, base) = mesh.start(&["--config", s(&cfg)]);
    for d in [&net, &broken] {
        pacmesh_ok(&[
            "queue",
            "add",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &base,
            "--dir",
            s(d),
        ]);
    }
    // The download fails on the network: the entry waits for a retry, and says so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let why = loop {
        let w = json(&format!("{base}/api/v1/why/net"));
        if w["entries"][0]["retry"].is_object() {
            break w;
        }
        assert!(Instant::now() < deadline, "no retry shown: {w:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let e = &why["entries"][0];
    assert_eq!(e["retry"]["max_attempts"], 6, "{why:#}");
    assert!(
        e["retry"]["reason"].as_str().unwrap().contains("network"),
        "{why:#}"
    );
    // The server comes up: a later attempt fetches and builds it.
    let _server = serve_file(port, "downloaded\n");
    wait_version(&base, "netpkg", "1.0-1", Duration::from_secs(60));
    let q = json(&format!("{base}/api/v1/queue"));
    let id = |name: &str| {
        q["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let detail = json(&format!("{base}/api/v1/entries/{}", id("net")));
    let built = detail["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["outcome"] == "built")
        .unwrap();
    assert!(built["attempt"].as_u64().unwrap() >= 2, "{detail:#}");
    // The build failure was reported at its first attempt, never retried.
    let detail = json(&format!("{base}/api/v1/entries/{}", id("broken")));
    let reports = detail["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{detail:#}");
    assert_eq!(
        (
            reports[0]["outcome"].as_str(),
            reports[0]["attempt"].as_u64()
        ),
        (Some("failed"), Some(1)),
        "{detail:#}"
    );
}
