//! The chroot profile on a Debian host: the test assembles a base root from
//! the host (`/usr` hard-linked, no data copied, plus a small `/etc` and an
//! empty pacman database), builds package A, makes a local repository of it
//! with `repo-add`, then builds B (makedepends=A) whose layer gets A installed
//! by pacman from that repository.

#[path = "common/chroot_base.rs"]
mod chroot_base;
mod common;

use std::path::Path;
use std::process::Command;

use chroot_base::make_base;
use common::*;
use pacmesh_sandbox::{ChrootConfig, PacmanRepo, Profile};

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
