//! A bounded pool of segment-sized buffers, shared by the blob codec (received segments), the
//! blob server (segments read from the store) and the fetch engine (segments written to a
//! partial file).
//!
//! Why: a 1 GiB transfer moves 256 segments of 4 MiB through each of these. Allocated fresh,
//! every segment buffer is new memory from the kernel (the allocator returns large blocks to
//! it when they are freed): 1024 page faults and a zeroing of 4 MiB per segment, on both
//! sides. Reused, it is neither. Measured in docs/benchmarks.md ("Session 7").
//!
//! The pool keeps at most [`MAX_POOLED`] buffers (64 MiB), only of [`BUF_LEN`] capacity, and
//! frees what has not been used for [`IDLE_FREE`] ([`BufPool::trim`], called by the network
//! task every second), so an idle node holds none. A buffer that is not given back is simply
//! freed: taking from the pool never waits.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Capacity of a pooled buffer: one segment.
pub const BUF_LEN: usize = pacmesh_protocol::SEGMENT_BYTES as usize;

/// Most buffers kept for reuse.
pub const MAX_POOLED: usize = 16;

/// A kept buffer unused this long is freed.
pub const IDLE_FREE: Duration = Duration::from_secs(5);

/// The node's pool of segment buffers.
pub static SEGMENTS: BufPool = BufPool::new(BUF_LEN, MAX_POOLED);

/// A pool of buffers of one capacity (see the [module docs](self)).
pub struct BufPool {
    /// Capacity of the buffers kept.
    len: usize,
    /// Most buffers kept.
    max: usize,
    /// Free buffers, with when each was given back (the newest last).
    free: Mutex<Vec<(Vec<u8>, Instant)>>,
}

impl BufPool {
    /// An empty pool of buffers of capacity `len`, keeping at most `max`.
    pub const fn new(len: usize, max: usize) -> BufPool {
        BufPool {
            len,
            max,
            free: Mutex::new(Vec::new()),
        }
    }

    fn free(&self) -> std::sync::MutexGuard<'_, Vec<(Vec<u8>, Instant)>> {
        // The list holds no invariant a panic elsewhere could break.
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A buffer of `len` bytes to be overwritten (its contents are unspecified: earlier data
    /// or zeros). From the pool when `len` fits and one is free, else newly allocated.
    pub fn take(&self, len: usize) -> Vec<u8> {
        if len > self.len {
            return vec![0; len];
        }
        let reused = self.free().pop();
        let mut v = match reused {
            Some((v, _)) => v,
            None => Vec::with_capacity(self.len),
        };
        // Within the capacity: no reallocation; only bytes beyond the current length are
        // zeroed (none when a full buffer is reused for a full segment).
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0);
        }
        v
    }

    /// Gives `buf` back for reuse: kept if it has the pool's capacity and the pool has room,
    /// otherwise freed.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() != self.len {
            return;
        }
        let mut free = self.free();
        if free.len() < self.max {
            free.push((buf, Instant::now()));
        }
    }

    /// Frees the buffers given back more than [`IDLE_FREE`] before `now`.
    pub fn trim(&self, now: Instant) {
        let old: Vec<(Vec<u8>, Instant)> = {
            let mut free = self.free();
            let (keep, old) = std::mem::take(&mut *free)
                .into_iter()
                .partition(|(_, t)| now.saturating_duration_since(*t) < IDLE_FREE);
            *free = keep;
            old
        };
        // Freed outside the lock.
        drop(old);
    }

    /// Buffers kept now.
    pub fn pooled(&self) -> usize {
        self.free().len()
    }
}

/// A buffer of [`SEGMENTS`] that goes back to the pool when dropped: the owner of an HTTP
/// response body (`Bytes::from_owner`), given back once hyper has sent it, with whatever
/// permit bounds such bodies (released then too).
pub struct Pooled(pub Vec<u8>, pub Option<tokio::sync::OwnedSemaphorePermit>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        SEGMENTS.give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_bounded_and_freed_when_idle() {
        let pool = BufPool::new(1024, 2);
        let a = pool.take(1024);
        assert_eq!(a.len(), 1024);
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.pooled(), 1);
        // A shorter take reuses it, and a full one after that reuses it again.
        let b = pool.take(10);
        assert_eq!((b.len(), b.as_ptr()), (10, ptr));
        pool.give(b);
        let c = pool.take(1024);
        assert_eq!((c.len(), c.as_ptr(), c.capacity()), (1024, ptr, 1024));
        // Buffers of another capacity are not kept; the pool keeps at most `max`.
        pool.give(vec![0; 100]);
        assert_eq!(pool.pooled(), 0);
        let (d, e) = (pool.take(1024), pool.take(1024));
        assert_ne!(d.as_ptr(), e.as_ptr());
        pool.give(c);
        pool.give(d);
        pool.give(e);
        assert_eq!(pool.pooled(), 2);
        // Larger than the pool's buffers: allocated, never kept.
        let big = pool.take(4096);
        assert_eq!(big.len(), 4096);
        pool.give(big);
        assert_eq!(pool.pooled(), 2);
        // Idle buffers go.
        pool.trim(Instant::now());
        assert_eq!(pool.pooled(), 2);
        pool.trim(Instant::now() + IDLE_FREE + Duration::from_millis(1));
        assert_eq!(pool.pooled(), 0);
    }
}
