//! The databases pacmesh writes are equivalent to those of the real
//! `repo-add` 6.x: the same `desc`/`files` text per entry, the same
//! `pacman -Sl`, `pacman -Si` and `pacman -Fl` output, and each tool can
//! load and update the other's databases.

mod common;

use common::{require, run, tar_members};
use pacmesh_repo::db::{AddOptions, Database, repo_add};
use pacmesh_repo::package::Compression;
use pacmesh_repo::package::testutil::SyntheticPackage;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The package set: the real example builds plus synthetic packages with
/// every field, several compressions, an epoch, and fake `.sig` files.
fn package_set(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(real) = common::real_packages() {
        for p in real {
            let dest = dir.join(p.file_name().unwrap());
            std::fs::copy(p, &dest).unwrap();
            out.push(dest);
        }
    }
    let synth = [
        SyntheticPackage::rich("rich-zst", "1.2.3-1"),
        SyntheticPackage::rich("rich-epoch", "3:0.1.alpha-2").compression(Compression::Xz),
        SyntheticPackage::rich("rich-gz", "20240101-1").compression(Compression::Gzip),
        SyntheticPackage::new("plain-tar", "0.1-1").compression(Compression::None),
        SyntheticPackage::new("no-extras", "1-1"),
        SyntheticPackage::rich("weird-ws", "1.0+git5-1")
            .line("pkgdesc", "tabs\tand   runs  of spaces")
            .line("license", "LGPL-2.1-or-later")
            .file("usr/share/weird-ws/a file with spaces", b"x")
            .file("usr/share/weird-ws/.hidden", b"x"),
    ];
    for (i, sp) in synth.iter().enumerate() {
        let p = sp.write_to(dir).unwrap();
        if i % 2 == 0 {
            // A fake binary signature: repo-add only base64-encodes it.
            let sig: Vec<u8> = (0..(100 + i * 7)).map(|b| (b * 31 + i) as u8).collect();
            std::fs::write(pacmesh_repo::package::signature_path(&p), sig).unwrap();
        }
        out.push(p);
    }
    out
}

fn copy_set(pkgs: &[PathBuf], to: &Path) -> Vec<PathBuf> {
    pkgs.iter()
        .map(|p| {
            let dest = to.join(p.file_name().unwrap());
            std::fs::copy(p, &dest).unwrap();
            let sig = pacmesh_repo::package::signature_path(p);
            if sig.exists() {
                std::fs::copy(&sig, pacmesh_repo::package::signature_path(&dest)).unwrap();
            }
            dest
        })
        .collect()
}

fn repo_add_cli(db: &Path, pkgs: &[PathBuf]) {
    let mut c = Command::new("repo-add");
    c.arg("-q").arg(db).args(pkgs);
    run(&mut c);
}

fn text_members(p: &Path) -> BTreeMap<String, Option<String>> {
    tar_members(p)
        .into_iter()
        .map(|(k, v)| (k, v.map(|b| String::from_utf8(b).unwrap())))
        .collect()
}

struct Pacman {
    _dir: tempfile::TempDir,
    conf: PathBuf,
    dbpath: PathBuf,
}

impl Pacman {
    fn new(repo: &str, db: &Path, files: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dbpath = dir.path().join("db");
        std::fs::create_dir_all(dbpath.join("sync")).unwrap();
        std::fs::copy(db, dbpath.join(format!("sync/{repo}.db"))).unwrap();
        std::fs::copy(files, dbpath.join(format!("sync/{repo}.files"))).unwrap();
        let conf = dir.path().join("pacman.conf");
        std::fs::write(
            &conf,
            format!("[options]\nArchitecture = auto\nSigLevel = Never\n[{repo}]\nServer = file:///nonexistent\n"),
        )
        .unwrap();
        Pacman {
            _dir: dir,
            conf,
            dbpath,
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let mut c = Command::new("pacman");
        c.arg("--config")
            .arg(&self.conf)
            .arg("--dbpath")
            .arg(&self.dbpath)
            .args(args);
        c.env("LC_ALL", "C").env("TZ", "UTC");
        run(&mut c)
    }
}

#[test]
fn same_database_as_repo_add() {
    if !require(
        "same_database_as_repo_add",
        &["repo-add", "bsdtar", "pacman"],
    ) {
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let pkgs = package_set(src.path());
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let pa = copy_set(&pkgs, a.path());
    let pb = copy_set(&pkgs, b.path());

    repo_add_cli(&a.path().join("eq.db.tar.zst"), &pa);
    let report = repo_add(
        &b.path().join("eq.db.tar.zst"),
        &pb,
        &AddOptions::default(),
        None,
    )
    .unwrap();
    assert_eq!(report.packages.len(), pkgs.len());

    for kind in ["db", "files"] {
        let ours = text_members(&b.path().join(format!("eq.{kind}.tar.zst")));
        let theirs = text_members(&a.path().join(format!("eq.{kind}.tar.zst")));
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{kind}: member list"
        );
        for (k, v) in &theirs {
            assert_eq!(ours[k].as_deref(), v.as_deref(), "{kind}: member {k}");
        }
        // The links.
        let link = b.path().join(format!("eq.{kind}"));
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new(&format!("eq.{kind}.tar.zst"))
        );
    }
    // %PGPSIG% was really compared.
    let any_sig = text_members(&b.path().join("eq.db.tar.zst"))
        .values()
        .flatten()
        .any(|d| d.contains("%PGPSIG%"));
    assert!(any_sig);

    let pa_ = Pacman::new(
        "eq",
        &a.path().join("eq.db.tar.zst"),
        &a.path().join("eq.files.tar.zst"),
    );
    let pb_ = Pacman::new(
        "eq",
        &b.path().join("eq.db.tar.zst"),
        &b.path().join("eq.files.tar.zst"),
    );
    let sl = pa_.run(&["-Sl", "eq"]);
    assert_eq!(pb_.run(&["-Sl", "eq"]), sl);
    let names: Vec<String> = sl
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), pkgs.len());
    for n in &names {
        let si = pa_.run(&["-Si", &format!("eq/{n}")]);
        assert_eq!(pb_.run(&["-Si", &format!("eq/{n}")]), si, "-Si {n}");
        let fl = pa_.run(&["-Fl", n]);
        assert_eq!(pb_.run(&["-Fl", n]), fl, "-Fl {n}");
    }
}

#[test]
fn interoperates_with_repo_add_both_ways() {
    if !require(
        "interoperates_with_repo_add_both_ways",
        &["repo-add", "repo-remove", "bsdtar"],
    ) {
        return;
    }
    for ext in ["tar.zst", "tar.gz", "tar.xz", "tar"] {
        let src = tempfile::tempdir().unwrap();
        let pkgs = package_set(src.path());
        let (first, second) = pkgs.split_at(pkgs.len() / 2);

        // repo-add creates, pacmesh loads and adds the rest.
        let a = tempfile::tempdir().unwrap();
        let pa = copy_set(&pkgs, a.path());
        let dba = a.path().join(format!("io.db.{ext}"));
        repo_add_cli(&dba, &pa[..first.len()]);
        let loaded = Database::load(&dba).unwrap();
        assert_eq!(loaded.len(), first.len());
        assert!(loaded.entries.values().all(|e| e.files.is_some()));
        repo_add(&dba, &pa[first.len()..], &AddOptions::default(), None).unwrap();

        // pacmesh creates, repo-add adds the rest.
        let b = tempfile::tempdir().unwrap();
        let pb = copy_set(&pkgs, b.path());
        let dbb = b.path().join(format!("io.db.{ext}"));
        repo_add(&dbb, &pb[..first.len()], &AddOptions::default(), None).unwrap();
        repo_add_cli(&dbb, &pb[first.len()..]);
        let _ = second;

        // Both end with the same entries.
        let da = Database::load(&dba).unwrap();
        let db = Database::load(&dbb).unwrap();
        assert_eq!(da, db, "{ext}");
        assert_eq!(da.len(), pkgs.len());

        // And the link name works as the database argument.
        let via_link = Database::load(&a.path().join("io.db")).unwrap();
        assert_eq!(via_link, da);

        // repo-remove on a pacmesh database.
        let victim = db.entries.keys().next().unwrap().clone();
        run(Command::new("repo-remove").arg("-q").arg(&dbb).arg(&victim));
        let after = Database::load(&dbb).unwrap();
        assert_eq!(after.len(), pkgs.len() - 1);
        assert!(after.get(&victim).is_none());
    }
}
