//! OpenPGP signing with the node's ed25519 identity key.
//!
//! pacman verifies repository databases and packages with GnuPG (through gpgme), which only
//! understands OpenPGP. This module wraps the node's raw ed25519 secret seed — the very key whose
//! public half is the node's mesh identity (`ed25519_dalek::SigningKey::from_bytes(seed)`) — as
//! an OpenPGP **v4** key with the **EdDSALegacy** framing (public-key algorithm 22, curve
//! Ed25519, OID 1.3.6.1.4.1.11591.15.1). GnuPG 2.2 (Debian 12 and many Arch installs) refuses
//! the RFC 9580 `Ed25519` framing (algorithm 27), so algorithm 22 is used on purpose.
//!
//! # Determinism
//!
//! An OpenPGP v4 fingerprint covers the key creation time, so the creation time is the fixed
//! constant [`KEY_CREATION_TIME`] (2020-01-01T00:00:00Z). The user-id self-signature (a positive
//! certification, type 0x13) uses the same constant as its creation time, and ed25519 signatures
//! are deterministic, so the same seed and user id always give a byte-identical transferable
//! public key (and therefore the same fingerprint). The fingerprint does not depend on the user
//! id; the exported key bytes do.
//!
//! # Signatures
//!
//! [`OpenPgpKey::sign_detached`] makes a binary (type 0x00) v4 detached signature, hash SHA-256,
//! with the hashed subpackets *issuer fingerprint* and *signature creation time* and the
//! unhashed subpacket *issuer key id* — the layout GnuPG itself produces, and the one pacman's
//! own key-id extraction (`alpm_extract_keyid`) understands. The output is the raw binary
//! packet, i.e. what belongs in `NAME.db.sig` / `PKG.pkg.tar.zst.sig`.
//!
//! # Secrets
//!
//! The seed is never printed: [`OpenPgpKey`]'s `Debug` shows the fingerprint only, and no error
//! carries key material. The rPGP secret key zeroizes itself on drop.

use std::fmt;
use std::io::Read;
use std::time::SystemTime;

use pgp::composed::{
    ArmorOptions, Deserializable, DetachedSignature, SignedKeyDetails, SignedPublicKey,
};
use pgp::crypto::ed25519::{self, Mode};
use pgp::crypto::eddsa_legacy;
use pgp::crypto::hash::HashAlgorithm;
use pgp::crypto::public_key::PublicKeyAlgorithm;
use pgp::packet::{
    KeyFlags, PubKeyInner, PublicKey, SecretKey, Signature, SignatureConfig, SignatureType,
    Subpacket, SubpacketData, UserId,
};
use pgp::ser::Serialize;
use pgp::types::{
    EddsaLegacyPublicParams, KeyDetails, KeyVersion, PacketHeaderVersion, Password,
    PlainSecretParams, PublicParams, SecretParams, SignedUser, Tag, Timestamp,
};

/// Creation time of every derived key and of its self-signature: 2020-01-01T00:00:00Z, as
/// seconds since the Unix epoch. Part of the v4 fingerprint; changing it changes every
/// publisher's fingerprint, so it must never change.
pub const KEY_CREATION_TIME: u32 = 1_577_836_800;

/// Hash algorithm of all signatures made here.
const HASH: HashAlgorithm = HashAlgorithm::Sha256;

/// Upper bound for a public key or signature handed to [`verify_detached`]; real ones are a few
/// hundred bytes. Guards the parser against absurd inputs.
const MAX_KEY_OR_SIG_LEN: usize = 1 << 20;

/// Errors from key derivation, signing and verification.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The user id is empty or contains control characters.
    #[error("invalid OpenPGP user id: {0}")]
    InvalidUserId(String),
    /// The signature time is before the key creation time or beyond 2106.
    #[error("signature time out of range: {0}")]
    InvalidTime(String),
    /// Building a key or a signature failed inside the OpenPGP library.
    #[error("OpenPGP operation failed: {0}")]
    Pgp(String),
    /// A public key given for verification could not be parsed.
    #[error("malformed OpenPGP public key: {0}")]
    MalformedKey(String),
    /// A signature given for verification could not be parsed or is not a binary detached one.
    #[error("malformed OpenPGP signature: {0}")]
    MalformedSignature(String),
    /// The signature was parsed but does not verify with the given key over the given data.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Reading the data to sign or verify failed.
    #[error("reading data: {0}")]
    Io(#[from] std::io::Error),
}

fn pgp_err(context: &str, e: pgp::errors::Error) -> SignError {
    SignError::Pgp(format!("{context}: {e}"))
}

/// The default OpenPGP user id for a node: `pacmesh node <ID@pacmesh.invalid>`, where `ID` is
/// the node's PeerId string or a hex prefix of its public key.
pub fn default_uid(node_id: &str) -> String {
    format!("pacmesh node <{node_id}@pacmesh.invalid>")
}

/// An OpenPGP v4 EdDSALegacy signing key derived from a node's ed25519 seed.
#[derive(Clone)]
pub struct OpenPgpKey {
    secret: SecretKey,
    public: SignedPublicKey,
    public_bytes: Vec<u8>,
    public_armored: String,
    uid: String,
}

impl fmt::Debug for OpenPgpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenPgpKey")
            .field("fingerprint", &self.fingerprint())
            .field("uid", &self.uid)
            .finish_non_exhaustive()
    }
}

impl OpenPgpKey {
    /// Derive the OpenPGP key from the raw 32-byte ed25519 secret seed (the same seed
    /// `ed25519_dalek::SigningKey::from_bytes` takes) with user id `uid` (see [`default_uid`]).
    ///
    /// Deterministic: the same `secret` and `uid` give byte-identical exports; the fingerprint
    /// depends on `secret` only.
    pub fn from_ed25519_secret(secret: &[u8; 32], uid: &str) -> Result<OpenPgpKey, SignError> {
        if uid.is_empty() || uid.len() > 4096 || uid.chars().any(char::is_control) {
            return Err(SignError::InvalidUserId(
                "must be 1..=4096 bytes without control characters".into(),
            ));
        }
        let created = Timestamp::from_secs(KEY_CREATION_TIME);

        let ed = ed25519::SecretKey::try_from_bytes(*secret, Mode::EdDSALegacy)
            .map_err(|e| pgp_err("ed25519 secret", e))?;
        let public_params = PublicParams::EdDSALegacy(EddsaLegacyPublicParams::Ed25519 {
            key: ed.verifying_key(),
        });
        let inner = PubKeyInner::new(
            KeyVersion::V4,
            PublicKeyAlgorithm::EdDSALegacy,
            created,
            None,
            public_params,
        )
        .map_err(|e| pgp_err("public key", e))?;
        let public_key = PublicKey::from_inner(inner).map_err(|e| pgp_err("public key", e))?;
        let secret_params = SecretParams::Plain(PlainSecretParams::EdDSALegacy(
            eddsa_legacy::SecretKey::Ed25519(ed),
        ));
        let secret_key = SecretKey::new(public_key.clone(), secret_params)
            .map_err(|e| pgp_err("secret key", e))?;

        let user_id =
            UserId::from_str(PacketHeaderVersion::New, uid).map_err(|e| pgp_err("user id", e))?;

        let mut flags = KeyFlags::default();
        flags.set_certify(true);
        flags.set_sign(true);
        let mut config = SignatureConfig::v4(
            SignatureType::CertPositive,
            PublicKeyAlgorithm::EdDSALegacy,
            HASH,
        );
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(public_key.fingerprint()))
                .map_err(|e| pgp_err("subpacket", e))?,
            Subpacket::regular(SubpacketData::SignatureCreationTime(created))
                .map_err(|e| pgp_err("subpacket", e))?,
            Subpacket::regular(SubpacketData::KeyFlags(flags))
                .map_err(|e| pgp_err("subpacket", e))?,
            Subpacket::regular(SubpacketData::PreferredHashAlgorithms(
                [HashAlgorithm::Sha512, HashAlgorithm::Sha256]
                    .into_iter()
                    .collect(),
            ))
            .map_err(|e| pgp_err("subpacket", e))?,
            Subpacket::regular(SubpacketData::IsPrimary(true))
                .map_err(|e| pgp_err("subpacket", e))?,
        ];
        config.unhashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerKeyId(public_key.legacy_key_id()))
                .map_err(|e| pgp_err("subpacket", e))?,
        ];
        let self_sig = config
            .sign_certification(
                &secret_key,
                &public_key,
                &Password::empty(),
                Tag::UserId,
                &user_id,
            )
            .map_err(|e| pgp_err("self-signature", e))?;

        let details = SignedKeyDetails::new(
            vec![],
            vec![],
            vec![SignedUser::new(user_id, vec![self_sig])],
            vec![],
        );
        let public = SignedPublicKey::new(public_key, details, vec![]);
        public
            .verify_bindings()
            .map_err(|e| pgp_err("self-check of the derived key", e))?;
        let public_bytes = public
            .to_bytes()
            .map_err(|e| pgp_err("serialising public key", e))?;
        let public_armored = public
            .to_armored_string(ArmorOptions::default())
            .map_err(|e| pgp_err("armoring public key", e))?;

        Ok(OpenPgpKey {
            secret: secret_key,
            public,
            public_bytes,
            public_armored,
            uid: uid.to_owned(),
        })
    }

    /// The v4 fingerprint as 40 upper-case hex digits, as `gpg --with-colons` prints it.
    pub fn fingerprint(&self) -> String {
        hex::encode_upper(self.public.primary_key.fingerprint().as_bytes())
    }

    /// The 64-bit key id (last 8 bytes of the fingerprint) as 16 upper-case hex digits.
    pub fn key_id(&self) -> String {
        let fpr = self.fingerprint();
        fpr[fpr.len() - 16..].to_owned()
    }

    /// The user id bound into the key.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The transferable public key (public-key packet, user id, self-signature), binary.
    pub fn public_key_bytes(&self) -> Vec<u8> {
        self.public_bytes.clone()
    }

    /// The transferable public key, ASCII-armored (`-----BEGIN PGP PUBLIC KEY BLOCK-----`), for
    /// `pacman-key --add` / `gpg --import`.
    pub fn public_key_armored(&self) -> String {
        self.public_armored.clone()
    }

    /// A binary detached signature over `data`, created now (clamped to no earlier than
    /// [`KEY_CREATION_TIME`], so a machine with a wrong clock still makes valid signatures).
    pub fn sign_detached(&self, data: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_detached_reader_at(data, now()?)
    }

    /// Like [`Self::sign_detached`], streaming the data from a reader (e.g. a package file).
    pub fn sign_detached_reader<R: Read>(&self, data: R) -> Result<Vec<u8>, SignError> {
        self.sign_detached_reader_at(data, now()?)
    }

    /// A [`DetachedSigner`](crate::db::DetachedSigner) that stamps every signature with the
    /// fixed creation time `created` (seconds since the Unix epoch), so that, for instance, a
    /// database written twice gets byte-identical `.sig` files. Signing fails if `created`
    /// precedes [`KEY_CREATION_TIME`].
    pub fn signer_at(&self, created: u32) -> SignerAt<'_> {
        SignerAt { key: self, created }
    }

    /// A binary detached signature over `data` with the given creation time (seconds since the
    /// Unix epoch; must not precede [`KEY_CREATION_TIME`]). Deterministic: same key, data and
    /// time give the same bytes.
    pub fn sign_detached_at(&self, data: &[u8], created: u32) -> Result<Vec<u8>, SignError> {
        self.sign_detached_reader_at(data, created)
    }

    /// Like [`Self::sign_detached_at`], streaming the data from a reader (e.g. a package file).
    pub fn sign_detached_reader_at<R: Read>(
        &self,
        data: R,
        created: u32,
    ) -> Result<Vec<u8>, SignError> {
        if created < KEY_CREATION_TIME {
            return Err(SignError::InvalidTime(format!(
                "{created} precedes the key creation time {KEY_CREATION_TIME}"
            )));
        }
        let key = &self.secret;
        let mut config =
            SignatureConfig::v4(SignatureType::Binary, PublicKeyAlgorithm::EdDSALegacy, HASH);
        config.hashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerFingerprint(key.fingerprint()))
                .map_err(|e| pgp_err("subpacket", e))?,
            Subpacket::regular(SubpacketData::SignatureCreationTime(Timestamp::from_secs(
                created,
            )))
            .map_err(|e| pgp_err("subpacket", e))?,
        ];
        config.unhashed_subpackets = vec![
            Subpacket::regular(SubpacketData::IssuerKeyId(key.legacy_key_id()))
                .map_err(|e| pgp_err("subpacket", e))?,
        ];
        let sig = config
            .sign(key, &Password::empty(), data)
            .map_err(|e| match e {
                pgp::errors::Error::IO { source, .. } => SignError::Io(source),
                other => pgp_err("signing", other),
            })?;
        DetachedSignature::new(sig)
            .to_bytes()
            .map_err(|e| pgp_err("serialising signature", e))
    }

    /// Verify a detached signature over `data` against this key.
    pub fn verify_detached(&self, data: &[u8], signature: &[u8]) -> Result<(), SignError> {
        verify_with_key(&self.public, data, signature)
    }
}

/// The current time for a signature, clamped to no earlier than [`KEY_CREATION_TIME`].
fn now() -> Result<u32, SignError> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .max(u64::from(KEY_CREATION_TIME));
    u32::try_from(now).map_err(|_| SignError::InvalidTime("system clock is beyond 2106".into()))
}

/// An [`OpenPgpKey`] signing at a fixed time; see [`OpenPgpKey::signer_at`].
#[derive(Debug, Clone, Copy)]
pub struct SignerAt<'a> {
    key: &'a OpenPgpKey,
    created: u32,
}

impl crate::db::DetachedSigner for SignerAt<'_> {
    fn sign_detached(
        &self,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        self.key
            .sign_detached_at(data, self.created)
            .map_err(Into::into)
    }
}

impl crate::db::DetachedSigner for OpenPgpKey {
    /// A binary detached signature created now; see [`OpenPgpKey::sign_detached`].
    fn sign_detached(
        &self,
        data: &[u8],
    ) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
        OpenPgpKey::sign_detached(self, data).map_err(Into::into)
    }
}

/// Verify a detached OpenPGP signature (binary or armored) over `data` with a transferable public
/// key (binary or armored). Succeeds only for a binary-document (type 0x00) signature, made by
/// the key's primary key, whose key self-signatures are valid. Never panics on malformed input.
///
/// This checks the signature itself, not the key's standing: revocations, key or signature
/// expiry and trust are not evaluated (pacmesh decides which publisher keys count from the signed
/// mesh policy; pacman and GnuPG apply their own keyring rules).
pub fn verify_detached(public_key: &[u8], data: &[u8], signature: &[u8]) -> Result<(), SignError> {
    verify_detached_reader(public_key, data, signature)
}

/// Like [`verify_detached`], streaming the data from a reader (e.g. a package file).
pub fn verify_detached_reader<R: Read>(
    public_key: &[u8],
    data: R,
    signature: &[u8],
) -> Result<(), SignError> {
    let key = parse_public_key(public_key)?;
    verify_with_key(&key, data, signature)
}

/// The upper-case v4 fingerprint of a transferable public key (binary or armored).
pub fn fingerprint_of(public_key: &[u8]) -> Result<String, SignError> {
    let key = parse_public_key(public_key)?;
    Ok(hex::encode_upper(key.primary_key.fingerprint().as_bytes()))
}

fn is_armored(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_start();
    trimmed.starts_with(b"-----BEGIN PGP")
}

fn parse_public_key(bytes: &[u8]) -> Result<SignedPublicKey, SignError> {
    if bytes.is_empty() || bytes.len() > MAX_KEY_OR_SIG_LEN {
        return Err(SignError::MalformedKey(format!(
            "length {} not in 1..={MAX_KEY_OR_SIG_LEN}",
            bytes.len()
        )));
    }
    let parsed = guard(|| {
        if is_armored(bytes) {
            SignedPublicKey::from_armor_single(bytes).map(|(k, _)| k)
        } else {
            SignedPublicKey::from_bytes(bytes)
        }
    })
    .map_err(SignError::MalformedKey)?;
    let key = parsed.map_err(|e| SignError::MalformedKey(e.to_string()))?;
    // rPGP silently drops user ids without signatures (e.g. a truncated key); GnuPG refuses a
    // key without a self-signed user id, and so do we.
    if key.details.users.is_empty() {
        return Err(SignError::MalformedKey("no self-signed user id".into()));
    }
    key.verify_bindings()
        .map_err(|e| SignError::MalformedKey(format!("invalid self-signatures: {e}")))?;
    Ok(key)
}

fn parse_signature(bytes: &[u8]) -> Result<Signature, SignError> {
    if bytes.is_empty() || bytes.len() > MAX_KEY_OR_SIG_LEN {
        return Err(SignError::MalformedSignature(format!(
            "length {} not in 1..={MAX_KEY_OR_SIG_LEN}",
            bytes.len()
        )));
    }
    let parsed = guard(|| {
        if is_armored(bytes) {
            DetachedSignature::from_armor_single(bytes).map(|(s, _)| s)
        } else {
            DetachedSignature::from_bytes(bytes)
        }
    })
    .map_err(SignError::MalformedSignature)?;
    let sig = parsed
        .map_err(|e| SignError::MalformedSignature(e.to_string()))?
        .signature;
    match sig.typ() {
        Some(SignatureType::Binary) => Ok(sig),
        other => Err(SignError::MalformedSignature(format!(
            "expected a binary-document signature (type 0x00), found {other:?}"
        ))),
    }
}

fn verify_with_key<R: Read>(
    key: &SignedPublicKey,
    data: R,
    signature: &[u8],
) -> Result<(), SignError> {
    let sig = parse_signature(signature)?;
    if let Some(created) = sig.created()
        && created < key.primary_key.created_at()
    {
        return Err(SignError::BadSignature("signature predates the key".into()));
    }
    guard(|| sig.verify(key, data))
        .map_err(SignError::BadSignature)?
        .map_err(|e| match e {
            pgp::errors::Error::IO { source, .. } => SignError::Io(source),
            other => SignError::BadSignature(other.to_string()),
        })
}

/// Belt and braces for untrusted input: the OpenPGP parser is not supposed to panic, but if it
/// ever does on a hostile key or signature, report an error instead of unwinding into the caller.
fn guard<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|_| "OpenPGP parser panicked on this input".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: [u8; 32] = [7u8; 32];

    #[test]
    fn deterministic_and_self_verifying() {
        let a = OpenPgpKey::from_ed25519_secret(&SEED, &default_uid("abc")).unwrap();
        let b = OpenPgpKey::from_ed25519_secret(&SEED, &default_uid("abc")).unwrap();
        assert_eq!(a.public_key_bytes(), b.public_key_bytes());
        assert_eq!(a.public_key_armored(), b.public_key_armored());
        assert_eq!(a.fingerprint().len(), 40);
        assert_eq!(
            fingerprint_of(&a.public_key_bytes()).unwrap(),
            a.fingerprint()
        );
        assert_eq!(
            fingerprint_of(a.public_key_armored().as_bytes()).unwrap(),
            a.fingerprint()
        );
        let other_uid = OpenPgpKey::from_ed25519_secret(&SEED, "x <y@z>").unwrap();
        assert_eq!(other_uid.fingerprint(), a.fingerprint());

        let sig = a.sign_detached(b"hello").unwrap();
        verify_detached(&a.public_key_bytes(), b"hello", &sig).unwrap();
        a.verify_detached(b"hello", &sig).unwrap();
        assert!(matches!(
            verify_detached(&a.public_key_bytes(), b"hellO", &sig),
            Err(SignError::BadSignature(_))
        ));
        let s1 = a.sign_detached_at(b"x", KEY_CREATION_TIME + 5).unwrap();
        let s2 = b.sign_detached_at(b"x", KEY_CREATION_TIME + 5).unwrap();
        assert_eq!(s1, s2);
        assert!(a.sign_detached_at(b"x", KEY_CREATION_TIME - 1).is_err());
    }

    #[test]
    fn public_key_matches_mesh_identity() {
        let a = OpenPgpKey::from_ed25519_secret(&SEED, "t <t@t>").unwrap();
        let dalek = ed25519_dalek::SigningKey::from_bytes(&SEED);
        let bytes = a.public_key_bytes();
        let raw = dalek.verifying_key().to_bytes();
        // EdDSALegacy public point: MPI of 0x40 || 32-byte compressed point.
        let mut needle = vec![0x40];
        needle.extend_from_slice(&raw);
        assert!(bytes.windows(needle.len()).any(|w| w == needle.as_slice()));
        // Algorithm 22 right after version 4 and the creation time.
        assert_eq!(&bytes[2..8], &[4, 0x5e, 0x0b, 0xe1, 0x00, 22]);
    }

    #[test]
    fn key_is_send_sync_and_fixed_time_signer_is_deterministic() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<OpenPgpKey>();
        use crate::db::DetachedSigner;
        let a = OpenPgpKey::from_ed25519_secret(&SEED, "t <t@t>").unwrap();
        let t = KEY_CREATION_TIME + 1000;
        let s1 = DetachedSigner::sign_detached(&a.signer_at(t), b"db").unwrap();
        let s2 = DetachedSigner::sign_detached(&a.signer_at(t), b"db").unwrap();
        assert_eq!(s1, s2);
        assert_eq!(s1, a.sign_detached_at(b"db", t).unwrap());
        let s3 = DetachedSigner::sign_detached(&a, b"db").unwrap();
        a.verify_detached(b"db", &s3).unwrap();
        verify_detached_reader(&a.public_key_bytes(), &b"db"[..], &s1).unwrap();
        assert!(DetachedSigner::sign_detached(&a.signer_at(1), b"db").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let a = OpenPgpKey::from_ed25519_secret(&SEED, "t <t@t>").unwrap();
        let sig = a.sign_detached(b"d").unwrap();
        let armored = a.public_key_armored();
        let mut broken = armored.clone().into_bytes();
        let mid = broken.len() / 2;
        broken[mid] ^= 0x21;
        for key in [
            &b""[..],
            b"garbage",
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxx",
            &broken,
        ] {
            assert!(verify_detached(key, b"d", &sig).is_err());
        }
        for s in [&b""[..], b"\x88\x01", &sig[..sig.len() - 3]] {
            assert!(verify_detached(armored.as_bytes(), b"d", s).is_err());
        }
        assert!(OpenPgpKey::from_ed25519_secret(&SEED, "").is_err());
        assert!(OpenPgpKey::from_ed25519_secret(&SEED, "a\nb").is_err());
        assert!(!format!("{a:?}").contains("0707"));
    }
}
