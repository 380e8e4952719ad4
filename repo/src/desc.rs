//! Repository database entries: the `desc` and `files` files inside
//! `NAME.db.tar.*` / `NAME.files.tar.*`.
//!
//! [`DescEntry::to_desc`] writes byte for byte what `repo-add` 6.0.2 writes
//! (`db_write_entry`): each section is `%NAME%`, one value per line, then a
//! blank line; a section whose (first) value is empty is left out; sections
//! come in this order: `FILENAME NAME BASE VERSION DESC GROUPS CSIZE ISIZE
//! MD5SUM SHA256SUM PGPSIG URL LICENSE ARCH BUILDDATE PACKAGER REPLACES
//! CONFLICTS PROVIDES DEPENDS OPTDEPENDS MAKEDEPENDS CHECKDEPENDS`. The
//! `files` file is `%FILES%` followed by one path per line (no trailing
//! blank line).
//!
//! Parsing ([`DescEntry::parse_desc`], [`parse_files`]) accepts what pacman
//! accepts: blank lines between sections, surrounding whitespace, sections in
//! any order; sections this module does not know are kept in
//! [`DescEntry::extra`] and written back after the known ones.
//!
//! ```
//! use pacmesh_repo::desc::DescEntry;
//! let text = "%FILENAME%\na-1-1-any.pkg.tar.zst\n\n%NAME%\na\n\n%VERSION%\n1-1\n\n\
//!             %CSIZE%\n10\n\n%DEPENDS%\nb\nc>=2\n\n";
//! let e = DescEntry::parse_desc(text).unwrap();
//! assert_eq!(e.depends, ["b", "c>=2"]);
//! assert_eq!(e.to_desc(), text);
//! ```

use crate::package::PackageInfo;
use crate::pkginfo::{check_pkgver, is_valid_pkgname};
use crate::version::Version;
use serde::{Deserialize, Serialize};

/// Why a `desc` or `files` text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescError {
    /// A value line outside any `%SECTION%`.
    #[error("line {line}: value outside of a %SECTION%")]
    Syntax {
        /// 1-based line number.
        line: usize,
    },
    /// A required section is missing.
    #[error("missing %{0}% section")]
    Missing(&'static str),
    /// A section has an unusable value.
    #[error("invalid %{section}% value {value:?}: {reason}")]
    InvalidField {
        /// The section.
        section: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// One package entry of a repository database (`desc`, plus the `files`
/// list when it comes from or goes to the files database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DescEntry {
    /// `%FILENAME%`: package file name (no directory).
    pub filename: String,
    /// `%NAME%`
    pub name: String,
    /// `%BASE%`
    pub base: Option<String>,
    /// `%VERSION%`
    pub version: Version,
    /// `%DESC%`
    pub desc: Option<String>,
    /// `%GROUPS%`
    pub groups: Vec<String>,
    /// `%CSIZE%`: package file size
    pub csize: Option<u64>,
    /// `%ISIZE%`: installed size
    pub isize: Option<u64>,
    /// `%MD5SUM%`
    pub md5sum: Option<String>,
    /// `%SHA256SUM%`
    pub sha256sum: Option<String>,
    /// `%PGPSIG%`: base64 detached signature
    pub pgpsig: Option<String>,
    /// `%URL%`
    pub url: Option<String>,
    /// `%LICENSE%`
    pub licenses: Vec<String>,
    /// `%ARCH%`
    pub arch: Option<String>,
    /// `%BUILDDATE%`
    pub builddate: Option<u64>,
    /// `%PACKAGER%`
    pub packager: Option<String>,
    /// `%REPLACES%`
    pub replaces: Vec<String>,
    /// `%CONFLICTS%`
    pub conflicts: Vec<String>,
    /// `%PROVIDES%`
    pub provides: Vec<String>,
    /// `%DEPENDS%`
    pub depends: Vec<String>,
    /// `%OPTDEPENDS%`
    pub optdepends: Vec<String>,
    /// `%MAKEDEPENDS%`
    pub makedepends: Vec<String>,
    /// `%CHECKDEPENDS%`
    pub checkdepends: Vec<String>,
    /// Sections not listed above, in the order read.
    pub extra: Vec<(String, Vec<String>)>,
    /// `%FILES%` from the files database, if known.
    pub files: Option<Vec<String>>,
}

fn section(out: &mut String, name: &str, values: &[impl AsRef<str>]) {
    match values.first() {
        Some(v) if !v.as_ref().is_empty() => {}
        _ => return,
    }
    out.push('%');
    out.push_str(name);
    out.push_str("%\n");
    for v in values {
        out.push_str(v.as_ref());
        out.push('\n');
    }
    out.push('\n');
}

fn one(out: &mut String, name: &str, v: &Option<String>) {
    if let Some(v) = v {
        section(out, name, &[v]);
    }
}

fn num(out: &mut String, name: &str, v: Option<u64>) {
    if let Some(v) = v {
        section(out, name, &[v.to_string()]);
    }
}

/// Split `desc`-style text into `(SECTION, values)` pairs (pacman's reading
/// rules: lines trimmed, blank lines end a section).
pub fn parse_sections(text: &str) -> Result<Vec<(&str, Vec<&str>)>, DescError> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    let mut open = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            open = false;
            continue;
        }
        if !open {
            match line.strip_prefix('%').and_then(|l| l.strip_suffix('%')) {
                Some(name) if !name.is_empty() => {
                    out.push((name, Vec::new()));
                    open = true;
                }
                _ => return Err(DescError::Syntax { line: i + 1 }),
            }
        } else if let Some(last) = out.last_mut() {
            last.1.push(line);
        }
    }
    Ok(out)
}

/// Parse a `files` file: the `%FILES%` list (other sections are ignored).
pub fn parse_files(text: &str) -> Result<Vec<String>, DescError> {
    let mut files = Vec::new();
    for (name, values) in parse_sections(text)? {
        if name == "FILES" {
            files.extend(values.into_iter().map(str::to_owned));
        }
    }
    Ok(files)
}

/// Write a `files` file like repo-add: `%FILES%` and one path per line.
pub fn write_files(files: &[String]) -> String {
    let mut out = String::with_capacity(8 + files.iter().map(|f| f.len() + 1).sum::<usize>());
    out.push_str("%FILES%\n");
    for f in files {
        out.push_str(f);
        out.push('\n');
    }
    out
}

/// Is this a safe bare file name (used to delete replaced packages)?
pub(crate) fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0', '\n'])
}

impl DescEntry {
    /// The entry for a package just read, as repo-add would write it.
    pub fn from_package(pkg: &PackageInfo) -> Self {
        let p = &pkg.pkginfo;
        DescEntry {
            filename: pkg.filename.clone(),
            name: p.pkgname.clone(),
            base: p.pkgbase.clone(),
            version: p.pkgver.clone(),
            desc: p.pkgdesc.clone(),
            groups: p.groups.clone(),
            csize: Some(pkg.csize),
            isize: p.size,
            md5sum: Some(pkg.md5sum.clone()),
            sha256sum: Some(pkg.sha256sum.clone()),
            pgpsig: pkg.pgpsig.clone(),
            url: p.url.clone(),
            licenses: p.licenses.clone(),
            arch: p.arch.clone(),
            builddate: p.builddate,
            packager: p.packager.clone(),
            replaces: p.replaces.clone(),
            conflicts: p.conflicts.clone(),
            provides: p.provides.clone(),
            depends: p.depends.clone(),
            optdepends: p.optdepends.clone(),
            makedepends: p.makedepends.clone(),
            checkdepends: p.checkdepends.clone(),
            extra: Vec::new(),
            files: Some(pkg.files.clone()),
        }
    }

    /// The entry directory name inside the archives: `NAME-VERSION`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    /// The `desc` text, byte-identical to repo-add's.
    pub fn to_desc(&self) -> String {
        let mut o = String::with_capacity(512);
        section(&mut o, "FILENAME", &[&self.filename]);
        section(&mut o, "NAME", &[&self.name]);
        one(&mut o, "BASE", &self.base);
        section(&mut o, "VERSION", &[self.version.as_str()]);
        one(&mut o, "DESC", &self.desc);
        section(&mut o, "GROUPS", &self.groups);
        num(&mut o, "CSIZE", self.csize);
        num(&mut o, "ISIZE", self.isize);
        one(&mut o, "MD5SUM", &self.md5sum);
        one(&mut o, "SHA256SUM", &self.sha256sum);
        one(&mut o, "PGPSIG", &self.pgpsig);
        one(&mut o, "URL", &self.url);
        section(&mut o, "LICENSE", &self.licenses);
        one(&mut o, "ARCH", &self.arch);
        num(&mut o, "BUILDDATE", self.builddate);
        one(&mut o, "PACKAGER", &self.packager);
        section(&mut o, "REPLACES", &self.replaces);
        section(&mut o, "CONFLICTS", &self.conflicts);
        section(&mut o, "PROVIDES", &self.provides);
        section(&mut o, "DEPENDS", &self.depends);
        section(&mut o, "OPTDEPENDS", &self.optdepends);
        section(&mut o, "MAKEDEPENDS", &self.makedepends);
        section(&mut o, "CHECKDEPENDS", &self.checkdepends);
        for (name, values) in &self.extra {
            section(&mut o, name, values);
        }
        o
    }

    /// The `files` text (`%FILES%` only; empty list if unknown).
    pub fn to_files(&self) -> String {
        write_files(self.files.as_deref().unwrap_or(&[]))
    }

    /// Parse a `desc` file (also accepts the sections of an old-style
    /// `depends` file, so both can be fed in turn via [`Self::merge_sections`]).
    pub fn parse_desc(text: &str) -> Result<Self, DescError> {
        Self::parse_desc_parts(&[text])
    }

    fn validate(self, version: Option<String>) -> Result<Self, DescError> {
        let mut e = self;
        if e.filename.is_empty() {
            return Err(DescError::Missing("FILENAME"));
        }
        if !is_plain_file_name(&e.filename) {
            return Err(DescError::InvalidField {
                section: "FILENAME",
                value: e.filename,
                reason: "not a plain file name".into(),
            });
        }
        if e.name.is_empty() {
            return Err(DescError::Missing("NAME"));
        }
        if !is_valid_pkgname(&e.name) {
            return Err(DescError::InvalidField {
                section: "NAME",
                value: e.name,
                reason: "not a valid package name".into(),
            });
        }
        let v = version.ok_or(DescError::Missing("VERSION"))?;
        let parsed = Version::parse(&v)
            .map_err(|err| err.to_string())
            .and_then(|pv| check_pkgver(&pv).map(|()| pv))
            .map_err(|reason| DescError::InvalidField {
                section: "VERSION",
                value: v.clone(),
                reason,
            })?;
        e.version = parsed;
        Ok(e)
    }

    fn merge_sections(
        &mut self,
        text: &str,
        version: &mut Option<String>,
    ) -> Result<(), DescError> {
        // Same rules as [`parse_sections`], without allocating per section.
        let mut cur: Option<&str> = None;
        let mut vals: Vec<&str> = Vec::with_capacity(16);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                if let Some(name) = cur.take() {
                    self.apply(name, &vals, version)?;
                    vals.clear();
                }
                continue;
            }
            if cur.is_none() {
                match line.strip_prefix('%').and_then(|l| l.strip_suffix('%')) {
                    Some(name) if !name.is_empty() => cur = Some(name),
                    _ => return Err(DescError::Syntax { line: i + 1 }),
                }
            } else {
                vals.push(line);
            }
        }
        if let Some(name) = cur {
            self.apply(name, &vals, version)?;
        }
        Ok(())
    }

    fn apply(
        &mut self,
        name: &str,
        values: &[&str],
        version: &mut Option<String>,
    ) -> Result<(), DescError> {
        fn first(v: &[&str]) -> Option<String> {
            v.first().map(|s| (*s).to_owned())
        }
        fn list(v: &[&str]) -> Vec<String> {
            v.iter().map(|s| (*s).to_owned()).collect()
        }
        fn number(section: &'static str, v: &[&str]) -> Result<Option<u64>, DescError> {
            match v.first() {
                None => Ok(None),
                Some(s) => s
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| DescError::InvalidField {
                        section,
                        value: (*s).to_owned(),
                        reason: "not a non-negative integer".into(),
                    }),
            }
        }
        match name {
            "FILENAME" => self.filename = first(values).unwrap_or_default(),
            "NAME" => self.name = first(values).unwrap_or_default(),
            "BASE" => self.base = first(values),
            "VERSION" => *version = first(values),
            "DESC" => self.desc = first(values),
            "GROUPS" => self.groups = list(values),
            "CSIZE" => self.csize = number("CSIZE", values)?,
            "ISIZE" => self.isize = number("ISIZE", values)?,
            "MD5SUM" => self.md5sum = first(values),
            "SHA256SUM" => self.sha256sum = first(values),
            "PGPSIG" => self.pgpsig = first(values),
            "URL" => self.url = first(values),
            "LICENSE" => self.licenses = list(values),
            "ARCH" => self.arch = first(values),
            "BUILDDATE" => self.builddate = number("BUILDDATE", values)?,
            "PACKAGER" => self.packager = first(values),
            "REPLACES" => self.replaces = list(values),
            "CONFLICTS" => self.conflicts = list(values),
            "PROVIDES" => self.provides = list(values),
            "DEPENDS" => self.depends = list(values),
            "OPTDEPENDS" => self.optdepends = list(values),
            "MAKEDEPENDS" => self.makedepends = list(values),
            "CHECKDEPENDS" => self.checkdepends = list(values),
            "FILES" => self.files = Some(list(values)),
            other => self.extra.push((other.to_owned(), list(values))),
        }
        Ok(())
    }

    /// Parse the member texts of one database entry directory (`desc`, and
    /// the old `depends` file if present), in that order.
    pub fn parse_desc_parts(parts: &[&str]) -> Result<Self, DescError> {
        let mut e = DescEntry {
            filename: String::new(),
            name: String::new(),
            base: None,
            version: Version::parse("0-0").expect("constant"),
            desc: None,
            groups: vec![],
            csize: None,
            isize: None,
            md5sum: None,
            sha256sum: None,
            pgpsig: None,
            url: None,
            licenses: vec![],
            arch: None,
            builddate: None,
            packager: None,
            replaces: vec![],
            conflicts: vec![],
            provides: vec![],
            depends: vec![],
            optdepends: vec![],
            makedepends: vec![],
            checkdepends: vec![],
            extra: vec![],
            files: None,
        };
        let mut version = None;
        for text in parts {
            e.merge_sections(text, &mut version)?;
        }
        e.validate(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_roundtrip_and_errors() {
        let t = "%FILENAME%\nf\n\n%NAME%\nn\n\n%VERSION%\n1-1\n\n%XDATA%\npkgtype=pkg\n\n";
        let e = DescEntry::parse_desc(t).unwrap();
        assert_eq!(
            e.extra,
            vec![("XDATA".to_string(), vec!["pkgtype=pkg".to_string()])]
        );
        assert_eq!(e.to_desc(), t);
        assert!(matches!(
            DescEntry::parse_desc("garbage"),
            Err(DescError::Syntax { line: 1 })
        ));
        assert!(matches!(
            DescEntry::parse_desc("%NAME%\nn\n"),
            Err(DescError::Missing("FILENAME"))
        ));
        assert!(
            DescEntry::parse_desc("%FILENAME%\n../x\n\n%NAME%\nn\n\n%VERSION%\n1-1\n").is_err()
        );
        assert!(
            DescEntry::parse_desc("%FILENAME%\nx\n\n%NAME%\nn\n\n%VERSION%\n1-1\n\n%CSIZE%\nz\n")
                .is_err()
        );
        assert_eq!(parse_files("%FILES%\na/\na/b\n").unwrap(), ["a/", "a/b"]);
        assert_eq!(write_files(&["a/".into()]), "%FILES%\na/\n");
    }
}
