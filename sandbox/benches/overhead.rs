//! `cargo bench -p pacmesh-sandbox`: what the sandbox costs.
//!
//! 1. A trivial PKGBUILD built N times with plain `makepkg --nodeps` and N
//!    times with [`Builder`] (host profile: copy of the folder, phase 1
//!    `.SRCINFO` in bwrap, phase 3 `makepkg` in bwrap, hashing),
//!    interleaved so machine load hits both alike. Prints the means, the
//!    ratio and the added milliseconds (targets: < 1.2x, < 300 ms).
//!
//!    Baseline user switch: makepkg refuses to run as root, so when the bench
//!    runs as root the plain build runs under `setpriv --reuid 1000 --regid
//!    1000 --clear-groups`, which only changes ids: no namespace, no mount.
//!    That is the fairest (harshest) baseline, since every namespace and
//!    mount cost is then counted as sandbox overhead. (`unshare --user
//!    --map-user=1000` would move part of the sandbox's own cost into the
//!    baseline.) As a non-root user the plain build just runs makepkg.
//!
//! 2. The chroot profile's copy-on-write layer: create the layer dirs,
//!    start a process in a new user+mount namespace with overlayfs mounted
//!    over a base root (`/usr` as the lower layer: large, never copied),
//!    wait for it, remove the layer. Target < 200 ms.
//!
//! `PACMESH_BENCH_ITERS` sets N (default 5).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pacmesh_sandbox::overlay::Layer;
use pacmesh_sandbox::{BuildConfig, Builder};

const PKGBUILD: &str = r#"pkgname=pacmesh-bench
pkgver=1
pkgrel=1
pkgdesc="trivial package for the sandbox overhead benchmark"
arch=(any)
license=(MIT)
package() {
  install -Dm644 /dev/stdin "$pkgdir/usr/share/pacmesh-bench/data" <<<"bench"
}
"#;

fn mean(v: &[Duration]) -> f64 {
    v.iter().map(|d| d.as_secs_f64() * 1000.0).sum::<f64>() / v.len() as f64
}

fn plain_build(root: &Path, i: usize, as_root: bool) -> Duration {
    plain_build_with(root, i, as_root, false)
}

/// `with_srcinfo`: also run the phase-1 `.SRCINFO` script first, as the sandbox's
/// phase 1 does, to isolate the cost of the sandbox machinery itself.
fn plain_build_with(root: &Path, i: usize, as_root: bool, with_srcinfo: bool) -> Duration {
    let dir = root.join(format!("plain-{i}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("PKGBUILD"), PKGBUILD).unwrap();
    for sub in ["out", "work", "src"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    if as_root {
        assert!(
            Command::new("chown")
                .args(["-R", "1000:1000"])
                .arg(&dir)
                .status()
                .unwrap()
                .success()
        );
    }
    let makepkg = || {
        if as_root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
                "makepkg",
            ]);
            c
        } else {
            Command::new("makepkg")
        }
    };
    let t = Instant::now();
    if with_srcinfo {
        // The same phase-1 script the sandbox runs, unsandboxed.
        let mut c = if as_root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "1000",
                "--regid",
                "1000",
                "--clear-groups",
                "bash",
            ]);
            c
        } else {
            Command::new("bash")
        };
        let out = c
            .args(["-c", pacmesh_sandbox::build::FAST_SRCINFO_SCRIPT, "srcinfo"])
            .current_dir(&dir)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let mut c = makepkg();
    c.args(["--nodeps", "--noconfirm", "--noprogressbar", "--nocolor"])
        .current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &dir)
        .env("LANG", "C.UTF-8")
        .env("PKGEXT", ".pkg.tar.zst")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .env("PKGDEST", dir.join("out"))
        .env("BUILDDIR", dir.join("work"))
        .env("SRCDEST", dir.join("src"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let st = c.status().unwrap();
    let el = t.elapsed();
    assert!(st.success(), "plain makepkg failed in {}", dir.display());
    std::fs::remove_dir_all(&dir).unwrap();
    el
}

fn main() {
    let iters: usize = std::env::var("PACMESH_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    if let Err(e) = pacmesh_sandbox::preflight() {
        println!("SKIP sandbox benchmark: {e}");
        return;
    }
    let as_root = unsafe { libc::geteuid() } == 0;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pkg = tmp.path().join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("PKGBUILD"), PKGBUILD).unwrap();
    let mut cfg = BuildConfig::new(tmp.path().join("work"), tmp.path().join("sources"));
    cfg.source_date_epoch = 1_700_000_000;
    let builder = Builder::new(cfg);

    // Warm-up (page cache, first exec of everything).
    plain_build(tmp.path(), 999, as_root);
    let r = builder.build(&pkg, &mut |_| {});
    assert!(r.outcome.is_success(), "{}", r.log);
    r.cleanup().unwrap();

    let (mut plain, mut sandboxed, mut plain2) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..iters {
        plain.push(plain_build(tmp.path(), i, as_root));
        plain2.push(plain_build_with(tmp.path(), i, as_root, true));
        let t = Instant::now();
        let r = builder.build(&pkg, &mut |_| {});
        sandboxed.push(t.elapsed());
        assert!(r.outcome.is_success(), "{}", r.log);
        r.cleanup().unwrap();
    }
    let (p, s) = (mean(&plain), mean(&sandboxed));
    println!("makepkg trivial package, {iters} iterations each (interleaved):");
    println!(
        "  plain makepkg --nodeps ({}): mean {p:.0} ms",
        if as_root {
            "setpriv --reuid 1000"
        } else {
            "as the current user"
        }
    );
    println!("  sandboxed, host profile (srcinfo + build phases): mean {s:.0} ms");
    println!(
        "  ratio {:.2}x (target < 1.2x), added {:.0} ms per build (target < 300 ms)",
        s / p,
        s - p
    );

    let p2 = mean(&plain2);
    println!(
        "  plain phase-1 script + makepkg --nodeps (the same two runs, unsandboxed): mean {p2:.0} ms"
    );
    println!(
        "  => the sandbox machinery itself (bwrap x2, folder copy, hashing, .BUILDINFO read) adds {:.0} ms ({:.2}x); the rest is phase 1",
        s - p2,
        s / p2
    );

    // Chroot layer setup + teardown.
    let mut layer_times = Vec::new();
    let mut bare = Vec::new();
    for i in 0..iters.max(10) {
        let t = Instant::now();
        let st = Command::new("true").status().unwrap();
        bare.push(t.elapsed());
        assert!(st.success());
        let t = Instant::now();
        let layer =
            Layer::create(Path::new("/usr"), &tmp.path().join(format!("layer-{i}"))).unwrap();
        let mut c = Command::new("true");
        layer.attach(&mut c).unwrap();
        let st = c.status();
        layer.remove().unwrap();
        layer_times.push(t.elapsed());
        match st {
            Ok(s) if s.success() => {}
            other => {
                println!(
                    "chroot layer: overlayfs in a user namespace is unavailable here ({other:?})"
                );
                return;
            }
        }
    }
    let (l, b) = (mean(&layer_times), mean(&bare));
    println!(
        "chroot copy-on-write layer (overlayfs over /usr, {} iterations): setup+mount+teardown mean {l:.1} ms \
         (spawning `true` alone: {b:.1} ms; target < 200 ms)",
        layer_times.len()
    );
}
