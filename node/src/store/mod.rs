//! Persistent storage of a node: the event store ([`events`]) and the content
//! store ([`blobs`]), both in one data directory and one sled database.
//!
//! ```text
//! DATA/db/          sled database: trees events, by_author, meta, conflicts,
//!                   blobs, blob_pins
//! DATA/blobs/       blob files named by BLAKE3 (see blobs)
//! ```
//!
//! sled stays behind these modules: nothing else in the node names a sled
//! type except to pass the [`sled::Db`] handle from [`open_db`] along.

pub mod blobs;
pub mod events;

use std::path::Path;

pub use blobs::{BlobError, BlobInfo, BlobStore, FsRepair, FsStore, GcStats, MemStore};
pub use events::{EventStore, EventStoreError, InsertError, NewEvent, Slot, StoredEvent};

/// Tuning of the sled database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// sled's page cache in bytes (sled's own default is 1 GiB, far above
    /// the node's memory budget). Default 32 MiB.
    pub cache_bytes: u64,
    /// Background flush interval in milliseconds (writes that matter are
    /// flushed explicitly anyway). Default 500.
    pub flush_every_ms: Option<u64>,
}

impl Default for DbConfig {
    fn default() -> Self {
        DbConfig {
            cache_bytes: 32 << 20,
            flush_every_ms: Some(500),
        }
    }
}

/// Opens (creating) the sled database at `path`.
pub fn open_db(path: &Path, cfg: &DbConfig) -> sled::Result<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(cfg.cache_bytes)
        .flush_every_ms(cfg.flush_every_ms)
        .open()
}
