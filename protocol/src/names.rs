//! Validated string newtypes. They deserialize through `TryFrom<String>`, so an
//! invalid value is refused while decoding, never carried around.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a string is not a valid [`Name`] or [`FileName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Empty string.
    #[error("{kind} is empty")]
    Empty {
        /// "name" or "file name".
        kind: &'static str,
    },
    /// Longer than allowed.
    #[error("{kind} {value:?} is longer than {max} bytes")]
    TooLong {
        /// "name" or "file name".
        kind: &'static str,
        /// The (truncated) value.
        value: String,
        /// The limit.
        max: usize,
    },
    /// A forbidden character or form.
    #[error("{kind} {value:?}: {reason}")]
    Invalid {
        /// "name" or "file name".
        kind: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A name as Arch uses them for pkgname, pkgbase, repositories, architectures,
/// and as pacmesh uses them for tags and sandbox profiles: 1 to 128 bytes of
/// `A-Z a-z 0-9 @ . _ + -`, not starting with `-` or `.`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        const KIND: &str = "name";
        if s.is_empty() {
            return Err(NameError::Empty { kind: KIND });
        }
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                kind: KIND,
                value: clip(&s),
                max: Self::MAX_LEN,
            });
        }
        if s.starts_with('-') || s.starts_with('.') {
            return Err(NameError::Invalid {
                kind: KIND,
                value: s,
                reason: "must not start with '-' or '.'",
            });
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@._+-".contains(&b))
        {
            return Err(NameError::Invalid {
                kind: KIND,
                value: clip(&s),
                reason: "only letters, digits and @ . _ + - are allowed",
            });
        }
        Ok(Name(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file name (no directory part) for artifacts and repository files: 1 to 255
/// bytes, no `/`, no NUL, no control characters, not `.` or `..`, not starting
/// with `.` (so it can never name a hidden or special file on a mirror).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileName(String);

impl FileName {
    /// Longest accepted file name (the usual filesystem limit).
    pub const MAX_LEN: usize = 255;

    /// Validates `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
        let s = s.into();
        const KIND: &str = "file name";
        if s.is_empty() {
            return Err(NameError::Empty { kind: KIND });
        }
        if s.len() > Self::MAX_LEN {
            return Err(NameError::TooLong {
                kind: KIND,
                value: clip(&s),
                max: Self::MAX_LEN,
            });
        }
        if s.starts_with('.') {
            return Err(NameError::Invalid {
                kind: KIND,
                value: s,
                reason: "must not start with '.'",
            });
        }
        if s.chars().any(|c| c == '/' || c == '\\' || c.is_control()) {
            return Err(NameError::Invalid {
                kind: KIND,
                value: clip(&s),
                reason: "must not contain '/', '\\' or control characters",
            });
        }
        Ok(FileName(s))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $t::new(s)
            }
        }
        impl TryFrom<&str> for $t {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                $t::new(s)
            }
        }
        impl From<$t> for String {
            fn from(n: $t) -> String {
                n.0
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $t::new(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}
string_newtype_impls!(Name);
string_newtype_impls!(FileName);

/// Checks a relative path inside a source tree (a git `subdir`): not empty, not
/// absolute, no `..`, no NUL.
pub(crate) fn check_rel_path(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.starts_with('/') {
        return Err("must be relative");
    }
    if s.contains('\0') {
        return Err("contains NUL");
    }
    if s.split('/').any(|c| c == "..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "glibc",
            "lib32-foo",
            "gtk2+",
            "python-foo.bar",
            "x86_64",
            "a@b",
        ] {
            Name::new(ok).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "ä", &"a".repeat(129)] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names() {
        FileName::new("foo-1.0-1-x86_64.pkg.tar.zst").unwrap();
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\nb",
            "a\0b",
            &"a".repeat(256),
        ] {
            assert!(FileName::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rel_paths() {
        assert!(check_rel_path("pkgs/foo").is_ok());
        assert!(check_rel_path("/etc").is_err());
        assert!(check_rel_path("a/../../b").is_err());
    }
}
