//! The chroot profile on a Debian host: the test assembles a base root from
//! the host (`/usr` hard-linked, no data copied, plus a small `/etc` and an
//! empty pacman database), builds package A, makes a local repository of it
//! with `repo-add`, then builds B (makedepends=A) whose layer gets A installed
//! by pacman from that repository.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use pacmesh_sandbox::{ChrootConfig, PacmanRepo, Profile};

fn sh(script: &str, args: &[&Path]) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A base root made from the host. Returns None (with a notice) where that is impossible.
fn make_base(dir: &Path) -> Option<PathBuf> {
    let base = dir.join("base");
    std::fs::create_dir_all(&base).unwrap();
    let t = Instant::now();
    // Hard links: no data is copied, and overlayfs never writes to a lower layer.
    // Big trees a build never needs are left out to save time.
    let script = r#"mkdir -p "$1/usr" && cd /usr && for e in *; do
        case $e in
        lib|share) mkdir -p "$1/usr/$e"; for f in "$e"/*; do
            case $f in
            lib/google-cloud-sdk|lib/jvm|lib/node_modules|share/man|share/doc|share/locale|share/icons|share/fonts) ;;
            *) cp -al "$f" "$1/usr/$f" || exit 1 ;;
            esac; done ;;
        *) cp -al "$e" "$1/usr/$e" || exit 1 ;;
        esac; done"#;
    if !sh(script, &[&base]) {
        eprintln!(
            "SKIP chroot tests: cannot hard-link /usr into {} (different filesystem?)",
            base.display()
        );
        return None;
    }
    eprintln!("base root: /usr hard-linked in {:?}", t.elapsed());
    for l in ["bin", "sbin", "lib", "lib64"] {
        let host = Path::new("/").join(l);
        if let Ok(target) = std::fs::read_link(&host) {
            std::os::unix::fs::symlink(target, base.join(l)).unwrap();
        }
    }
    for d in [
        "etc",
        "tmp",
        "proc",
        "dev",
        "build",
        "var/lib/pacman/local",
        "var/cache/pacman/pkg",
        "run",
    ] {
        std::fs::create_dir_all(base.join(d)).unwrap();
    }
    std::fs::write(base.join("var/lib/pacman/local/ALPM_DB_VERSION"), "9\n").unwrap();
    let etc = base.join("etc");
    assert!(sh(
        "cd /etc && cp -a makepkg.conf ld.so.cache ld.so.conf ld.so.conf.d alternatives nsswitch.conf hosts \"$1/\" 2>/dev/null; true",
        &[&etc]
    ));
    std::fs::write(
        etc.join("pacman.conf"),
        "[options]\nArchitecture = auto\nSigLevel = Never\n",
    )
    .unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\n").unwrap();
    Some(base)
}

#[test]
fn chroot_profile_installs_a_mesh_built_dependency_into_the_layer() {
    if !sandbox_ready("chroot_profile_installs_a_mesh_built_dependency_into_the_layer") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    if let Err(e) = pacmesh_sandbox::preflight_chroot(t.path()) {
        eprintln!("SKIP chroot test: {e}");
        return;
    }
    if pacmesh_sandbox::preflight::which("repo-add").is_none() {
        eprintln!("SKIP chroot test: repo-add (pacman) is not installed");
        return;
    }
    let Some(base) = make_base(t.path()) else {
        return;
    };

    let mut cfg = config(t.path());
    cfg.profile = Profile::Chroot(ChrootConfig::new(&base));

    // A: no dependencies, built in the chroot profile.
    let a = build(&cfg, &fixture("chroot-dep-a"));
    assert_success(&a);
    assert!(a.log.contains("install-deps skipped"), "{}", a.log);
    let a_pkg = &a.artifacts[0];
    assert_eq!(a_pkg.file_name, "pacmesh-chroot-a-1.0-1-any.pkg.tar.zst");

    // A local repository of what the mesh built (repo-add for now).
    let repo = t.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::copy(&a_pkg.path, repo.join(&a_pkg.file_name)).unwrap();
    let st = Command::new("repo-add")
        .arg("-q")
        .arg(repo.join("pacmesh-local.db.tar.gz"))
        .arg(repo.join(&a_pkg.file_name))
        .status()
        .unwrap();
    assert!(st.success(), "repo-add failed");

    // B: makedepends=A, built against it.
    let mut cc = ChrootConfig::new(&base);
    cc.repos
        .push(PacmanRepo::local("pacmesh-local", &repo, "Never"));
    cfg.profile = Profile::Chroot(cc);
    let b = build(&cfg, &fixture("chroot-dep-b"));
    assert_success(&b);
    assert!(
        b.log
            .contains("installing into the layer: pacmesh-chroot-a"),
        "{}",
        b.log
    );
    assert_eq!(
        b.artifacts[0].file_name,
        "pacmesh-chroot-b-1.0-1-any.pkg.tar.zst"
    );

    // The base root is untouched and the layer is gone.
    assert!(
        !base.join("usr/share/pacmesh-chroot-a").exists(),
        "pacman wrote into the base root"
    );
    assert!(
        !Path::new("/usr/share/pacmesh-chroot-a").exists(),
        "pacman wrote into the host"
    );
    assert!(
        std::fs::read_dir(base.join("var/lib/pacman/local"))
            .unwrap()
            .count()
            == 1
    );
    assert!(!b.work_dir.join("layer").exists(), "layer not removed");

    // The hardening holds in the chroot profile too.
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let hw = t.path().join("hostile-write");
    std::fs::create_dir_all(&hw).unwrap();
    let text = std::fs::read_to_string(fixture("hostile-write").join("PKGBUILD"))
        .unwrap()
        .replace("@OUTSIDE@", &outside.display().to_string())
        .replace("@CACHE@", &cfg.source_cache.display().to_string());
    std::fs::write(hw.join("PKGBUILD"), text).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let hn = t.path().join("hostile-net");
    std::fs::create_dir_all(&hn).unwrap();
    let text = std::fs::read_to_string(fixture("hostile-net").join("PKGBUILD"))
        .unwrap()
        .replace("@PORT@", &listener.local_addr().unwrap().port().to_string());
    std::fs::write(hn.join("PKGBUILD"), text).unwrap();
    cfg.profile = Profile::Chroot(ChrootConfig::new(&base));
    let w = build(&cfg, &hw);
    assert_success(&w);
    assert!(!w.log.contains("WROTE"), "{}", w.log);
    assert!(w.log.contains("DENIED core_pattern"), "{}", w.log);
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    assert!(!base.join("usr/pacmesh-pwned").exists() && !base.join("etc/pacmesh-pwned").exists());
    let n = build(&cfg, &hn);
    assert_success(&n);
    assert!(
        n.log.contains("NET-BLOCKED build") && !n.log.contains("NET-CONNECTED"),
        "{}",
        n.log
    );
    assert!(listener.accept().is_err());

    // Without the repository, B fails in install-deps with a clear message.
    cfg.profile = Profile::Chroot(ChrootConfig::new(&base));
    let c = build(&cfg, &fixture("chroot-dep-b"));
    assert_eq!(
        c.failed_phase,
        Some(pacmesh_sandbox::Phase::InstallDeps),
        "{}",
        c.log
    );
    assert!(
        c.error.as_deref().unwrap().contains("pacman -S"),
        "{:?}",
        c.error
    );
}
