//! `.BUILDINFO`: how a package was built, as makepkg records it inside every package.
//!
//! # Format
//!
//! One `key = value` line per value, no sections (BUILDINFO(5)):
//!
//! ```text
//! format = 2
//! pkgname = foo
//! pkgbase = foo
//! pkgver = 1:1.0-1
//! pkgarch = x86_64
//! pkgbuild_sha256sum = 5c0b…(64 hex digits)
//! packager = Jane Doe <jane@example.org>
//! builddate = 1700000000
//! builddir = /build
//! startdir = /startdir
//! buildtool = makepkg
//! buildtoolver = 6.0.2
//! buildenv = !distcc
//! options = strip
//! installed = glibc-2.40-1-x86_64
//! ```
//!
//! Format 1 (pacman 5.0–5.1) has every key above except `startdir`, `buildtool` and
//! `buildtoolver`, which format 2 (pacman ≥ 5.2) added and requires. `pkgver` is the full
//! version `[epoch:]pkgver-pkgrel`; `buildenv`, `options` and `installed` repeat, and may be
//! absent (makepkg writes no `installed` line on a host without a pacman database).
//!
//! The parser tolerates leading whitespace, blank and `#` comment lines, CRLF line ends and a
//! byte-order mark; it rejects unknown keys, repeated single-valued keys, missing required keys,
//! keys the declared format does not have, and malformed values, with an error naming the line.
//! Input is capped at [`MAX_BUILDINFO_SIZE`]. `Display` writes makepkg's order back, so
//! `BuildInfo::parse(&b.to_string()) == Ok(b)`.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::srcinfo::{check_epoch, check_pkgname, check_pkgrel, check_pkgver};

/// Largest `.BUILDINFO` accepted, in bytes (real ones are a few KiB: one line per installed
/// package).
pub const MAX_BUILDINFO_SIZE: usize = 4 * 1024 * 1024;

/// Longest line quoted back in an error message.
const MAX_QUOTED_LINE: usize = 200;

/// Why a `.BUILDINFO` was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildInfoError {
    /// The input has no bytes.
    #[error("empty .BUILDINFO (0 bytes)")]
    Empty,
    /// The input has bytes but no `key = value` line.
    #[error("empty .BUILDINFO: only blank or comment lines")]
    NoContent,
    /// The input is larger than [`MAX_BUILDINFO_SIZE`].
    #[error(".BUILDINFO is larger than the {max} byte limit")]
    TooLarge {
        /// Bytes seen (for a reader: the limit plus one).
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A constructed value that does not survive being written and read back (a value with a
    /// newline, a NUL byte or surrounding whitespace); see [`BuildInfo::validate`].
    #[error(
        "cannot be written as .BUILDINFO: a value contains a newline, a NUL byte or \
         surrounding whitespace"
    )]
    Unrepresentable,
    /// Reading the input failed.
    #[error("cannot read: {0}")]
    Io(String),
    /// The input is not UTF-8.
    #[error("line {line}: not valid UTF-8")]
    InvalidUtf8 {
        /// 1-based line number.
        line: usize,
    },
    /// There is no `format = ...` line.
    #[error("no `format = ...` line: not a .BUILDINFO of format 1 or 2")]
    MissingFormat,
    /// A line is wrong; `kind` says why.
    #[error("line {line}: {kind}: {text:?}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The line as read (cut at 200 characters).
        text: String,
        /// What is wrong with it.
        kind: BuildInfoLineError,
    },
}

impl BuildInfoError {
    /// The 1-based line the error is about, if it is about one line.
    pub fn line(&self) -> Option<usize> {
        match self {
            BuildInfoError::InvalidUtf8 { line } | BuildInfoError::Line { line, .. } => Some(*line),
            _ => None,
        }
    }
}

/// What is wrong with a line of a `.BUILDINFO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildInfoLineError {
    /// Not of the form `key = value`.
    #[error("expected `key = value`")]
    NotKeyValue,
    /// A NUL byte, which no text file has (this is probably a binary file).
    #[error("NUL byte (is this a binary file?)")]
    NulByte,
    /// A key BUILDINFO does not have.
    #[error("unknown key `{key}`")]
    UnknownKey {
        /// The key.
        key: String,
    },
    /// A single-valued key given twice.
    #[error("`{key}` given twice (first on line {first_line})")]
    DuplicateKey {
        /// The key.
        key: String,
        /// Where it first appeared.
        first_line: usize,
    },
    /// A format this reader does not know.
    #[error("unsupported BUILDINFO format {value:?} (known: 1, 2)")]
    UnsupportedFormat {
        /// The value found.
        value: String,
    },
    /// A key that the declared format does not have.
    #[error("`{key}` is not part of BUILDINFO format 1 (format 2 added it)")]
    NotInFormat1 {
        /// The key.
        key: String,
    },
    /// A key the declared format requires is absent (the error names the `format` line).
    #[error("BUILDINFO format {format} requires `{key}`, which is missing")]
    Missing {
        /// The key.
        key: &'static str,
        /// The declared format.
        format: u8,
    },
    /// A malformed value.
    #[error("invalid {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The BUILDINFO format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum BuildInfoFormat {
    /// `format = 1` (pacman 5.0–5.1).
    V1,
    /// `format = 2` (pacman ≥ 5.2): adds `startdir`, `buildtool`, `buildtoolver`.
    V2,
}

impl BuildInfoFormat {
    /// The number written after `format = `.
    pub fn number(self) -> u8 {
        match self {
            BuildInfoFormat::V1 => 1,
            BuildInfoFormat::V2 => 2,
        }
    }
}

impl Serialize for BuildInfoFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

/// One `installed = NAME-PKGVER-PKGREL-ARCH` entry: a package installed when the build ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledPackage {
    /// The package name.
    pub name: String,
    /// `[epoch:]pkgver-pkgrel`.
    pub version: String,
    /// The package architecture (`x86_64`, `any`, ...).
    pub arch: String,
}

impl InstalledPackage {
    /// Parse `NAME-[EPOCH:]PKGVER-PKGREL-ARCH` (splitting at the last three hyphens).
    pub fn parse(s: &str) -> Result<InstalledPackage, String> {
        let mut parts = s.rsplitn(4, '-');
        let (Some(arch), Some(rel), Some(ver), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected NAME-PKGVER-PKGREL-ARCH".into());
        };
        check_pkgname(name).map_err(|r| format!("package name {r}"))?;
        let version = format!("{ver}-{rel}");
        check_full_version(&version)?;
        if !is_arch(arch) {
            return Err(format!("architecture {arch:?} is not valid"));
        }
        Ok(InstalledPackage {
            name: name.to_owned(),
            version,
            arch: arch.to_owned(),
        })
    }
}

impl fmt::Display for InstalledPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.name, self.version, self.arch)
    }
}

/// Check a full version `[epoch:]pkgver-pkgrel` against makepkg's rules.
pub fn check_full_version(v: &str) -> Result<(), String> {
    let (rest, rel) = v
        .rsplit_once('-')
        .ok_or_else(|| format!("{v:?} is not [epoch:]pkgver-pkgrel"))?;
    let (epoch, ver) = match rest.split_once(':') {
        Some((e, ver)) => (Some(e), ver),
        None => (None, rest),
    };
    if let Some(e) = epoch {
        if e.is_empty() {
            return Err(format!("{v:?}: empty epoch before ':'"));
        }
        check_epoch(e).map_err(|r| format!("{v:?}: epoch {r}"))?;
    }
    check_pkgver(ver).map_err(|r| format!("{v:?}: pkgver {r}"))?;
    check_pkgrel(rel).map_err(|r| format!("{v:?}: pkgrel {r}"))?;
    Ok(())
}

/// A parsed `.BUILDINFO`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildInfo {
    /// The format version.
    pub format: BuildInfoFormat,
    /// The package name.
    pub pkgname: String,
    /// The pkgbase it was built from.
    pub pkgbase: String,
    /// The full version, `[epoch:]pkgver-pkgrel`.
    pub pkgver: String,
    /// The package architecture.
    pub pkgarch: String,
    /// SHA-256 of the PKGBUILD, 64 lowercase or uppercase hex digits.
    pub pkgbuild_sha256sum: String,
    /// `PACKAGER` (may be empty).
    pub packager: String,
    /// `SOURCE_DATE_EPOCH` of the build, seconds since 1970.
    pub builddate: i64,
    /// `BUILDDIR`.
    pub builddir: String,
    /// The directory holding the PKGBUILD (format 2).
    pub startdir: Option<String>,
    /// The tool that ran the build, e.g. `makepkg`, `devtools` (format 2).
    pub buildtool: Option<String>,
    /// Its version (format 2).
    pub buildtoolver: Option<String>,
    /// `BUILDENV` entries, e.g. `!distcc`, `color`.
    pub buildenv: Vec<String>,
    /// `OPTIONS` entries, e.g. `strip`, `!debug`.
    pub options: Vec<String>,
    /// Packages installed in the build environment.
    pub installed: Vec<InstalledPackage>,
}

const SINGLE_KEYS: &[&str] = &[
    "format",
    "pkgname",
    "pkgbase",
    "pkgver",
    "pkgarch",
    "pkgbuild_sha256sum",
    "packager",
    "builddate",
    "builddir",
    "startdir",
    "buildtool",
    "buildtoolver",
];
const MULTI_KEYS: &[&str] = &["buildenv", "options", "installed"];
const V2_ONLY: &[&str] = &["startdir", "buildtool", "buildtoolver"];

fn quote(line: &str) -> String {
    if line.chars().count() > MAX_QUOTED_LINE {
        let mut s: String = line.chars().take(MAX_QUOTED_LINE).collect();
        s.push('…');
        s
    } else {
        line.to_owned()
    }
}

impl BuildInfo {
    /// Parse the text of a `.BUILDINFO` (format 1 or 2).
    ///
    /// ```
    /// use pacmesh_repo::buildinfo::{BuildInfo, BuildInfoFormat};
    ///
    /// let text = "format = 1\npkgname = foo\npkgbase = foo\npkgver = 1:2.0-1\npkgarch = any\n\
    ///             pkgbuild_sha256sum = e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n\
    ///             packager = Unknown Packager\nbuilddate = 1700000000\nbuilddir = /build\n\
    ///             installed = xz-1:5.6.3-1-x86_64\n";
    /// let b = BuildInfo::parse(text)?;
    /// assert_eq!(b.format, BuildInfoFormat::V1);
    /// assert_eq!(b.installed[0].version, "1:5.6.3-1");
    /// assert_eq!(b.to_string(), text);
    ///
    /// let err = BuildInfo::parse("format = 3\n").unwrap_err();
    /// assert_eq!(err.line(), Some(1));
    /// # Ok::<(), pacmesh_repo::buildinfo::BuildInfoError>(())
    /// ```
    pub fn parse(text: &str) -> Result<BuildInfo, BuildInfoError> {
        check_size(text.len())?;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        // key -> (line number, line text, value) for single keys
        let mut single: BTreeMap<&str, (usize, String, String)> = BTreeMap::new();
        let mut buildenv = Vec::new();
        let mut options = Vec::new();
        let mut installed = Vec::new();
        let mut any = false;
        for (i, raw) in text.split('\n').enumerate() {
            let line_no = i + 1;
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            let trimmed = line.trim_matches(is_space);
            let err = |kind: BuildInfoLineError| BuildInfoError::Line {
                line: line_no,
                text: quote(line),
                kind,
            };
            if line.contains('\0') {
                return Err(err(BuildInfoLineError::NulByte));
            }
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            any = true;
            let Some((key, value)) = trimmed.split_once('=') else {
                return Err(err(BuildInfoLineError::NotKeyValue));
            };
            let key = key.trim_matches(is_space);
            let value = value.trim_matches(is_space);
            if key.is_empty() {
                return Err(err(BuildInfoLineError::NotKeyValue));
            }
            if !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(err(BuildInfoLineError::UnknownKey {
                    key: key.to_owned(),
                }));
            }
            let invalid = |reason: String| {
                err(BuildInfoLineError::InvalidValue {
                    key: key.to_owned(),
                    reason,
                })
            };
            if let Some(&k) = SINGLE_KEYS.iter().find(|k| **k == key) {
                if let Some((first_line, _, _)) = single.get(k) {
                    return Err(err(BuildInfoLineError::DuplicateKey {
                        key: key.to_owned(),
                        first_line: *first_line,
                    }));
                }
                match k {
                    "format" if !matches!(value, "1" | "2") => {
                        return Err(err(BuildInfoLineError::UnsupportedFormat {
                            value: value.to_owned(),
                        }));
                    }
                    "pkgname" | "pkgbase" => check_pkgname(value).map_err(invalid)?,
                    "pkgver" => check_full_version(value).map_err(invalid)?,
                    "pkgarch" if !is_arch(value) => {
                        return Err(invalid(
                            "expected an architecture (letters, digits and _)".into(),
                        ));
                    }
                    "pkgbuild_sha256sum"
                        if value.len() != 64 || !value.bytes().all(|b| b.is_ascii_hexdigit()) =>
                    {
                        return Err(invalid("expected 64 hex digits".into()));
                    }
                    "builddate" if value.parse::<i64>().is_err() => {
                        return Err(invalid("expected seconds since 1970 (an integer)".into()));
                    }
                    _ => {}
                }
                single.insert(k, (line_no, line.to_owned(), value.to_owned()));
            } else if MULTI_KEYS.contains(&key) {
                match key {
                    "buildenv" => buildenv.push(value.to_owned()),
                    "options" => options.push(value.to_owned()),
                    _ => installed.push(InstalledPackage::parse(value).map_err(invalid)?),
                }
            } else {
                return Err(err(BuildInfoLineError::UnknownKey {
                    key: key.to_owned(),
                }));
            }
        }
        if !any {
            return Err(BuildInfoError::NoContent);
        }
        let Some((format_line, format_text, format_value)) = single.get("format").cloned() else {
            return Err(BuildInfoError::MissingFormat);
        };
        let format = match format_value.as_str() {
            "1" => BuildInfoFormat::V1,
            _ => BuildInfoFormat::V2,
        };
        if format == BuildInfoFormat::V1 {
            for key in V2_ONLY {
                if let Some((line, text, _)) = single.get(key) {
                    return Err(BuildInfoError::Line {
                        line: *line,
                        text: quote(text),
                        kind: BuildInfoLineError::NotInFormat1 {
                            key: (*key).to_owned(),
                        },
                    });
                }
            }
        }
        let mut take = |key: &'static str| -> Result<String, BuildInfoError> {
            single
                .remove(key)
                .map(|(_, _, v)| v)
                .ok_or_else(|| BuildInfoError::Line {
                    line: format_line,
                    text: quote(&format_text),
                    kind: BuildInfoLineError::Missing {
                        key,
                        format: format.number(),
                    },
                })
        };
        let pkgname = take("pkgname")?;
        let pkgbase = take("pkgbase")?;
        let pkgver = take("pkgver")?;
        let pkgarch = take("pkgarch")?;
        let pkgbuild_sha256sum = take("pkgbuild_sha256sum")?;
        let packager = take("packager")?;
        let builddate = take("builddate")?.parse().unwrap_or_default();
        let builddir = take("builddir")?;
        let (startdir, buildtool, buildtoolver) = match format {
            BuildInfoFormat::V1 => (None, None, None),
            _ => (
                Some(take("startdir")?),
                Some(take("buildtool")?),
                Some(take("buildtoolver")?),
            ),
        };
        Ok(BuildInfo {
            format,
            pkgname,
            pkgbase,
            pkgver,
            pkgarch,
            pkgbuild_sha256sum,
            packager,
            builddate,
            builddir,
            startdir,
            buildtool,
            buildtoolver,
            buildenv,
            options,
            installed,
        })
    }

    /// Read and parse from `reader` (a file, a tar entry...), reading at most one byte past
    /// [`MAX_BUILDINFO_SIZE`] so an oversized or endless input is refused without buffering it.
    pub fn from_reader(reader: impl std::io::Read) -> Result<BuildInfo, BuildInfoError> {
        match crate::text::read_capped(reader, MAX_BUILDINFO_SIZE) {
            Ok(Ok(bytes)) => BuildInfo::from_bytes(&bytes),
            Ok(Err(size)) => Err(BuildInfoError::TooLarge {
                size,
                max: MAX_BUILDINFO_SIZE,
            }),
            Err(e) => Err(BuildInfoError::Io(e.to_string())),
        }
    }

    /// Parse raw bytes (checks the size limit and UTF-8 first).
    pub fn from_bytes(bytes: &[u8]) -> Result<BuildInfo, BuildInfoError> {
        check_size(bytes.len())?;
        match crate::text::utf8_or_line(bytes) {
            Ok(text) => BuildInfo::parse(text),
            Err(line) => Err(BuildInfoError::InvalidUtf8 { line }),
        }
    }

    /// Check a constructed or edited value against the parser's rules (by writing it out and
    /// parsing it back).
    pub fn validate(&self) -> Result<(), BuildInfoError> {
        let back = BuildInfo::parse(&self.to_string())?;
        if back == *self {
            Ok(())
        } else {
            Err(BuildInfoError::Unrepresentable)
        }
    }
}

impl std::str::FromStr for BuildInfo {
    type Err = BuildInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BuildInfo::parse(s)
    }
}

impl fmt::Display for BuildInfo {
    /// Writes makepkg's `write_buildinfo` order; format 1 omits the format 2 keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "format = {}", self.format.number())?;
        writeln!(f, "pkgname = {}", self.pkgname)?;
        writeln!(f, "pkgbase = {}", self.pkgbase)?;
        writeln!(f, "pkgver = {}", self.pkgver)?;
        writeln!(f, "pkgarch = {}", self.pkgarch)?;
        writeln!(f, "pkgbuild_sha256sum = {}", self.pkgbuild_sha256sum)?;
        writeln!(f, "packager = {}", self.packager)?;
        writeln!(f, "builddate = {}", self.builddate)?;
        writeln!(f, "builddir = {}", self.builddir)?;
        if self.format != BuildInfoFormat::V1 {
            for (key, v) in [
                ("startdir", &self.startdir),
                ("buildtool", &self.buildtool),
                ("buildtoolver", &self.buildtoolver),
            ] {
                writeln!(f, "{key} = {}", v.as_deref().unwrap_or(""))?;
            }
        }
        for v in &self.buildenv {
            writeln!(f, "buildenv = {v}")?;
        }
        for v in &self.options {
            writeln!(f, "options = {v}")?;
        }
        for v in &self.installed {
            writeln!(f, "installed = {v}")?;
        }
        Ok(())
    }
}

fn check_size(size: usize) -> Result<(), BuildInfoError> {
    if size == 0 {
        return Err(BuildInfoError::Empty);
    }
    if size > MAX_BUILDINFO_SIZE {
        return Err(BuildInfoError::TooLarge {
            size,
            max: MAX_BUILDINFO_SIZE,
        });
    }
    Ok(())
}

/// An architecture name: letters, digits and `_` (makepkg's `lint_arch`).
fn is_arch(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whitespace trimmed around keys and values: bash's `[[:space:]]` minus the newline.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\x0b' | '\x0c')
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = "format = 2
pkgname = foo
pkgbase = foo
pkgver = 1:1.0-1
pkgarch = x86_64
pkgbuild_sha256sum = 5c0b3b5a2a7c4f1e8a8f0f6b2b1a6f8e4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f
packager = Unknown Packager
builddate = 1700000000
builddir = /build
startdir = /startdir
buildtool = makepkg
buildtoolver = 6.0.2
buildenv = !distcc
buildenv = color
options = strip
options = !debug
installed = glibc-2.40+r16+gaa533d58ff-2-x86_64
installed = tzdata-2024b-2-any
installed = xz-1:5.6.3-1-x86_64
";

    #[test]
    fn parses_and_writes_v2() {
        let b = BuildInfo::parse(V2).unwrap();
        assert_eq!(b.format, BuildInfoFormat::V2);
        assert_eq!(b.pkgver, "1:1.0-1");
        assert_eq!(b.installed[2].name, "xz");
        assert_eq!(b.installed[2].version, "1:5.6.3-1");
        assert_eq!(b.installed[1].arch, "any");
        assert_eq!(b.to_string(), V2);
    }

    #[test]
    fn v1_refuses_v2_keys() {
        let t = V2.replace("format = 2", "format = 1");
        let e = BuildInfo::parse(&t).unwrap_err();
        assert_eq!(e.line(), Some(10), "{e}");
    }
}
