//! Property tests for `.SRCINFO`:
//!
//! * round trip: a generated valid [`SrcInfo`] → `to_string()` → `parse` gives it back;
//! * hostile input: arbitrary text, arbitrary bytes and corrupted valid files never panic, and
//!   every rejection of non-empty input names a line.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::subsequence;

use pacmesh_repo::srcinfo::{CHECKSUM_KINDS, Fields, Section, SrcInfo, SrcInfoError};

const ARCHES: &[&str] = &[
    "x86_64",
    "aarch64",
    "i686",
    "armv7h",
    "riscv64",
    "x86_64_v3",
];

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9@_+][a-zA-Z0-9@._+-]{0,20}"
}

/// A value as makepkg writes it: no surrounding whitespace, no newline; any other character,
/// including non-ASCII, `=`, `#` and `::`.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9][a-z0-9.+_-]{0,12}(>=|<=|=|<|>)?[0-9.:-]{0,8}",
        "[a-z-]{1,10}: [a-zA-Zäöü日本 =#.]{0,20}[a-z]",
        "\\PC{1,30}"
            .prop_map(|s| s.trim().to_owned())
            .prop_filter("non-empty", |s| !s.is_empty()),
    ]
}

/// A value valid for `key` (dependency arrays are checked like makepkg's lint does).
fn value_for(key: &str) -> BoxedStrategy<String> {
    let base = [
        "checkdepends",
        "makedepends",
        "optdepends",
        "provides",
        "conflicts",
        "depends",
    ]
    .into_iter()
    .find(|b| key == *b || key.starts_with(&format!("{b}_")))
    .unwrap_or(key);
    let name = "[a-z0-9@_+][a-zA-Z0-9@._+-]{0,12}";
    match base {
        "depends" | "makedepends" | "checkdepends" | "conflicts" => proptest::string::string_regex(
            &format!("{name}((>=|<=|=|<|>)([0-9]{{1,2}}:)?[0-9a-z.+_]{{1,6}}(-[0-9]{{1,2}})?)?"),
        )
        .unwrap()
        .boxed(),
        "provides" => proptest::string::string_regex(&format!("{name}(=[0-9a-z.]{{1,6}})?"))
            .unwrap()
            .boxed(),
        "optdepends" => {
            proptest::string::string_regex(&format!("{name}(: [a-zA-Zäöü日本 =#.:]{{0,20}}[a-z])?"))
                .unwrap()
                .boxed()
        }
        "backup" => "[a-z][a-z0-9/._-]{0,20}".boxed(),
        _ => value().boxed(),
    }
}

fn values_for(key: &str) -> BoxedStrategy<Vec<String>> {
    vec(value_for(key), 1..4).boxed()
}

fn checksum(kind: &str) -> BoxedStrategy<String> {
    let n = match kind {
        "md5" => 32,
        "sha1" => 40,
        "sha224" => 56,
        "sha256" => 64,
        "sha384" => 96,
        "sha512" | "b2" => 128,
        _ => 0,
    };
    let digest = if n == 0 {
        "[0-9]{1,10}".boxed()
    } else {
        proptest::string::string_regex(&format!("[0-9a-f]{{{n}}}"))
            .unwrap()
            .boxed()
    };
    prop_oneof![1 => Just("SKIP".to_owned()), 3 => digest].boxed()
}

/// `source[_ARCH]` with aligned checksums of a random subset of kinds.
fn sources(suffix: String) -> impl Strategy<Value = Vec<(String, Vec<String>)>> {
    let entry = prop_oneof![
        "[a-z]{1,8}\\.patch",
        "https://example\\.invalid/[a-z]{1,8}-[0-9.]{1,5}\\.tar\\.gz",
        "[a-z]{1,6}::git\\+https://example\\.invalid/[a-z]{1,6}\\.git#tag=v[0-9.]{1,4}",
    ];
    (1usize..4, subsequence(CHECKSUM_KINDS.to_vec(), 0..3)).prop_flat_map(move |(n, kinds)| {
        let suffix = suffix.clone();
        let sums: Vec<_> = kinds
            .iter()
            .map(|k| (Just(format!("{k}sums{suffix}")), vec(checksum(k), n)))
            .collect();
        (vec(entry.clone(), n), sums).prop_map(move |(entries, sums)| {
            let mut out = vec![(format!("source{}", suffix.clone()), entries)];
            out.extend(sums);
            out
        })
    })
}

fn base_section() -> impl Strategy<Value = Section> {
    let version = (
        "[a-zA-Z0-9._+~]{1,12}",
        "[0-9]{1,3}(\\.[0-9]{1,2})?",
        proptest::option::of("[0-9]{1,2}"),
    );
    let multi = subsequence(
        vec![
            "groups",
            "license",
            "checkdepends",
            "makedepends",
            "depends",
            "optdepends",
            "provides",
            "conflicts",
            "replaces",
            "noextract",
            "options",
            "backup",
            "validpgpkeys",
        ],
        0..6,
    )
    .prop_flat_map(|keys| {
        keys.into_iter()
            .map(|k| (Just(k), values_for(k)))
            .collect::<Vec<_>>()
    });
    let singles =
        subsequence(vec!["pkgdesc", "url", "install", "changelog"], 0..4).prop_flat_map(|keys| {
            keys.into_iter()
                .map(|k| (Just(k), value()))
                .collect::<Vec<_>>()
        });
    let arches = prop_oneof![
        1 => Just(vec!["any".to_owned()]),
        4 => subsequence(ARCHES.to_vec(), 1..4).prop_map(|v| v.into_iter().map(String::from).collect()),
    ];
    (name(), version, singles, multi, arches, any::<bool>())
        .prop_flat_map(|(name, version, singles, multi, arches, with_sources)| {
            let specific: Vec<String> = arches.iter().filter(|a| *a != "any").cloned().collect();
            let arch_fields =
                subsequence(specific.clone(), 0..=specific.len()).prop_flat_map(|archs| {
                    archs
                        .into_iter()
                        .map(|a| {
                            let keyed = subsequence(
                                vec!["depends", "makedepends", "optdepends", "provides"],
                                1..3,
                            )
                            .prop_flat_map(|keys| {
                                keys.into_iter()
                                    .map(|k| (Just(k), values_for(k)))
                                    .collect::<Vec<_>>()
                            });
                            (keyed, Just(a.clone()), sources(format!("_{a}")))
                        })
                        .collect::<Vec<_>>()
                });
            let src = if with_sources {
                sources(String::new()).boxed()
            } else {
                Just(Vec::new()).boxed()
            };
            (
                Just((name, version, singles, multi, arches)),
                arch_fields,
                src,
            )
        })
        .prop_map(
            |((name, (ver, rel, epoch), singles, multi, arches), arch_fields, src)| {
                let mut f = Fields::new();
                for (k, v) in singles {
                    f.set(k, vec![v]);
                }
                f.set("pkgver", vec![ver]);
                f.set("pkgrel", vec![rel]);
                if let Some(e) = epoch {
                    f.set("epoch", vec![e]);
                }
                f.set("arch", arches);
                for (k, v) in multi {
                    f.set(k, v);
                }
                for (k, v) in src {
                    f.set(k, v);
                }
                for (keys, arch, src) in arch_fields {
                    for (k, v) in keys {
                        f.set(format!("{k}_{arch}"), v);
                    }
                    for (k, v) in src {
                        f.set(k, v);
                    }
                }
                Section { name, fields: f }
            },
        )
}

fn package_section(pkgname: String) -> impl Strategy<Value = Section> {
    let keys = subsequence(
        vec![
            "pkgdesc",
            "url",
            "install",
            "arch",
            "groups",
            "license",
            "depends",
            "optdepends",
            "provides",
            "conflicts",
            "replaces",
            "options",
            "backup",
            "depends_x86_64",
            "optdepends_aarch64",
        ],
        0..6,
    );
    keys.prop_flat_map(move |keys| {
        let pkgname = pkgname.clone();
        let entries: Vec<_> = keys
            .into_iter()
            .map(|k| {
                let single = matches!(k, "pkgdesc" | "url" | "install");
                let v = if k == "arch" {
                    prop_oneof![
                        Just(vec!["any".to_owned()]),
                        Just(vec!["x86_64".to_owned()])
                    ]
                    .boxed()
                } else if single {
                    // An empty single value clears the inherited one.
                    prop_oneof![Just(String::new()), value()]
                        .prop_map(|v| vec![v])
                        .boxed()
                } else {
                    // An empty array clears the inherited one.
                    prop_oneof![1 => Just(Vec::new()), 3 => values_for(k)].boxed()
                };
                (Just(k), v)
            })
            .collect();
        entries.prop_map(move |entries| {
            let mut f = Fields::new();
            for (k, v) in entries {
                f.set(k, v);
            }
            Section {
                name: pkgname.clone(),
                fields: f,
            }
        })
    })
}

fn srcinfo() -> impl Strategy<Value = SrcInfo> {
    (
        base_section(),
        proptest::collection::btree_set(name(), 1..5),
    )
        .prop_flat_map(|(base, names)| {
            let pkgs: Vec<_> = names.into_iter().map(package_section).collect();
            (Just(base), pkgs).prop_map(|(base, packages)| SrcInfo { base, packages })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(info in srcinfo()) {
        let text = info.to_string();
        let back = SrcInfo::parse(&text);
        prop_assert_eq!(&back, &Ok(info.clone()), "text:\n{}", text);
        prop_assert_eq!(info.validate(), Ok(()));
        // The views never panic and agree with the sections.
        let packages = info.packages();
        prop_assert_eq!(packages.len(), info.packages.len());
        for a in ARCHES {
            let _ = info.sources_for_arch(a);
            let _ = info.depends_for_arch(a);
        }
        // CRLF and space indentation parse to the same value.
        let crlf = text.replace('\n', "\r\n").replace('\t', "    ");
        let back = SrcInfo::parse(&crlf);
        prop_assert_eq!(&back, &Ok(info.clone()));
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check_error_shape(&text, SrcInfo::parse(&text));
    }

    #[test]
    fn arbitrary_lines_never_panic(
        lines in vec(prop_oneof![
            "(pkgbase|pkgname|pkgver|pkgrel|epoch|arch|depends|source|sha256sums|depends_x86_64|source_any|b2sums_i686) ?= ?[ -~]{0,20}",
            "[ \t]*#.*",
            "[ -~]{0,30}",
        ], 0..30)
    ) {
        let text = lines.join("\n");
        check_error_shape(&text, SrcInfo::parse(&text));
    }

    #[test]
    fn corrupted_valid_files_never_panic(
        info in srcinfo(),
        cut in any::<prop::sample::Index>(),
        insert in "[ -~\t\r\n]{0,12}",
    ) {
        let text = info.to_string();
        let mut at = cut.index(text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let corrupted = format!("{}{}{}", &text[..at], insert, &text[at..]);
        check_error_shape(&corrupted, SrcInfo::parse(&corrupted));
        let truncated = &text[..at];
        check_error_shape(truncated, SrcInfo::parse(truncated));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..300)) {
        let _ = SrcInfo::from_bytes(&bytes);
    }
}

fn check_error_shape(text: &str, result: Result<SrcInfo, SrcInfoError>) {
    match result {
        Ok(info) => {
            // Whatever was accepted writes back to something that parses to the same value.
            assert_eq!(SrcInfo::parse(&info.to_string()).as_ref(), Ok(&info));
        }
        Err(SrcInfoError::Empty) => assert!(text.is_empty()),
        Err(SrcInfoError::NoContent) => {}
        Err(e) => {
            let n = e.line().expect("every other error names a line");
            assert!(n >= 1 && n <= text.split('\n').count(), "{e}");
            assert!(e.to_string().starts_with(&format!("line {n}: ")));
        }
    }
}

#[test]
fn oversized_input_is_refused() {
    let mut text = String::from("pkgbase = big\n\tpkgver = 1\n\tpkgrel = 1\n");
    while text.len() <= pacmesh_repo::srcinfo::MAX_SRCINFO_SIZE {
        text.push_str("\tdepends = some-dependency-name\n");
    }
    let e = SrcInfo::parse(&text).unwrap_err();
    assert!(matches!(e, SrcInfoError::TooLarge { .. }), "{e}");
    assert!(e.to_string().contains("byte limit"));
}

#[test]
fn reader_stops_at_the_limit() {
    // An endless reader is refused after MAX + 1 bytes instead of filling memory.
    let endless = std::io::repeat(b'#');
    let e = SrcInfo::from_reader(endless).unwrap_err();
    assert!(matches!(e, SrcInfoError::TooLarge { .. }), "{e}");
    let ok = SrcInfo::from_reader(&b"pkgbase = a\n\tpkgver = 1\n\tpkgrel = 1\n\npkgname = a\n"[..]);
    assert_eq!(ok.unwrap().pkgnames(), ["a"]);
}

/// Adversarial 4 MiB inputs (thousands of distinct `KEY_ARCH` keys, thousands of packages,
/// a huge inherited array times many packages) are refused by the caps or handled in linear
/// time: a quadratic parser took minutes on the first of these.
#[test]
fn pathological_inputs_stay_fast() {
    use pacmesh_repo::srcinfo::{MAX_PACKAGES, MAX_SECTION_KEYS};
    let head = "pkgbase = a\n\tpkgver = 1\n\tpkgrel = 1\n";
    let fill = |mut s: String, f: &dyn Fn(usize) -> String| {
        let mut i = 0;
        while s.len() < pacmesh_repo::srcinfo::MAX_SRCINFO_SIZE - 100 {
            s.push_str(&f(i));
            i += 1;
        }
        s
    };
    let start = std::time::Instant::now();

    let e = SrcInfo::parse(&fill(head.into(), &|i| format!("\tdepends_a{i} = x\n"))).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("more than {MAX_SECTION_KEYS} different keys")),
        "{e}"
    );
    let e = SrcInfo::parse(&fill(head.into(), &|i| format!("pkgname = p{i}\n"))).unwrap_err();
    assert!(
        e.to_string()
            .contains(&format!("more than {MAX_PACKAGES} packages")),
        "{e}"
    );

    // Many values under the maximum number of keys.
    let text = fill(head.into(), &|i| {
        format!("\tdepends_a{} = x{i}\n", i % 1000)
    }) + "\npkgname = a\n";
    assert!(SrcInfo::parse(&text).is_ok());

    // A 3 MB inherited array and 1000 packages: resolving borrows instead of copying.
    let mut text = String::from(head);
    for _ in 0..1000 {
        text.push_str(&format!("\tdepends = {}\n", "d".repeat(3000)));
    }
    for i in 0..1000 {
        text.push_str(&format!("pkgname = p{i}\n"));
    }
    let info = SrcInfo::parse(&text).unwrap();
    let packages = info.packages();
    assert_eq!(packages.len(), 1000);
    assert_eq!(packages[999].values("depends").len(), 1000);

    let elapsed = start.elapsed();
    assert!(elapsed.as_secs() < 60, "took {elapsed:?}");
}

#[test]
fn validate_refuses_unwritable_values() {
    let mut info =
        SrcInfo::parse("pkgbase = a\n\tpkgver = 1\n\tpkgrel = 1\n\npkgname = a\n").unwrap();
    assert_eq!(info.validate(), Ok(()));
    info.packages[0]
        .fields
        .set("pkgdesc", vec!["two\nlines".into()]);
    assert_eq!(info.validate(), Err(SrcInfoError::Unrepresentable));
    info.packages[0]
        .fields
        .set("pkgdesc", vec![" padded".into()]);
    assert_eq!(info.validate(), Err(SrcInfoError::Unrepresentable));
    info.packages[0].fields.set("pkgdesc", vec!["ok".into()]);
    info.base.fields.set("pkgrel", vec!["1-1".into()]);
    let e = info.validate().unwrap_err();
    assert!(e.to_string().starts_with("line 3: invalid pkgrel"), "{e}");
}
