//! Real builds with the host profile: examples, reproducibility, VCS sources
//! and the source cache. Skipped (with a notice) without bwrap/makepkg.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use pacmesh_sandbox::{Outcome, Phase};

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            for (n, d) in snapshot(&p) {
                v.push((format!("{name}/{n}"), d));
            }
        } else {
            v.push((name, std::fs::read(&p).unwrap()));
        }
    }
    v.sort();
    v
}

#[test]
fn examples_build_reproducibly_in_two_work_dirs() {
    if !sandbox_ready("examples_build_reproducibly_in_two_work_dirs") {
        return;
    }
    let expected: &[(&str, &[&str])] = &[
        ("pacmesh-hello", &["pacmesh-hello-1.0.0-1-any.pkg.tar.zst"]),
        (
            "pacmesh-split",
            &[
                "pacmesh-split-bin-2.3.1-2-any.pkg.tar.zst",
                "pacmesh-split-doc-2.3.1-2-any.pkg.tar.zst",
            ],
        ),
        ("pacmesh-epoch", &["pacmesh-epoch-1:0.9-1-any.pkg.tar.zst"]),
    ];
    for (name, files) in expected {
        let dir = examples().join(name);
        let before = snapshot(&dir);
        let t1 = tempfile::tempdir().unwrap();
        let t2 = tempfile::tempdir().unwrap();
        let r1 = build(&config(t1.path()), &dir);
        assert_success(&r1);
        let r2 = build(&config(t2.path()), &dir);
        assert_success(&r2);
        assert_eq!(
            snapshot(&dir),
            before,
            "{name}: the PKGBUILD folder was modified"
        );
        let names: Vec<_> = r1.artifacts.iter().map(|a| a.file_name.as_str()).collect();
        assert_eq!(&names, files, "{name}");
        for (a, b) in r1.artifacts.iter().zip(&r2.artifacts) {
            assert_eq!(a.file_name, b.file_name);
            assert_eq!(a.blake3, b.blake3, "{}: not reproducible", a.file_name);
            assert_eq!(
                std::fs::read(&a.path).unwrap(),
                std::fs::read(&b.path).unwrap()
            );
            assert_eq!(a.sha256.len(), 64);
            assert!(a.size > 0);
            let bi = a.buildinfo.as_deref().expect("package has a .BUILDINFO");
            assert!(bi.contains("builddate = 1700000000"), "{bi}");
            assert!(bi.contains("builddir = /build/work"), "{bi}");
            assert!(
                bi.contains("packager = pacmesh test node <test@pacmesh.invalid>"),
                "{bi}"
            );
        }
        let si = r1.srcinfo.as_ref().unwrap();
        assert_eq!(si.pkgbase(), *name);
        assert!(r1.buildinfo.is_some());
        r1.cleanup().unwrap();
        r2.cleanup().unwrap();
    }
}

#[test]
fn a_different_epoch_gives_different_bytes() {
    if !sandbox_ready("a_different_epoch_gives_different_bytes") {
        return;
    }
    let dir = examples().join("pacmesh-hello");
    let t = tempfile::tempdir().unwrap();
    let mut c = config(t.path());
    let a = build(&c, &dir);
    c.source_date_epoch += 1;
    let b = build(&c, &dir);
    assert_success(&a);
    assert_success(&b);
    assert_ne!(a.artifacts[0].blake3, b.artifacts[0].blake3);
}

fn git(dir: &Path, args: &[&str]) {
    let st = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .env("GIT_AUTHOR_DATE", "2020-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2020-01-01T00:00:00Z")
        .status()
        .unwrap();
    assert!(st.success(), "git {args:?}");
}

#[test]
fn git_sources_are_fetched_once_and_reused_offline() {
    if !sandbox_ready("git_sources_are_fetched_once_and_reused_offline") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let upstream = t.path().join("upstream");
    std::fs::create_dir_all(&upstream).unwrap();
    git(&upstream, &["init", "-q", "-b", "main"]);
    std::fs::write(upstream.join("hello.txt"), "hello from git\n").unwrap();
    git(&upstream, &["add", "hello.txt"]);
    git(&upstream, &["commit", "-q", "-m", "one"]);
    let pkg = t.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("PKGBUILD"),
        format!(
            r#"pkgname=pacmesh-vcs-test
pkgver=1
pkgrel=1
arch=(any)
license=(MIT)
source=("hello::git+file://{up}")
sha256sums=(SKIP)
pkgver() {{ cd hello; printf 'r%s' "$(git rev-list --count HEAD)"; }}
package() {{ install -Dm644 "$srcdir/hello/hello.txt" "$pkgdir/usr/share/pacmesh-vcs-test/hello.txt"; }}
"#,
            up = upstream.display()
        ),
    )
    .unwrap();
    let mut c = config(t.path());
    c.fetch_ro_binds = vec![upstream.clone()];
    let r1 = build(&c, &pkg);
    assert_success(&r1);
    assert_eq!(
        r1.artifacts[0].file_name,
        "pacmesh-vcs-test-r1-1-any.pkg.tar.zst"
    );
    let entry = r1.source_cache_dir.clone().unwrap();
    assert!(
        entry.join("hello").join("HEAD").is_file(),
        "bare git mirror in the source cache"
    );
    assert!(
        entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pacmesh-vcs-test-")
    );
    // The PKGBUILD folder keeps pkgver=1 (makepkg rewrote only the copy).
    assert!(
        std::fs::read_to_string(pkg.join("PKGBUILD"))
            .unwrap()
            .contains("pkgver=1\n")
    );

    // Second build: upstream is gone; the cached mirror must be used.
    std::fs::rename(&upstream, t.path().join("moved")).unwrap();
    let r2 = build(&c, &pkg);
    assert_success(&r2);
    assert_eq!(r2.source_cache_dir, r1.source_cache_dir);
    assert_eq!(r1.artifacts[0].blake3, r2.artifacts[0].blake3);
}

#[test]
fn missing_pkgbuild_is_a_prepare_error() {
    let t = tempfile::tempdir().unwrap();
    let r = build(&config(t.path()), t.path());
    assert!(matches!(r.outcome, Outcome::SandboxError { .. }));
    assert_eq!(r.failed_phase, Some(Phase::Prepare));
    assert!(r.log.contains("no PKGBUILD"), "{}", r.log);
}

#[test]
fn log_lines_are_streamed_live() {
    if !sandbox_ready("log_lines_are_streamed_live") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut lines = Vec::new();
    let b = pacmesh_sandbox::Builder::new(config(t.path()));
    let r = b.build(&examples().join("pacmesh-hello"), &mut |l| {
        lines.push(l.to_string())
    });
    assert_success(&r);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Finished making: pacmesh-hello")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("==> pacmesh: phase build"))
    );
    assert_eq!(lines.join("\n") + "\n", r.log);
}

#[test]
fn missing_bwrap_is_a_sandbox_error() {
    if !sandbox_ready("missing_bwrap_is_a_sandbox_error") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let c = config(t.path());
    let pkg = t.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(
        pkg.join("PKGBUILD"),
        "pkgname=x\npkgver=1\npkgrel=1\narch=(any)\nsource=(https://example.invalid/x.tar.gz)\nsha256sums=(SKIP)\npackage() { :; }\n",
    )
    .unwrap();
    let mut bad = c.clone();
    bad.bwrap = "/nonexistent/bwrap".into();
    let r = build(&bad, &pkg);
    match &r.outcome {
        Outcome::SandboxError { msg } => assert!(msg.contains("/nonexistent/bwrap"), "{msg}"),
        o => panic!("{o:?}\n{}", r.log),
    }
    assert_eq!(r.failed_phase, Some(Phase::Srcinfo));
}
