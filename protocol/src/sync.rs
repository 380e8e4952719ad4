//! Anti-entropy sync (`/pacmesh/sync/1`, request-response): "here is how far
//! I have each author's log; send me what comes after".
//!
//! A node keeps, per author, the highest sequence number up to which it holds
//! the author's log without gaps. It sends those heads; the peer answers with
//! the events after them (and every event of authors the requester did not
//! list), oldest first per author, up to `max_events` and the byte limit, and
//! says whether it sent everything. The requester verifies each event as if it
//! came by gossip, then asks again if the answer was incomplete.

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Limits, Message, check_len};
use crate::{Event, PublicKey, Signed};

/// The newest sync message version this build understands and writes.
pub const SYNC_VERSION: u32 = 1;

/// How far the requester holds one author's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorHead {
    /// The author.
    pub author: PublicKey,
    /// Highest sequence number held without gaps (0: none).
    pub seq: u64,
}

/// A sync request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Format version ([`SYNC_VERSION`]).
    pub version: u32,
    /// What the requester has.
    pub heads: Vec<AuthorHead>,
    /// Most events wanted in the answer.
    pub max_events: u32,
}

/// A sync response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncResponse {
    /// Format version ([`SYNC_VERSION`]).
    pub version: u32,
    /// Events after the requester's heads, oldest first per author. Not yet
    /// verified: check each with [`Signed::verify_and_decode`].
    pub events: Vec<Signed<Event>>,
    /// `true` if the responder sent everything it has after those heads.
    pub complete: bool,
}

impl Message for SyncRequest {
    const KIND: &'static str = "sync request";
    const VERSION: u32 = SYNC_VERSION;
    fn max_bytes(limits: &Limits) -> usize {
        limits.max_sync_bytes
    }
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_len("sync heads", self.heads.len(), limits.max_sync_heads)
    }
}

impl Message for SyncResponse {
    const KIND: &'static str = "sync response";
    const VERSION: u32 = SYNC_VERSION;
    fn max_bytes(limits: &Limits) -> usize {
        limits.max_sync_bytes
    }
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_len("sync events", self.events.len(), limits.max_sync_events)
    }
}
