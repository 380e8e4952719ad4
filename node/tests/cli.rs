//! The `pacmesh` binary as a user runs it: exit codes, one-line errors, files on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pacmesh_repo::package::testutil::SyntheticPackage;

fn pacmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pacmesh"))
        .args(args)
        .env("XDG_DATA_HOME", "/nonexistent-pacmesh-test")
        .output()
        .expect("run pacmesh")
}

fn ok(args: &[&str]) -> String {
    let out = pacmesh(args);
    assert!(
        out.status.success(),
        "pacmesh {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a failing command and returns its stderr, checking the exit code and that the reason
/// is one line.
fn fails(args: &[&str], code: i32) -> String {
    let out = pacmesh(args);
    assert_eq!(out.status.code(), Some(code), "pacmesh {args:?}: {out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    if code == 1 {
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "one-line reason expected: {err}"
        );
        assert!(err.starts_with("pacmesh: "), "{err}");
    }
    err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn keygen(dir: &Path) -> PathBuf {
    let key = dir.join("node.key");
    ok(&["key", "gen", "--out", s(&key)]);
    key
}

#[test]
fn key_gen_show_openpgp() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("k/node.key");
    let out = ok(&["key", "gen", "--out", s(&key)]);
    let public = out
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap()
        .trim()
        .to_string();
    let node_id = out
        .lines()
        .find_map(|l| l.strip_prefix("node id:"))
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(public.len(), 64);
    assert!(node_id.starts_with("12D3KooW"));

    // The same key shows the same identities; the fingerprint matches the exported key.
    let shown = ok(&["key", "show", "--key", s(&key)]);
    assert!(
        shown.contains(&public) && shown.contains(&node_id),
        "{shown}"
    );
    let fpr = ok(&["key", "show", "--key", s(&key), "--fingerprint"])
        .trim()
        .to_string();
    assert_eq!(fpr.len(), 40);
    let armored = ok(&[
        "key",
        "openpgp",
        "--key",
        s(&key),
        "--uid",
        "Test <t@example.invalid>",
    ]);
    assert!(
        armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----"),
        "{armored}"
    );
    assert_eq!(
        pacmesh_repo::sign::fingerprint_of(armored.as_bytes()).unwrap(),
        fpr
    );

    // Never overwrite; refuse a key others can read.
    let err = fails(&["key", "gen", "--out", s(&key)], 1);
    assert!(err.contains("refusing to overwrite"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = fails(&["key", "show", "--key", s(&key)], 1);
    assert!(err.contains("chmod 600"), "{err}");
    let err = fails(&["key", "show", "--key", s(&t.path().join("missing"))], 1);
    assert!(err.contains("cannot read key file"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    fails(&["repo", "add"], 2);
    fails(&["no-such-command"], 2);
    fails(&["build", "--profile", "vm", "x"], 2);
    fails(&["queue", "add", "--key", "k"], 2);
    fails(
        &["queue", "add", "--key", "k", "--dir", "a", "--aur", "b"],
        2,
    );
}

#[test]
fn repo_add_update_downgrade_remove() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let key = keygen(t.path());
    let a1 = SyntheticPackage::new("alpha", "1.0-1")
        .write_to(&repo)
        .unwrap();
    let b1 = SyntheticPackage::rich("beta", "1:2.0-3")
        .write_to(&repo)
        .unwrap();
    let db = repo.join("test.db.tar.zst");

    let out = ok(&["repo", "add", "--key", s(&key), s(&db), s(&a1), s(&b1)]);
    assert!(out.contains("alpha 1.0-1: added (signed)"), "{out}");
    for f in [
        "test.db",
        "test.db.sig",
        "test.files",
        "test.files.sig",
        "test.db.tar.zst.sig",
    ] {
        assert!(repo.join(f).exists(), "{f} missing");
    }
    assert!(pacmesh_repo::package::signature_path(&a1).exists());

    // The database's signature verifies with the exported key, through inspect.
    let asc = t.path().join("key.asc");
    std::fs::write(&asc, ok(&["key", "openpgp", "--key", s(&key)])).unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", "--pubkey", s(&asc), s(&db)])).unwrap();
    assert_eq!(report["kind"], "database");
    assert_eq!(report["signature"]["state"], "valid", "{report}");
    assert_eq!(report["parsed"]["count"], 2);
    assert_eq!(report["parsed"]["entries"]["beta"]["version"], "1:2.0-3");

    // Update keeps the old file unless --remove; a downgrade is refused and changes nothing.
    let a2 = SyntheticPackage::new("alpha", "1.1-1")
        .write_to(&repo)
        .unwrap();
    let out = ok(&["repo", "add", "--key", s(&key), s(&db), s(&a2)]);
    assert!(out.contains("updated from 1.0-1"), "{out}");
    assert!(a1.exists());
    let before = std::fs::read(&db).unwrap();
    let err = fails(&["repo", "add", s(&db), s(&a1)], 1);
    assert!(err.contains("nothing changed"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    let out = ok(&[
        "repo",
        "add",
        "--allow-downgrade",
        "--remove",
        s(&db),
        s(&a1),
    ]);
    assert!(out.contains("removed"), "{out}");
    assert!(!a2.exists(), "--remove deletes the replaced file");

    // Remove: unknown names change nothing; known ones go.
    let before = std::fs::read(&db).unwrap();
    let err = fails(&["repo", "remove", s(&db), "beta", "gamma"], 1);
    assert!(err.contains("gamma"), "{err}");
    assert_eq!(std::fs::read(&db).unwrap(), before);
    ok(&["repo", "remove", s(&db), "beta"]);
    let report: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", s(&db)])).unwrap();
    assert_eq!(report["parsed"]["count"], 1);
    // Written without a key: the old signature must not be left beside the new database.
    assert_eq!(report["signature"]["state"], "absent");
}

#[test]
fn repo_add_bad_inputs_change_nothing() {
    let t = tempfile::tempdir().unwrap();
    let db = t.path().join("x.db.tar.zst");
    let good = SyntheticPackage::new("good", "1-1")
        .write_to(t.path())
        .unwrap();
    ok(&["repo", "add", s(&db), s(&good)]);
    let before = std::fs::read(&db).unwrap();

    let not_pkg = t.path().join("notes-1-1-any.pkg.tar.zst");
    std::fs::write(&not_pkg, b"this is not a package").unwrap();
    let truncated = t.path().join("trunc-1-1-any.pkg.tar.zst");
    let other = SyntheticPackage::new("trunc", "1-1").archive_bytes();
    std::fs::write(&truncated, &other[..other.len() / 2]).unwrap();
    let other_new = SyntheticPackage::new("fresh", "1-1")
        .write_to(t.path())
        .unwrap();
    for bad in [&not_pkg, &truncated, &t.path().join("missing.pkg.tar.zst")] {
        // Mixed with a good new package: all or nothing.
        fails(&["repo", "add", s(&db), s(&other_new), s(bad)], 1);
        assert_eq!(std::fs::read(&db).unwrap(), before, "{}", bad.display());
    }
    let err = fails(
        &[
            "repo",
            "add",
            "--key",
            s(&t.path().join("nokey")),
            s(&db),
            s(&good),
        ],
        1,
    );
    assert!(err.contains("key"), "{err}");
    let err = fails(&["repo", "add", s(&t.path().join("x.zip")), s(&good)], 1);
    assert!(!err.is_empty());
}

#[test]
fn inspect_each_kind() {
    let t = tempfile::tempdir().unwrap();
    let pkg = SyntheticPackage::rich("gamma", "2.0-1")
        .write_to(t.path())
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", "--json", s(&pkg)])).unwrap();
    assert_eq!(v["kind"], "package");
    assert_eq!(v["parsed"]["pkginfo"]["pkgname"], "gamma");
    assert_eq!(
        v["blake3"],
        blake3::hash(&std::fs::read(&pkg).unwrap())
            .to_hex()
            .as_str()
    );
    assert_eq!(v["signature"]["state"], "absent");

    let srcinfo = t.path().join(".SRCINFO");
    std::fs::write(
        &srcinfo,
        "pkgbase = demo\n\tpkgver = 1.2\n\tpkgrel = 3\n\tepoch = 1\n\tarch = x86_64\n\tdepends_x86_64 = zlib\n\npkgname = demo-a\n\npkgname = demo-b\n\tdepends_x86_64 =\n",
    )
    .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", s(&srcinfo)])).unwrap();
    assert_eq!(v["kind"], "srcinfo");
    assert_eq!(v["parsed"]["version"], "1:1.2-3");
    assert_eq!(
        v["parsed"]["pkgnames"],
        serde_json::json!(["demo-a", "demo-b"])
    );
    let human = ok(&["inspect", s(&srcinfo)]);
    assert!(human.contains("pkgbase: demo"), "{human}");

    // Content sniffing when the name says nothing.
    let anon = t.path().join("anon");
    std::fs::write(&anon, "pkgname = x\npkgver = 1-1\nbuilddate = 1\n").unwrap();
    let v: serde_json::Value = serde_json::from_str(&ok(&["inspect", "--json", s(&anon)])).unwrap();
    assert_eq!(v["kind"], "pkginfo");

    let broken = t.path().join("broken/.SRCINFO");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        "pkgbase = demo\n\tpkgver = 1:2\n\tpkgrel = 1\npkgname = demo\n",
    )
    .unwrap();
    let err = fails(&["inspect", s(&broken)], 1);
    assert!(err.contains("line"), "{err}");
    let err = fails(&["inspect", "/etc/hostname"], 1);
    assert!(err.contains("not a .SRCINFO"), "{err}");
    fails(&["inspect", s(t.path())], 1);
}

#[test]
fn build_prints_artifacts_and_is_reproducible() {
    let have = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("bwrap") || !have("makepkg") {
        eprintln!("SKIPPED: bwrap or makepkg missing");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/packages/pacmesh-split");
    let data = t.path().join("data");
    let mut outs = Vec::new();
    for n in 0..2 {
        let out = t.path().join(format!("out{n}"));
        let printed = ok(&[
            "build",
            "--quiet",
            "--data-dir",
            s(&data),
            "--out",
            s(&out),
            "--source-date-epoch",
            "1700000000",
            s(&example),
        ]);
        let lines: Vec<&str> = printed.lines().collect();
        assert_eq!(lines.len(), 2, "two split packages: {printed}");
        for l in &lines {
            let (hash, path) = l.split_once("  ").unwrap();
            assert_eq!(
                hash,
                blake3::hash(&std::fs::read(path).unwrap())
                    .to_hex()
                    .as_str()
            );
        }
        outs.push(printed.replace(&format!("out{n}"), "out"));
    }
    assert_eq!(outs[0], outs[1], "same epoch, same bytes");
    let err = fails(&["build", "--data-dir", s(&data), s(t.path())], 1);
    assert!(err.contains("no PKGBUILD"), "{err}");
}
