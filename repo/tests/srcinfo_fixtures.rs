//! Hand-written `.SRCINFO` fixtures (`tests/fixtures/srcinfo/`):
//!
//! * `good/*.SRCINFO` — messy but valid files (comment headers, space indents, CRLF, BOM, no
//!   final newline, non-ASCII, hand-edited key order, clearing overrides). Each parses, its
//!   `--json` view is snapshotted in `good/NAME.json`, and writing it back parses to the same value.
//! * `bad/*.SRCINFO` — files makepkg would never write or would refuse. Each is rejected; the
//!   error text is snapshotted in `bad/NAME.err` and must name the line.
//! * `pkgbuild/*/PKGBUILD` — small PKGBUILDs (split package with overrides, epoch, per-arch
//!   arrays, VCS sources, every checksum kind) with the `.SRCINFO` makepkg 6.0.2 wrote for them.
//!   The committed `.SRCINFO` parses to the expected facts and is written back byte for byte; when
//!   bwrap and makepkg are available, makepkg regenerates it and must agree.
//!
//! Snapshots are plain files; run with `UPDATE_SNAPSHOTS=1` to rewrite them after an intended
//! change, then review the diff.

use std::path::{Path, PathBuf};

mod common;
use common::{bwrap_in, check_snapshot, files_with_ext};

use pacmesh_repo::srcinfo::{ArchDepends, ResolvedPackage, Source, SrcInfo, SrcInfoError};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/srcinfo")
}

#[test]
fn good_fixtures_parse_and_round_trip() {
    let files = files_with_ext(&fixtures().join("good"), "SRCINFO");
    assert!(files.len() >= 8);
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let info = match SrcInfo::from_bytes(&bytes) {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        // A struct, not `json!`, so the keys keep the file's order.
        #[derive(serde::Serialize)]
        struct Snapshot<'a> {
            pkgbase: &'a str,
            pkgnames: Vec<&'a str>,
            version: String,
            srcinfo: &'a SrcInfo,
            packages: Vec<ResolvedPackage<'a>>,
            sources_x86_64: Vec<Source>,
            depends_x86_64: ArchDepends,
        }
        let snapshot = Snapshot {
            pkgbase: info.pkgbase(),
            pkgnames: info.pkgnames(),
            version: info.version(),
            srcinfo: &info,
            packages: info.packages(),
            sources_x86_64: info.sources_for_arch("x86_64"),
            depends_x86_64: info.depends_for_arch("x86_64"),
        };
        let json = serde_json::to_string_pretty(&snapshot).unwrap() + "\n";
        check_snapshot(&path.with_extension("json"), &json, &mut failures);
        let written = info.to_string();
        assert_eq!(
            SrcInfo::parse(&written).as_ref(),
            Ok(&info),
            "{}",
            path.display()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn good_fixture_facts() {
    let parse = |name: &str| {
        SrcInfo::from_bytes(&std::fs::read(fixtures().join("good").join(name)).unwrap()).unwrap()
    };
    let s = parse("mkaurball-header.SRCINFO");
    assert_eq!(
        (s.pkgbase(), s.version().as_str()),
        ("old-aur-package", "0.1-1")
    );
    let s = parse("space-indented.SRCINFO");
    assert_eq!(s.packages()[0].values("depends"), ["glibc", "gcc-libs"]);
    assert_eq!(s.field("makedepends"), ["rust"]);
    let s = parse("crlf.SRCINFO");
    assert_eq!(s.field("license"), ["MIT"], "no stray \\r");
    assert_eq!(parse("bom.SRCINFO").pkgbase(), "bom");
    assert_eq!(
        parse("no-trailing-newline.SRCINFO").pkgnames(),
        ["no-newline"]
    );
    assert_eq!(parse("uppercase-pkgname.SRCINFO").pkgnames(), ["Foo_Bar"]);
    assert_eq!(parse("epoch-zero.SRCINFO").version(), "1.0-1");
    let s = parse("non-ascii.SRCINFO");
    assert!(
        s.packages()[0]
            .single("pkgdesc")
            .unwrap()
            .contains("日本語 und Emoji 🎉")
    );
    let s = parse("hand-written-order.SRCINFO");
    assert_eq!(s.version(), "2.0-4");
    assert_eq!(s.field("depends"), ["a", "c"], "split runs are joined");
    assert_eq!(s.field("optdepends"), ["d: x = y # not a comment"]);
    assert_eq!(s.depends_for_arch("x86_64").depends, ["a", "c", "e"]);
    assert_eq!(s.packages()[0].values("depends"), ["f"]);

    let s = parse("split-clears.SRCINFO");
    let p = s.packages();
    assert_eq!(p[0].values("depends"), ["glibc"]);
    assert_eq!(p[0].single("install"), Some("clears.install"));
    assert_eq!(
        p[0].values_for_arch("depends", "x86_64"),
        ["glibc", "lib32-glibc"]
    );
    assert_eq!(p[1].arch(), ["any"]);
    for key in ["depends", "optdepends", "provides"] {
        assert_eq!(p[1].fields.get(key), Some(&[][..]), "{key} cleared");
    }
    for key in ["pkgdesc", "url", "install"] {
        assert_eq!(p[1].single(key), None, "{key} cleared");
    }
    assert_eq!(p[1].values("license"), ["MIT"], "license inherited");
    assert_eq!(p[2].values_for_arch("depends", "x86_64"), ["clears=1-1"]);
    assert_eq!(
        p[2].values_for_arch("depends", "aarch64"),
        ["clears=1-1", "extra-arm"]
    );
    assert_eq!(p[2].single("pkgdesc"), Some("Base description"));
}

#[test]
fn bad_fixtures_are_rejected_with_the_line() {
    let files = files_with_ext(&fixtures().join("bad"), "SRCINFO");
    assert!(files.len() >= 30);
    let mut failures = Vec::new();
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        let err = match SrcInfo::from_bytes(&bytes) {
            Ok(i) => {
                failures.push(format!("{}: accepted: {i:?}", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let msg = err.to_string();
        match err.line() {
            Some(n) => assert!(
                msg.starts_with(&format!("line {n}: ")),
                "{}: {msg}",
                path.display()
            ),
            None => assert!(
                matches!(err, SrcInfoError::Empty | SrcInfoError::NoContent),
                "{}: only empty input may have no line: {msg}",
                path.display()
            ),
        }
        check_snapshot(&path.with_extension("err"), &(msg + "\n"), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn bad_fixture_reasons() {
    let err = |name: &str| {
        SrcInfo::from_bytes(&std::fs::read(fixtures().join("bad").join(name)).unwrap())
            .unwrap_err()
            .to_string()
    };
    // A 0-byte input (made here, not committed: an empty fixture file would be
    // indistinguishable from the corpus's empty .SRCINFO).
    let empty = SrcInfo::from_bytes(b"").unwrap_err().to_string();
    assert!(empty.contains("empty .SRCINFO (0 bytes)"), "{empty}");
    let cases = [
        ("only-comments.SRCINFO", "empty .SRCINFO"),
        (
            "pkgver-hyphen.SRCINFO",
            "line 2: invalid pkgver: must not contain colons, forward slashes, hyphens or whitespace",
        ),
        ("pkgrel-letters.SRCINFO", "line 3: invalid pkgrel"),
        (
            "epoch-letters.SRCINFO",
            "line 4: invalid epoch: must be an integer",
        ),
        (
            "pkgname-leading-hyphen.SRCINFO",
            "line 5: invalid pkgname: must not start with a hyphen",
        ),
        (
            "no-pkgbase.SRCINFO",
            "line 1: `pkgname` before the `pkgbase = ...` line",
        ),
        (
            "duplicate-pkgname.SRCINFO",
            "line 10: package `foo` defined twice (first on line 6)",
        ),
        (
            "duplicate-pkgver.SRCINFO",
            "line 5: `pkgver` given twice in one section (first on line 2)",
        ),
        ("unknown-key.SRCINFO", "line 5: unknown key `maintainer`"),
        (
            "makedepends-in-package.SRCINFO",
            "line 7: `makedepends` is not allowed in a `pkgname` section",
        ),
        ("not-key-value.SRCINFO", "line 5: expected `key = value`"),
        (
            "missing-pkgrel.SRCINFO",
            "line 1: the pkgbase section has no `pkgrel`",
        ),
        ("no-pkgname.SRCINFO", "line 1: no `pkgname = ...` section"),
        (
            "checksum-count.SRCINFO",
            "line 7: sha256sums has 1 checksum but source has 2 sources",
        ),
        (
            "checksum-short.SRCINFO",
            "line 6: invalid sha256sums: expected SKIP or 64 hex digits",
        ),
        (
            "depends-any.SRCINFO",
            "line 5: `depends_any`: there are no architecture-specific values for `any`",
        ),
        (
            "arch-any-and-more.SRCINFO",
            "line 5: invalid arch: `any` cannot be combined",
        ),
        (
            "noextract-arch.SRCINFO",
            "line 5: unknown key `noextract_x86_64`",
        ),
        ("latin1.SRCINFO", "line 2: not valid UTF-8"),
        (
            "binary.SRCINFO",
            "line 1: NUL byte (is this a binary file?)",
        ),
        ("html-error-page.SRCINFO", "line 1: expected `key = value`"),
        (
            "depends-space-in-name.SRCINFO",
            "line 5: invalid depends: name \"foo bar\" contains invalid characters",
        ),
        (
            "depends-bad-pkgrel.SRCINFO",
            "line 5: invalid depends_x86_64: version \"2.40-beta\": pkgrel",
        ),
        (
            "makedepends-empty-version.SRCINFO",
            "line 5: invalid makedepends: version \"\": pkgver must not be empty",
        ),
        (
            "provides-comparison.SRCINFO",
            "line 7: invalid provides: provides cannot contain comparison",
        ),
        (
            "optdepends-no-space.SRCINFO",
            "line 5: invalid optdepends: name \"python:for the scripts\"",
        ),
        (
            "backup-leading-slash.SRCINFO",
            "line 5: invalid backup: entries must not start with a slash",
        ),
    ];
    for (file, want) in cases {
        let got = err(file);
        assert!(
            got.contains(want),
            "{file}: {got:?} does not contain {want:?}"
        );
    }
}

// ---- PKGBUILD fixtures compared with makepkg --printsrcinfo ----

fn pkgbuild_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixtures().join("pkgbuild"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("PKGBUILD").is_file())
        .collect();
    v.sort();
    v
}

fn committed(dir: &Path) -> (String, SrcInfo) {
    let text = std::fs::read_to_string(dir.join(".SRCINFO")).unwrap();
    let info = SrcInfo::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    (text, info)
}

#[test]
fn pkgbuild_fixtures_committed_srcinfo() {
    let dirs = pkgbuild_dirs();
    assert!(dirs.len() >= 5);
    for dir in &dirs {
        let (text, info) = committed(dir);
        assert_eq!(info.to_string(), text, "{}: written back", dir.display());
    }
    let get = |name: &str| committed(&fixtures().join("pkgbuild").join(name)).1;

    let s = get("split-overrides");
    assert_eq!(s.pkgbase(), "pacmesh-fixture-split");
    assert_eq!(
        s.pkgnames(),
        [
            "pacmesh-fixture-split-core",
            "pacmesh-fixture-split-docs",
            "pacmesh-fixture-split-tools"
        ]
    );
    assert_eq!(s.version(), "2.4.1-3");
    let p = s.packages();
    assert_eq!(
        p[0].values("depends"),
        ["glibc", "zlib>=1.3", "libfoo.so=2-64"]
    );
    assert_eq!(
        p[0].values("backup"),
        ["etc/split.conf", "etc/split.d/core.conf"]
    );
    assert_eq!(p[0].single("install"), Some("core.install"));
    assert!(p[1].values("depends").is_empty() && p[1].fields.contains("depends"));
    assert_eq!(p[1].arch(), ["any"]);
    assert_eq!(p[1].values("options"), ["!strip", "!debug"]);
    assert_eq!(
        p[1].single("pkgdesc"),
        Some("Documentation for the split fixture — ünïcödé")
    );
    assert_eq!(p[2].single("url"), None, "url cleared");
    assert_eq!(p[2].values("license"), ["GPL-3.0-or-later"]);
    assert_eq!(p[2].values("provides"), ["split-fixture"], "inherited");
    assert_eq!(
        p[2].values_for_arch("depends", "x86_64"),
        [
            "pacmesh-fixture-split-core=2.4.1",
            "python>=3.11",
            "lib32-glibc"
        ]
    );
    let src = s.sources_for_arch("x86_64");
    assert_eq!(src[0].filename, "split-2.4.1.tar.gz");
    assert_eq!(src[0].url, "https://example.invalid/archive/v2.4.1.tar.gz");
    assert_eq!(src[1].protocol, "local");
    assert_eq!(src[1].checksums["sha256"], "SKIP");
    let d = s.depends_for_arch("aarch64");
    assert_eq!(d.makedepends, ["cmake", "ninja"]);
    assert_eq!(d.checkdepends, ["python-pytest"]);

    let s = get("epoch");
    assert_eq!(s.version(), "2:1.0.0_rc1-1.1");
    assert_eq!(s.epoch(), Some("2"));
    assert_eq!(s.pkgrel(), "1.1");

    let s = get("arch-arrays");
    assert_eq!(s.arch(), ["x86_64", "aarch64", "i686", "armv7h"]);
    let x = s.sources_for_arch("x86_64");
    assert_eq!(x.len(), 2);
    assert_eq!(x[1].arch.as_deref(), Some("x86_64"));
    assert_eq!(x[1].checksums.len(), 2, "sha256 and b2");
    assert!(x[1].checksums["b2"].starts_with("786a02f7"));
    let a = s.sources_for_arch("aarch64");
    assert_eq!(a[1].filename, "bin-arm.tgz");
    assert!(a[1].checksums["sha256"].starts_with("2c26b46b"));
    let i = s.sources_for_arch("i686");
    assert_eq!(i.len(), 3);
    assert_eq!((i[2].filename.as_str(), i[2].index), ("i686.patch", 1));
    assert_eq!(i[2].checksums["sha256"], "SKIP");
    assert_eq!(s.all_sources().len(), 5);
    assert_eq!(
        s.depends_for_arch("x86_64").depends,
        ["glibc", "lib32-glibc", "libbar.so>=1"]
    );
    assert_eq!(
        s.depends_for_arch("aarch64").makedepends,
        ["make", "aarch64-linux-gnu-gcc"]
    );
    assert_eq!(s.depends_for_arch("armv7h").checkdepends, ["qemu-user"]);
    assert_eq!(s.field("provides_aarch64"), ["arch-fixture-arm"]);
    let p = &s.packages()[0];
    assert_eq!(
        p.values("optdepends_x86_64"),
        ["nvidia-utils: CUDA backend"]
    );
    assert_eq!(p.values("replaces_armv7h"), ["arch-fixture-old"]);

    let s = get("vcs-git");
    let src = s.sources_for_arch("x86_64");
    assert_eq!(src.len(), 5);
    assert_eq!(
        (
            src[0].filename.as_str(),
            src[0].protocol.as_str(),
            src[0].fragment.as_deref(),
            src[0].signed
        ),
        ("fixture", "git", Some("tag=v1.2"), true)
    );
    assert_eq!(src[1].filename, "vendored");
    assert_eq!(
        src[1].fragment.as_deref(),
        Some("commit=0123456789abcdef0123456789abcdef01234567")
    );
    assert!(!src[1].signed);
    assert_eq!(
        (src[2].filename.as_str(), src[2].url.as_str()),
        ("docs", "git+ssh://git@example.invalid/docs#branch=main")
    );
    assert!(src[2].is_vcs());
    assert_eq!(src[3].protocol, "https");
    assert_eq!(
        src[3].fragment, None,
        "fragments only mean something for VCS sources"
    );
    assert!(src[4].is_local());
    assert_eq!(
        s.validpgpkeys(),
        [
            "ABAF11C65A2970B130ABE3C479BE3E4300411886",
            "3FEF9748469ADBE15DA7CA80AC2D62742012EA22"
        ]
    );
    assert_eq!(s.packages()[0].values("provides"), ["pacmesh-fixture=1.2"]);

    let s = get("all-checksums");
    let src = &s.sources_for_arch("x86_64")[0];
    let kinds: Vec<&str> = src.checksums.keys().map(String::as_str).collect();
    assert_eq!(
        kinds,
        [
            "b2", "ck", "md5", "sha1", "sha224", "sha256", "sha384", "sha512"
        ]
    );
    assert_eq!(src.checksums["ck"], "4294967295");
    assert_eq!(
        s.packages()[0].single("pkgdesc"),
        Some("Checksum fixture with extra spaces"),
        "makepkg squeezes whitespace"
    );
    assert_eq!(s.field("noextract"), ["data.bin"]);
}

/// makepkg --printsrcinfo, run as in the brief: bubblewrap, uid 1000, no network, a temporary
/// copy of the folder. `None` (with a printed notice) when it cannot run here.
fn makepkg_printsrcinfo(dir: &Path) -> Option<String> {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() && p.file_name().is_some_and(|n| n != ".SRCINFO") {
            std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let out = bwrap_in(tmp.path(), &["makepkg", "--printsrcinfo"]).output();
    match out {
        Ok(o) if o.status.success() => Some(String::from_utf8(o.stdout).unwrap()),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            // A PKGBUILD error is a test failure; a sandbox that cannot start is a skip.
            assert!(
                !stderr.contains("==> ERROR"),
                "{}: makepkg failed: {stderr}",
                dir.display()
            );
            eprintln!("SKIPPED makepkg comparison: bwrap/makepkg did not run: {stderr}");
            None
        }
        Err(e) => {
            eprintln!("SKIPPED makepkg comparison: cannot run bwrap: {e}");
            None
        }
    }
}

#[test]
fn pkgbuild_fixtures_match_makepkg() {
    let have = |bin: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
    };
    if !have("bwrap") || !have("makepkg") {
        eprintln!("SKIPPED pkgbuild_fixtures_match_makepkg: bwrap or makepkg not installed");
        return;
    }
    for dir in pkgbuild_dirs() {
        let Some(generated) = makepkg_printsrcinfo(&dir) else {
            return;
        };
        let parsed = SrcInfo::parse(&generated)
            .unwrap_or_else(|e| panic!("{}: makepkg output rejected: {e}", dir.display()));
        assert_eq!(
            parsed.to_string(),
            generated,
            "{}: Display ≠ makepkg",
            dir.display()
        );
        let (text, info) = committed(&dir);
        assert_eq!(
            generated,
            text,
            "{}: committed .SRCINFO is stale; regenerate it",
            dir.display()
        );
        assert_eq!(parsed, info);
    }
}
