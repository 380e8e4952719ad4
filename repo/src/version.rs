//! Package versions and `vercmp`, with the same results as pacman's
//! `alpm_pkg_vercmp` (libalpm `version.c`, itself derived from RPM's
//! `rpmvercmp`).
//!
//! A full version is `[epoch:]pkgver[-pkgrel]`. Two versions compare by epoch
//! first (a missing epoch is `0`), then `pkgver`, then `pkgrel`, the last only
//! when *both* sides have one. Each part is compared with the rpmvercmp
//! algorithm: the strings are cut into maximal runs of ASCII digits or ASCII
//! letters; the separators between runs (any other bytes) only matter by their
//! *length*; a numeric run beats an alphabetic one; numeric runs compare as
//! numbers of any length (leading zeros dropped); alphabetic runs compare
//! bytewise; when one side runs out, `1.0` < `1.0.1` but `1.0a` < `1.0`.
//!
//! ```
//! use pacmesh_repo::version::{vercmp, Version};
//! use std::cmp::Ordering;
//! assert_eq!(vercmp("1.0a", "1.0"), Ordering::Less);
//! assert_eq!(vercmp("1:0.1-1", "2.0-1"), Ordering::Greater);
//! let v: Version = "1:2.3.1-2".parse().unwrap();
//! assert_eq!(v.epoch(), Some("1"));
//! assert_eq!(v.pkgver(), "2.3.1");
//! assert_eq!(v.pkgrel(), Some("2"));
//! assert!(v > "2.3.1-2".parse::<Version>().unwrap());
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Compare two full version strings (`[epoch:]pkgver[-pkgrel]`) exactly like
/// pacman's `alpm_pkg_vercmp` / the `vercmp` tool.
///
/// Note that, as in pacman, this is not a total order on strings: `1.0` equals
/// both `1.0-1` and `1.0-2` (the release is ignored when one side lacks it),
/// and `1.0` equals `1_0` (separators compare by length only).
pub fn vercmp(a: &str, b: &str) -> Ordering {
    vercmp_bytes(a.as_bytes(), b.as_bytes())
}

/// [`vercmp`] on raw bytes (pacman works on C strings; bytes outside ASCII are
/// separators, as in the C locale).
pub fn vercmp_bytes(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (e1, v1, r1) = parse_evr(a);
    let (e2, v2, r2) = parse_evr(b);
    let mut ret = rpmvercmp(e1, e2);
    if ret == Ordering::Equal {
        ret = rpmvercmp(v1, v2);
        if let (Ordering::Equal, Some(r1), Some(r2)) = (ret, r1, r2) {
            ret = rpmvercmp(r1, r2);
        }
    }
    ret
}

/// Split `[epoch:]version[-release]` like libalpm's `parseEVR`: the epoch is
/// the leading run of digits when it is followed by `:` (an empty epoch is
/// `0`), the release is what follows the last `-` after that run.
fn parse_evr(evr: &[u8]) -> (&[u8], &[u8], Option<&[u8]>) {
    // C strings stop at NUL.
    let evr = match evr.iter().position(|&c| c == 0) {
        Some(n) => &evr[..n],
        None => evr,
    };
    let s = evr.iter().take_while(|c| c.is_ascii_digit()).count();
    let se = evr[s..].iter().rposition(|&c| c == b'-').map(|p| p + s);
    let (epoch, vstart): (&[u8], usize) = if evr.get(s) == Some(&b':') {
        let e = &evr[..s];
        (if e.is_empty() { b"0" } else { e }, s + 1)
    } else {
        (b"0", 0)
    };
    match se {
        Some(se) => (epoch, &evr[vstart..se], Some(&evr[se + 1..])),
        None => (epoch, &evr[vstart..], None),
    }
}

/// RPM's segment comparison, as in libalpm `rpmvercmp`.
fn rpmvercmp(a: &[u8], b: &[u8]) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (mut one, mut two) = (0usize, 0usize);
    let (mut ptr1, mut ptr2) = (0usize, 0usize);
    let at = |s: &[u8], i: usize| -> u8 { s.get(i).copied().unwrap_or(0) };

    while at(a, one) != 0 && at(b, two) != 0 {
        while at(a, one) != 0 && !at(a, one).is_ascii_alphanumeric() {
            one += 1;
        }
        while at(b, two) != 0 && !at(b, two).is_ascii_alphanumeric() {
            two += 1;
        }
        // Ran to the end of either: finished with the loop.
        if at(a, one) == 0 || at(b, two) == 0 {
            break;
        }
        // Separator lengths differ: the longer separator wins.
        if one - ptr1 != two - ptr2 {
            return if one - ptr1 < two - ptr2 {
                Ordering::Less
            } else {
                Ordering::Greater
            };
        }
        ptr1 = one;
        ptr2 = two;
        let isnum = at(a, ptr1).is_ascii_digit();
        if isnum {
            while at(a, ptr1).is_ascii_digit() {
                ptr1 += 1;
            }
            while at(b, ptr2).is_ascii_digit() {
                ptr2 += 1;
            }
        } else {
            while at(a, ptr1).is_ascii_alphabetic() {
                ptr1 += 1;
            }
            while at(b, ptr2).is_ascii_alphabetic() {
                ptr2 += 1;
            }
        }
        // `one == ptr1` cannot happen (the segment is non-empty).
        if two == ptr2 {
            // Different segment types: numeric is newer than alpha.
            return if isnum {
                Ordering::Greater
            } else {
                Ordering::Less
            };
        }
        let mut s1 = &a[one..ptr1];
        let mut s2 = &b[two..ptr2];
        if isnum {
            while s1.first() == Some(&b'0') {
                s1 = &s1[1..];
            }
            while s2.first() == Some(&b'0') {
                s2 = &s2[1..];
            }
            match s1.len().cmp(&s2.len()) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match s1.cmp(s2) {
            Ordering::Equal => {}
            o => return o,
        }
        one = ptr1;
        two = ptr2;
    }
    let c1 = at(a, one);
    let c2 = at(b, two);
    if c1 == 0 && c2 == 0 {
        return Ordering::Equal;
    }
    // The final showdown: a remaining alpha string never beats an empty one.
    if (c1 == 0 && !c2.is_ascii_alphabetic()) || c1.is_ascii_alphabetic() {
        Ordering::Less
    } else {
        Ordering::Greater
    }
}

/// Error from parsing a [`Version`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// The string (or its pkgver part) is empty.
    #[error("empty version")]
    Empty,
    /// The epoch is not a non-empty run of ASCII digits.
    #[error("invalid epoch in version {0:?}")]
    InvalidEpoch(String),
    /// The pkgrel is empty.
    #[error("empty pkgrel in version {0:?}")]
    EmptyPkgrel(String),
    /// Whitespace, control characters, `/` or more than one `:` are not
    /// allowed.
    #[error("invalid character in version {0:?}")]
    InvalidChar(String),
}

/// A full package version `[epoch:]pkgver[-pkgrel]`, ordered with [`vercmp`].
///
/// Equality is `vercmp(..) == Equal`, so it follows pacman's quirks (see
/// [`vercmp`]); use [`Version::as_str`] for exact string comparison.
#[derive(Clone)]
pub struct Version {
    full: String,
    /// Byte offsets: epoch is `full[..colon]` when present; pkgver is
    /// `full[vstart..dash]`; pkgrel `full[dash+1..]` when present.
    colon: Option<usize>,
    vstart: usize,
    dash: Option<usize>,
}

impl Version {
    /// Parse `[epoch:]pkgver[-pkgrel]`. The pkgrel starts after the last `-`.
    pub fn parse(s: &str) -> Result<Self, VersionError> {
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(VersionError::InvalidChar(s.to_owned()));
        }
        let colon = s.find(':');
        if let Some(c) = colon {
            if s[c + 1..].contains(':') {
                return Err(VersionError::InvalidChar(s.to_owned()));
            }
            if c == 0 || !s[..c].bytes().all(|b| b.is_ascii_digit()) {
                return Err(VersionError::InvalidEpoch(s.to_owned()));
            }
        }
        let vstart = colon.map_or(0, |c| c + 1);
        let dash = s[vstart..].rfind('-').map(|d| d + vstart);
        let vend = dash.unwrap_or(s.len());
        if vend == vstart {
            return Err(VersionError::Empty);
        }
        if dash.is_some_and(|d| d + 1 == s.len()) {
            return Err(VersionError::EmptyPkgrel(s.to_owned()));
        }
        Ok(Version {
            full: s.to_owned(),
            colon,
            vstart,
            dash,
        })
    }

    /// The version exactly as parsed.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The epoch, if written.
    pub fn epoch(&self) -> Option<&str> {
        self.colon.map(|c| &self.full[..c])
    }

    /// The pkgver part.
    pub fn pkgver(&self) -> &str {
        &self.full[self.vstart..self.dash.unwrap_or(self.full.len())]
    }

    /// The pkgrel, if written.
    pub fn pkgrel(&self) -> Option<&str> {
        self.dash.map(|d| &self.full[d + 1..])
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Version::parse(&s)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.full
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Version({:?})", self.full)
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Version {}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        vercmp(&self.full, &other.full)
    }
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> serde::Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        use Ordering::*;
        let cases = [
            ("1.0", "1.0", Equal),
            ("1.0", "1.0.1", Less),
            ("1.0a", "1.0", Less),
            ("1.0", "1.0a", Greater),
            ("1.0.a", "1.0", Greater),
            ("1.0", "1.0-1", Equal),
            ("1.0-1", "1.0-2", Less),
            ("1:1.0", "2.0", Greater),
            ("0:1.0", "1.0", Equal),
            (":1.0", "1.0", Equal),
            ("1.0", "1_0", Equal),
            ("1..0", "1.0", Greater),
            ("001", "1", Equal),
            ("1.0alpha", "1.0beta", Less),
            ("a", "1", Less),
            ("", "", Equal),
            ("", "a", Greater),
            ("", "1", Less),
        ];
        for (a, b, o) in cases {
            assert_eq!(vercmp(a, b), o, "{a} vs {b}");
            assert_eq!(vercmp(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn parse_parts() {
        let v = Version::parse("2.3.1-2").unwrap();
        assert_eq!(
            (v.epoch(), v.pkgver(), v.pkgrel()),
            (None, "2.3.1", Some("2"))
        );
        let v = Version::parse("1:0.9").unwrap();
        assert_eq!(
            (v.epoch(), v.pkgver(), v.pkgrel()),
            (Some("1"), "0.9", None)
        );
        for bad in ["", ":1", "a:1-1", "1-", "1 2", "1:2:3", "-1", "1:"] {
            assert!(Version::parse(bad).is_err(), "{bad:?}");
        }
    }
}
