//! Database behaviour: add / update / downgrade refused / remove,
//! determinism, atomicity, signing, removal of replaced files, hostile
//! databases.

mod common;

use pacmesh_repo::db::{
    AddOptions, AddOutcome, Database, DbError, DbLock, DbPaths, DetachedSigner, repo_add,
    repo_remove, sign_package_file,
};
use pacmesh_repo::package::testutil::SyntheticPackage;
use pacmesh_repo::package::{Compression, read_package, signature_path};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

fn pkg(dir: &Path, name: &str, ver: &str) -> PathBuf {
    SyntheticPackage::rich(name, ver).write_to(dir).unwrap()
}

/// Snapshot of every file in a directory (names, link targets, bytes).
fn snapshot(dir: &Path) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            match std::fs::read_link(&p) {
                Ok(t) => (name, t.display().to_string(), String::new()),
                Err(_) => (
                    name,
                    String::new(),
                    blake3::hash(&std::fs::read(&p).unwrap_or_default())
                        .to_hex()
                        .to_string(),
                ),
            }
        })
        .collect();
    v.sort();
    v
}

/// A fake signer: "SIG(" + blake3 + ")". Counts calls; can be told to fail.
struct FakeSigner {
    calls: AtomicUsize,
    fail: bool,
}
impl FakeSigner {
    fn new() -> Self {
        FakeSigner {
            calls: AtomicUsize::new(0),
            fail: false,
        }
    }
    fn sig(data: &[u8]) -> Vec<u8> {
        format!("SIG({})", blake3::hash(data).to_hex()).into_bytes()
    }
}
impl DetachedSigner for FakeSigner {
    fn sign_detached(
        &self,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err("signer is broken".into());
        }
        Ok(Self::sig(data))
    }
}

#[test]
fn add_update_downgrade_remove() {
    let d = tempfile::tempdir().unwrap();
    let dbp = d.path().join("ops.db.tar.zst");
    let a1 = pkg(d.path(), "a", "1.0-1");
    let b1 = pkg(d.path(), "b", "1.0-1");
    let r = repo_add(&dbp, &[&a1, &b1], &AddOptions::default(), None).unwrap();
    assert_eq!(r.packages[0].outcome, AddOutcome::New);
    assert!(r.written.is_some());
    assert_eq!(Database::load(&dbp).unwrap().len(), 2);

    // Newer version replaces and reports the old file.
    let a2 = pkg(d.path(), "a", "1.1-1");
    let r = repo_add(&dbp, &[&a2], &AddOptions::default(), None).unwrap();
    assert_eq!(
        r.packages[0].outcome,
        AddOutcome::Replaced {
            old_filename: "a-1.0-1-x86_64.pkg.tar.zst".into(),
            old_version: "1.0-1".parse().unwrap()
        }
    );
    assert!(a1.exists(), "old file kept without remove_old_files");
    let db = Database::load(&dbp).unwrap();
    assert_eq!(db.get("a").unwrap().version.as_str(), "1.1-1");

    // Downgrade refused, nothing changes on disk.
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let before = snapshot(d.path());
    let e = repo_add(&dbp, &[&a1], &AddOptions::default(), None).unwrap_err();
    assert!(matches!(e, DbError::Downgrade { .. }), "{e}");
    assert!(e.to_string().contains("downgrade"), "{e}");
    assert_eq!(snapshot(d.path()), before);

    // Same version, different build: refused.
    let rebuilt = SyntheticPackage::rich("a", "1.1-1").file("usr/share/extra", b"new");
    let a2b = rebuilt.write_to(&sub).unwrap();
    let e = repo_add(&dbp, &[&a2b], &AddOptions::default(), None).unwrap_err();
    assert!(matches!(e, DbError::SameVersion { .. }), "{e}");

    // The identical package again: unchanged, nothing rewritten.
    let r = repo_add(&dbp, &[&a2], &AddOptions::default(), None).unwrap();
    assert_eq!(r.packages[0].outcome, AddOutcome::Unchanged);
    assert!(r.written.is_none());
    assert_eq!(snapshot(d.path()), before);

    // Downgrade forced.
    let mut o = AddOptions::default();
    o.allow_downgrade = true;
    let r = repo_add(&dbp, &[&a1], &o, None).unwrap();
    assert!(matches!(r.packages[0].outcome, AddOutcome::Replaced { .. }));
    assert_eq!(
        Database::load(&dbp)
            .unwrap()
            .get("a")
            .unwrap()
            .version
            .as_str(),
        "1.0-1"
    );

    // Remove.
    let r = repo_remove(&dbp, &["b"], None).unwrap();
    assert_eq!(r.removed[0].name, "b");
    let db = Database::load(&dbp).unwrap();
    assert!(db.get("b").is_none());
    assert!(b1.exists(), "repo remove keeps package files");
    // Unknown name: error, nothing changes.
    let before = snapshot(d.path());
    assert!(matches!(
        repo_remove(&dbp, &["a", "nope"], None).unwrap_err(),
        DbError::NoSuchPackage { .. }
    ));
    assert_eq!(snapshot(d.path()), before);
    // Missing database.
    assert!(matches!(
        repo_remove(&d.path().join("missing.db.tar.zst"), &["a"], None).unwrap_err(),
        DbError::NotFound { .. }
    ));
    // Remove everything: an empty but valid database.
    repo_remove(&dbp, &["a"], None).unwrap();
    assert!(Database::load(&dbp).unwrap().is_empty());
}

#[test]
fn remove_old_files_deletes_replaced_package_and_sig() {
    let d = tempfile::tempdir().unwrap();
    let dbp = d.path().join("rm.db.tar.zst");
    let a1 = pkg(d.path(), "a", "1-1");
    std::fs::write(signature_path(&a1), b"oldsig").unwrap();
    repo_add(&dbp, &[&a1], &AddOptions::default(), None).unwrap();
    let a2 = pkg(d.path(), "a", "2-1");
    let mut o = AddOptions::default();
    o.remove_old_files = true;
    let r = repo_add(&dbp, &[&a2], &o, None).unwrap();
    assert!(!a1.exists());
    assert!(!signature_path(&a1).exists());
    assert!(a2.exists());
    assert_eq!(r.removed_files.len(), 2);
}

#[test]
fn deterministic_bytes_independent_of_order() {
    let d = tempfile::tempdir().unwrap();
    let pkgs: Vec<PathBuf> = (0..12)
        .map(|i| pkg(d.path(), &format!("p{i:02}"), &format!("{i}.0-1")))
        .collect();
    let infos: Vec<_> = pkgs.iter().map(|p| read_package(p).unwrap()).collect();
    for c in [
        Compression::Zstd,
        Compression::Gzip,
        Compression::Xz,
        Compression::None,
    ] {
        let mut fwd = Database::new("det");
        for i in &infos {
            fwd.add(i, false).unwrap();
        }
        let mut rev = Database::new("det");
        for i in infos.iter().rev() {
            rev.add(i, false).unwrap();
        }
        assert_eq!(fwd.archives(c).unwrap(), rev.archives(c).unwrap());
        assert_eq!(fwd.archives(c).unwrap(), fwd.archives(c).unwrap());
    }
    // On disk: two writes give the same bytes and the same blake3, and a
    // load + write round trip too.
    let o1 = tempfile::tempdir().unwrap();
    let o2 = tempfile::tempdir().unwrap();
    let mut db = Database::new("det");
    for i in &infos {
        db.add(i, false).unwrap();
    }
    let w1 = db.write(&o1.path().join("det.db.tar.zst"), None).unwrap();
    let w2 = db.write(&o2.path().join("det.db.tar.zst"), None).unwrap();
    assert_eq!(w1.db_blake3, w2.db_blake3);
    assert_eq!(w1.files_blake3, w2.files_blake3);
    assert_eq!(snapshot(o1.path()), snapshot(o2.path()));
    let back = Database::load(&o1.path().join("det.db")).unwrap();
    assert_eq!(back, db);
    let w3 = back.write(&o2.path().join("det.db.tar.zst"), None).unwrap();
    assert_eq!(w3.db_blake3, w1.db_blake3);

    // Tar headers: fixed mtime/uid/gid/owner, directory entries present.
    let bytes = std::fs::read(&w1.db).unwrap();
    let dec = zstd::decode_all(&bytes[..]).unwrap();
    let mut ar = tar::Archive::new(&dec[..]);
    let mut dirs = 0;
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
        assert_eq!(h.username().unwrap(), Some("root"));
        if h.entry_type().is_dir() {
            dirs += 1;
            assert!(e.path_bytes().ends_with(b"/"));
            assert_eq!(h.mode().unwrap(), 0o755);
        } else {
            assert_eq!(h.mode().unwrap(), 0o644);
        }
    }
    assert_eq!(dirs, 12);
}

#[test]
fn atomic_on_failure() {
    let d = tempfile::tempdir().unwrap();
    let dbp = d.path().join("at.db.tar.zst");
    let a = pkg(d.path(), "a", "1-1");
    repo_add(&dbp, &[&a], &AddOptions::default(), None).unwrap();
    let before = snapshot(d.path());

    // A broken package among good ones: nothing changes.
    let good = pkg(d.path(), "good", "1-1");
    let bad = d.path().join("bad-1-1-any.pkg.tar.zst");
    std::fs::write(&bad, b"\x28\xb5\x2f\xfdgarbage").unwrap();
    let before_with_inputs = snapshot(d.path());
    let e = repo_add(&dbp, &[&good, &bad], &AddOptions::default(), None).unwrap_err();
    assert!(matches!(e, DbError::Package(_)), "{e}");
    assert_eq!(snapshot(d.path()), before_with_inputs);

    // A failing signer: nothing changes either (no temp files left).
    let mut s = FakeSigner::new();
    s.fail = true;
    let mut o = AddOptions::default();
    o.sign_packages = true;
    let e = repo_add(&dbp, &[&good], &o, Some(&s)).unwrap_err();
    assert!(matches!(e, DbError::Sign { .. }), "{e}");
    assert_eq!(snapshot(d.path()), before_with_inputs);

    // A held lock: refused, nothing changes.
    let paths = DbPaths::new(&dbp).unwrap();
    let lock = DbLock::acquire(&paths).unwrap();
    assert!(matches!(
        repo_add(&dbp, &[&good], &AddOptions::default(), None).unwrap_err(),
        DbError::Locked { .. }
    ));
    drop(lock);
    std::fs::remove_file(&bad).unwrap();
    std::fs::remove_file(&good).unwrap();
    assert_eq!(snapshot(d.path()), before);
}

#[test]
fn signing_db_and_packages() {
    let d = tempfile::tempdir().unwrap();
    let dbp = d.path().join("sg.db.tar.zst");
    let a = pkg(d.path(), "a", "1-1");
    let b = pkg(d.path(), "b", "1-1");
    std::fs::write(signature_path(&b), b"existing-b-sig").unwrap();
    let s = FakeSigner::new();
    let mut o = AddOptions::default();
    o.sign_packages = true;
    let r = repo_add(&dbp, &[&a, &b], &o, Some(&s)).unwrap();
    // a signed, b kept its own signature; db + files signed.
    assert_eq!(
        r.packages[0].signed.as_deref(),
        Some(signature_path(&a).as_path())
    );
    assert!(r.packages[1].signed.is_none());
    assert_eq!(s.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        std::fs::read(signature_path(&a)).unwrap(),
        FakeSigner::sig(&std::fs::read(&a).unwrap())
    );
    assert_eq!(
        std::fs::read(signature_path(&b)).unwrap(),
        b"existing-b-sig"
    );
    let w = r.written.unwrap();
    for f in [&w.db, &w.files] {
        assert_eq!(
            std::fs::read(signature_path(f)).unwrap(),
            FakeSigner::sig(&std::fs::read(f).unwrap())
        );
    }
    assert_eq!(
        std::fs::read_link(d.path().join("sg.db.sig")).unwrap(),
        Path::new("sg.db.tar.zst.sig")
    );
    assert_eq!(
        std::fs::read_link(d.path().join("sg.files.sig")).unwrap(),
        Path::new("sg.files.tar.zst.sig")
    );
    // %PGPSIG% carries the package signatures.
    let db = Database::load(&dbp).unwrap();
    use base64::Engine as _;
    let b64 = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
    assert_eq!(
        db.get("b").unwrap().pgpsig.as_deref(),
        Some(b64(b"existing-b-sig").as_str())
    );
    assert_eq!(
        db.get("a").unwrap().pgpsig.as_deref(),
        Some(b64(&FakeSigner::sig(&std::fs::read(&a).unwrap())).as_str())
    );
    let files_mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&w.db).unwrap().permissions());
    assert_eq!(files_mode & 0o777, 0o644);

    // Writing unsigned later removes the now-stale signatures.
    repo_remove(&dbp, &["a"], None).unwrap();
    assert!(!signature_path(&w.db).exists());
    assert!(std::fs::symlink_metadata(d.path().join("sg.db.sig")).is_err());
    assert!(!signature_path(&w.files).exists());

    // sign_package_file signs only when there is no .sig.
    let c = pkg(d.path(), "c", "1-1");
    assert!(sign_package_file(&c, &s).unwrap().is_some());
    assert!(sign_package_file(&c, &s).unwrap().is_none());
    assert!(read_package(&c).unwrap().pgpsig.is_some());
}

#[test]
fn db_paths_and_names() {
    let p = DbPaths::new(Path::new("x/core.db.tar.gz")).unwrap();
    assert_eq!(p.name, "core");
    assert_eq!(p.compression, Compression::Gzip);
    assert_eq!(p.files, Path::new("x/core.files.tar.gz"));
    assert_eq!(p.db_link, Path::new("x/core.db"));
    let p = DbPaths::new(Path::new("my.db.repo.db.tar")).unwrap();
    assert_eq!(p.name, "my.db.repo");
    assert_eq!(
        DbPaths::new(Path::new("new.db")).unwrap().compression,
        Compression::Zstd
    );
    for bad in [
        "core.tar.zst",
        "core.db.tar.bz2",
        ".db.tar.zst",
        "core.db.zip",
    ] {
        assert!(
            matches!(
                DbPaths::new(Path::new(bad)),
                Err(DbError::InvalidPath { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn hostile_databases_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let dbp = d.path().join("h.db.tar.zst");
    let a = pkg(d.path(), "a", "1-1");
    repo_add(&dbp, &[&a], &AddOptions::default(), None).unwrap();
    let good = std::fs::read(&dbp).unwrap();
    let files = d.path().join("h.files.tar.zst");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", b"this is not a database".to_vec()),
        ("empty file", vec![]),
        (
            "not a tar inside",
            zstd::bulk::compress(&[7u8; 5000], 3).unwrap(),
        ),
    ];
    for (what, bytes) in cases {
        std::fs::write(&dbp, &bytes).unwrap();
        let e = Database::load(&dbp).unwrap_err();
        assert!(matches!(e, DbError::Corrupt { .. }), "{what}: {e}");
        // repo_add refuses to touch it.
        let b = pkg(d.path(), "b", "1-1");
        assert!(
            repo_add(&dbp, &[&b], &AddOptions::default(), None).is_err(),
            "{what}"
        );
        assert_eq!(std::fs::read(&dbp).unwrap(), bytes, "{what}: db unchanged");
    }

    // Well-formed tars with bad contents.
    let mk = |members: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (p, c) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(c.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, p, *c).unwrap();
        }
        zstd::bulk::compress(&b.into_inner().unwrap(), 3).unwrap()
    };
    let desc = |name: &str, ver: &str, fname: &str| {
        format!("%FILENAME%\n{fname}\n\n%NAME%\n{name}\n\n%VERSION%\n{ver}\n\n%CSIZE%\n1\n\n")
    };
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("stray top-level file", mk(&[("README", b"hi")])),
        ("desc without sections", mk(&[("a-1-1/desc", b"just text")])),
        (
            "dir/name mismatch",
            mk(&[("a-1-1/desc", desc("b", "1-1", "b.pkg").as_bytes())]),
        ),
        (
            "path in filename",
            mk(&[(
                "a-1-1/desc",
                desc("a", "1-1", "../../etc/passwd").as_bytes(),
            )]),
        ),
        (
            "bad name",
            mk(&[("..-1-1/desc", desc("..", "1-1", "x").as_bytes())]),
        ),
        (
            "bad csize",
            mk(&[(
                "a-1-1/desc",
                b"%FILENAME%\nx\n\n%NAME%\na\n\n%VERSION%\n1-1\n\n%CSIZE%\nlots\n",
            )]),
        ),
        (
            "duplicate package",
            mk(&[
                ("a-1-1/desc", desc("a", "1-1", "x").as_bytes()),
                ("a-2-1/desc", desc("a", "2-1", "y").as_bytes()),
            ]),
        ),
        ("not utf-8", mk(&[("a-1-1/desc", b"%NAME%\n\xff\xfe\n")])),
    ];
    let _ = std::fs::remove_file(&files);
    for (what, bytes) in bad {
        std::fs::write(&dbp, &bytes).unwrap();
        let e = Database::load(&dbp).unwrap_err();
        assert!(
            matches!(e, DbError::Corrupt { .. } | DbError::Entry { .. }),
            "{what}: {e}"
        );
    }
    // An empty-but-valid database (what repo-remove leaves) loads as empty.
    std::fs::write(&dbp, mk(&[])).unwrap();
    assert!(Database::load(&dbp).unwrap().is_empty());
}
