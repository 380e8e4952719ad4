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
///
/// sled holds an exclusive file lock until its background flusher has exited, which can be a
/// moment after the last handle of a previous open in this process was dropped (a reopen in a
/// test, a restart of the node's core): a lock conflict is retried for up to 3 s before it is
/// returned (another process holding the database still fails, just not at once).
pub fn open_db(path: &Path, cfg: &DbConfig) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let r = sled::Config::new()
            .path(path)
            .cache_capacity(cfg.cache_bytes)
            .flush_every_ms(cfg.flush_every_ms)
            .open();
        match r {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
