//! Property tests for `.BUILDINFO`: generated values round-trip through `Display` and `parse`
//! (formats 1 and 2); arbitrary and corrupted input never panics and errors name a line.

use proptest::collection::vec;
use proptest::prelude::*;

use pacmesh_repo::buildinfo::{BuildInfo, BuildInfoError, BuildInfoFormat, InstalledPackage};

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9@_+][a-zA-Z0-9@._+-]{0,20}"
}

fn full_version() -> impl Strategy<Value = String> {
    (
        proptest::option::of("[0-9]{1,2}"),
        "[a-zA-Z0-9._+~]{1,12}",
        "[0-9]{1,3}(\\.[0-9]{1,2})?",
    )
        .prop_map(|(e, v, r)| match e {
            Some(e) => format!("{e}:{v}-{r}"),
            None => format!("{v}-{r}"),
        })
}

fn arch() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("x86_64".to_owned()),
        Just("any".to_owned()),
        "[a-z0-9_]{1,10}"
    ]
}

/// Free text as makepkg writes it: no newline, no surrounding whitespace, possibly empty.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,40}".prop_map(|s| s.trim_matches(|c: char| c.is_whitespace()).to_owned())
}

fn installed() -> impl Strategy<Value = InstalledPackage> {
    // Names without '-' so that NAME-VER-REL-ARCH splits back the same way (pacman has the same
    // ambiguity with hyphenated names: only the last three hyphens are separators).
    ("[a-z0-9@_+][a-z0-9@._+]{0,15}", full_version(), arch()).prop_map(|(name, version, arch)| {
        InstalledPackage {
            name,
            version,
            arch,
        }
    })
}

fn buildinfo() -> impl Strategy<Value = BuildInfo> {
    (
        (any::<bool>(), name(), name(), full_version(), arch()),
        (
            "[0-9a-fA-F]{64}",
            text(),
            any::<i64>(),
            text(),
            text(),
            text(),
            text(),
        ),
        (
            vec("!?[a-z]{1,10}", 0..6),
            vec("!?[a-z]{1,10}", 0..10),
            vec(installed(), 0..20),
        ),
    )
        .prop_map(
            |(
                (v2, pkgname, pkgbase, pkgver, pkgarch),
                (sum, packager, builddate, builddir, startdir, buildtool, buildtoolver),
                (buildenv, options, installed),
            )| {
                let (format, startdir, buildtool, buildtoolver) = if v2 {
                    (
                        BuildInfoFormat::V2,
                        Some(startdir),
                        Some(buildtool),
                        Some(buildtoolver),
                    )
                } else {
                    (BuildInfoFormat::V1, None, None, None)
                };
                BuildInfo {
                    format,
                    pkgname,
                    pkgbase,
                    pkgver,
                    pkgarch,
                    pkgbuild_sha256sum: sum,
                    packager,
                    builddate,
                    builddir,
                    startdir,
                    buildtool,
                    buildtoolver,
                    buildenv,
                    options,
                    installed,
                }
            },
        )
}

fn check_error_shape(text: &str, result: Result<BuildInfo, BuildInfoError>) {
    match result {
        Ok(b) => assert_eq!(BuildInfo::parse(&b.to_string()).as_ref(), Ok(&b)),
        Err(BuildInfoError::Empty) => assert!(text.is_empty()),
        Err(BuildInfoError::NoContent | BuildInfoError::MissingFormat) => {}
        Err(e) => {
            let n = e.line().expect("every other error names a line");
            assert!(n >= 1 && n <= text.split('\n').count(), "{e}");
            assert!(e.to_string().starts_with(&format!("line {n}: ")));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(b in buildinfo()) {
        let text = b.to_string();
        let back = BuildInfo::parse(&text);
        prop_assert_eq!(&back, &Ok(b.clone()), "text:\n{}", text);
        prop_assert!(b.validate().is_ok());
        let crlf = text.replace('\n', "\r\n");
        let back = BuildInfo::parse(&crlf);
        prop_assert_eq!(&back, &Ok(b));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        check_error_shape(&text, BuildInfo::parse(&text));
    }

    #[test]
    fn arbitrary_lines_never_panic(
        lines in vec(prop_oneof![
            "(format|pkgname|pkgbase|pkgver|pkgarch|pkgbuild_sha256sum|packager|builddate|builddir|startdir|buildtool|buildtoolver|buildenv|options|installed) ?= ?[ -~]{0,20}",
            "format = [0-3]",
            "[ -~]{0,30}",
        ], 0..25)
    ) {
        let text = lines.join("\n");
        check_error_shape(&text, BuildInfo::parse(&text));
    }

    #[test]
    fn corrupted_valid_files_never_panic(
        b in buildinfo(),
        cut in any::<prop::sample::Index>(),
        insert in "[ -~\t\r\n]{0,12}",
    ) {
        let text = b.to_string();
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let corrupted = format!("{}{}{}", &text[..at], insert, &text[at..]);
        check_error_shape(&corrupted, BuildInfo::parse(&corrupted));
        check_error_shape(&text[..at], BuildInfo::parse(&text[..at]));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let _ = BuildInfo::from_bytes(&bytes);
    }
}

#[test]
fn oversized_input_is_refused() {
    let mut text = String::from("format = 2\n");
    while text.len() <= pacmesh_repo::buildinfo::MAX_BUILDINFO_SIZE {
        text.push_str("installed = glibc-2.40-1-x86_64\n");
    }
    let e = BuildInfo::parse(&text).unwrap_err();
    assert!(matches!(e, BuildInfoError::TooLarge { .. }), "{e}");
}

#[test]
fn reader_stops_at_the_limit() {
    let e = BuildInfo::from_reader(std::io::repeat(b'#')).unwrap_err();
    assert!(matches!(e, BuildInfoError::TooLarge { .. }), "{e}");
}
