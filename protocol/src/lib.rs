#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod blobs;
mod caps;
mod codec;
mod event;
mod hash;
pub mod hexdump;
mod keys;
mod logs;
mod manifest;
mod names;
mod policy;
mod rank;
mod signed;
mod sync;
mod tagged;
mod time;

pub use blobs::{
    BLOBS_VERSION, BlobAnswer, BlobRequest, BlobResponse, BlobWant, CBOR_FRAME, DATA_FRAME,
    MAX_BLOB_BYTES, MAX_BLOB_MESSAGE_BYTES, PROOF_SPOT_BYTES, PROOF_SPOTS, SEGMENT_BYTES,
    outboard_matches, possession_proof, proof_spots, segment_count, segment_value,
};
pub use caps::{
    ANNOUNCEMENT_VERSION, Announcement, Capabilities, Mismatch, Requirement, RequirementError,
    format_size, matches, parse_size,
};
pub use codec::{DecodeError, EncodeError, Limits, Message, decode, encode};
pub use event::{
    Artifact, EVENT_VERSION, Event, EventBody, MAX_CASCADE, MAX_REVIEW_BYTES, PkgrelBump,
    QueueEntry, Source,
};
pub use hash::{Hash, HashParseError, Sha256};
pub use keys::{KeyError, PublicKey, SigningKey};
pub use logs::{
    LOGS_PROTOCOL, LOGS_VERSION, LogRequest, LogResponse, MAX_LOG_LINES, MAX_LOG_RESPONSE_BYTES,
};
pub use manifest::{MANIFEST_VERSION, ManifestPackage, RepoManifest};
pub use names::{FileName, Name, NameError};
pub use policy::{BuilderPolicy, MeshPolicy, POLICY_VERSION, PolicyError, RepoPolicy, Roles};
pub use rank::{claim_winner, rendezvous_rank, rendezvous_score};
pub use signed::{SIGNED_VERSION, SIGNING_CONTEXT_PREFIX, Signed, VerifyError, signing_message};
pub use sync::{AuthorHead, SYNC_VERSION, SyncRequest, SyncResponse};
pub use time::Timestamp;

/// libp2p stream protocol for anti-entropy sync (request-response).
pub const SYNC_PROTOCOL: &str = "/pacmesh/sync/1";
/// libp2p stream protocol for fetching blobs by BLAKE3 hash (version 2: raw segment frames,
/// `have` queries; see [`BlobRequest`]).
pub const BLOBS_PROTOCOL: &str = "/pacmesh/blobs/2";

/// The gossipsub topic of a mesh's events: `/pacmesh/<root hex>/events/2`.
///
/// Version 2: messages are anonymous (no libp2p source, sequence number or signature; the
/// payload is signed by its author). Version-1 nodes signed every message and refused
/// anonymous ones as invalid, so the two never share a topic.
pub fn events_topic(root: &PublicKey) -> String {
    format!("/pacmesh/{root}/events/2")
}

/// The gossipsub topic of a mesh's capability announcements:
/// `/pacmesh/<root hex>/announce/2` (anonymous messages, as [`events_topic`]).
pub fn announce_topic(root: &PublicKey) -> String {
    format!("/pacmesh/{root}/announce/2")
}
