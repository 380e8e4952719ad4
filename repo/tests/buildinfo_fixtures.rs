//! `.BUILDINFO` fixtures (`tests/fixtures/buildinfo/`):
//!
//! * `good/*.BUILDINFO` — format 1 and 2, Arch devtools style with `installed` lines, CRLF with a
//!   byte-order mark and an empty packager, indented and out-of-order keys. Each parses, its JSON
//!   view is snapshotted in `good/NAME.json`, and writing it back parses to the same value.
//! * `bad/*.BUILDINFO` — each is rejected; the error text is snapshotted in `bad/NAME.err` and
//!   names the line (except for empty input and a missing `format` line).
//! * `pkgbuild/epoch-split/` — a PKGBUILD and the `.BUILDINFO` files makepkg 6.0.2 put in its two
//!   packages (built in bubblewrap with `SOURCE_DATE_EPOCH=1700000000`). They parse and write back
//!   byte for byte; when bwrap and makepkg are available the test builds the PKGBUILD again and
//!   the fresh files must be identical.
//!
//! Run with `UPDATE_SNAPSHOTS=1` to rewrite the snapshots after an intended change.

use std::path::{Path, PathBuf};

mod common;
use common::{bwrap_in, check_snapshot, files_with_ext};

use pacmesh_repo::buildinfo::{BuildInfo, BuildInfoError, BuildInfoFormat};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/buildinfo")
}

fn parse_file(path: &Path) -> Result<BuildInfo, BuildInfoError> {
    BuildInfo::from_bytes(&std::fs::read(path).unwrap())
}

#[test]
fn good_fixtures_parse_and_round_trip() {
    let files = files_with_ext(&fixtures().join("good"), "BUILDINFO");
    assert!(files.len() >= 4);
    let mut failures = Vec::new();
    for path in files {
        let info = match parse_file(&path) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let json = serde_json::to_string_pretty(&info).unwrap() + "\n";
        check_snapshot(&path.with_extension("json"), &json, &mut failures);
        assert_eq!(
            BuildInfo::parse(&info.to_string()).as_ref(),
            Ok(&info),
            "{}",
            path.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn good_fixture_facts() {
    let get = |name: &str| parse_file(&fixtures().join("good").join(name)).unwrap();

    let b = get("arch-devtools-v2.BUILDINFO");
    assert_eq!(b.format, BuildInfoFormat::V2);
    assert_eq!(b.buildtool.as_deref(), Some("devtools"));
    assert_eq!(b.buildtoolver.as_deref(), Some("1:1.1.1-1-any"));
    assert_eq!(b.installed.len(), 18);
    let lz4 = b.installed.iter().find(|p| p.name == "lz4").unwrap();
    assert_eq!(
        (lz4.version.as_str(), lz4.arch.as_str()),
        ("1:1.9.4-2", "x86_64")
    );
    let sudo = b.installed.iter().find(|p| p.name == "sudo").unwrap();
    assert_eq!(sudo.version, "1.9.15.p5-1");
    assert_eq!(b.installed[1].name, "archlinux-keyring");
    assert_eq!(b.installed[2].to_string(), "base-devel-1-1-any");
    assert_eq!(b.options.len(), 9);

    let b = get("pacman-5.1-v1.BUILDINFO");
    assert_eq!(b.format, BuildInfoFormat::V1);
    assert_eq!(b.pkgver, "2:0.4.1-3.1");
    assert_eq!(
        (b.startdir, b.buildtool, b.buildtoolver),
        (None, None, None)
    );
    assert_eq!(b.installed[1].version, "1:40.6.3-1");

    let b = get("crlf-empty-packager.BUILDINFO");
    assert_eq!(b.packager, "");
    assert_eq!(b.builddate, 0);
    assert_eq!(b.startdir.as_deref(), Some("/home/ünïcödé/pkgs/crlf"));
    assert!(b.buildenv.is_empty() && b.installed.is_empty());

    let b = get("indented-unordered.BUILDINFO");
    assert_eq!(b.pkgarch, "x86_64");
    assert_eq!(b.options, ["strip", "!lto"]);
    assert_eq!(b.installed[0].name, "glibc");
}

#[test]
fn bad_fixtures_are_rejected_with_the_line() {
    let files = files_with_ext(&fixtures().join("bad"), "BUILDINFO");
    assert!(files.len() >= 20);
    let mut failures = Vec::new();
    for path in files {
        let err = match parse_file(&path) {
            Ok(i) => {
                failures.push(format!("{}: accepted: {i:?}", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        match err.line() {
            Some(n) => assert!(msg.starts_with(&format!("line {n}: ")), "{msg}"),
            None => assert!(
                matches!(
                    err,
                    BuildInfoError::Empty
                        | BuildInfoError::NoContent
                        | BuildInfoError::MissingFormat
                ),
                "{}: {msg}",
                path.display()
            ),
        }
        check_snapshot(&path.with_extension("err"), &(msg + "\n"), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_fixture_reasons() {
    // A 0-byte input is made here rather than committed as a fixture.
    let empty = BuildInfo::from_bytes(b"").unwrap_err().to_string();
    assert!(empty.contains("empty .BUILDINFO (0 bytes)"), "{empty}");
    let err = |name: &str| {
        parse_file(&fixtures().join("bad").join(name))
            .unwrap_err()
            .to_string()
    };
    let cases = [
        ("only-comments.BUILDINFO", "empty .BUILDINFO"),
        (
            "format-3.BUILDINFO",
            "line 1: unsupported BUILDINFO format \"3\" (known: 1, 2)",
        ),
        ("missing-format.BUILDINFO", "no `format = ...` line"),
        (
            "v1-with-startdir.BUILDINFO",
            "line 10: `startdir` is not part of BUILDINFO format 1",
        ),
        (
            "v2-missing-buildtool.BUILDINFO",
            "line 1: BUILDINFO format 2 requires `buildtool`, which is missing",
        ),
        (
            "missing-pkgarch.BUILDINFO",
            "line 1: BUILDINFO format 2 requires `pkgarch`",
        ),
        (
            "short-sha256.BUILDINFO",
            "line 6: invalid pkgbuild_sha256sum: expected 64 hex digits",
        ),
        (
            "builddate-not-number.BUILDINFO",
            "line 8: invalid builddate",
        ),
        (
            "pkgver-without-pkgrel.BUILDINFO",
            "line 4: invalid pkgver: \"1.0\" is not [epoch:]pkgver-pkgrel",
        ),
        (
            "pkgver-bad-epoch.BUILDINFO",
            "line 4: invalid pkgver: \"x:1.0-1\": epoch must be an integer",
        ),
        (
            "pkgname-hyphen.BUILDINFO",
            "line 2: invalid pkgname: must not start with a hyphen",
        ),
        (
            "duplicate-pkgname.BUILDINFO",
            "line 13: `pkgname` given twice (first on line 2)",
        ),
        (
            "installed-no-version.BUILDINFO",
            "line 13: invalid installed: expected NAME-PKGVER-PKGREL-ARCH",
        ),
        (
            "installed-bad-pkgrel.BUILDINFO",
            "line 13: invalid installed",
        ),
        ("unknown-key.BUILDINFO", "line 13: unknown key `maintainer`"),
        ("not-key-value.BUILDINFO", "line 13: expected `key = value`"),
        ("nul-byte.BUILDINFO", "line 13: NUL byte"),
        ("latin1.BUILDINFO", "line 12: not valid UTF-8"),
        ("srcinfo-instead.BUILDINFO", "line 2: unknown key `pkgdesc`"),
    ];
    for (file, want) in cases {
        let got = err(file);
        assert!(
            got.contains(want),
            "{file}: {got:?} does not contain {want:?}"
        );
    }
}

fn pkgbuild_dir() -> PathBuf {
    fixtures().join("pkgbuild/epoch-split")
}

#[test]
fn makepkg_written_buildinfo() {
    let dir = pkgbuild_dir();
    for (name, pkgname) in [
        (
            "pacmesh-buildinfo-fixture.BUILDINFO",
            "pacmesh-buildinfo-fixture",
        ),
        (
            "pacmesh-buildinfo-fixture-doc.BUILDINFO",
            "pacmesh-buildinfo-fixture-doc",
        ),
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let b = BuildInfo::parse(&text).unwrap();
        assert_eq!(b.to_string(), text, "{name}: written back byte for byte");
        assert_eq!(b.format, BuildInfoFormat::V2);
        assert_eq!(b.pkgname, pkgname);
        assert_eq!(b.pkgbase, "pacmesh-buildinfo-fixture");
        assert_eq!(b.pkgver, "1:0.3-2");
        assert_eq!(b.pkgarch, "any");
        assert_eq!(b.builddate, 1_700_000_000);
        assert_eq!(
            (b.builddir.as_str(), b.startdir.as_deref()),
            ("/build", Some("/build"))
        );
        assert_eq!(b.buildtool.as_deref(), Some("makepkg"));
        assert_eq!(b.buildtoolver.as_deref(), Some("6.0.2"));
        assert!(b.buildenv.contains(&"!distcc".to_owned()));
        assert!(
            b.installed.is_empty(),
            "no pacman database on the machine that built it"
        );
        // The recorded checksum is the PKGBUILD's.
        use sha2::Digest;
        let sum = hex::encode(sha2::Sha256::digest(
            std::fs::read(dir.join("PKGBUILD")).unwrap(),
        ));
        assert_eq!(b.pkgbuild_sha256sum, sum);
    }
}

/// Build the fixture again with makepkg in bubblewrap and compare the `.BUILDINFO` files.
#[test]
fn makepkg_rebuild_matches() {
    let have = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if !have("bwrap") || !have("makepkg") {
        eprintln!("SKIPPED makepkg_rebuild_matches: bwrap or makepkg not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(pkgbuild_dir().join("PKGBUILD"), tmp.path().join("PKGBUILD")).unwrap();
    let out = bwrap_in(
        tmp.path(),
        &[
            "env",
            "PKGEXT=.pkg.tar",
            "SOURCE_DATE_EPOCH=1700000000",
            "FAKEROOTDONTTRYCHOWN=1",
            "makepkg",
            "--nodeps",
        ],
    )
    .output()
    .unwrap();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("==> ERROR"), "makepkg failed: {stderr}");
        eprintln!("SKIPPED makepkg_rebuild_matches: bwrap/makepkg did not run: {stderr}");
        return;
    }
    for pkgname in ["pacmesh-buildinfo-fixture", "pacmesh-buildinfo-fixture-doc"] {
        let pkg = tmp.path().join(format!("{pkgname}-1:0.3-2-any.pkg.tar"));
        let mut archive = tar::Archive::new(std::fs::File::open(&pkg).unwrap());
        let mut fresh = None;
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.path().unwrap().as_os_str() == ".BUILDINFO" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
                fresh = Some(s);
            }
        }
        let fresh = fresh.expect("package has a .BUILDINFO");
        let parsed = BuildInfo::parse(&fresh).unwrap();
        assert_eq!(parsed.to_string(), fresh, "{pkgname}: Display ≠ makepkg");
        let committed =
            std::fs::read_to_string(pkgbuild_dir().join(format!("{pkgname}.BUILDINFO"))).unwrap();
        assert_eq!(
            fresh, committed,
            "{pkgname}: makepkg wrote a different .BUILDINFO"
        );
    }
}
