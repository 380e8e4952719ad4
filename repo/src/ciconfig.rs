//! `.CI/config`: the per-package settings of a Chaotic-AUR style packages tree.
//!
//! The file is a list of shell-style assignments, one per line: `KEY=value`, `KEY="value"` or
//! `KEY='value'`; blank lines and `#` comments are ignored, as is a trailing ` # comment` after
//! an unquoted value. pacmesh never runs it: it is parsed here, as data.
//!
//! | key | meaning | value |
//! | --- | --- | --- |
//! | `CI_PKGBUILD_SOURCE` | where the PKGBUILD comes from | `aur`, `gitlab:ID`, a git URL, or `custom` (the folder itself) |
//! | `CI_ON_TRIGGER` | built by this named schedule only (e.g. `daily`) | a name |
//! | `CI_REBUILD_TRIGGERS` | packages whose new versions cause a rebuild (pkgrel bump) | `pkg1:pkg2:…` |
//! | `CI_PACKAGE_BUMP` | a pkgrel bump of the given version | `[epoch:]pkgver[-pkgrel][/count]` (count 1 when absent) |
//! | `BUILDER_CACHE_SOURCES` | keep downloaded sources between builds | `true` / `false` |
//! | `BUILDER_EXTRA_TIMEOUT` | multiplies the build timeout | a positive number ≤ 100 |
//! | `CI_GIT_COMMIT` | last seen upstream commit of a VCS package | hex |
//! | `CI_PKGBUILD_TIMESTAMP` | last seen AUR `LastModified` | seconds |
//! | `CI_HUMAN_REVIEW` | PKGBUILD changes wait for a maintainer's approval | `true` / `false` |
//! | `CI_MANAGE_AUR` | Chaotic pushes changes back to the AUR (recognised, not used by pacmesh) | `true` / `false` |
//! | `BUILDER_CLASS` | Chaotic's builder size class (recognised, not used by pacmesh) | a number |
//!
//! Unknown keys are kept as warnings (a typo must be visible, but must not stop a tree);
//! a line that is not an assignment, or a known key with a value of the wrong form, is an
//! error naming the line ([`CiConfigError`]).

use std::fmt;

/// Where a package's PKGBUILD comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PkgbuildSource {
    /// The AUR package base named like the folder.
    Aur,
    /// A GitLab project (by numeric id), its tags.
    Gitlab(u64),
    /// A git repository.
    Git(String),
    /// The folder itself (`custom`, or no key).
    Custom,
}

/// A pkgrel bump: applies while the PKGBUILD's version is `version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageBump {
    /// `[epoch:]pkgver[-pkgrel]`.
    pub version: String,
    /// The bump count: pkgrel becomes `pkgrel.count`.
    pub count: u32,
}

impl PackageBump {
    /// Parses `1:1.2.3-1/2` or `1.2.3`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (version, count) = match s.split_once('/') {
            Some((v, c)) => (
                v,
                c.parse::<u32>()
                    .ok()
                    .filter(|c| *c >= 1)
                    .ok_or_else(|| format!("bump count {c:?} is not a number ≥ 1"))?,
            ),
            None => (s, 1),
        };
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+:-~".contains(&b))
        {
            return Err(format!("{version:?} is not a package version"));
        }
        Ok(PackageBump {
            version: version.to_string(),
            count,
        })
    }
}

impl fmt::Display for PackageBump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.version, self.count)
    }
}

/// A parsed `.CI/config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CiConfig {
    pub pkgbuild_source: Option<PkgbuildSource>,
    pub on_trigger: Option<String>,
    pub rebuild_triggers: Vec<String>,
    pub package_bump: Option<PackageBump>,
    pub cache_sources: bool,
    pub extra_timeout: Option<f64>,
    pub git_commit: Option<String>,
    pub pkgbuild_timestamp: Option<u64>,
    pub human_review: bool,
    pub manage_aur: bool,
    /// Unknown keys, as `line N: …` messages.
    pub warnings: Vec<String>,
}

/// Lines of a `.CI/config` that are not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(".CI/config: {}", .problems.join("; "))]
pub struct CiConfigError {
    /// `line N: …` messages.
    pub problems: Vec<String>,
}

/// Largest `.CI/config` read.
pub const MAX_CI_CONFIG_BYTES: usize = 64 << 10;

fn unquote(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if let Some(rest) = raw.strip_prefix('"') {
        let end = rest.find('"').ok_or("unterminated \"")?;
        if !rest[end + 1..].trim().is_empty() && !rest[end + 1..].trim_start().starts_with('#') {
            return Err("text after the closing quote".into());
        }
        let v = &rest[..end];
        if v.contains(['$', '`', '\\']) {
            return Err("expansions ($, `, \\) are not supported in values".into());
        }
        return Ok(v.to_string());
    }
    if let Some(rest) = raw.strip_prefix('\'') {
        let end = rest.find('\'').ok_or("unterminated '")?;
        if !rest[end + 1..].trim().is_empty() && !rest[end + 1..].trim_start().starts_with('#') {
            return Err("text after the closing quote".into());
        }
        return Ok(rest[..end].to_string());
    }
    let v = match raw.find(" #").or_else(|| raw.find("\t#")) {
        Some(i) => raw[..i].trim_end(),
        None => raw,
    };
    if v.contains(char::is_whitespace) {
        return Err("unquoted value contains spaces".into());
    }
    if v.contains(['$', '`', '\\', '"', '\'', ';', '&', '|', '(', ')', '<', '>']) {
        return Err("shell syntax in a value is not supported".into());
    }
    Ok(v.to_string())
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" | "" => Ok(false),
        _ => Err(format!("{v:?} is not true or false")),
    }
}

/// Parses a `.CI/config` text (see the module docs).
pub fn parse(text: &str) -> Result<CiConfig, CiConfigError> {
    let mut c = CiConfig::default();
    let mut problems = Vec::new();
    if text.len() > MAX_CI_CONFIG_BYTES {
        return Err(CiConfigError {
            problems: vec![format!("larger than {MAX_CI_CONFIG_BYTES} bytes")],
        });
    }
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let t = t.strip_prefix("export ").unwrap_or(t);
        let Some((key, raw)) = t.split_once('=') else {
            problems.push(format!("line {n}: not KEY=value: {:?}", clip(t)));
            continue;
        };
        let key = key.trim_end();
        if key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || key.as_bytes()[0].is_ascii_digit()
        {
            problems.push(format!("line {n}: {:?} is not a variable name", clip(key)));
            continue;
        }
        let v = match unquote(raw) {
            Ok(v) => v,
            Err(e) => {
                problems.push(format!("line {n}: {key}: {e}"));
                continue;
            }
        };
        let r: Result<(), String> = (|| {
            match key {
                "CI_PKGBUILD_SOURCE" => {
                    c.pkgbuild_source = Some(match v.as_str() {
                        "" | "custom" => PkgbuildSource::Custom,
                        "aur" => PkgbuildSource::Aur,
                        g if g.starts_with("gitlab:") => {
                            PkgbuildSource::Gitlab(g["gitlab:".len()..].parse().map_err(|_| {
                                format!("{g:?}: gitlab:ID needs a numeric project id")
                            })?)
                        }
                        u if u.contains("://") || u.starts_with("git@") => {
                            if u.starts_with('-') {
                                return Err("a URL must not start with '-'".into());
                            }
                            PkgbuildSource::Git(u.to_string())
                        }
                        other => {
                            return Err(format!(
                                "{other:?}: expected aur, gitlab:ID, custom or a git URL"
                            ));
                        }
                    })
                }
                "CI_ON_TRIGGER" => {
                    if !v
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
                    {
                        return Err(format!("{v:?} is not a schedule name"));
                    }
                    c.on_trigger = (!v.is_empty()).then_some(v);
                }
                "CI_REBUILD_TRIGGERS" => {
                    c.rebuild_triggers = v
                        .split(':')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                }
                "CI_PACKAGE_BUMP" => c.package_bump = Some(PackageBump::parse(&v)?),
                "BUILDER_CACHE_SOURCES" => c.cache_sources = boolean(&v)?,
                "BUILDER_EXTRA_TIMEOUT" => {
                    let x: f64 = v
                        .parse()
                        .ok()
                        .filter(|x: &f64| x.is_finite() && *x > 0.0 && *x <= 100.0)
                        .ok_or_else(|| format!("{v:?} is not a multiplier between 0 and 100"))?;
                    c.extra_timeout = Some(x);
                }
                "CI_GIT_COMMIT" => {
                    if !v.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(format!("{v:?} is not a commit id"));
                    }
                    c.git_commit = (!v.is_empty()).then_some(v);
                }
                "CI_PKGBUILD_TIMESTAMP" => {
                    c.pkgbuild_timestamp = Some(
                        v.parse()
                            .map_err(|_| format!("{v:?} is not a timestamp in seconds"))?,
                    )
                }
                "CI_HUMAN_REVIEW" => c.human_review = boolean(&v)?,
                "CI_MANAGE_AUR" => c.manage_aur = boolean(&v)?,
                "BUILDER_CLASS" => {}
                other => c
                    .warnings
                    .push(format!("line {n}: unknown key {other} (ignored)")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            problems.push(format!("line {n}: {key}: {e}"));
        }
    }
    if problems.is_empty() {
        Ok(c)
    } else {
        Err(CiConfigError { problems })
    }
}

/// Reads and parses `FOLDER/.CI/config`. `Ok(None)`: there is none. `.CI` and `config`
/// must not be symbolic links (a folder from elsewhere must not make the host read another
/// file), and the file is read up to [`MAX_CI_CONFIG_BYTES`] + 1 bytes.
pub fn read_folder(folder: &std::path::Path) -> Result<Option<CiConfig>, CiConfigError> {
    use std::io::Read;
    let err = |m: String| CiConfigError { problems: vec![m] };
    let ci = folder.join(".CI");
    match std::fs::symlink_metadata(&ci) {
        Err(_) => return Ok(None),
        Ok(m) if !m.is_dir() => return Err(err(".CI is not a folder".into())),
        Ok(_) => {}
    }
    let p = ci.join("config");
    match std::fs::symlink_metadata(&p) {
        Err(_) => return Ok(None),
        Ok(m) if !m.is_file() => return Err(err("not a regular file".into())),
        Ok(_) => {}
    }
    let mut text = String::new();
    std::fs::File::open(&p)
        .and_then(|f| {
            f.take(MAX_CI_CONFIG_BYTES as u64 + 1)
                .read_to_string(&mut text)
        })
        .map_err(|e| err(format!("cannot read it: {e}")))?;
    parse(&text).map(Some)
}

fn clip(s: &str) -> String {
    let mut o: String = s.chars().take(60).collect();
    if o.len() < s.len() {
        o.push('…');
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_quotes_comments_and_warnings() {
        let c = parse(
            "# a comment\n\nBUILDER_CACHE_SOURCES=true\nCI_PACKAGE_BUMP=1.1.3.r3454.ge81664b-1/2\n\
             CI_REBUILD_TRIGGERS=boost:boost-libs\nCI_PKGBUILD_SOURCE='aur'\nBUILDER_CLASS=9\n\
             BUILDER_EXTRA_TIMEOUT=\"2\"  # twice\nCI_ON_TRIGGER=daily\nCI_GIT_COMMIT=abc123\n\
             CI_SOMETHING_NEW=1\nexport CI_HUMAN_REVIEW=true\n",
        )
        .unwrap();
        assert!(c.cache_sources && c.human_review);
        assert_eq!(
            c.package_bump,
            Some(PackageBump {
                version: "1.1.3.r3454.ge81664b-1".into(),
                count: 2
            })
        );
        assert_eq!(c.rebuild_triggers, vec!["boost", "boost-libs"]);
        assert_eq!(c.pkgbuild_source, Some(PkgbuildSource::Aur));
        assert_eq!(c.extra_timeout, Some(2.0));
        assert_eq!(c.on_trigger.as_deref(), Some("daily"));
        assert_eq!(c.git_commit.as_deref(), Some("abc123"));
        assert_eq!(
            c.warnings,
            vec!["line 11: unknown key CI_SOMETHING_NEW (ignored)"]
        );
        assert_eq!(
            parse("CI_PKGBUILD_SOURCE=gitlab:12345")
                .unwrap()
                .pkgbuild_source,
            Some(PkgbuildSource::Gitlab(12345))
        );
        assert_eq!(
            parse("CI_PKGBUILD_SOURCE=https://gitlab.com/x/y.git")
                .unwrap()
                .pkgbuild_source,
            Some(PkgbuildSource::Git("https://gitlab.com/x/y.git".into()))
        );
        assert_eq!(PackageBump::parse("1.2.3").unwrap().count, 1);
        assert_eq!(
            PackageBump::parse("1:1.2.3-1/1").unwrap().version,
            "1:1.2.3-1"
        );
    }

    #[test]
    fn garbage_lines_and_bad_values_name_the_line() {
        let e = parse(
            "CI_PKGBUILD_SOURCE=aur\nthis is garbage\nBUILDER_EXTRA_TIMEOUT=lots\nCI_PACKAGE_BUMP=1.0/0\n\
             CI_ON_TRIGGER=\"$(rm -rf /)\"\nBUILDER_CACHE_SOURCES=maybe\nX Y=1\n",
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(".CI/config: line 2: not KEY=value: \"this is garbage\""),
            "{s}"
        );
        for needle in [
            "line 3: BUILDER_EXTRA_TIMEOUT",
            "line 4: CI_PACKAGE_BUMP: bump count",
            "line 5: CI_ON_TRIGGER: expansions",
            "line 6: BUILDER_CACHE_SOURCES: \"maybe\"",
            "line 7: \"X Y\" is not a variable name",
        ] {
            assert!(s.contains(needle), "{needle} in {s}");
        }
        assert_eq!(e.problems.len(), 6);
        assert!(parse(&"x".repeat(70_000)).is_err());
    }

    #[test]
    fn chaotic_corpus_configs_parse() {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/chaotic");
        let Ok(rd) = std::fs::read_dir(&root) else {
            eprintln!("NOTICE: {} is absent; corpus test skipped", root.display());
            return;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path().join(".CI/config");
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let c = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            assert!(c.warnings.is_empty(), "{}: {:?}", p.display(), c.warnings);
            assert!(c.pkgbuild_source.is_some(), "{}", p.display());
            n += 1;
        }
        assert!(n >= 6, "{n} configs");
    }
}
