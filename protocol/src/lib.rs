#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod caps;
mod codec;
mod event;
mod hash;
pub mod hexdump;
mod keys;
mod manifest;
mod names;
mod policy;
mod signed;
mod sync;
mod tagged;
mod time;

pub use caps::{
    format_size, matches, parse_size, Announcement, Capabilities, Mismatch, Requirement,
    RequirementError, ANNOUNCEMENT_VERSION,
};
pub use codec::{decode, encode, DecodeError, EncodeError, Limits, Message};
pub use event::{Artifact, Event, EventBody, QueueEntry, Source, EVENT_VERSION};
pub use hash::{Hash, HashParseError, Sha256};
pub use keys::{KeyError, PublicKey, SigningKey};
pub use manifest::{ManifestPackage, RepoManifest, MANIFEST_VERSION};
pub use names::{FileName, Name, NameError};
pub use policy::{BuilderPolicy, MeshPolicy, PolicyError, RepoPolicy, Roles, POLICY_VERSION};
pub use signed::{signing_message, Signed, VerifyError, SIGNED_VERSION, SIGNING_CONTEXT_PREFIX};
pub use sync::{AuthorHead, SyncRequest, SyncResponse, SYNC_VERSION};
pub use time::Timestamp;

/// libp2p stream protocol for anti-entropy sync (request-response).
pub const SYNC_PROTOCOL: &str = "/pacmesh/sync/1";
/// libp2p stream protocol for fetching blobs by BLAKE3 hash.
pub const BLOBS_PROTOCOL: &str = "/pacmesh/blobs/1";

/// The gossipsub topic of a mesh's events: `/pacmesh/<root hex>/events/1`.
pub fn events_topic(root: &PublicKey) -> String {
    format!("/pacmesh/{root}/events/1")
}

/// The gossipsub topic of a mesh's capability announcements:
/// `/pacmesh/<root hex>/announce/1`.
pub fn announce_topic(root: &PublicKey) -> String {
    format!("/pacmesh/{root}/announce/1")
}
