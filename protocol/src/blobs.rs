//! Blob transfer (`/pacmesh/blobs/1`, request-response): a fetcher asks any
//! peer for a blob's **outboard** (its size and the BLAKE3 chaining values of
//! its segments) and then for byte ranges, one segment per request, from as
//! many peers as it likes.
//!
//! Segments are [`SEGMENT_BYTES`] (4 MiB = 2¹² BLAKE3 chunks), so every
//! segment is a complete BLAKE3 subtree: the fetcher checks the outboard
//! against the blob's hash (merging the chaining values as BLAKE3's tree does)
//! and then each segment against its chaining value before writing it. A peer
//! that sends a wrong outboard or wrong bytes is caught at once, on that
//! segment, and can be dropped. Nothing here is signed: the blob's hash comes
//! from a signed event, and everything is checked against it.
//!
//! Version 2 (`/pacmesh/blobs/2`) frames a response so that segment bytes are
//! not CBOR: a tag byte, then either a CBOR [`BlobResponse`] (outboards,
//! `have` answers, refusals) or `u32 BE length ‖ raw bytes` for
//! [`BlobAnswer::Data`] (see [`DATA_FRAME`]); and it adds [`BlobWant::Have`],
//! which a builder uses to learn which peers keep its output (retention).

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::codec::{DecodeError, Limits, Message, check_len, invalid};

/// The newest blob message version this build understands and writes.
pub const BLOBS_VERSION: u32 = 2;

/// Bytes per segment: 4 MiB, a power-of-two number of BLAKE3 chunks.
pub const SEGMENT_BYTES: u64 = 4 << 20;

/// Largest blob a node transfers (segments × [`SEGMENT_BYTES`] bounds the
/// outboard: 64 GiB is 16 384 chaining values, 512 KiB).
pub const MAX_BLOB_BYTES: u64 = 64 << 30;

/// Largest encoded blob request or response: one segment plus framing.
pub const MAX_BLOB_MESSAGE_BYTES: usize = SEGMENT_BYTES as usize + (64 << 10);

/// First byte of a `/pacmesh/blobs/2` response followed by a CBOR
/// [`BlobResponse`] (to the end of the stream, at most
/// [`MAX_BLOB_MESSAGE_BYTES`]).
pub const CBOR_FRAME: u8 = 0;
/// First byte of a `/pacmesh/blobs/2` response carrying data: then a `u32`
/// big-endian length (at most [`SEGMENT_BYTES`]) and that many raw bytes, and
/// the stream ends. Decodes to [`BlobAnswer::Data`].
pub const DATA_FRAME: u8 = 1;

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobWant {
    /// The size and the segment chaining values.
    Outboard,
    /// `len` bytes from `offset` (at most one segment, aligned to segments).
    Range {
        /// Start, a multiple of [`SEGMENT_BYTES`].
        offset: u64,
        /// Length, at most [`SEGMENT_BYTES`].
        len: u64,
    },
    /// Whether the peer holds the blob complete in its content store and
    /// keeps it (answered with [`BlobAnswer::Have`] or
    /// [`BlobAnswer::NotFound`]), with a fresh random `challenge` the answer
    /// must prove possession against ([`possession_proof`]). Version 2.
    Have {
        /// Random, chosen by the asker for this question.
        challenge: Hash,
    },
}

/// A blob request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// Format version ([`BLOBS_VERSION`]).
    pub version: u32,
    /// The blob.
    pub hash: Hash,
    /// What of it.
    pub want: BlobWant,
}

/// A blob response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobResponse {
    /// Format version ([`BLOBS_VERSION`]).
    pub version: u32,
    /// The answer.
    pub answer: BlobAnswer,
}

/// The body of a [`BlobResponse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobAnswer {
    /// The blob's size and the chaining value of each segment, in order
    /// (one per [`SEGMENT_BYTES`], the last one possibly shorter; a blob of at
    /// most one segment has a single value, its hash).
    Outboard {
        /// Size in bytes.
        size: u64,
        /// Segment chaining values.
        segments: Vec<Hash>,
    },
    /// The bytes asked for.
    Data {
        /// The bytes.
        #[serde(with = "crate::keys::byte_buf")]
        bytes: Vec<u8>,
    },
    /// Answer to [`BlobWant::Have`]: the peer holds the blob complete.
    Have {
        /// Size in bytes.
        size: u64,
        /// Whether the peer keeps it: its role keeps the blob (a publisher
        /// or mirror, or a node that fetched it) rather than dropping it once
        /// replicated elsewhere (a builder holding its own output).
        keeps: bool,
        /// [`possession_proof`] of the challenge, the answering peer and the
        /// blob's bytes.
        proof: Hash,
    },
    /// The peer does not hold the blob.
    NotFound,
    /// The peer will not answer (busy, bad request); a short reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// Bytes read at each spot of a [`possession_proof`].
pub const PROOF_SPOT_BYTES: u64 = 1024;
/// Spots of a [`possession_proof`].
pub const PROOF_SPOTS: usize = 16;

/// Where a [`possession_proof`] reads: [`PROOF_SPOTS`] ranges of up to
/// [`PROOF_SPOT_BYTES`] at offsets derived from the challenge (the whole blob
/// when it is smaller than that), as `(offset, len)`.
pub fn proof_spots(challenge: &Hash, size: u64) -> Vec<(u64, u64)> {
    if size <= PROOF_SPOT_BYTES * PROOF_SPOTS as u64 {
        return vec![(0, size)];
    }
    let mut xof = blake3::Hasher::new_derive_key("pacmesh blob possession spots v1")
        .update(challenge.as_bytes())
        .finalize_xof();
    (0..PROOF_SPOTS)
        .map(|_| {
            let mut b = [0u8; 8];
            xof.fill(&mut b);
            (
                u64::from_le_bytes(b) % (size - PROOF_SPOT_BYTES + 1),
                PROOF_SPOT_BYTES,
            )
        })
        .collect()
}

/// Proof that `holder` (its libp2p peer id bytes) holds a blob: BLAKE3 keyed
/// with the asker's `challenge` over the holder, the size and the bytes at
/// [`proof_spots`] (`spots`, in that order). Binding the holder means a peer
/// cannot pass off another peer's answer as its own; random spots mean a peer
/// holding a fraction *f* of the blob passes with probability about
/// *f*<sup>16</sup>.
pub fn possession_proof(challenge: &Hash, holder: &[u8], size: u64, spots: &[&[u8]]) -> Hash {
    let mut h = blake3::Hasher::new_keyed(challenge.as_bytes());
    h.update(&(holder.len() as u64).to_le_bytes());
    h.update(holder);
    h.update(&size.to_le_bytes());
    for s in spots {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s);
    }
    Hash::from_bytes(*h.finalize().as_bytes())
}

/// The number of segments of a blob of `size` bytes (at least 1).
pub fn segment_count(size: u64) -> u64 {
    size.div_ceil(SEGMENT_BYTES).max(1)
}

impl Message for BlobRequest {
    const KIND: &'static str = "blob request";
    const VERSION: u32 = BLOBS_VERSION;
    fn max_bytes(_limits: &Limits) -> usize {
        1024
    }
    fn validate(&self, _limits: &Limits) -> Result<(), DecodeError> {
        if let BlobWant::Range { offset, len } = self.want {
            if len == 0 || len > SEGMENT_BYTES {
                return Err(invalid("blob range", "length must be 1 to one segment"));
            }
            if offset % SEGMENT_BYTES != 0 || offset >= MAX_BLOB_BYTES {
                return Err(invalid("blob range", "offset must be segment-aligned"));
            }
        }
        Ok(())
    }
}

impl Message for BlobResponse {
    const KIND: &'static str = "blob response";
    const VERSION: u32 = BLOBS_VERSION;
    fn max_bytes(_limits: &Limits) -> usize {
        MAX_BLOB_MESSAGE_BYTES
    }
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        match &self.answer {
            BlobAnswer::Outboard { size, segments } => {
                if *size > MAX_BLOB_BYTES {
                    return Err(invalid("blob size", "larger than the blob limit"));
                }
                check_len(
                    "outboard segments",
                    segments.len(),
                    segment_count(MAX_BLOB_BYTES) as usize,
                )?;
                if segments.len() as u64 != segment_count(*size) {
                    return Err(invalid("outboard", "segment count does not match the size"));
                }
            }
            BlobAnswer::Data { bytes } => {
                check_len("blob data", bytes.len(), SEGMENT_BYTES as usize)?
            }
            BlobAnswer::Have { size, .. } => {
                if *size > MAX_BLOB_BYTES {
                    return Err(invalid("blob size", "larger than the blob limit"));
                }
            }
            BlobAnswer::Refused { reason } => {
                crate::codec::check_text("refusal reason", reason, limits.max_text)?
            }
            BlobAnswer::NotFound => {}
        }
        Ok(())
    }
}

/// The chaining value of segment `index` of a blob of `size` bytes, given
/// that segment's bytes (what an outboard lists). For a blob of at most one
/// segment this is the blob's hash itself.
pub fn segment_value(size: u64, index: u64, bytes: &[u8]) -> Hash {
    if segment_count(size) == 1 {
        return Hash::new(bytes);
    }
    use blake3::hazmat::HasherExt;
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * SEGMENT_BYTES);
    h.update(bytes);
    Hash::from_bytes(h.finalize_non_root())
}

/// Whether `segments` (an outboard) is the list of segment chaining values of
/// a blob of `size` bytes whose BLAKE3 hash is `root`. Checks the count and
/// merges the values as BLAKE3's tree does; cost: one compression per
/// segment, no blob bytes.
pub fn outboard_matches(root: &Hash, size: u64, segments: &[Hash]) -> bool {
    if size > MAX_BLOB_BYTES || segments.len() as u64 != segment_count(size) {
        return false;
    }
    if segments.len() == 1 {
        return segments[0] == *root;
    }
    fn merge(cvs: &[Hash]) -> [u8; 32] {
        if cvs.len() == 1 {
            return *cvs[0].as_bytes();
        }
        let (l, r) = cvs.split_at(cvs.len().next_power_of_two() / 2);
        blake3::hazmat::merge_subtrees_non_root(&merge(l), &merge(r), blake3::hazmat::Mode::Hash)
    }
    let (l, r) = segments.split_at(segments.len().next_power_of_two() / 2);
    let got = blake3::hazmat::merge_subtrees_root(&merge(l), &merge(r), blake3::hazmat::Mode::Hash);
    Hash::from_bytes(*got.as_bytes()) == *root
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outboard_verifies_against_the_blob_hash() {
        let seg = SEGMENT_BYTES as usize;
        for size in [
            0usize,
            1,
            1024,
            seg - 1,
            seg,
            seg + 1,
            2 * seg,
            3 * seg + 17,
            5 * seg,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
            let root = Hash::new(&data);
            let cvs: Vec<Hash> = data
                .chunks(seg)
                .enumerate()
                .map(|(i, c)| segment_value(size as u64, i as u64, c))
                .collect();
            let cvs = if cvs.is_empty() {
                vec![segment_value(0, 0, &[])]
            } else {
                cvs
            };
            assert!(outboard_matches(&root, size as u64, &cvs), "size {size}");
            if cvs.len() > 1 {
                let mut bad = cvs.clone();
                bad.swap(0, 1);
                assert!(!outboard_matches(&root, size as u64, &bad));
                let mut flipped = data.clone();
                flipped[seg] ^= 1;
                assert_ne!(
                    segment_value(size as u64, 1, &flipped[seg..(2 * seg).min(size)]),
                    cvs[1]
                );
            }
        }
    }

    #[test]
    fn roundtrip_and_limits() {
        let l = Limits::default();
        let req = BlobRequest {
            version: 1,
            hash: Hash::new(b"x"),
            want: BlobWant::Range {
                offset: SEGMENT_BYTES,
                len: 10,
            },
        };
        assert_eq!(
            BlobRequest::decode(&req.encode().unwrap(), &l).unwrap(),
            req
        );
        let bad = BlobRequest {
            want: BlobWant::Range { offset: 3, len: 10 },
            ..req.clone()
        };
        assert!(BlobRequest::decode(&bad.encode().unwrap(), &l).is_err());
        let resp = BlobResponse {
            version: 1,
            answer: BlobAnswer::Data {
                bytes: vec![200; 100],
            },
        };
        let enc = resp.encode().unwrap();
        assert!(enc.len() < 150, "bytes are a CBOR byte string");
        assert_eq!(BlobResponse::decode(&enc, &l).unwrap(), resp);
        let lying = BlobResponse {
            version: 1,
            answer: BlobAnswer::Outboard {
                size: SEGMENT_BYTES + 1,
                segments: vec![Hash::new(b"a")],
            },
        };
        assert!(BlobResponse::decode(&lying.encode().unwrap(), &l).is_err());
        // Version 2: `have` queries and answers.
        let have = BlobRequest {
            version: BLOBS_VERSION,
            hash: Hash::new(b"x"),
            want: BlobWant::Have {
                challenge: Hash::new(b"c"),
            },
        };
        assert_eq!(
            BlobRequest::decode(&have.encode().unwrap(), &l).unwrap(),
            have
        );
        let held = BlobResponse {
            version: BLOBS_VERSION,
            answer: BlobAnswer::Have {
                size: 7,
                keeps: true,
                proof: Hash::new(b"p"),
            },
        };
        assert_eq!(
            BlobResponse::decode(&held.encode().unwrap(), &l).unwrap(),
            held
        );
        let huge = BlobResponse {
            version: BLOBS_VERSION,
            answer: BlobAnswer::Have {
                size: MAX_BLOB_BYTES + 1,
                keeps: false,
                proof: Hash::new(b"p"),
            },
        };
        assert!(BlobResponse::decode(&huge.encode().unwrap(), &l).is_err());
    }

    #[test]
    fn possession_proofs_depend_on_challenge_holder_and_bytes() {
        let c = Hash::new(b"challenge");
        let small = proof_spots(&c, 100);
        assert_eq!(small, vec![(0, 100)]);
        let size = 10 << 20;
        let spots = proof_spots(&c, size);
        assert_eq!(spots.len(), PROOF_SPOTS);
        assert!(
            spots
                .iter()
                .all(|(o, l)| *l == PROOF_SPOT_BYTES && o + l <= size)
        );
        assert_ne!(spots, proof_spots(&Hash::new(b"other"), size));
        let bytes = [1u8; 1024];
        let p = possession_proof(&c, b"peer a", size, &[&bytes]);
        assert_ne!(p, possession_proof(&c, b"peer b", size, &[&bytes]));
        assert_ne!(
            p,
            possession_proof(&Hash::new(b"x"), b"peer a", size, &[&bytes])
        );
        assert_ne!(p, possession_proof(&c, b"peer a", size, &[&[2u8; 1024]]));
        assert_eq!(p, possession_proof(&c, b"peer a", size, &[&bytes]));
        let l = Limits::default();
        for junk in [
            &b""[..],
            b"\xff",
            b"\xa1\x67version\x1b\xff\xff\xff\xff\xff\xff\xff\xff",
        ] {
            assert!(BlobResponse::decode(junk, &l).is_err());
        }
    }
}
