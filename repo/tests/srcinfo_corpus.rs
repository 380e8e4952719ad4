//! Every real `.SRCINFO` of the shared corpus (`../shared/corpus/srcinfo/*/.SRCINFO`, next to
//! the repository, never copied into it) parses to the package names and version its
//! `INDEX.tsv` lists; the broken ones give clear errors. Skipped with a notice when the corpus is
//! absent (a fresh clone has none).

mod common;
use std::path::PathBuf;

use pacmesh_repo::srcinfo::{SrcInfo, SrcInfoError};

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/srcinfo");
    dir.join("INDEX.tsv").is_file().then_some(dir)
}

struct Row {
    dir: String,
    npkgs: usize,
    version: String,
    pkgnames: Vec<String>,
    /// The INDEX cuts long name lists with a trailing `…`.
    names_truncated: bool,
    regen: String,
    /// Feature tags, e.g. `split`, `epoch`, `archarray:source`, `sum:b2sums`.
    features: Vec<String>,
}

fn read_index(dir: &std::path::Path) -> Vec<Row> {
    let text = std::fs::read_to_string(dir.join("INDEX.tsv")).expect("read INDEX.tsv");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("INDEX header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("INDEX.tsv has no `{name}` column: {header:?}"))
    };
    let (c_dir, c_n, c_ver, c_names, c_regen) = (
        col("dir"),
        col("npkgs"),
        col("version"),
        col("pkgnames"),
        col("regen_vs_makepkg_6.0.2"),
    );
    let c_features = col("features");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("").to_owned();
            let mut pkgnames: Vec<String> =
                get(c_names).split_whitespace().map(str::to_owned).collect();
            let names_truncated = pkgnames.last().is_some_and(|n| n == "…");
            if names_truncated {
                pkgnames.pop();
            }
            Row {
                dir: get(c_dir),
                npkgs: get(c_n).parse().expect("npkgs is a number"),
                version: get(c_ver),
                pkgnames,
                names_truncated,
                regen: get(c_regen),
                features: get(c_features)
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }
        })
        .collect()
}

/// Check a feature tag of INDEX.tsv against the parsed file: `Some(true)` when it shows,
/// `Some(false)` when it does not, `None` for tags this test does not interpret.
fn feature_holds(info: &SrcInfo, bytes: &[u8], feature: &str) -> Option<bool> {
    let sections = || std::iter::once(&info.base).chain(&info.packages);
    let any_key =
        |pred: &dyn Fn(&str) -> bool| sections().any(|s| s.fields.iter().any(|(k, _)| pred(k)));
    let sources = info.all_sources();
    let values = |key: &str| {
        sections()
            .flat_map(move |s| s.fields.values(key).to_vec())
            .collect::<Vec<_>>()
    };
    let (tag, arg) = feature.split_once(':').unwrap_or((feature, ""));
    Some(match tag {
        "epoch" => info.epoch().is_some(),
        "split" => info.pkgnames().len() > 1,
        "split_5plus" => info.pkgnames().len() >= 5,
        "pkgrel_decimal" => info.pkgrel().contains('.'),
        "non_ascii" => !bytes.is_ascii(),
        "arch_any" => info.arch() == ["any"],
        "arch" => sections().any(|s| s.fields.values("arch").iter().any(|a| a == arg)),
        "archarray" => any_key(&|k| k.starts_with(&format!("{arg}_"))),
        "archarray_arch" => any_key(&|k| k.ends_with(&format!("_{arg}"))),
        "sum" => any_key(&|k| k == arg || k.starts_with(&format!("{arg}_"))),
        "has" => any_key(&|k| k == arg || k.starts_with(&format!("{arg}_"))),
        "override" => info.packages.iter().any(|p| p.fields.contains(arg)),
        "override_empty_clear" => info.packages.iter().any(|p| {
            p.fields
                .iter()
                .any(|(_, v)| v.is_empty() || v.iter().all(String::is_empty))
        }),
        "source_vcs" => sources.iter().any(|s| s.is_vcs()),
        "vcs_name" => sources.iter().any(|s| s.protocol == arg),
        "source_fragment" => sources.iter().any(|s| {
            s.fragment
                .as_deref()
                .is_some_and(|f| f.starts_with(&format!("{arg}=")))
        }),
        "source_local" => sources.iter().any(|s| s.is_local()),
        "source_rename" => sources.iter().any(|s| s.entry.contains("::")),
        "sources_20plus" => sources.len() >= 20,
        "provides_versioned" => values("provides").iter().any(|p| p.contains('=')),
        "depends_soname" => {
            any_key(&|k| k.starts_with("depends"))
                && sections().any(|s| {
                    s.fields
                        .iter()
                        .filter(|(k, _)| k.starts_with("depends"))
                        .any(|(_, v)| v.iter().any(|d| d.contains(".so")))
                })
        }
        // The `no_*` tags describe the pkgbase section.
        "no_pkgdesc" | "no_url" | "no_license" => !info.base.fields.contains(&tag[3..]),
        _ => return None,
    })
}

/// The file without comment lines, for comparing with what `Display` writes.
fn without_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn squash_ws(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn corpus_parses_to_index() {
    let Some(dir) = corpus_dir() else {
        eprintln!(
            "SKIPPED corpus_parses_to_index: no corpus at {}/../../shared/corpus/srcinfo",
            env!("CARGO_MANIFEST_DIR")
        );
        return;
    };
    let rows = read_index(&dir);
    assert!(
        rows.len() >= 50,
        "INDEX.tsv lists only {} folders",
        rows.len()
    );
    let (mut ok, mut rejected, mut rewritten, mut tags_checked) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for row in &rows {
        let path = dir.join(&row.dir).join(".SRCINFO");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let result = SrcInfo::from_bytes(&bytes);
        if row.npkgs == 0 {
            // The INDEX marks a file with no packages (the 0-byte one): it must be refused clearly.
            match result {
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("empty .SRCINFO"),
                        "{}: unclear error {msg:?}",
                        row.dir
                    );
                    if bytes.is_empty() {
                        assert_eq!(e, SrcInfoError::Empty);
                    }
                    eprintln!("{}: rejected as expected: {msg}", row.dir);
                    rejected += 1;
                }
                Ok(s) => failures.push(format!("{}: expected an error, parsed {s:?}", row.dir)),
            }
            continue;
        }
        let info = match result {
            Ok(i) => i,
            Err(e) => {
                failures.push(format!("{}: {e}", row.dir));
                continue;
            }
        };
        let names = info.pkgnames();
        if names.len() != row.npkgs {
            failures.push(format!(
                "{}: {} packages, INDEX says {}",
                row.dir,
                names.len(),
                row.npkgs
            ));
        }
        let listed = if row.names_truncated {
            &names[..row.pkgnames.len().min(names.len())]
        } else {
            &names[..]
        };
        if listed != row.pkgnames {
            failures.push(format!(
                "{}: pkgnames {names:?}, INDEX says {:?}",
                row.dir, row.pkgnames
            ));
        }
        if info.version() != row.version {
            failures.push(format!(
                "{}: version {}, INDEX says {}",
                row.dir,
                info.version(),
                row.version
            ));
        }
        // Resolving every package and every source must not panic and must agree with the names.
        for (p, name) in info.packages().iter().zip(&names) {
            assert_eq!(p.pkgname, *name);
            assert_eq!(p.version, info.version());
        }
        for feature in &row.features {
            let holds = feature_holds(&info, &bytes, feature);
            tags_checked += usize::from(holds.is_some());
            if holds == Some(false) {
                failures.push(format!(
                    "{}: tagged `{feature}` but the parse does not show it",
                    row.dir
                ));
            }
        }
        // Writing back gives makepkg's text for files makepkg wrote.
        let text = String::from_utf8_lossy(&bytes);
        let written = info.to_string();
        match row.regen.as_str() {
            "identical" => {
                if written != without_comments(&text) {
                    failures.push(format!("{}: Display differs from the file", row.dir));
                } else {
                    rewritten += 1;
                }
            }
            _ => {
                if squash_ws(&written) != squash_ws(&text) {
                    failures.push(format!(
                        "{}: Display differs from the file beyond whitespace",
                        row.dir
                    ));
                } else {
                    rewritten += 1;
                }
            }
        }
        // And parsing what we wrote gives the same value.
        assert_eq!(
            SrcInfo::parse(&written).as_ref(),
            Ok(&info),
            "{}: re-parse",
            row.dir
        );
        ok += 1;
    }
    eprintln!(
        "corpus: {ok} parsed and matched INDEX.tsv, {rejected} rejected as expected, \
         {rewritten} written back identically, {tags_checked} feature tags confirmed, {} failures",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "corpus failures:\n{}",
        failures.join("\n")
    );
}

/// The other `.SRCINFO` files of the corpus (`buildable/*/`, `chaotic/*/`): each parses, or is
/// the 0-byte file and is refused as empty.
#[test]
fn corpus_other_folders_parse() {
    let Some(dir) = corpus_dir() else {
        eprintln!("SKIPPED corpus_other_folders_parse: no corpus next to the repository");
        return;
    };
    let root = dir.parent().unwrap().to_path_buf();
    let mut seen = 0;
    for group in ["buildable", "chaotic"] {
        let Ok(entries) = std::fs::read_dir(root.join(group)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path().join(".SRCINFO");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            seen += 1;
            match SrcInfo::from_bytes(&bytes) {
                Ok(info) => {
                    assert!(!info.pkgnames().is_empty());
                    assert_eq!(
                        SrcInfo::parse(&info.to_string()).as_ref(),
                        Ok(&info),
                        "{}",
                        path.display()
                    );
                }
                Err(SrcInfoError::Empty) if bytes.is_empty() => {}
                Err(e) => panic!("{}: {e}", path.display()),
            }
        }
    }
    eprintln!("corpus: {seen} .SRCINFO files under buildable/ and chaotic/ checked");
}

/// Regenerate every corpus `.SRCINFO` with `makepkg --printsrcinfo` (in bubblewrap, offline) and
/// check that what makepkg writes always parses, and parses to the shipped file's value where
/// INDEX.tsv says the two are identical. Slow (about a second per folder), so opt-in:
/// `cargo test -p pacmesh-repo --test srcinfo_corpus -- --ignored`.
#[test]
#[ignore = "slow: runs makepkg on every corpus folder"]
fn corpus_matches_makepkg() {
    let Some(dir) = corpus_dir() else {
        eprintln!("SKIPPED corpus_matches_makepkg: no corpus next to the repository");
        return;
    };
    let mut failures = Vec::new();
    let (mut compared, mut makepkg_failed) = (0, 0);
    for row in read_index(&dir) {
        let folder = dir.join(&row.dir);
        let tmp = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(&folder).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && p.file_name().is_some_and(|n| n != ".SRCINFO") {
                std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        let out = common::bwrap_in(tmp.path(), &["makepkg", "--printsrcinfo"]).output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                eprintln!("SKIPPED corpus_matches_makepkg: cannot run bwrap: {e}");
                return;
            }
        };
        if !out.status.success() {
            // INDEX.tsv records the folders makepkg cannot handle here (svn/hg/bzr clients).
            makepkg_failed += 1;
            if row.regen != "error" {
                failures.push(format!(
                    "{}: makepkg failed: {}",
                    row.dir,
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            continue;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        let generated = match SrcInfo::parse(&text) {
            Ok(g) => g,
            Err(e) => {
                failures.push(format!("{}: makepkg output rejected: {e}", row.dir));
                continue;
            }
        };
        if generated.to_string() != text {
            failures.push(format!("{}: Display differs from makepkg output", row.dir));
        }
        if row.regen == "identical" {
            let shipped = SrcInfo::from_bytes(&std::fs::read(folder.join(".SRCINFO")).unwrap());
            if shipped.as_ref() != Ok(&generated) {
                failures.push(format!(
                    "{}: shipped and regenerated parse differently",
                    row.dir
                ));
            }
        }
        compared += 1;
    }
    eprintln!(
        "corpus vs makepkg: {compared} regenerated and parsed, {makepkg_failed} makepkg failures, \
         {} problems",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
