//! The CBOR codec: [`encode`], [`decode`] with explicit size limits, and the
//! [`Message`] trait that every top-level message implements.
//!
//! Rules for every decoder of untrusted bytes in this crate:
//!
//! 1. The input length is checked against a byte limit **before** parsing.
//! 2. Nesting is bounded ([`Limits::max_depth`], via ciborium's recursion limit),
//!    so deeply nested input cannot overflow the stack.
//! 3. Exactly one CBOR item: trailing bytes are an error.
//! 4. Top-level messages carry a `version` field that is read first, so an old
//!    node rejects a message from a newer one with [`DecodeError::NewerVersion`]
//!    instead of a confusing field error.
//! 5. Collection lengths and field contents are validated after decoding
//!    ([`Message::validate`]).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Byte and count limits applied when decoding untrusted input.
///
/// The defaults are deliberately generous for honest peers and small enough
/// that a hostile peer cannot make a node allocate much: decoding allocates at
/// most a small multiple of the input size (each CBOR item is at least one byte
/// and becomes at most a few dozen bytes in memory).
///
/// Not `#[non_exhaustive]` on purpose, so callers can write
/// `Limits { max_event_bytes: 2 << 20, ..Limits::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload of a [`crate::Signed`]`<`[`crate::Event`]`>` whose body
    /// is not `Publish` (checked after the signature, before acting).
    /// Default 1 MiB.
    pub max_event_bytes: usize,
    /// Largest encoded [`crate::RepoManifest`] (bare or signed), and largest
    /// `Signed<Event>` envelope (the envelope cap is the larger of this and
    /// `max_event_bytes`, so that a `Publish` event fits; it is checked before
    /// parsing). Default 4 MiB.
    pub max_manifest_bytes: usize,
    /// Largest encoded `Signed<MeshPolicy>`. Default 1 MiB.
    pub max_policy_bytes: usize,
    /// Largest encoded `Signed<Announcement>`. Default 64 KiB.
    pub max_announcement_bytes: usize,
    /// Largest encoded sync request or response. Default 4 MiB.
    pub max_sync_bytes: usize,
    /// Most author heads in one sync request. Default 65 536.
    pub max_sync_heads: usize,
    /// Most events in one sync response. Default 4 096.
    pub max_sync_events: usize,
    /// Deepest CBOR nesting accepted (arrays and maps). Default 32; the deepest
    /// honest message is about 8.
    pub max_depth: usize,
    /// Most artifacts in one `Built` event. Default 256.
    pub max_artifacts: usize,
    /// Most packages in one manifest. Default 65 536.
    pub max_packages: usize,
    /// Most keys in each key list of a policy, and most repos. Default 1 024.
    pub max_keys: usize,
    /// Most entries in any other list (tags, requirements, arches,
    /// pkgbases). Default 64.
    pub max_list: usize,
    /// Longest free-text field (failure reasons, URLs, versions) in bytes.
    /// Default 4 096.
    pub max_text: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_event_bytes: 1 << 20,
            max_manifest_bytes: 4 << 20,
            max_policy_bytes: 1 << 20,
            max_announcement_bytes: 64 << 10,
            max_sync_bytes: 4 << 20,
            max_sync_heads: 65_536,
            max_sync_events: 4_096,
            max_depth: 32,
            max_artifacts: 256,
            max_packages: 65_536,
            max_keys: 1_024,
            max_list: 64,
            max_text: 4_096,
        }
    }
}

/// Why bytes were not accepted as a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Input longer than the limit; rejected before parsing.
    #[error("{what} is {len} bytes, more than the limit of {max} bytes")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Input length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Input ended in the middle of an item.
    #[error("{what}: input truncated")]
    Truncated {
        /// What was being decoded.
        what: &'static str,
    },
    /// Not well-formed CBOR.
    #[error("{what}: malformed CBOR at byte {offset}")]
    Syntax {
        /// What was being decoded.
        what: &'static str,
        /// Byte offset of the error.
        offset: usize,
    },
    /// Well-formed CBOR that does not have the expected shape.
    #[error("{what}: {message}")]
    Shape {
        /// What was being decoded.
        what: &'static str,
        /// Serde's description (field, expected type, offset).
        message: String,
    },
    /// Nested deeper than [`Limits::max_depth`].
    #[error("{what}: nested deeper than {max} levels")]
    TooDeep {
        /// What was being decoded.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Bytes left after the one CBOR item.
    #[error("{what}: {extra} trailing bytes after the message")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// Count of bytes left over.
        extra: usize,
    },
    /// The message has no `version` field.
    #[error("{what}: no version field")]
    MissingVersion {
        /// What was being decoded.
        what: &'static str,
    },
    /// A message from a newer pacmesh.
    #[error(
        "{what} version {found} is newer than this node understands (max {max}); upgrade pacmesh"
    )]
    NewerVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version in the message.
        found: u64,
        /// The newest version this build understands.
        max: u32,
    },
    /// Version 0 (never valid).
    #[error("{what} version {found} is not a valid version")]
    InvalidVersion {
        /// What was being decoded.
        what: &'static str,
        /// The version in the message.
        found: u64,
    },
    /// A signed envelope of another kind than the one expected.
    #[error("expected a signed {expected}, got a signed {found:?}")]
    WrongKind {
        /// The kind expected.
        expected: &'static str,
        /// The kind in the envelope.
        found: String,
    },
    /// A list longer than its limit.
    #[error("{what}: {len} entries, more than the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field with an invalid value (decoded fine, means nothing valid).
    #[error("{what}: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

/// Encoding failed (only possible for values that cannot go on the wire, such
/// as [`crate::EventBody::Unknown`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The serializer refused the value.
    #[error("cannot encode {what}: {message}")]
    Refused {
        /// What was being encoded.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// [`crate::Signed::sign`] was given a key other than the one the message
    /// names as its signer.
    #[error("message names {claimed} as its signer but the signing key is {signer}")]
    WrongSigner {
        /// The key named in the message.
        claimed: crate::PublicKey,
        /// The signing key.
        signer: crate::PublicKey,
    },
}

/// Encodes `value` as CBOR (definite lengths, shortest integer forms, struct
/// fields as text-keyed maps in declaration order: the encoding is
/// deterministic).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).map_err(|e| EncodeError::Refused {
        what: std::any::type_name::<T>(),
        message: match e {
            ciborium::ser::Error::Io(e) => e.to_string(),
            ciborium::ser::Error::Value(m) => m,
        },
    })?;
    Ok(out)
}

/// Decodes exactly one CBOR item from `bytes`, refusing input longer than
/// `max_bytes` before parsing and nesting deeper than `max_depth`.
///
/// This is the low-level decoder: it does no version check and no validation.
/// Prefer [`Message::decode`] for top-level messages.
pub fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
    max_depth: usize,
) -> Result<T, DecodeError> {
    decode_as(bytes, max_bytes, max_depth, short_type_name::<T>())
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

pub(crate) fn decode_as<T: DeserializeOwned>(
    bytes: &[u8],
    max_bytes: usize,
    max_depth: usize,
    what: &'static str,
) -> Result<T, DecodeError> {
    if bytes.len() > max_bytes {
        return Err(DecodeError::TooLarge {
            what,
            len: bytes.len(),
            max: max_bytes,
        });
    }
    let mut rest = bytes;
    let value = ciborium::de::from_reader_with_recursion_limit(&mut rest, max_depth).map_err(
        |e| match e {
            ciborium::de::Error::Io(_) => DecodeError::Truncated { what },
            ciborium::de::Error::Syntax(offset) => DecodeError::Syntax { what, offset },
            ciborium::de::Error::Semantic(offset, message) => DecodeError::Shape {
                what,
                message: match offset {
                    Some(o) => format!("{message} (at byte {o})"),
                    None => message,
                },
            },
            ciborium::de::Error::RecursionLimitExceeded => DecodeError::TooDeep {
                what,
                max: max_depth,
            },
        },
    )?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Reads only the `version` field of a map, skipping everything else.
#[derive(Deserialize)]
struct VersionProbe {
    version: Option<u64>,
}

/// Checks a message's `version` field before the full decode, so that a newer
/// message fails with a version error rather than a shape error.
pub(crate) fn check_version(
    bytes: &[u8],
    max_bytes: usize,
    max_depth: usize,
    what: &'static str,
    max_version: u32,
) -> Result<u32, DecodeError> {
    let probe: VersionProbe = decode_as(bytes, max_bytes, max_depth, what)?;
    match probe.version {
        None => Err(DecodeError::MissingVersion { what }),
        Some(0) => Err(DecodeError::InvalidVersion { what, found: 0 }),
        Some(v) if v > u64::from(max_version) => Err(DecodeError::NewerVersion {
            what,
            found: v,
            max: max_version,
        }),
        Some(v) => Ok(v as u32),
    }
}

/// A top-level message: something that is signed (see [`crate::Signed`]) or
/// exchanged on its own, with a version field, a byte limit and post-decode
/// validation.
pub trait Message: Serialize + DeserializeOwned {
    /// The kind name: part of the signing context (`pacmesh/v1/<KIND>`) and of
    /// the signed envelope, and used in error messages.
    const KIND: &'static str;
    /// The newest `version` of this message that this build understands (and
    /// the one it writes).
    const VERSION: u32;

    /// Largest accepted encoding of this message **inside a signed envelope**
    /// (the envelope's size is what is checked).
    fn max_bytes(limits: &Limits) -> usize;

    /// Checks lengths and field contents after decoding.
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError>;

    /// The byte limit for this particular value, checked after decoding
    /// against the payload length. Defaults to [`Message::max_bytes`]; events
    /// use it to allow only `Publish` events the larger manifest limit.
    fn size_limit(&self, limits: &Limits) -> usize {
        Self::max_bytes(limits)
    }

    /// The key that must have signed this message, if the message names one
    /// (an event's `author`, a policy's `root`, a manifest's `publisher`).
    fn claimed_signer(&self) -> Option<&crate::PublicKey> {
        None
    }

    /// Decodes and validates a bare (unsigned) message: size limit, version
    /// probe, full decode, [`Message::validate`].
    fn decode(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let max = Self::max_bytes(limits);
        check_version(bytes, max, limits.max_depth, Self::KIND, Self::VERSION)?;
        let value: Self = decode_as(bytes, max, limits.max_depth, Self::KIND)?;
        value.validate(limits)?;
        Ok(value)
    }

    /// Encodes the message (deterministic CBOR).
    fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        encode(self)
    }
}

/// Helpers used by `validate` implementations.
pub(crate) fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), DecodeError> {
    if len > max {
        Err(DecodeError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

pub(crate) fn check_text(what: &'static str, s: &str, max: usize) -> Result<(), DecodeError> {
    if s.len() > max {
        return Err(DecodeError::Invalid {
            what,
            reason: format!("{} bytes long, more than {max}", s.len()),
        });
    }
    if s.chars().any(|c| c == '\0') {
        return Err(DecodeError::Invalid {
            what,
            reason: "contains a NUL character".into(),
        });
    }
    Ok(())
}

pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        what,
        reason: reason.into(),
    }
}
