//! Forward-compatible tagged unions: `[kind, body]`, a two-element CBOR array
//! of a text kind and the body. A kind this build does not know is skipped
//! (body read as `IgnoredAny`, within the depth limit) and becomes the enum's
//! `Unknown { kind }` variant instead of failing the whole message.

use serde::de::{self, IgnoredAny, SeqAccess};
use serde::ser::SerializeTuple;
use serde::{Serialize, Serializer};

pub(crate) fn serialize<S: Serializer, B: Serialize>(
    s: S,
    kind: &str,
    body: &B,
) -> Result<S::Ok, S::Error> {
    let mut t = s.serialize_tuple(2)?;
    t.serialize_element(kind)?;
    t.serialize_element(body)?;
    t.end()
}

/// Longest kind string kept in `Unknown { kind }`.
pub(crate) const MAX_KIND_LEN: usize = 64;

/// Reads the kind (first element) of a `[kind, body]` array.
pub(crate) fn read_kind<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<String, A::Error> {
    seq.next_element::<String>()?
        .ok_or_else(|| de::Error::invalid_length(0, &"[kind, body]"))
}

/// Reads the body (second element) of a `[kind, body]` array.
pub(crate) fn read_body<'de, A: SeqAccess<'de>, B: de::Deserialize<'de>>(
    seq: &mut A,
) -> Result<B, A::Error> {
    seq.next_element::<B>()?
        .ok_or_else(|| de::Error::invalid_length(1, &"[kind, body]"))
}

/// Skips the body of an unknown kind and returns the kind, clipped.
pub(crate) fn skip_unknown<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    kind: String,
) -> Result<String, A::Error> {
    seq.next_element::<IgnoredAny>()?
        .ok_or_else(|| de::Error::invalid_length(1, &"[kind, body]"))?;
    Ok(kind.chars().take(MAX_KIND_LEN).collect())
}

/// Refuses a third element.
pub(crate) fn finish<'de, A: SeqAccess<'de>>(seq: &mut A) -> Result<(), A::Error> {
    if seq.next_element::<IgnoredAny>()?.is_some() {
        return Err(de::Error::invalid_length(3, &"[kind, body]"));
    }
    Ok(())
}
