//! [`Signed<T>`]: the payload bytes, who signed them and the signature.
//!
//! # What is signed
//!
//! The ed25519 signature covers the *signing message*
//!
//! ```text
//! "pacmesh/v1/" ‖ KIND ‖ 0x00 ‖ payload
//! ```
//!
//! where `KIND` is the message kind ([`Message::KIND`]: `event`, `policy`,
//! `manifest`, `announcement`) and `payload` is the exact CBOR encoding of the
//! message. The prefix separates pacmesh signatures from any other use of the
//! same key (the OpenPGP signatures made by the publisher, libp2p's own
//! identity signatures) and one message kind from another, so a signed policy
//! can never be replayed as an event. The `0x00` terminator makes the context
//! prefix-free.
//!
//! # Verify first, decode second
//!
//! [`Signed::verify`] checks the signature over the bytes as received, and only
//! then does [`Signed::verify_and_decode`] parse them. Nothing is ever
//! re-encoded to be checked, so two encoders that disagree on a detail cannot
//! make a valid message look forged, and a forged one is never parsed.
//!
//! # Identity
//!
//! [`Signed::id`] is the BLAKE3 hash of [`Signed::to_bytes`], the canonical
//! encoding of the whole envelope (version, kind, payload, signer, signature).
//! Because the payload is kept as bytes, this encoding is a pure function of
//! what was signed plus the signature: re-encoding a decoded envelope gives the
//! same bytes even if a peer sent a non-canonical encoding of the envelope.
//! Always use `id()`, never a hash of the bytes as received.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::{DecodeError, EncodeError, Limits, Message, check_version, decode_as};
use crate::{Hash, PublicKey, SigningKey};

/// The newest version of the signed envelope this build understands.
pub const SIGNED_VERSION: u32 = 1;

/// The domain-separation prefix of every signing message.
pub const SIGNING_CONTEXT_PREFIX: &[u8] = b"pacmesh/v1/";

/// Why a signed message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The signature does not verify against the signer for this kind.
    #[error("bad signature on {kind} from {signer}")]
    BadSignature {
        /// The message kind.
        kind: &'static str,
        /// The key named in the envelope.
        signer: PublicKey,
    },
    /// The payload names a different signer (author, root, publisher) than
    /// the key that signed it.
    #[error("{kind} claims to be from {claimed} but is signed by {signer}")]
    SignerMismatch {
        /// The message kind.
        kind: &'static str,
        /// The key named in the payload.
        claimed: PublicKey,
        /// The key that signed.
        signer: PublicKey,
    },
    /// The signature is good but the payload does not decode or validate.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// A message of type `T`, signed: the payload bytes, the signer and the
/// signature over `"pacmesh/v1/" ‖ T::KIND ‖ 0x00 ‖ payload`. Verify first
/// ([`Signed::verify`]), decode second ([`Signed::verify_and_decode`]).
pub struct Signed<T> {
    /// The CBOR encoding of a `T`, exactly as signed.
    pub payload: Vec<u8>,
    /// The signing key.
    pub signer: PublicKey,
    /// The ed25519 signature over the signing message.
    pub sig: [u8; 64],
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            payload: self.payload.clone(),
            signer: self.signer,
            sig: self.sig,
            _kind: PhantomData,
        }
    }
}
impl<T> PartialEq for Signed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.payload == o.payload && self.signer == o.signer && self.sig == o.sig
    }
}
impl<T> Eq for Signed<T> {}
impl<T: Message> fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signed")
            .field("kind", &T::KIND)
            .field("payload_len", &self.payload.len())
            .field("signer", &self.signer)
            .field("sig", &hex::encode(self.sig))
            .finish()
    }
}

/// The signing message for `kind` and `payload` (see the module docs).
pub fn signing_message(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT_PREFIX.len() + kind.len() + 1 + payload.len());
    m.extend_from_slice(SIGNING_CONTEXT_PREFIX);
    m.extend_from_slice(kind.as_bytes());
    m.push(0);
    m.extend_from_slice(payload);
    m
}

impl<T: Message> Signed<T> {
    /// Encodes `value` and signs it with `key`.
    ///
    /// Fails if `value` cannot be encoded, or if it names a signer (an event's
    /// author, a policy's root, a manifest's publisher) other than `key`.
    pub fn sign(key: &SigningKey, value: &T) -> Result<Self, EncodeError> {
        use ed25519_dalek::Signer;
        let signer = PublicKey::from(key);
        if let Some(claimed) = value.claimed_signer()
            && *claimed != signer
        {
            return Err(EncodeError::WrongSigner {
                claimed: *claimed,
                signer,
            });
        }
        let payload = crate::codec::encode(value)?;
        let sig = key.sign(&signing_message(T::KIND, &payload)).to_bytes();
        Ok(Signed {
            payload,
            signer,
            sig,
            _kind: PhantomData,
        })
    }

    /// Assembles an envelope from parts (nothing is checked).
    pub fn from_parts(payload: Vec<u8>, signer: PublicKey, sig: [u8; 64]) -> Self {
        Signed {
            payload,
            signer,
            sig,
            _kind: PhantomData,
        }
    }

    /// Checks the signature over the payload bytes; returns them on success.
    /// Does not parse the payload.
    pub fn verify(&self) -> Result<&[u8], VerifyError> {
        if self
            .signer
            .verify_strict(&signing_message(T::KIND, &self.payload), &self.sig)
        {
            Ok(&self.payload)
        } else {
            Err(VerifyError::BadSignature {
                kind: T::KIND,
                signer: self.signer,
            })
        }
    }

    /// Verifies the signature, then decodes and validates the payload, then
    /// checks that a signer named in the payload is the one that signed.
    pub fn verify_and_decode(&self, limits: &Limits) -> Result<T, VerifyError> {
        let bytes = self.verify()?;
        let value = T::decode(bytes, limits)?;
        let max = value.size_limit(limits);
        if bytes.len() > max {
            return Err(DecodeError::TooLarge {
                what: T::KIND,
                len: bytes.len(),
                max,
            }
            .into());
        }
        if let Some(claimed) = value.claimed_signer()
            && *claimed != self.signer
        {
            return Err(VerifyError::SignerMismatch {
                kind: T::KIND,
                claimed: *claimed,
                signer: self.signer,
            });
        }
        Ok(value)
    }

    /// The canonical encoding of the envelope (what goes on the wire).
    pub fn to_bytes(&self) -> Vec<u8> {
        crate::codec::encode(&self.wire())
            .expect("an envelope of bytes, a string and integers always encodes")
    }

    /// Decodes an envelope (not the payload, and not the signature: call
    /// [`Signed::verify_and_decode`] next). Refuses input longer than
    /// `T::max_bytes(limits)` before parsing.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, DecodeError> {
        let max = T::max_bytes(limits);
        const WHAT: &str = "signed envelope";
        check_version(bytes, max, limits.max_depth, WHAT, SIGNED_VERSION)?;
        let wire: SignedWire = decode_as(bytes, max, limits.max_depth, WHAT)?;
        Self::from_wire(wire)
    }

    /// The message identifier: BLAKE3 of [`Signed::to_bytes`].
    pub fn id(&self) -> Hash {
        Hash::new(self.to_bytes())
    }

    fn wire(&self) -> SignedWire {
        SignedWire {
            version: SIGNED_VERSION,
            kind: T::KIND.to_owned(),
            payload: self.payload.clone(),
            signer: self.signer,
            sig: self.sig,
        }
    }

    fn from_wire(w: SignedWire) -> Result<Self, DecodeError> {
        if w.version > SIGNED_VERSION {
            return Err(DecodeError::NewerVersion {
                what: "signed envelope",
                found: w.version.into(),
                max: SIGNED_VERSION,
            });
        }
        if w.version == 0 {
            return Err(DecodeError::InvalidVersion {
                what: "signed envelope",
                found: 0,
            });
        }
        if w.kind != T::KIND {
            return Err(DecodeError::WrongKind {
                expected: T::KIND,
                found: w.kind.chars().take(64).collect(),
            });
        }
        Ok(Signed::from_parts(w.payload, w.signer, w.sig))
    }
}

/// The envelope on the wire: a CBOR map with these five keys, in this order.
#[derive(Serialize, Deserialize)]
struct SignedWire {
    version: u32,
    kind: String,
    #[serde(with = "crate::keys::byte_buf")]
    payload: Vec<u8>,
    signer: PublicKey,
    #[serde(with = "crate::keys::sig_bytes")]
    sig: [u8; 64],
}

impl<T: Message> Serialize for Signed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.wire().serialize(s)
    }
}

/// Embedding a `Signed<T>` in another message (a sync response) checks its
/// version and kind but, as always, not its signature.
impl<'de, T: Message> Deserialize<'de> for Signed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = SignedWire::deserialize(d)?;
        Self::from_wire(w).map_err(serde::de::Error::custom)
    }
}
