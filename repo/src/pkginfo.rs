//! `.PKGINFO`: the metadata file makepkg writes at the top of every package.
//!
//! The format is one `key = value` per line, `#` comments, multi-valued keys
//! repeated. Values are read the way `repo-add` 6.0.2 reads them (its
//! `db_write_entry`), because that decides what ends up in the repository
//! database: the line is trimmed, the key ends at the first space or `=`, the
//! value starts after ` = `, and every run of whitespace inside the value is
//! collapsed to a single space. For a single-valued key written twice, the
//! last one wins (as in repo-add). Keys this module does not know are kept in
//! [`PkgInfo::extra`]; lines without `=` are ignored (pacman does the same).
//!
//! ```
//! use pacmesh_repo::pkginfo::PkgInfo;
//! let p = PkgInfo::parse(b"pkgname = a\npkgver = 1:2-3\ndepend = b>=1\ndepend = c\n").unwrap();
//! assert_eq!(p.pkgname, "a");
//! assert_eq!(p.pkgver.epoch(), Some("1"));
//! assert_eq!(p.depends, ["b>=1", "c"]);
//! ```

use crate::version::{Version, VersionError};
use serde::{Deserialize, Serialize};

/// Largest `.PKGINFO` accepted (1 MiB). makepkg writes a few kilobytes.
pub const MAX_PKGINFO_SIZE: u64 = 1024 * 1024;

/// Why a `.PKGINFO` was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkgInfoError {
    /// Larger than [`MAX_PKGINFO_SIZE`].
    #[error(".PKGINFO is too large ({size} bytes, limit {limit})")]
    TooLarge {
        /// Size seen (at least).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Not valid UTF-8.
    #[error(".PKGINFO is not valid UTF-8 (line {line})")]
    NotUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// A required field is absent.
    #[error(".PKGINFO has no {0} field")]
    MissingField(&'static str),
    /// A field has a value that cannot be right.
    #[error(".PKGINFO field {field} has an invalid value {value:?}: {reason}")]
    InvalidField {
        /// The key.
        field: &'static str,
        /// The offending value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The parsed contents of a `.PKGINFO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PkgInfo {
    /// `pkgname`
    pub pkgname: String,
    /// `pkgbase` (split packages share it)
    pub pkgbase: Option<String>,
    /// `pkgver`: the full `[epoch:]pkgver-pkgrel`
    pub pkgver: Version,
    /// `pkgdesc`
    pub pkgdesc: Option<String>,
    /// `url`
    pub url: Option<String>,
    /// `builddate` (seconds since the epoch)
    pub builddate: Option<u64>,
    /// `packager`
    pub packager: Option<String>,
    /// `size`: installed size in bytes
    pub size: Option<u64>,
    /// `arch`
    pub arch: Option<String>,
    /// `license` (repeated)
    pub licenses: Vec<String>,
    /// `replaces` (repeated)
    pub replaces: Vec<String>,
    /// `group` (repeated)
    pub groups: Vec<String>,
    /// `conflict` (repeated)
    pub conflicts: Vec<String>,
    /// `provides` (repeated)
    pub provides: Vec<String>,
    /// `backup` (repeated)
    pub backup: Vec<String>,
    /// `depend` (repeated)
    pub depends: Vec<String>,
    /// `optdepend` (repeated), `name: description`
    pub optdepends: Vec<String>,
    /// `makedepend` (repeated)
    pub makedepends: Vec<String>,
    /// `checkdepend` (repeated)
    pub checkdepends: Vec<String>,
    /// `xdata` (repeated), e.g. `pkgtype=pkg`
    pub xdata: Vec<String>,
    /// Keys not listed above, in file order (e.g. `installed`, or keys of a
    /// future makepkg).
    pub extra: Vec<(String, String)>,
}

/// Is `name` a valid package name (letters, digits and `@._+-`, not starting
/// with `-` or `.`)? Package names become paths inside the database archive,
/// so this is enforced.
pub fn is_valid_pkgname(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._+-".contains(&b))
}

/// Is `v` acceptable as a full version inside a database entry directory name
/// (`NAME-VERSION/`)? It must parse, have a pkgrel, and have no `/`.
pub(crate) fn check_pkgver(v: &Version) -> Result<(), String> {
    if v.pkgrel().is_none() {
        return Err("no pkgrel (expected [epoch:]pkgver-pkgrel)".into());
    }
    if v.as_str() == "." || v.as_str() == ".." || v.as_str().contains('/') {
        return Err("not usable in a path".into());
    }
    Ok(())
}

/// Read one `.PKGINFO`/`desc`-style line the way repo-add's
/// `IFS=' =' read -r var val` plus whitespace collapsing does.
/// Returns `None` for comments and blank lines.
fn split_line(line: &str) -> Option<(&str, String)> {
    // `read -r line` with the default IFS trims spaces and tabs.
    let line = line.trim_matches([' ', '\t']);
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    // Key: up to the first space or '='.
    let kend = line.find([' ', '=']).unwrap_or(line.len());
    let key = &line[..kend];
    let mut rest = &line[kend..];
    // Delimiter: spaces, at most one '=', spaces.
    rest = rest.trim_start_matches(' ');
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start_matches(' ');
    }
    // Trailing IFS whitespace is dropped, then runs of whitespace collapse.
    let rest = rest.trim_end_matches(' ');
    let mut val = String::with_capacity(rest.len());
    let mut in_ws = false;
    for c in rest.chars() {
        if c.is_ascii_whitespace() || c == '\x0b' {
            if !in_ws {
                val.push(' ');
            }
            in_ws = true;
        } else {
            val.push(c);
            in_ws = false;
        }
    }
    Some((key, val))
}

fn parse_u64(field: &'static str, v: &str) -> Result<u64, PkgInfoError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PkgInfoError::InvalidField {
            field,
            value: v.to_owned(),
            reason: "not a non-negative integer".into(),
        });
    }
    v.parse().map_err(|_| PkgInfoError::InvalidField {
        field,
        value: v.to_owned(),
        reason: "number too large".into(),
    })
}

fn opt(v: String) -> Option<String> {
    if v.is_empty() { None } else { Some(v) }
}

impl PkgInfo {
    /// Parse a `.PKGINFO` file.
    pub fn parse(data: &[u8]) -> Result<Self, PkgInfoError> {
        if data.len() as u64 > MAX_PKGINFO_SIZE {
            return Err(PkgInfoError::TooLarge {
                size: data.len() as u64,
                limit: MAX_PKGINFO_SIZE,
            });
        }
        let mut pkgname = None;
        let mut pkgver = None;
        let mut p = PkgInfo {
            pkgname: String::new(),
            pkgbase: None,
            pkgver: Version::parse("0-0").expect("constant"),
            pkgdesc: None,
            url: None,
            builddate: None,
            packager: None,
            size: None,
            arch: None,
            licenses: vec![],
            replaces: vec![],
            groups: vec![],
            conflicts: vec![],
            provides: vec![],
            backup: vec![],
            depends: vec![],
            optdepends: vec![],
            makedepends: vec![],
            checkdepends: vec![],
            xdata: vec![],
            extra: vec![],
        };
        let mut builddate = None;
        let mut size = None;
        for (i, raw) in data.split(|&b| b == b'\n').enumerate() {
            // bash drops NUL bytes from what `read` returns.
            let owned;
            let raw = if raw.contains(&0) {
                owned = raw.iter().copied().filter(|&b| b != 0).collect::<Vec<u8>>();
                &owned[..]
            } else {
                raw
            };
            let line =
                std::str::from_utf8(raw).map_err(|_| PkgInfoError::NotUtf8 { line: i + 1 })?;
            let Some((key, val)) = split_line(line) else {
                continue;
            };
            // Empty values in lists would end a section early in the
            // database `desc` format, so they are dropped.
            let push = |v: &mut Vec<String>, val: String| {
                if !val.is_empty() {
                    v.push(val)
                }
            };
            match key {
                "pkgname" => pkgname = Some(val),
                "pkgbase" => p.pkgbase = opt(val),
                "pkgver" => pkgver = Some(val),
                "pkgdesc" => p.pkgdesc = opt(val),
                "url" => p.url = opt(val),
                "builddate" => builddate = opt(val),
                "packager" => p.packager = opt(val),
                "size" => size = opt(val),
                "arch" => p.arch = opt(val),
                "license" => push(&mut p.licenses, val),
                "replaces" => push(&mut p.replaces, val),
                "group" => push(&mut p.groups, val),
                "conflict" => push(&mut p.conflicts, val),
                "provides" => push(&mut p.provides, val),
                "backup" => push(&mut p.backup, val),
                "depend" => push(&mut p.depends, val),
                "optdepend" => push(&mut p.optdepends, val),
                "makedepend" => push(&mut p.makedepends, val),
                "checkdepend" => push(&mut p.checkdepends, val),
                "xdata" => push(&mut p.xdata, val),
                _ => p.extra.push((key.to_owned(), val)),
            }
        }
        let pkgname = pkgname
            .filter(|s| !s.is_empty())
            .ok_or(PkgInfoError::MissingField("pkgname"))?;
        if !is_valid_pkgname(&pkgname) {
            return Err(PkgInfoError::InvalidField {
                field: "pkgname",
                value: pkgname,
                reason: "only letters, digits and @._+- are allowed, not starting with - or ."
                    .into(),
            });
        }
        let pkgver = pkgver
            .filter(|s| !s.is_empty())
            .ok_or(PkgInfoError::MissingField("pkgver"))?;
        let v = Version::parse(&pkgver).map_err(|e: VersionError| PkgInfoError::InvalidField {
            field: "pkgver",
            value: pkgver.clone(),
            reason: e.to_string(),
        })?;
        check_pkgver(&v).map_err(|reason| PkgInfoError::InvalidField {
            field: "pkgver",
            value: pkgver.clone(),
            reason,
        })?;
        p.pkgname = pkgname;
        p.pkgver = v;
        p.builddate = builddate.map(|v| parse_u64("builddate", &v)).transpose()?;
        p.size = size.map(|v| parse_u64("size", &v)).transpose()?;
        Ok(p)
    }

    /// Serialize back to `.PKGINFO` text in makepkg's key order (without the
    /// two `# Generated by` comment lines). Useful for tests and tools.
    pub fn to_pkginfo_string(&self) -> String {
        let mut out = String::new();
        let mut kv = |k: &str, v: &str| {
            out.push_str(k);
            out.push_str(" = ");
            out.push_str(v);
            out.push('\n');
        };
        kv("pkgname", &self.pkgname);
        if let Some(v) = &self.pkgbase {
            kv("pkgbase", v);
        }
        for v in self.xdata.iter().filter(|v| v.starts_with("pkgtype=")) {
            kv("xdata", v);
        }
        kv("pkgver", self.pkgver.as_str());
        for (k, v) in [("pkgdesc", &self.pkgdesc), ("url", &self.url)] {
            if let Some(v) = v {
                kv(k, v);
            }
        }
        if let Some(v) = self.builddate {
            kv("builddate", &v.to_string());
        }
        if let Some(v) = &self.packager {
            kv("packager", v);
        }
        if let Some(v) = self.size {
            kv("size", &v.to_string());
        }
        if let Some(v) = &self.arch {
            kv("arch", v);
        }
        for (k, list) in [
            ("license", &self.licenses),
            ("replaces", &self.replaces),
            ("group", &self.groups),
            ("conflict", &self.conflicts),
            ("provides", &self.provides),
            ("backup", &self.backup),
            ("depend", &self.depends),
            ("optdepend", &self.optdepends),
            ("makedepend", &self.makedepends),
            ("checkdepend", &self.checkdepends),
        ] {
            for v in list {
                kv(k, v);
            }
        }
        for v in self.xdata.iter().filter(|v| !v.starts_with("pkgtype=")) {
            kv("xdata", v);
        }
        for (k, v) in &self.extra {
            kv(k, v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_like_bash() {
        assert_eq!(split_line("a = b"), Some(("a", "b".into())));
        assert_eq!(split_line("  a = b  c\t d  "), Some(("a", "b c d".into())));
        assert_eq!(split_line("a = b = c"), Some(("a", "b = c".into())));
        assert_eq!(split_line("a=b"), Some(("a", "b".into())));
        assert_eq!(split_line("a = "), Some(("a", "".into())));
        assert_eq!(split_line("a b"), Some(("a", "b".into())));
        assert_eq!(split_line("# c"), None);
        assert_eq!(split_line(""), None);
    }

    #[test]
    fn missing_and_invalid() {
        assert!(matches!(
            PkgInfo::parse(b"pkgver = 1-1\n"),
            Err(PkgInfoError::MissingField("pkgname"))
        ));
        assert!(matches!(
            PkgInfo::parse(b"pkgname = a\n"),
            Err(PkgInfoError::MissingField("pkgver"))
        ));
        assert!(matches!(
            PkgInfo::parse(b"pkgname = ../x\npkgver = 1-1\n"),
            Err(PkgInfoError::InvalidField {
                field: "pkgname",
                ..
            })
        ));
        assert!(matches!(
            PkgInfo::parse(b"pkgname = a\npkgver = 1-1\nsize = x\n"),
            Err(PkgInfoError::InvalidField { field: "size", .. })
        ));
        assert!(matches!(
            PkgInfo::parse(b"pkgname = a\npkgver = 1\n"),
            Err(PkgInfoError::InvalidField { .. })
        ));
        assert!(matches!(
            PkgInfo::parse(b"\xff\n"),
            Err(PkgInfoError::NotUtf8 { line: 1 })
        ));
    }
}
