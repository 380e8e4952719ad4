//! What a builder has ([`Capabilities`], announced in a signed
//! [`Announcement`]) and what a queue entry needs ([`Requirement`], parsed from
//! CLI strings such as `mem>=16G`), and [`matches`] between the two.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Limits, Message, check_len};
use crate::{Name, PublicKey, Timestamp};

/// The newest announcement version this build understands and writes.
pub const ANNOUNCEMENT_VERSION: u32 = 1;

/// What a node can build with, right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Architecture as pacman names it: `x86_64`, `aarch64`, …
    pub arch: Name,
    /// x86-64 micro-architecture level (1 to 4: `x86-64`, `-v2`, `-v3`,
    /// `-v4`); 0 when unknown or not x86-64.
    pub microarch: u8,
    /// Logical CPUs available to builds.
    pub cores: u32,
    /// Memory available to builds, bytes.
    pub memory_bytes: u64,
    /// Free disk in the build directory, bytes.
    pub disk_free_bytes: u64,
    /// Operator-given tags (`bigmem`, `gpu`, …).
    #[serde(default)]
    pub tags: Vec<Name>,
    /// Sandbox profile the node builds with: `host` or `chroot`.
    pub profile: Name,
    /// One-minute load average × 100 (e.g. 150 = 1.5).
    pub load: u32,
    /// Concurrent build slots.
    pub slots: u32,
    /// Slots in use.
    pub busy: u32,
}

/// A node's signed, periodically renewed statement of its capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    /// Format version ([`ANNOUNCEMENT_VERSION`]).
    pub version: u32,
    /// The announcing node; must be the signer.
    pub node: PublicKey,
    /// When it was made.
    pub time: Timestamp,
    /// Until when it holds; peers drop the node from rankings after this.
    pub expires: Timestamp,
    /// The capabilities.
    pub capabilities: Capabilities,
    /// The announcing node's queue-state digest when it made the
    /// announcement; a peer whose digest differs asks it for what it lacks
    /// (anti-entropy). Optional, added compatibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::Hash>,
    /// The TCP port on which the node serves its blobs over plain HTTP (`GET
    /// /api/v1/blobs/HASH` with `Range`, and `/api/v1/blobs/HASH/outboard`), at the IP
    /// address a peer is connected to it from. Peers that have a direct connection fetch
    /// segments there (verified against the outboard like any other) and fall back to
    /// `/pacmesh/blobs/2` when it cannot be reached. Optional, added compatibly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob_http_port: Option<u16>,
}

impl Message for Announcement {
    const KIND: &'static str = "announcement";
    const VERSION: u32 = ANNOUNCEMENT_VERSION;
    fn max_bytes(limits: &Limits) -> usize {
        limits.max_announcement_bytes
    }
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        if self.expires <= self.time {
            return Err(crate::codec::invalid(
                "announcement expires",
                "must be later than its time",
            ));
        }
        check_len(
            "announcement tags",
            self.capabilities.tags.len(),
            limits.max_list,
        )
    }
    fn claimed_signer(&self) -> Option<&PublicKey> {
        Some(&self.node)
    }
}

/// One thing an entry needs from its builder.
///
/// String form (CLI `--needs`, and the wire form: a CBOR text string):
///
/// | form | meaning |
/// | --- | --- |
/// | `arch=aarch64` | architecture is exactly this |
/// | `microarch>=3` (or `x86-64-v3`) | x86-64 level at least 3 |
/// | `cores>=8` | at least 8 cores |
/// | `mem>=16G` | at least 16 GiB of memory |
/// | `disk>=50G` | at least 50 GiB free disk |
/// | `tag=bigmem` | has this tag |
/// | `profile=chroot` | builds with this sandbox profile |
///
/// Sizes take `K`, `M`, `G`, `T` (powers of 1024, optionally followed by `iB`
/// or `B`) or plain bytes. A requirement of a kind this build does not know,
/// received from a newer peer, decodes as [`Requirement::Unknown`] and is never
/// met; typed at the CLI it is an error. The same holds for a malformed value
/// received on the wire (see [`Requirement::parse_wire`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum Requirement {
    /// `arch=NAME`
    Arch(Name),
    /// `microarch>=N`
    MicroArch(u8),
    /// `cores>=N`
    Cores(u32),
    /// `mem>=SIZE` (bytes)
    Memory(u64),
    /// `disk>=SIZE` (bytes)
    Disk(u64),
    /// `tag=NAME`
    Tag(Name),
    /// `profile=NAME`
    Profile(Name),
    /// A well-formed `key=value` / `key>=value` with a key this build does
    /// not know (wire only).
    Unknown(String),
}

/// Why a requirement string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequirementError {
    /// Empty string.
    #[error("empty requirement; expected e.g. mem>=16G, cores>=8, arch=aarch64, tag=bigmem")]
    Empty,
    /// Neither `=` nor `>=`.
    #[error(
        "requirement {input:?} has no operator; expected KEY=VALUE or KEY>=VALUE (e.g. mem>=16G)"
    )]
    NoOperator {
        /// The input.
        input: String,
    },
    /// A key this build does not know.
    #[error(
        "unknown requirement {key:?} in {input:?}; known: arch=, microarch>=, cores>=, mem>=, disk>=, tag=, profile="
    )]
    UnknownKey {
        /// The key.
        key: String,
        /// The input.
        input: String,
    },
    /// `mem=16G` instead of `mem>=16G`, or `arch>=x`.
    #[error("requirement {input:?}: {key} takes '{expected}' (e.g. {example})")]
    WrongOperator {
        /// The key.
        key: &'static str,
        /// The operator it takes.
        expected: &'static str,
        /// An example.
        example: &'static str,
        /// The input.
        input: String,
    },
    /// The value does not parse.
    #[error("requirement {input:?}: bad value {value:?}: {reason}")]
    BadValue {
        /// The value.
        value: String,
        /// Why.
        reason: String,
        /// The input.
        input: String,
    },
}

const SIZE_UNITS: [(char, u32); 4] = [('K', 10), ('M', 20), ('G', 30), ('T', 40)];

/// Parses `16G`, `16GiB`, `16GB`, `512m`, `1048576` into bytes (units are
/// powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err("expected a number, optionally followed by K, M, G or T".into());
    }
    let n: u64 = num.parse().map_err(|_| "number too large".to_string())?;
    let unit = unit.trim();
    let shift = if unit.is_empty() || unit.eq_ignore_ascii_case("b") {
        0
    } else {
        let mut chars = unit.chars();
        let first = chars.next().unwrap_or(' ').to_ascii_uppercase();
        let rest: String = chars.collect();
        let shift = SIZE_UNITS
            .iter()
            .find(|(c, _)| *c == first)
            .map(|(_, s)| *s)
            .ok_or_else(|| format!("unknown unit {unit:?}; use K, M, G or T"))?;
        if !(rest.is_empty() || rest.eq_ignore_ascii_case("b") || rest.eq_ignore_ascii_case("ib")) {
            return Err(format!("unknown unit {unit:?}; use K, M, G or T"));
        }
        shift
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".to_string())
}

/// Formats bytes with the largest unit that divides them exactly (`16G`,
/// `1536M`, `1000`).
pub fn format_size(bytes: u64) -> String {
    for (c, shift) in SIZE_UNITS.iter().rev() {
        let unit = 1u64 << shift;
        if bytes != 0 && bytes.is_multiple_of(unit) {
            return format!("{}{c}", bytes / unit);
        }
    }
    bytes.to_string()
}

impl Requirement {
    /// Strict parse (CLI): unknown keys are an error.
    pub fn parse(input: &str) -> Result<Self, RequirementError> {
        match Self::parse_inner(input)? {
            Requirement::Unknown(_) => {
                let key = split(input.trim()).map(|(k, _, _)| k).unwrap_or_default();
                Err(RequirementError::UnknownKey {
                    key: key.to_string(),
                    input: input.to_string(),
                })
            }
            r => Ok(r),
        }
    }

    /// Lenient parse (wire): anything that is not a valid requirement of a
    /// known kind (an unknown key, or a syntax from a newer pacmesh) becomes
    /// [`Requirement::Unknown`], which no node meets. This keeps an entry from
    /// a newer peer decodable (so the author's event log stays whole) while
    /// making sure no node builds what it does not understand. Only empty,
    /// over-long (> 256 bytes) or control-character strings are errors.
    pub fn parse_wire(input: &str) -> Result<Self, RequirementError> {
        if input.trim().is_empty() {
            return Err(RequirementError::Empty);
        }
        if input.len() > 256 || input.chars().any(char::is_control) {
            return Err(RequirementError::BadValue {
                value: input.chars().take(64).collect(),
                reason: "longer than 256 bytes or contains control characters".into(),
                input: input.chars().take(64).collect(),
            });
        }
        Ok(Self::parse_inner(input).unwrap_or_else(|_| Requirement::Unknown(input.to_string())))
    }

    fn parse_inner(input: &str) -> Result<Self, RequirementError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(RequirementError::Empty);
        }
        // Shorthand for microarch levels.
        if let Some(l) = s.strip_prefix("x86-64-v") {
            return parse_level(l, input).map(Requirement::MicroArch);
        }
        let (key, op, value) = split(s).ok_or_else(|| RequirementError::NoOperator {
            input: input.to_string(),
        })?;
        let bad = |reason: String| RequirementError::BadValue {
            value: value.to_string(),
            reason,
            input: input.to_string(),
        };
        let name = |v: &str| Name::new(v).map_err(|e| bad(e.to_string()));
        let want = |k: &'static str, o: &'static str, ex: &'static str| {
            if op == o {
                Ok(())
            } else {
                Err(RequirementError::WrongOperator {
                    key: k,
                    expected: o,
                    example: ex,
                    input: input.to_string(),
                })
            }
        };
        Ok(match key.to_ascii_lowercase().as_str() {
            "arch" => {
                want("arch", "=", "arch=aarch64")?;
                Requirement::Arch(name(value)?)
            }
            "microarch" | "march" | "level" => {
                want("microarch", ">=", "microarch>=3")?;
                Requirement::MicroArch(parse_level(value, input)?)
            }
            "cores" | "cpus" => {
                want("cores", ">=", "cores>=8")?;
                Requirement::Cores(
                    value
                        .parse()
                        .map_err(|_| bad("expected a whole number".into()))?,
                )
            }
            "mem" | "memory" | "ram" => {
                want("mem", ">=", "mem>=16G")?;
                Requirement::Memory(parse_size(value).map_err(bad)?)
            }
            "disk" => {
                want("disk", ">=", "disk>=50G")?;
                Requirement::Disk(parse_size(value).map_err(bad)?)
            }
            "tag" => {
                want("tag", "=", "tag=bigmem")?;
                Requirement::Tag(name(value)?)
            }
            "profile" => {
                want("profile", "=", "profile=chroot")?;
                Requirement::Profile(name(value)?)
            }
            _ => {
                if Name::new(key).is_err() || value.is_empty() || s.len() > 256 {
                    return Err(RequirementError::UnknownKey {
                        key: key.chars().take(64).collect(),
                        input: input.chars().take(256).collect(),
                    });
                }
                Requirement::Unknown(s.to_string())
            }
        })
    }
}

fn parse_level(v: &str, input: &str) -> Result<u8, RequirementError> {
    match v.trim() {
        l @ ("1" | "2" | "3" | "4") => Ok(l.parse().expect("digit")),
        other => Err(RequirementError::BadValue {
            value: other.to_string(),
            reason: "x86-64 micro-architecture levels are 1 to 4".into(),
            input: input.to_string(),
        }),
    }
}

/// Splits `key>=value` / `key=value`.
fn split(s: &str) -> Option<(&str, &'static str, &str)> {
    if let Some(i) = s.find(">=") {
        return Some((s[..i].trim(), ">=", s[i + 2..].trim()));
    }
    let i = s.find('=')?;
    Some((s[..i].trim(), "=", s[i + 1..].trim()))
}

impl FromStr for Requirement {
    type Err = RequirementError;
    /// Strict, for the CLI.
    fn from_str(s: &str) -> Result<Self, RequirementError> {
        Requirement::parse(s)
    }
}

impl TryFrom<String> for Requirement {
    type Error = RequirementError;
    /// Lenient, for the wire.
    fn try_from(s: String) -> Result<Self, RequirementError> {
        Requirement::parse_wire(&s)
    }
}

impl From<Requirement> for String {
    fn from(r: Requirement) -> String {
        r.to_string()
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Arch(a) => write!(f, "arch={a}"),
            Requirement::MicroArch(l) => write!(f, "microarch>={l}"),
            Requirement::Cores(n) => write!(f, "cores>={n}"),
            Requirement::Memory(b) => write!(f, "mem>={}", format_size(*b)),
            Requirement::Disk(b) => write!(f, "disk>={}", format_size(*b)),
            Requirement::Tag(t) => write!(f, "tag={t}"),
            Requirement::Profile(p) => write!(f, "profile={p}"),
            Requirement::Unknown(s) => f.write_str(s),
        }
    }
}

/// The first requirement a node does not meet, and what it has instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("needs {requirement}, node has {have}")]
#[non_exhaustive]
pub struct Mismatch {
    /// The unmet requirement.
    pub requirement: Requirement,
    /// What the node has (for messages such as `queue why`).
    pub have: String,
}

/// Checks every requirement against `caps`; the first unmet one is returned.
pub fn matches(caps: &Capabilities, needs: &[Requirement]) -> Result<(), Mismatch> {
    for r in needs {
        let (ok, have) = match r {
            Requirement::Arch(a) => (caps.arch == *a, format!("arch={}", caps.arch)),
            Requirement::MicroArch(l) => (
                caps.microarch >= *l,
                format!("microarch={}", caps.microarch),
            ),
            Requirement::Cores(n) => (caps.cores >= *n, format!("cores={}", caps.cores)),
            Requirement::Memory(b) => (
                caps.memory_bytes >= *b,
                format!("mem={}", format_size(caps.memory_bytes)),
            ),
            Requirement::Disk(b) => (
                caps.disk_free_bytes >= *b,
                format!("disk={}", format_size(caps.disk_free_bytes)),
            ),
            Requirement::Tag(t) => (
                caps.tags.contains(t),
                if caps.tags.is_empty() {
                    "no tags".to_string()
                } else {
                    format!(
                        "tags {}",
                        caps.tags
                            .iter()
                            .map(Name::as_str)
                            .collect::<Vec<_>>()
                            .join(",")
                    )
                },
            ),
            Requirement::Profile(p) => (caps.profile == *p, format!("profile={}", caps.profile)),
            Requirement::Unknown(_) => (
                false,
                "no support for this requirement (made by a newer pacmesh)".to_string(),
            ),
        };
        if !ok {
            return Err(Mismatch {
                requirement: r.clone(),
                have,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Capabilities {
        Capabilities {
            arch: Name::new("x86_64").unwrap(),
            microarch: 3,
            cores: 4,
            memory_bytes: 8 << 30,
            disk_free_bytes: 100 << 30,
            tags: vec![Name::new("fast").unwrap()],
            profile: Name::new("host").unwrap(),
            load: 50,
            slots: 1,
            busy: 0,
        }
    }

    #[test]
    fn parses_the_documented_forms() {
        use Requirement::*;
        let n = |s: &str| Name::new(s).unwrap();
        let cases = [
            ("arch=aarch64", Arch(n("aarch64"))),
            ("mem>=16G", Memory(16 << 30)),
            ("mem >= 512MiB", Memory(512 << 20)),
            ("cores>=8", Cores(8)),
            ("disk>=50G", Disk(50 << 30)),
            ("tag=bigmem", Tag(n("bigmem"))),
            ("profile=chroot", Profile(n("chroot"))),
            ("microarch>=3", MicroArch(3)),
            ("x86-64-v2", MicroArch(2)),
            ("mem>=1000", Memory(1000)),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<Requirement>().unwrap(), want, "{s}");
            // Display is canonical and parses back.
            assert_eq!(want.to_string().parse::<Requirement>().unwrap(), want);
        }
        assert_eq!(Memory(16 << 30).to_string(), "mem>=16G");
    }

    #[test]
    fn errors_are_specific() {
        let e = |s: &str| s.parse::<Requirement>().unwrap_err().to_string();
        assert!(e("").contains("empty requirement"));
        assert!(e("bigmem").contains("no operator"));
        assert!(e("gpu=yes").contains("unknown requirement \"gpu\""));
        assert!(e("mem=16G").contains("mem takes '>='"), "{}", e("mem=16G"));
        assert!(e("arch>=x").contains("arch takes '='"));
        assert!(e("mem>=16Q").contains("unknown unit"));
        assert!(e("mem>=lots").contains("expected a number"));
        assert!(e("mem>=99999999999T").contains("too large"));
        assert!(e("cores>=-1").contains("whole number"));
        assert!(e("microarch>=5").contains("1 to 4"));
        assert!(e("tag=a b").contains("only letters"));
    }

    #[test]
    fn wire_parse_keeps_unknown_keys() {
        let r = Requirement::parse_wire("gpu=nvidia").unwrap();
        assert_eq!(r, Requirement::Unknown("gpu=nvidia".into()));
        let m = matches(&caps(), &[r]).unwrap_err();
        assert!(m.to_string().contains("newer pacmesh"));
    }

    #[test]
    fn matching_names_the_unmet_requirement() {
        let c = caps();
        let ok: Vec<Requirement> = [
            "arch=x86_64",
            "mem>=8G",
            "cores>=4",
            "tag=fast",
            "profile=host",
            "x86-64-v3",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        matches(&c, &ok).unwrap();
        let m = matches(
            &c,
            &["cores>=2".parse().unwrap(), "mem>=16G".parse().unwrap()],
        )
        .unwrap_err();
        assert_eq!(m.to_string(), "needs mem>=16G, node has mem=8G");
        let m = matches(&c, &["tag=bigmem".parse().unwrap()]).unwrap_err();
        assert_eq!(m.to_string(), "needs tag=bigmem, node has tags fast");
        let m = matches(&c, &["arch=aarch64".parse().unwrap()]).unwrap_err();
        assert_eq!(m.to_string(), "needs arch=aarch64, node has arch=x86_64");
    }
}
