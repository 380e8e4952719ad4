//! Content identifiers: [`Hash`] (BLAKE3, the mesh's native hash) and [`Sha256`]
//! (kept only because pacman's databases record it).
//!
//! Both are 32 bytes. In CBOR they are byte strings of exactly 32 bytes; in
//! human-readable formats (JSON for the HTTP API, TOML) they are 64 lowercase
//! hex characters.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A hex string that did not parse as a 32-byte digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashParseError {
    /// Not exactly 64 characters.
    #[error("expected 64 hex characters, got {0}")]
    Length(usize),
    /// A character outside `0-9a-fA-F`.
    #[error("invalid hex digit in digest")]
    Hex,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], HashParseError> {
    if s.len() != 64 {
        return Err(HashParseError::Length(s.len()));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|_| HashParseError::Hex)?;
    Ok(out)
}

/// Serde support shared by the 32-byte newtypes: CBOR byte string, hex in
/// human-readable formats.
pub(crate) fn serialize_32<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        s.serialize_str(&hex::encode(bytes))
    } else {
        s.serialize_bytes(bytes)
    }
}

pub(crate) fn deserialize_32<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = [u8; 32];
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("32 bytes (or 64 hex characters)")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            v.try_into()
                .map_err(|_| E::invalid_length(v.len(), &"32 bytes"))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_hex32(v).map_err(E::custom)
        }
    }
    if d.is_human_readable() {
        d.deserialize_str(V)
    } else {
        d.deserialize_bytes(V)
    }
}

/// A BLAKE3 digest: the identifier of blobs (packages, logs, databases) and of
/// signed messages (see [`crate::Signed::id`]).
#[derive(Clone, Copy, PartialEq, Eq, std::hash::Hash)]
pub struct Hash(blake3::Hash);

impl Hash {
    /// The hash of the empty input.
    pub const EMPTY: Hash = Hash(blake3::Hash::from_bytes([
        0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9,
        0x49, 0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f,
        0x32, 0x62,
    ]));

    /// BLAKE3 of `data`.
    pub fn new(data: impl AsRef<[u8]>) -> Self {
        Hash(blake3::hash(data.as_ref()))
    }

    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Hash(blake3::Hash::from_bytes(bytes))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The first 10 hex characters (5 bytes), for log lines. Not unique: never
    /// use it as a key.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.as_bytes()[..5])
    }
}

impl From<blake3::Hash> for Hash {
    fn from(h: blake3::Hash) -> Self {
        Hash(h)
    }
}
impl From<Hash> for blake3::Hash {
    fn from(h: Hash) -> Self {
        h.0
    }
}
impl From<[u8; 32]> for Hash {
    fn from(b: [u8; 32]) -> Self {
        Hash::from_bytes(b)
    }
}
impl AsRef<[u8]> for Hash {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}
impl PartialOrd for Hash {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hash {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}
impl FromStr for Hash {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(Hash::from_bytes)
    }
}
impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_32(self.as_bytes(), s)
    }
}
impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_32(d).map(Hash::from_bytes)
    }
}

/// A SHA-256 digest, recorded next to BLAKE3 for pacman (`%SHA256SUM%`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, std::hash::Hash)]
pub struct Sha256([u8; 32]);

impl Sha256 {
    /// SHA-256 of `data`.
    pub fn digest(data: impl AsRef<[u8]>) -> Self {
        use sha2::Digest;
        Sha256(sha2::Sha256::digest(data.as_ref()).into())
    }
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Sha256(bytes)
    }
    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}
impl From<[u8; 32]> for Sha256 {
    fn from(b: [u8; 32]) -> Self {
        Sha256(b)
    }
}
impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}
impl FromStr for Sha256 {
    type Err = HashParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex32(s).map(Sha256)
    }
}
impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_32(&self.0, s)
    }
}
impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_32(d).map(Sha256)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_constant_is_blake3_of_nothing() {
        assert_eq!(Hash::EMPTY, Hash::new(b""));
    }

    #[test]
    fn hex_round_trip_and_short_form() {
        let h = Hash::new(b"pacmesh");
        let s = h.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<Hash>().unwrap(), h);
        assert_eq!(h.fmt_short(), &s[..10]);
        assert_eq!("abc".parse::<Hash>(), Err(HashParseError::Length(3)));
        assert_eq!("zz".repeat(32).parse::<Hash>(), Err(HashParseError::Hex));
    }

    #[test]
    fn sha256_known_vector() {
        assert_eq!(
            Sha256::digest(b"abc").to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
