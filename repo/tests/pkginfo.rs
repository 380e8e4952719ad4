//! Reading packages: `.PKGINFO` fields, file lists (checked against bsdtar
//! as repo-add runs it), hashes, signatures, and hostile inputs.

mod common;

use pacmesh_repo::package::testutil::{SyntheticPackage, write_raw_package};
use pacmesh_repo::package::{Compression, PackageError, read_package};
use pacmesh_repo::pkginfo::{PkgInfo, PkgInfoError};
use std::path::Path;
use std::process::Command;

/// What repo-add would list: `bsdtar --exclude='^.*' -tf PKG | LC_ALL=C sort -u`.
fn bsdtar_files(pkg: &Path) -> Vec<String> {
    let out = common::run(
        Command::new("bsdtar")
            .arg("--exclude=^.*")
            .arg("-tf")
            .arg(pkg),
    );
    let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
    v.sort();
    v.dedup();
    v
}

fn sha256_cli(p: &Path) -> String {
    common::run(Command::new("sha256sum").arg(p))
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn real_packages_read() {
    let Some(pkgs) = common::real_packages() else {
        return;
    };
    assert_eq!(pkgs.len(), 4, "{pkgs:?}");
    for p in pkgs {
        let info = read_package(p).unwrap();
        assert_eq!(info.compression, Compression::Zstd);
        assert_eq!(info.csize, std::fs::metadata(p).unwrap().len());
        assert_eq!(info.sha256sum, sha256_cli(p));
        assert!(info.has_buildinfo);
        if common::have("bsdtar") {
            assert_eq!(info.files, bsdtar_files(p), "{}", p.display());
        }
        let pi = &info.pkginfo;
        assert_eq!(pi.builddate, Some(1_700_000_000));
        assert_eq!(pi.arch.as_deref(), Some("any"));
        assert!(pi.xdata.is_empty() || pi.xdata.iter().any(|x| x.starts_with("pkgtype=")));
        match pi.pkgname.as_str() {
            "pacmesh-epoch" => {
                assert_eq!(pi.pkgver.as_str(), "1:0.9-1");
                assert_eq!(pi.pkgver.epoch(), Some("1"));
                assert_eq!(pi.backup, ["etc/pacmesh-epoch.conf"]);
                assert_eq!(info.filename, "pacmesh-epoch-1:0.9-1-any.pkg.tar.zst");
            }
            "pacmesh-hello" => {
                assert_eq!(pi.depends, ["sh"]);
                assert!(info.files.contains(&"usr/bin/pacmesh-hello".to_string()));
                assert!(info.files.contains(&"usr/bin/".to_string()));
            }
            "pacmesh-split-bin" => {
                assert_eq!(pi.pkgbase.as_deref(), Some("pacmesh-split"));
                assert_eq!(pi.provides, ["pacmesh-split=2.3.1"]);
                assert_eq!(pi.makedepends, ["coreutils"]);
            }
            "pacmesh-split-doc" => {
                assert_eq!(pi.optdepends, ["pacmesh-split-bin: the program itself"]);
            }
            other => panic!("unexpected package {other}"),
        }
    }
}

#[test]
fn every_compression_and_rich_fields() {
    let dir = tempfile::tempdir().unwrap();
    for c in [
        Compression::Zstd,
        Compression::Xz,
        Compression::Gzip,
        Compression::None,
    ] {
        let sp = SyntheticPackage::rich("rich", "2:1.0.3-4").compression(c);
        let path = sp.write_to(dir.path()).unwrap();
        // Magic bytes, not the name, decide: copy to a misleading name.
        let renamed = dir
            .path()
            .join(format!("misnamed-{}.pkg.tar.gz", c.extension()));
        std::fs::copy(&path, &renamed).unwrap();
        for p in [&path, &renamed] {
            let info = read_package(p).unwrap();
            assert_eq!(info.compression, c);
            let pi = &info.pkginfo;
            assert_eq!(pi.pkgname, "rich");
            assert_eq!(pi.pkgver.as_str(), "2:1.0.3-4");
            assert_eq!(pi.licenses, ["MIT", "Apache-2.0", "custom:weird license"]);
            assert_eq!(pi.groups, ["pacmesh-group", "other-group"]);
            assert_eq!(pi.depends, ["glibc", "sh>=1.0", "libfoo.so=1-64"]);
            assert_eq!(pi.optdepends[0], "python: for the helper script");
            assert_eq!(pi.provides, ["rich-virtual=2:1.0.3-4", "libbar.so=2-64"]);
            assert_eq!(pi.conflicts, ["conflicting-pkg", "other>=2:1.0"]);
            assert_eq!(pi.replaces, ["old-name", "older-name<1.0"]);
            assert_eq!(pi.backup, ["etc/example.conf"]);
            assert_eq!(pi.checkdepends, ["python-pytest"]);
            assert_eq!(pi.xdata, ["pkgtype=pkg"]);
            assert_eq!(
                info.files,
                [
                    "etc/",
                    "etc/example.conf",
                    "usr/",
                    "usr/bin/",
                    "usr/bin/rich",
                    "usr/share/",
                    "usr/share/rich/",
                    "usr/share/rich/README"
                ]
            );
            if common::have("bsdtar") {
                assert_eq!(info.files, bsdtar_files(p));
            }
            assert_eq!(info.sha256sum.len(), 64);
            assert_eq!(info.md5sum.len(), 32);
        }
    }
}

#[test]
fn unknown_keys_kept_and_whitespace_like_repo_add() {
    let text = b"# comment\npkgname = a\npkgver = 1-1\npkgdesc =   spaced    out\tdesc  \nfuturekey = x = y\nsize = 10\nsize = 12\ndepend = \n";
    let p = PkgInfo::parse(text).unwrap();
    assert_eq!(p.pkgdesc.as_deref(), Some("spaced out desc"));
    assert_eq!(p.extra, [("futurekey".to_string(), "x = y".to_string())]);
    assert_eq!(p.size, Some(12), "last value wins, like repo-add");
    assert!(p.depends.is_empty());
    let back = PkgInfo::parse(p.to_pkginfo_string().as_bytes()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn signature_beside_package() {
    let dir = tempfile::tempdir().unwrap();
    let path = SyntheticPackage::new("signed", "1-1")
        .write_to(dir.path())
        .unwrap();
    let sig = pacmesh_repo::package::signature_path(&path);
    std::fs::write(&sig, [0x88u8, 0x75, 1, 2, 3, 255]).unwrap();
    let info = read_package(&path).unwrap();
    assert_eq!(info.pgpsig.as_deref(), Some("iHUBAgP/"));
    std::fs::write(&sig, b"-----BEGIN PGP SIGNATURE-----\n...").unwrap();
    assert!(matches!(
        read_package(&path),
        Err(PackageError::Signature { .. })
    ));
    std::fs::write(&sig, vec![0u8; 16385]).unwrap();
    assert!(matches!(
        read_package(&path),
        Err(PackageError::Signature { .. })
    ));
}

#[test]
fn hostile_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let good = SyntheticPackage::new("good", "1-1").archive_bytes();

    // Truncated zstd.
    let p = d.join("trunc.pkg.tar.zst");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = read_package(&p).unwrap_err();
    assert!(matches!(e, PackageError::Corrupt { .. }), "{e}");

    // Flipped byte in the middle of the zstd stream.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&p, &flipped).unwrap();
    assert!(
        read_package(&p).is_err(),
        "zstd content checksum must catch the flip"
    );

    // Not an archive at all.
    let p = d.join("text.pkg.tar.zst");
    std::fs::write(&p, b"hello, I am not a package\n").unwrap();
    assert!(matches!(
        read_package(&p).unwrap_err(),
        PackageError::NotAPackage { .. }
    ));

    // Empty file.
    let p = d.join("empty.pkg.tar.zst");
    std::fs::write(&p, b"").unwrap();
    assert!(matches!(
        read_package(&p).unwrap_err(),
        PackageError::NotAPackage { .. }
    ));

    // zstd that decompresses to something that is not a tar.
    let p = d.join("notatar.pkg.tar.zst");
    std::fs::write(&p, zstd::bulk::compress(&[b'x'; 4096], 3).unwrap()).unwrap();
    let e = read_package(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PackageError::Corrupt { .. } | PackageError::NotAPackage { .. }
        ),
        "{e}"
    );

    // A valid tar without .PKGINFO.
    let p = write_raw_package(
        d,
        "nopkginfo.pkg.tar.zst",
        &[("usr/", None), ("usr/x", Some(b"x"))],
        Compression::Zstd,
    )
    .unwrap();
    assert!(matches!(
        read_package(&p).unwrap_err(),
        PackageError::MissingPkgInfo { .. }
    ));

    // Huge .PKGINFO (2 MiB).
    let mut huge = b"pkgname = a\npkgver = 1-1\n".to_vec();
    huge.extend(
        std::iter::repeat_n(
            b"xdata = aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n".as_slice(),
            60_000,
        )
        .flatten(),
    );
    let p = write_raw_package(
        d,
        "huge.pkg.tar.zst",
        &[(".PKGINFO", Some(&huge))],
        Compression::Zstd,
    )
    .unwrap();
    let e = read_package(&p).unwrap_err();
    assert!(
        matches!(
            e,
            PackageError::PkgInfo {
                source: PkgInfoError::TooLarge { .. },
                ..
            }
        ),
        "{e}"
    );

    // Invalid field values.
    for (bad, field) in [
        (&b"pkgname = ../../etc\npkgver = 1-1\n"[..], "pkgname"),
        (b"pkgname = a\npkgver = 1:2:3-1\n", "pkgver"),
        (
            b"pkgname = a\npkgver = 1-1\nbuilddate = yesterday\n",
            "builddate",
        ),
    ] {
        let p = write_raw_package(
            d,
            "bad.pkg.tar",
            &[(".PKGINFO", Some(bad))],
            Compression::None,
        )
        .unwrap();
        match read_package(&p).unwrap_err() {
            PackageError::PkgInfo {
                source: PkgInfoError::InvalidField { field: f, .. },
                ..
            } => assert_eq!(f, field),
            e => panic!("{e}"),
        }
    }
    // Two .PKGINFO members.
    let pi = b"pkgname = a\npkgver = 1-1\n";
    let p = write_raw_package(
        d,
        "two.pkg.tar",
        &[(".PKGINFO", Some(pi)), ("./.PKGINFO", Some(pi))],
        Compression::None,
    )
    .unwrap();
    assert!(matches!(
        read_package(&p).unwrap_err(),
        PackageError::Corrupt { .. }
    ));

    // A directory, and a missing file.
    assert!(read_package(d).is_err());
    assert!(matches!(
        read_package(d.join("missing.pkg.tar.zst")).unwrap_err(),
        PackageError::Io { .. }
    ));

    // Random garbage after every possible truncation point of a small
    // package never panics.
    let small = SyntheticPackage::new("s", "1-1")
        .compression(Compression::Gzip)
        .archive_bytes();
    let p = d.join("cut.pkg.tar.gz");
    for cut in (0..small.len()).step_by(7) {
        std::fs::write(&p, &small[..cut]).unwrap();
        assert!(read_package(&p).is_err(), "cut at {cut} accepted");
    }
}

#[test]
fn pkginfo_json_for_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let path = SyntheticPackage::rich("j", "1-1")
        .write_to(dir.path())
        .unwrap();
    let info = read_package(&path).unwrap();
    let v = serde_json::to_value(&info).unwrap();
    assert_eq!(v["pkginfo"]["pkgname"], "j");
    assert_eq!(v["pkginfo"]["pkgver"], "1-1");
    assert_eq!(v["compression"], "Zstd");
    assert!(v["files"].as_array().unwrap().len() > 3);
}

mod properties {
    use pacmesh_repo::desc::{DescEntry, parse_files};
    use pacmesh_repo::pkginfo::PkgInfo;
    use proptest::prelude::*;

    fn value() -> impl Strategy<Value = String> {
        // Printable values without leading/trailing blanks or runs of
        // whitespace (what the parsers produce).
        "[a-zA-Z0-9.:<>=+_@/-]{1,12}( [a-zA-Z0-9.:<>=+_@/-]{1,12}){0,3}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn pkginfo_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = PkgInfo::parse(&data);
        }

        #[test]
        fn desc_parse_never_panics(text in "(%[A-Z]{0,8}%?|[ -~]{0,20}|\n){0,40}") {
            let _ = DescEntry::parse_desc(&text);
            let _ = parse_files(&text);
        }

        #[test]
        fn pkginfo_to_desc_roundtrip(
            name in "[a-z0-9][a-z0-9@._+-]{0,20}",
            epoch in proptest::option::of(1u32..5),
            ver in "[0-9][0-9a-z.+_]{0,8}",
            rel in 1u32..20,
            desc in proptest::option::of(value()),
            deps in proptest::collection::vec(value(), 0..5),
            opt in proptest::collection::vec(value(), 0..5),
            files in proptest::collection::btree_set("[a-z]{1,6}(/[a-z]{1,6}){0,3}/?", 0..10),
        ) {
            let full = match epoch { Some(e) => format!("{e}:{ver}-{rel}"), None => format!("{ver}-{rel}") };
            let mut text = format!("pkgname = {name}\npkgver = {full}\n");
            if let Some(d) = &desc { text.push_str(&format!("pkgdesc = {d}\n")); }
            for d in &deps { text.push_str(&format!("depend = {d}\n")); }
            for d in &opt { text.push_str(&format!("optdepend = {d}\n")); }
            let p = PkgInfo::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(&p.depends, &deps);
            prop_assert_eq!(p.pkgver.as_str(), full.as_str());
            let mut e = DescEntry::parse_desc(&format!("%FILENAME%\nf.pkg.tar.zst\n\n%NAME%\n{name}\n\n%VERSION%\n{full}\n\n")).unwrap();
            e.desc = p.pkgdesc.clone();
            e.depends = p.depends.clone();
            e.optdepends = p.optdepends.clone();
            let files: Vec<String> = files.into_iter().collect();
            e.files = Some(files.clone());
            let back = DescEntry::parse_desc(&e.to_desc()).unwrap();
            prop_assert_eq!(back.to_desc(), e.to_desc());
            prop_assert_eq!(&back.depends, &deps);
            prop_assert_eq!(parse_files(&e.to_files()).unwrap(), files);
        }
    }
}
