//! Chaotic-style interferes (`.CI/`) applied inside the sandbox before the build, and the
//! hooks after it. Skipped (with a notice) without bwrap/makepkg.

mod common;

use std::path::Path;

use common::*;
use pacmesh_sandbox::{Outcome, Phase};

fn folder(root: &Path, files: &[(&str, &str)]) -> std::path::PathBuf {
    let d = root.join("pkg");
    for (p, text) in files {
        let f = d.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
    d
}

const PKGBUILD: &str = "pkgname=interfered\npkgver=1.0\npkgrel=1\npkgdesc='original description'\n\
arch=('any')\nlicense=('MIT')\nsource=('data.txt')\nsha256sums=('SKIP')\n\
package() {\n  install -Dm644 data.txt \"$pkgdir/usr/share/interfered/data.txt\"\n}\n";

const PATCH: &str = "--- a/data.txt\n+++ b/data.txt\n@@ -1 +1 @@\n-original data\n+patched data\n";

fn files(path: &Path, pkg: &str) -> Vec<String> {
    pacmesh_repo::package::read_package(path.join(pkg))
        .unwrap()
        .files
}

#[test]
fn interferes_are_applied_in_order_and_the_bump_changes_pkgrel() {
    if !sandbox_ready("interferes_are_applied_in_order_and_the_bump_changes_pkgrel") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = folder(
        t.path(),
        &[("PKGBUILD", PKGBUILD), ("data.txt", "original data\n")],
    );
    let ci = |p: &str, text: &str| {
        std::fs::create_dir_all(dir.join(".CI")).unwrap();
        std::fs::write(dir.join(".CI").join(p), text).unwrap();
    };
    // prepare edits the PKGBUILD (like the corpus's munt/downgrade) and pushes a command.
    ci(
        "prepare",
        "sed -E -e \"s&^pkgdesc=.*&pkgdesc='changed by prepare'&\" -i PKGBUILD\n$CAUR_PUSH 'export PUSHED=from-caur-push'\n",
    );
    ci("interfere.patch", PATCH);
    ci("PKGBUILD.prepend", "_from_prepend=yes\n");
    ci(
        "PKGBUILD.append",
        "package() {\n  install -Dm644 data.txt \"$pkgdir/usr/share/interfered/data.txt\"\n  \
         echo \"$_from_prepend $PUSHED\" | install -Dm644 /dev/stdin \"$pkgdir/usr/share/interfered/append\"\n}\n",
    );
    ci(
        "config",
        "CI_PKGBUILD_SOURCE=custom\nCI_PACKAGE_BUMP=1.0-1/2\nCI_UNKNOWN_KEY=x\n",
    );
    ci("on-success.sh", "echo hook-success-ran\n");
    ci("on-failure.sh", "echo hook-failure-ran\n");
    let r = build(&config(t.path()), &dir);
    assert_success(&r);
    let names: Vec<&str> = r.artifacts.iter().map(|a| a.file_name.as_str()).collect();
    assert_eq!(names, ["interfered-1.0-1.2-any.pkg.tar.zst"], "{}", r.log);
    let out = r.artifacts[0].path.parent().unwrap();
    let info = pacmesh_repo::package::read_package(&r.artifacts[0].path).unwrap();
    assert_eq!(info.pkginfo.pkgdesc.as_deref(), Some("changed by prepare"));
    assert!(
        files(out, &names[0])
            .iter()
            .any(|f| f == "usr/share/interfered/append")
    );
    // The package's contents: patched data, prepend's variable and the pushed export seen by
    // the appended package().
    let tmp = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("bsdtar")
        .arg("-xf")
        .arg(&r.artifacts[0].path)
        .arg("-C")
        .arg(tmp.path())
        .status()
        .unwrap();
    assert!(st.success());
    let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
    assert_eq!(read("usr/share/interfered/data.txt"), "patched data\n");
    assert_eq!(read("usr/share/interfered/append"), "yes from-caur-push\n");
    assert!(
        r.log.contains("hook-success-ran") && !r.log.contains("hook-failure-ran"),
        "{}",
        r.log
    );
    assert!(r.log.contains("unknown key CI_UNKNOWN_KEY"), "{}", r.log);
    // The original folder is untouched.
    assert!(
        std::fs::read_to_string(dir.join("PKGBUILD"))
            .unwrap()
            .contains("original description")
    );
    let _ = r.cleanup();

    // A stale bump (the PKGBUILD moved on) is not applied.
    ci("config", "CI_PACKAGE_BUMP=0.9-1/2\n");
    let r = build(&config(t.path()), &dir);
    assert_success(&r);
    assert_eq!(r.artifacts[0].file_name, "interfered-1.0-1-any.pkg.tar.zst");
    assert!(r.log.contains("does not match"), "{}", r.log);
}

#[test]
fn bad_patches_skips_and_bad_configs_fail_with_a_clear_reason() {
    if !sandbox_ready("bad_patches_skips_and_bad_configs_fail_with_a_clear_reason") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let dir = folder(
        t.path(),
        &[("PKGBUILD", PKGBUILD), ("data.txt", "other data\n")],
    );
    std::fs::create_dir_all(dir.join(".CI")).unwrap();
    std::fs::write(dir.join(".CI/interfere.patch"), PATCH).unwrap();
    std::fs::write(dir.join(".CI/on-failure.sh"), "echo hook-failure-ran\n").unwrap();
    let r = build(&config(t.path()), &dir);
    assert_eq!(r.failed_phase, Some(Phase::Interfere), "{}", r.log);
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("interfere.patch does not apply"),
        "{:?}",
        r.error
    );
    assert!(r.log.contains("hook-failure-ran"), "{}", r.log);
    assert!(r.artifacts.is_empty());

    // prepare returning CI_CODE_SKIP (the corpus's chaotic-keyring does): skipped, no hook.
    std::fs::remove_file(dir.join(".CI/interfere.patch")).unwrap();
    std::fs::write(
        dir.join(".CI/prepare"),
        "# needs to be built manually\nreturn \"$CI_CODE_SKIP\"\n",
    )
    .unwrap();
    let r = build(&config(t.path()), &dir);
    assert_eq!(r.failed_phase, Some(Phase::Interfere));
    assert_eq!(r.outcome, Outcome::Failed { code: 123 });
    assert!(
        r.error.as_deref().unwrap().contains("CI_CODE_SKIP"),
        "{:?}",
        r.error
    );
    assert!(!r.log.contains("hook-failure-ran"), "{}", r.log);

    // A failing prepare, and a .CI/config with garbage.
    std::fs::write(dir.join(".CI/prepare"), "false\n").unwrap();
    let r = build(&config(t.path()), &dir);
    assert!(
        r.error.as_deref().unwrap().contains(".CI/prepare failed"),
        "{:?}",
        r.error
    );
    std::fs::remove_file(dir.join(".CI/prepare")).unwrap();
    std::fs::write(dir.join(".CI/config"), "CI_PKGBUILD_SOURCE=aur\nrm -rf /\n").unwrap();
    let r = build(&config(t.path()), &dir);
    assert_eq!(r.failed_phase, Some(Phase::Interfere));
    let e = r.error.unwrap();
    assert!(e.contains(".CI/config: line 2: not KEY=value"), "{e}");
}

/// The queue entry's rebuild bump (`BuildConfig::rebuild_bump`): applied without `.CI/`, merged
/// with `CI_PACKAGE_BUMP` (the larger count wins), replacing a PKGBUILD's own minor pkgrel, and
/// left alone when the PKGBUILD moved on.
#[test]
fn rebuild_bumps_make_a_new_pkgrel_only_for_the_published_version() {
    if !sandbox_ready("rebuild_bumps_make_a_new_pkgrel_only_for_the_published_version") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let cases: [(&str, &str, Option<&str>, &str); 5] = [
        // (pkgrel in the PKGBUILD, rebuild bump, CI_PACKAGE_BUMP, version built)
        ("1", "1.0-1/1", None, "1.0-1.1"),
        ("1", "1.0-1/2", Some("1.0-1/1"), "1.0-1.2"),
        ("1.1", "1.0-1/3", None, "1.0-1.3"),
        ("2", "1.0-1/4", None, "1.0-2"),
        ("1", "1.0-1/7; rm -rf /", None, ""),
    ];
    for (i, (rel, bump, ci, want)) in cases.iter().enumerate() {
        let root = t.path().join(format!("case{i}"));
        let pkgbuild = PKGBUILD.replace("pkgrel=1", &format!("pkgrel={rel}"));
        let mut files = vec![("PKGBUILD", pkgbuild.as_str()), ("data.txt", "data\n")];
        let conf = ci.map(|c| format!("CI_PACKAGE_BUMP={c}\n"));
        if let Some(c) = &conf {
            files.push((".CI/config", c.as_str()));
        }
        let dir = folder(&root, &files);
        let mut cfg = config(&root);
        cfg.rebuild_bump = Some(bump.to_string());
        let r = build(&cfg, &dir);
        if want.is_empty() {
            assert_eq!(r.failed_phase, Some(Phase::Interfere), "{}", r.log);
            assert!(
                r.error.as_deref().unwrap_or("").contains("VERSION/COUNT"),
                "{:?}",
                r.error
            );
            continue;
        }
        assert_success(&r);
        let names: Vec<&str> = r.artifacts.iter().map(|a| a.file_name.as_str()).collect();
        assert_eq!(
            names,
            [format!("interfered-{want}-any.pkg.tar.zst")],
            "case {i}: {}",
            r.log
        );
    }
}
