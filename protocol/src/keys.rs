//! Node identities: [`PublicKey`] (an ed25519 verifying key) and the secret
//! [`SigningKey`] re-exported from `ed25519-dalek`.
//!
//! A node's libp2p PeerId is derived from the same ed25519 key; that mapping
//! lives in the node crate (this crate has no libp2p dependency).

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use ed25519_dalek::SigningKey;

/// Why bytes or a string are not an acceptable public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not 64 hex characters / 32 bytes.
    #[error("public key: expected 32 bytes (64 hex characters), got {0} bytes")]
    Length(usize),
    /// Not hex.
    #[error("public key: invalid hex")]
    Hex,
    /// 32 bytes that are not a point on the curve.
    #[error("public key: not a valid ed25519 point")]
    Invalid,
    /// A non-canonical encoding of a point.
    #[error("public key: non-canonical encoding refused")]
    NonCanonical,
    /// A small-order point: every signature would verify against it.
    #[error("public key: weak (small-order) ed25519 key refused")]
    Weak,
}

/// An ed25519 public key, validated on construction (on the curve, not of small
/// order). Displayed as 64 lowercase hex characters; CBOR: a 32-byte string.
///
/// Stored as its 32 validated bytes (the curve point is recomputed when a
/// signature is checked), so it is small and cheap to copy and compare.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Validates 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let vk = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::Invalid)?;
        if vk.is_weak() {
            return Err(KeyError::Weak);
        }
        // Refuse non-canonical encodings (y >= p), so that one key has exactly
        // one byte form and byte comparison is key comparison.
        if vk.to_edwards().compress().as_bytes() != bytes {
            return Err(KeyError::NonCanonical);
        }
        Ok(PublicKey(*bytes))
    }

    /// Validates a byte slice of any length.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, KeyError> {
        let arr: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        Self::from_bytes(arr)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// The first 10 hex characters, for log lines.
    pub fn fmt_short(&self) -> String {
        hex::encode(&self.as_bytes()[..5])
    }

    /// The `ed25519-dalek` key, for callers that need it (e.g. the libp2p
    /// identity conversion in the node).
    pub fn to_dalek(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("validated when constructed")
    }

    /// Strict ed25519 verification (`verify_strict`: canonical `S`, no
    /// small-order `R`).
    pub(crate) fn verify_strict(&self, msg: &[u8], sig: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        VerifyingKey::from_bytes(&self.0).is_ok_and(|vk| vk.verify_strict(msg, &sig).is_ok())
    }
}

impl From<&SigningKey> for PublicKey {
    fn from(k: &SigningKey) -> Self {
        PublicKey(k.verifying_key().to_bytes())
    }
}

impl TryFrom<VerifyingKey> for PublicKey {
    type Error = KeyError;
    fn try_from(vk: VerifyingKey) -> Result<Self, KeyError> {
        PublicKey::from_bytes(vk.as_bytes())
    }
}

impl std::hash::Hash for PublicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}
impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_hex())
    }
}
impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(KeyError::Length(s.len() / 2));
        }
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).map_err(|_| KeyError::Hex)?;
        Self::from_bytes(&b)
    }
}
impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::hash::serialize_32(self.as_bytes(), s)
    }
}
impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = crate::hash::deserialize_32(d)?;
        PublicKey::from_bytes(&b).map_err(serde::de::Error::custom)
    }
}

/// Serde for `[u8; 64]` signatures as a CBOR byte string (hex when
/// human-readable).
pub(crate) mod sig_bytes {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(b: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(b))
        } else {
            s.serialize_bytes(b)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = [u8; 64];
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a 64-byte signature")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
                v.try_into()
                    .map_err(|_| E::invalid_length(v.len(), &"64 bytes"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<[u8; 64], E> {
                let mut b = [0u8; 64];
                hex::decode_to_slice(v, &mut b).map_err(E::custom)?;
                Ok(b)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

/// Serde for `Vec<u8>` as a CBOR byte string (not an array of integers).
pub(crate) mod byte_buf {
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        let k = PublicKey::from(&SigningKey::from_bytes(&[7; 32]));
        assert_eq!(k.to_string().parse::<PublicKey>().unwrap(), k);
        assert_eq!("00".parse::<PublicKey>(), Err(KeyError::Length(1)));
    }

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (y = 1) has small order.
        let mut b = [0u8; 32];
        b[0] = 1;
        assert_eq!(PublicKey::from_bytes(&b), Err(KeyError::Weak));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // y = 2^255 - 1 is not reduced mod p = 2^255 - 19; dalek decodes it.
        let mut b = [0xff; 32];
        b[31] = 0x7f;
        assert!(PublicKey::from_bytes(&b).is_err());
        assert!(PublicKey::from_bytes(&[0xff; 32]).is_err());
    }
}
