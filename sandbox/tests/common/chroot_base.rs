//! A chroot-profile base root assembled from a Debian (or Arch) host: `/usr` hard-linked (no
//! data copied), a small `/etc`, an empty pacman database. Shared by the sandbox's chroot test
//! and the node's (`node/tests/chroot_deps.rs` includes this file by path).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
pub fn make_base(dir: &Path) -> Option<PathBuf> {
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
