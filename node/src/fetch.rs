//! The blob fetch engine: a blob by BLAKE3 hash from several sources at once, in verified
//! segments, resumable, entering the content store only complete.
//!
//! # Segments and the outboard
//!
//! A blob is cut into segments of [`SEGMENT_LEN`] (4 MiB = 2^12 BLAKE3 chunks) at offsets that
//! are multiples of it, so every segment is a complete subtree of the blob's BLAKE3 tree. A
//! source serves the blob's **outboard**: its length and the chaining value of every segment
//! (32 bytes per 4 MiB: 8 KiB for 1 GiB). The fetcher merges the chaining values up the tree
//! (`blake3::hazmat`) and accepts the outboard only if that gives the blob's hash; then each
//! segment is accepted only if its own chaining value (hashed at its offset) is the one listed.
//! A blob of at most one segment has an empty list: its single segment is checked against the
//! hash itself, and its length comes from the bytes, not from the source's claim.
//!
//! ```text
//!   outboard:  u64 BE length ‖ CV(segment 0) ‖ CV(segment 1) ‖ …   (no CVs when length ≤ 4 MiB)
//! ```
//!
//! # Hostile sources
//!
//! - bytes that do not verify: the source is dropped for this blob and the segment is fetched
//!   from another one; a source that fails the same way again is never asked again by this
//!   [`Fetcher`];
//! - errors, short reads, dropped connections, timeouts: the segment goes back in the queue; a
//!   source with [`FetchConfig::max_errors`] errors in a row is dropped for this blob;
//! - a wrong outboard: refused unless it merges to the hash; if it does but lies about the
//!   length inside the last segment (or the length disagrees with the size the caller expects),
//!   segments stop verifying at every source — when a second source fails verification, the
//!   outboard's source is dropped instead, the data sources are forgiven and the outboard is
//!   fetched again from another source.
//!
//! # Resume
//!
//! `DIR/HASH.part` holds the bytes received so far (at their offsets), `DIR/HASH.outboard` the
//! verified outboard and `DIR/HASH.have` a bitmap of the segments written. The bitmap is written
//! after each segment without `fsync`; on resume every segment it claims is verified again
//! against the outboard, so a crash can cost a segment, never admit a wrong one. When every
//! segment is present the file is handed to the store ([`FsStore::adopt_verified`]); it is
//! served only from there.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use blake3::hazmat::ChainingValue;
use futures::stream::{FuturesUnordered, StreamExt};
use pacmesh_protocol::Hash;

use crate::store::{BlobStore, FsStore};

/// Segment length: 4 MiB, 2^12 BLAKE3 chunks.
pub const SEGMENT_LEN: u64 = pacmesh_protocol::SEGMENT_BYTES;

/// Largest blob the fetcher accepts an outboard for (64 GiB).
pub const MAX_BLOB_LEN: u64 = pacmesh_protocol::MAX_BLOB_BYTES;

/// Largest encoded outboard ([`MAX_BLOB_LEN`] / [`SEGMENT_LEN`] chaining values).
pub const MAX_OUTBOARD_BYTES: usize = 8 + 32 * (MAX_BLOB_LEN / SEGMENT_LEN) as usize;

/// A blob's length and the chaining values of its segments. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outboard {
    /// Length in bytes.
    pub len: u64,
    /// One chaining value per segment; empty when `len <= SEGMENT_LEN`.
    pub cvs: Vec<ChainingValue>,
}

/// Number of segments of a blob of `len` bytes (an empty blob has one, empty).
pub fn segment_count(len: u64) -> u64 {
    len.div_ceil(SEGMENT_LEN).max(1)
}

/// Chaining value of the segment at byte `offset` (a multiple of [`SEGMENT_LEN`]) of a blob of
/// more than one segment (the tree math is the protocol's: [`pacmesh_protocol::segment_value`]).
fn segment_cv(offset: u64, data: &[u8]) -> ChainingValue {
    // Any length above one segment gives the non-root chaining value.
    *pacmesh_protocol::segment_value(MAX_BLOB_LEN, offset / SEGMENT_LEN, data).as_bytes()
}

/// Why an outboard was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboardError {
    /// Not the encoding described in the module docs.
    #[error("malformed outboard: {0}")]
    Malformed(String),
    /// The chaining values do not merge to the blob's hash.
    #[error("outboard does not match blob {0}")]
    Mismatch(Hash),
}

impl Outboard {
    /// Reads `reader` to the end: its hash and outboard.
    pub fn compute(reader: &mut dyn Read) -> io::Result<(Hash, Outboard)> {
        let mut whole = blake3::Hasher::new();
        let mut cvs = Vec::new();
        let mut buf = vec![0u8; SEGMENT_LEN as usize];
        let mut len = 0u64;
        loop {
            let mut n = 0;
            while n < buf.len() {
                match reader.read(&mut buf[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                break;
            }
            whole.update(&buf[..n]);
            cvs.push(segment_cv(len, &buf[..n]));
            len += n as u64;
            if n < buf.len() {
                break;
            }
        }
        if len <= SEGMENT_LEN {
            cvs.clear();
        }
        Ok((Hash::from(whole.finalize()), Outboard { len, cvs }))
    }

    /// What checking segment `i` needs: the length, and only that segment's chaining value
    /// (cheap to hand to another thread whatever the blob's size).
    fn for_segment(&self, i: u64) -> Outboard {
        Outboard {
            len: self.len,
            cvs: self.cvs.get(i as usize).copied().into_iter().collect(),
        }
    }

    /// Number of segments.
    pub fn segments(&self) -> u64 {
        segment_count(self.len)
    }

    /// Byte range `(offset, len)` of segment `i`.
    pub fn segment(&self, i: u64) -> (u64, u64) {
        let off = i * SEGMENT_LEN;
        (off, SEGMENT_LEN.min(self.len.saturating_sub(off)))
    }

    /// Checks the chaining values against the blob's hash.
    pub fn verify(&self, root: &Hash) -> Result<(), OutboardError> {
        if self.len > MAX_BLOB_LEN {
            return Err(OutboardError::Malformed(format!(
                "length {} is over the limit of {MAX_BLOB_LEN}",
                self.len
            )));
        }
        if self.len <= SEGMENT_LEN {
            return if self.cvs.is_empty() {
                Ok(())
            } else {
                Err(OutboardError::Malformed(
                    "chaining values for a one-segment blob".into(),
                ))
            };
        }
        if self.cvs.len() as u64 != self.segments() {
            return Err(OutboardError::Malformed(format!(
                "{} chaining values for {} segments",
                self.cvs.len(),
                self.segments()
            )));
        }
        let cvs: Vec<Hash> = self.cvs.iter().map(|c| Hash::from_bytes(*c)).collect();
        if pacmesh_protocol::outboard_matches(root, self.len, &cvs) {
            Ok(())
        } else {
            Err(OutboardError::Mismatch(*root))
        }
    }

    /// Whether `data` is segment `i` of the blob `root` (the outboard verified).
    pub fn verify_segment(&self, root: &Hash, i: u64, data: &[u8]) -> bool {
        if self.cvs.is_empty() {
            return i == 0 && Hash::new(data) == *root;
        }
        let (off, len) = self.segment(i);
        data.len() as u64 == len
            && self
                .cvs
                .get(i as usize)
                .is_some_and(|cv| segment_cv(off, data) == *cv)
    }

    /// The wire encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 32 * self.cvs.len());
        v.extend_from_slice(&self.len.to_be_bytes());
        for cv in &self.cvs {
            v.extend_from_slice(cv);
        }
        v
    }

    /// Decodes the wire encoding (at most [`MAX_OUTBOARD_BYTES`]); check with
    /// [`Outboard::verify`] before use.
    pub fn decode(bytes: &[u8]) -> Result<Outboard, OutboardError> {
        if bytes.len() > MAX_OUTBOARD_BYTES {
            return Err(OutboardError::Malformed(format!(
                "{} bytes, more than {MAX_OUTBOARD_BYTES}",
                bytes.len()
            )));
        }
        if bytes.len() < 8 || (bytes.len() - 8) % 32 != 0 {
            return Err(OutboardError::Malformed(format!(
                "{} bytes is not 8 + 32·n",
                bytes.len()
            )));
        }
        let len = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
        let cvs = bytes[8..]
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).expect("32 bytes"))
            .collect();
        Ok(Outboard { len, cvs })
    }
}

/// Why a source could not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SourceError {
    /// The source does not have the blob.
    #[error("not found")]
    NotFound,
    /// Anything else: connection refused or dropped, timeout, bad status, short body.
    #[error("{0}")]
    Failed(String),
}

/// A boxed future (the trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Somewhere blobs can be fetched from: a peer over HTTP ([`HttpSource`]), later libp2p.
pub trait BlobSource: Send + Sync {
    /// A name for logs and reports (e.g. the base URL).
    fn name(&self) -> String;
    /// The encoded outboard of `blob` (at most [`MAX_OUTBOARD_BYTES`]).
    fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>>;
    /// Up to `len` bytes of `blob` from `offset` (fewer only where the blob ends).
    fn fetch_range(
        &self,
        blob: Hash,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>>;
    /// Bytes this source delivered did not verify: the segment at `offset`, or the outboard
    /// (`None`). `false` (the default): they are the source's fault (dropped, reported, struck).
    /// `true`: the source got them over a channel that does not authenticate its peer (a blob
    /// listener in plain HTTP, where anyone on the path can change bytes); it stops using that
    /// channel, and the engine asks again without blaming it.
    fn disown(&self, _what: Option<u64>) -> bool {
        false
    }
}

/// How long an [`HttpSource`] waits for a TCP connection: an unreachable source (a peer
/// behind NAT or a firewall, a stopped mirror) is given up on quickly.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long an [`HttpSource`] waits for the head of a response.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// Fetches over a node's (or mirror's) HTTP API: `GET /api/v1/blobs/HASH/outboard` and
/// `GET /api/v1/blobs/HASH` with a `Range` header.
pub struct HttpSource {
    base: String,
    agent: ureq::Agent,
}

impl HttpSource {
    /// A source at `base` (`http://HOST:PORT`); each request gives up after `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(CONNECT_TIMEOUT.min(timeout)))
            // A server that accepts but does not answer is given up on before the whole
            // timeout.
            .timeout_recv_response(Some(RESPONSE_TIMEOUT.min(timeout)))
            // The engine keeps several requests in flight per source: keep their connections.
            .max_idle_connections(64)
            .max_idle_connections_per_host(16)
            .http_status_as_error(false)
            .build()
            .into();
        HttpSource {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    fn get(
        &self,
        path: String,
        range: Option<(u64, u64)>,
        limit: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.base);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut req = agent.get(&url);
                if let Some((off, len)) = range {
                    req = req.header("range", format!("bytes={off}-{}", off + len - 1));
                }
                let mut resp = req
                    .call()
                    .map_err(|e| SourceError::Failed(format!("{url}: {e}")))?;
                let status = resp.status().as_u16();
                match status {
                    200 | 206 => {}
                    404 => return Err(SourceError::NotFound),
                    416 => return Ok(Vec::new()),
                    s => return Err(SourceError::Failed(format!("{url}: HTTP {s}"))),
                }
                if status == 200 && range.is_some_and(|(off, _)| off > 0) {
                    return Err(SourceError::Failed(format!("{url}: range ignored")));
                }
                let mut reader = resp.body_mut().as_reader();
                if status == 206
                    && let Some((_, len)) = range
                    && len <= limit
                {
                    // A segment: read into a pooled buffer of its length (the fetch engine
                    // gives it back once written); a short body comes back short.
                    let mut body = crate::bufpool::SEGMENTS.take(len as usize);
                    let mut got = 0;
                    while got < body.len() {
                        match reader.read(&mut body[got..]) {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(SourceError::Failed(format!("{url}: {e}"))),
                        }
                    }
                    body.truncate(got);
                    if got == body.len() {
                        // The end of the body, read so that the connection goes back to the
                        // agent's pool (ureq keeps only connections whose body was read to the
                        // end); more bytes than asked would be a broken server.
                        let mut more = [0u8; 1];
                        match reader.read(&mut more) {
                            Ok(0) => {}
                            Ok(_) => {
                                return Err(SourceError::Failed(format!(
                                    "{url}: body longer than the {len} bytes asked"
                                )));
                            }
                            Err(e) => return Err(SourceError::Failed(format!("{url}: {e}"))),
                        }
                    }
                    return Ok(body);
                }
                let mut body = Vec::new();
                reader
                    .take(limit + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| SourceError::Failed(format!("{url}: {e}")))?;
                if body.len() as u64 > limit {
                    if status == 200 && range.is_some() {
                        body.truncate(limit as usize);
                    } else {
                        return Err(SourceError::Failed(format!(
                            "{url}: body over {limit} bytes"
                        )));
                    }
                }
                Ok(body)
            })
            .await
            .map_err(|e| SourceError::Failed(e.to_string()))?
        })
    }
}

impl BlobSource for HttpSource {
    fn name(&self) -> String {
        self.base.clone()
    }
    fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        self.get(
            format!("/api/v1/blobs/{blob}/outboard"),
            None,
            MAX_OUTBOARD_BYTES as u64,
        )
    }
    fn fetch_range(
        &self,
        blob: Hash,
        offset: u64,
        len: u64,
    ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
        if len == 0 {
            return Box::pin(async { Ok(Vec::new()) });
        }
        self.get(format!("/api/v1/blobs/{blob}"), Some((offset, len)), len)
    }
}

/// Settings of a [`Fetcher`].
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Requests in flight per source. Default 4.
    pub per_source: usize,
    /// Requests in flight per blob over all sources. Default 16.
    pub max_in_flight: usize,
    /// Consecutive errors after which a source is dropped for a blob. Default 3.
    pub max_errors: u32,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            per_source: 4,
            max_in_flight: 16,
            max_errors: 3,
        }
    }
}

/// What one [`Fetcher::fetch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Bytes received from sources (payload only), including refused ones.
    pub bytes_received: u64,
    /// Segments taken from an earlier, interrupted fetch.
    pub resumed_segments: u64,
    /// Segments fetched now.
    pub fetched_segments: u64,
    /// Whether the blob was in the store already.
    pub already_present: bool,
    /// Sources caught sending bytes that do not verify (by name).
    pub bad_sources: BTreeSet<String>,
}

/// Progress callback: bytes of verified payload as they arrive.
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Fetches blobs into an [`FsStore`] from a set of sources. See the [module docs](self).
pub struct Fetcher {
    store: Arc<FsStore>,
    dir: PathBuf,
    sources: Vec<Arc<dyn BlobSource>>,
    cfg: FetchConfig,
    /// Sources caught twice sending bad bytes: never asked again.
    banned: Mutex<HashMap<String, u32>>,
    /// Segment requests in flight per source, over every blob being fetched at once
    /// ([`FetchConfig::per_source`] caps it).
    busy: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    /// One fetch per blob at a time (they share the partial files).
    blob_locks: Mutex<HashMap<Hash, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one of a source's request slots; released on drop (answered or abandoned).
struct Slot(Arc<Vec<std::sync::atomic::AtomicUsize>>, usize);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0[self.1].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Partial {
    part: Arc<PartFile>,
    have: Vec<bool>,
    have_path: PathBuf,
}

impl Partial {
    fn save_bitmap(&self) -> io::Result<()> {
        let bits: Vec<u8> = self.have.iter().map(|&b| b as u8).collect();
        let tmp = self.have_path.with_extension("have.tmp");
        fs::write(&tmp, bits)?;
        fs::rename(&tmp, &self.have_path)
    }
}

enum Done {
    Outboard(usize, Result<Vec<u8>, SourceError>),
    /// Source, segment, the outboard epoch it was asked under, what came of it.
    Segment(usize, u64, u64, Result<Landed, SourceError>),
}

/// A segment's bytes after they were checked (and, when they verified, written) on the
/// blocking pool, off the loop that drives the requests.
struct Landed {
    /// Bytes received.
    len: u64,
    /// Whether they verified against the outboard (and were written at their offset).
    verified: bool,
    /// Writing them failed (a local disk error: the fetch fails).
    write_error: Option<String>,
}

/// A partial file, open twice: buffered, and (where the file system supports it) with
/// `O_DIRECT` for whole segments.
///
/// Why direct I/O: on the machines measured, copying a verified segment into the page cache
/// (page allocation, memcg charge, copy) was the largest single cost of a 1 GiB fetch: a
/// quarter of both cores, more than BLAKE3 and ChaCha20 together (docs/benchmarks.md, "Where
/// the 50-node time went, and what changed", replication). A direct write hands the aligned buffer to the device instead, and the
/// final `fsync` finds nothing left to write back. The bytes were verified before either
/// write; readers of the finished blob see them through the page cache as usual (the kernel
/// keeps the two coherent).
struct PartFile {
    file: File,
    direct: Option<File>,
}

/// Direct I/O wants buffers, offsets and lengths aligned to the device's block size; 4096
/// covers the usual 512- and 4096-byte devices.
const DIRECT_ALIGN: usize = 4096;

#[repr(C, align(4096))]
struct Block([u8; DIRECT_ALIGN]);

thread_local! {
    /// One segment-sized, block-aligned buffer per blocking thread, reused (freed when the
    /// idle thread exits).
    static ALIGNED: std::cell::RefCell<Vec<Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl PartFile {
    /// Opens `path` (created if `create`) for writing at offsets.
    fn open(path: &Path, create: bool) -> io::Result<PartFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let direct = open_direct(path);
        Ok(PartFile { file, direct })
    }

    /// Writes `data` at `off`: directly when both are block-aligned and the file system takes
    /// it, else buffered with writeback started at once.
    fn write_at(&self, data: &[u8], off: u64) -> io::Result<()> {
        if let Some(d) = &self.direct
            && data.len() % DIRECT_ALIGN == 0
            && off % DIRECT_ALIGN as u64 == 0
            && !data.is_empty()
        {
            let r = ALIGNED.with(|b| {
                let mut blocks = b.borrow_mut();
                let n = data.len() / DIRECT_ALIGN;
                if blocks.len() < n {
                    blocks.resize_with(n, || Block([0; DIRECT_ALIGN]));
                }
                let buf = &mut blocks[..n];
                for (blk, chunk) in buf.iter_mut().zip(data.chunks_exact(DIRECT_ALIGN)) {
                    blk.0.copy_from_slice(chunk);
                }
                // SAFETY: `Block` is `repr(C)` plain bytes with no padding (size = alignment =
                // 4096), so `n` contiguous blocks are `n * 4096` initialised bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n * DIRECT_ALIGN)
                };
                d.write_all_at(bytes, off)
            });
            match r {
                Ok(()) => return Ok(()),
                // Refused by this file system after all: fall back to buffered writes.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(data, off)?;
        start_writeback(&self.file, off, data.len() as u64);
        Ok(())
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> Option<File> {
    None
}

/// Checks `data` as segment `seg` of `blob` against `ob` and writes it at its offset in
/// `part` (blocking).
fn land(ob: &Outboard, blob: &Hash, seg: u64, data: &[u8], part: &PartFile) -> Landed {
    let len = data.len() as u64;
    let seg_ok = if ob.cvs.is_empty() {
        ob.verify_segment(blob, seg, data)
    } else {
        // `ob` is the one-value slice made by [`Outboard::for_segment`].
        let (off, want) = ob.segment(seg);
        len == want && segment_cv(off, data) == ob.cvs[0]
    };
    if !seg_ok {
        return Landed {
            len,
            verified: false,
            write_error: None,
        };
    }
    let off = seg * SEGMENT_LEN;
    let r = (|| {
        if ob.cvs.is_empty() && len != ob.len {
            // One-segment blob: the length comes from the verified bytes.
            part.file.set_len(len)?;
        }
        part.write_at(data, off)
    })();
    Landed {
        len,
        verified: true,
        write_error: r
            .err()
            .map(|e| format!("Failed to write a partial blob: {e}")),
    }
}

/// Starts writeback of a written range without waiting for it (Linux `sync_file_range`);
/// durability still comes from the `fsync` before the blob enters the store.
fn start_writeback(f: &File, off: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules I/O.
        unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                off as libc::off64_t,
                len as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (f, off, len);
}

impl Fetcher {
    /// A fetcher writing partial files under `dir` and complete blobs into `store`.
    pub fn new(
        store: Arc<FsStore>,
        dir: PathBuf,
        sources: Vec<Arc<dyn BlobSource>>,
        cfg: FetchConfig,
    ) -> Self {
        let n = sources.len();
        Fetcher {
            store,
            dir,
            sources,
            cfg,
            banned: Mutex::new(HashMap::new()),
            blob_locks: Mutex::new(HashMap::new()),
            busy: Arc::new(
                (0..n)
                    .map(|_| std::sync::atomic::AtomicUsize::new(0))
                    .collect(),
            ),
        }
    }

    /// The sources.
    pub fn sources(&self) -> &[Arc<dyn BlobSource>] {
        &self.sources
    }

    fn paths(&self, blob: &Hash) -> (PathBuf, PathBuf, PathBuf) {
        let hex = blob.to_hex();
        (
            self.dir.join(format!("{hex}.part")),
            self.dir.join(format!("{hex}.outboard")),
            self.dir.join(format!("{hex}.have")),
        )
    }

    /// Removes the partial files of `blob`.
    pub fn discard_partial(&self, blob: &Hash) {
        let (a, b, c) = self.paths(blob);
        for p in [a, b, c] {
            let _ = fs::remove_file(p);
        }
    }

    /// Removes partial files of blobs not in `keep` (a new generation no longer needs them).
    pub fn discard_partials_except(&self, keep: &BTreeSet<Hash>) {
        let Ok(rd) = fs::read_dir(&self.dir) else {
            return;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            let hex = n.split('.').next().unwrap_or("");
            if hex.parse::<Hash>().is_ok_and(|h| !keep.contains(&h)) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Loads a verified outboard and bitmap left by an interrupted fetch, re-verifying every
    /// segment the bitmap claims.
    fn resume(&self, blob: &Hash) -> Option<(Outboard, Partial, u64)> {
        let (part_p, ob_p, have_p) = self.paths(blob);
        let ob = Outboard::decode(&fs::read(&ob_p).ok()?).ok()?;
        ob.verify(blob).ok()?;
        let part = PartFile::open(&part_p, false).ok()?;
        let bits = fs::read(&have_p).unwrap_or_default();
        let n = ob.segments() as usize;
        let mut have = vec![false; n];
        let mut resumed = 0;
        for (i, h) in have.iter_mut().enumerate() {
            if bits.get(i) != Some(&1) {
                continue;
            }
            let (off, len) = ob.segment(i as u64);
            let mut buf = vec![0u8; len as usize];
            if part.file.read_exact_at(&mut buf, off).is_ok()
                && ob.verify_segment(blob, i as u64, &buf)
            {
                *h = true;
                resumed += 1;
            }
        }
        Some((
            ob,
            Partial {
                part: Arc::new(part),
                have,
                have_path: have_p,
            },
            resumed,
        ))
    }

    fn start_partial(&self, blob: &Hash, ob: &Outboard) -> Result<Partial> {
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("Failed to create {}", self.dir.display()))?;
        let (part_p, ob_p, have_p) = self.paths(blob);
        let _ = fs::remove_file(&have_p);
        fs::write(&ob_p, ob.encode())
            .with_context(|| format!("Failed to write {}", ob_p.display()))?;
        let part = PartFile::open(&part_p, true)
            .with_context(|| format!("Failed to create {}", part_p.display()))?;
        part.file
            .set_len(ob.len)
            .with_context(|| format!("Failed to size {}", part_p.display()))?;
        Ok(Partial {
            part: Arc::new(part),
            have: vec![false; ob.segments() as usize],
            have_path: have_p,
        })
    }

    fn is_banned(&self, name: &str) -> bool {
        self.banned
            .lock()
            .unwrap()
            .get(name)
            .is_some_and(|n| *n >= 2)
    }

    fn strike(&self, name: &str) {
        *self
            .banned
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default() += 1;
    }

    fn unstrike(&self, name: &str) {
        if let Some(n) = self.banned.lock().unwrap().get_mut(name) {
            *n = n.saturating_sub(1);
        }
    }

    /// Fetches `blob` into the store (a no-op if it is there). `expected_len`, when known (a
    /// manifest states package sizes), must match the outboard. Fails when no source can
    /// deliver verified bytes; what was verified stays for the next attempt.
    pub async fn fetch(
        &self,
        blob: Hash,
        expected_len: Option<u64>,
        progress: Option<Progress>,
    ) -> Result<FetchReport> {
        let lock = self
            .blob_locks
            .lock()
            .unwrap()
            .entry(blob)
            .or_default()
            .clone();
        let r = {
            let _one = lock.lock().await;
            self.fetch_locked(blob, expected_len, progress).await
        };
        let mut locks = self.blob_locks.lock().unwrap();
        if Arc::strong_count(&lock) == 2 {
            locks.remove(&blob);
        }
        r
    }

    async fn fetch_locked(
        &self,
        blob: Hash,
        expected_len: Option<u64>,
        progress: Option<Progress>,
    ) -> Result<FetchReport> {
        let mut report = FetchReport::default();
        if self.store.has(&blob)? {
            report.already_present = true;
            return Ok(report);
        }
        let n_src = self.sources.len();
        // Per source: dropped for this blob (why), errors in a row, in flight.
        let mut dropped: BTreeMap<usize, String> = BTreeMap::new();
        for (i, s) in self.sources.iter().enumerate() {
            if self.is_banned(&s.name()) {
                dropped.insert(i, "sent bad bytes before".into());
            }
        }
        let mut errors = vec![0u32; n_src];
        let mut in_flight = vec![0usize; n_src];
        // Sources dropped only for bad segment bytes (forgiven if the outboard was the liar).
        let mut bad_data: BTreeSet<usize> = BTreeSet::new();

        let mut state: Option<(Outboard, Partial, usize)> = None; // outboard + its source
        if let Some((ob, p, resumed)) = self.resume(&blob)
            && expected_len.is_none_or(|l| l == ob.len)
        {
            report.resumed_segments = resumed;
            state = Some((ob, p, usize::MAX));
        }
        // A blob of at most one segment (the usual package, signature or database): one
        // request, checked against the hash itself; no outboard needed.
        let mut probe: Option<Vec<u8>> = None;
        if state.is_none() && expected_len.is_none_or(|l| l <= SEGMENT_LEN) {
            for i in 0..n_src {
                if dropped.contains_key(&i) {
                    continue;
                }
                let name = self.sources[i].name();
                match self.sources[i].fetch_range(blob, 0, SEGMENT_LEN).await {
                    Ok(d) => {
                        report.bytes_received += d.len() as u64;
                        if Hash::new(&d) == blob {
                            let store = self.store.clone();
                            let n = d.len() as u64;
                            tokio::task::spawn_blocking(move || {
                                store.import_reader(&mut &d[..], Some(&blob))
                            })
                            .await
                            .map_err(|e| anyhow!("{e}"))?
                            .with_context(|| format!("Failed to store fetched blob {blob}"))?;
                            report.fetched_segments = 1;
                            if let Some(f) = &progress {
                                f(n);
                            }
                            return Ok(report);
                        }
                        if ((d.len() as u64) < SEGMENT_LEN || expected_len.is_some())
                            && self.sources[i].disown(Some(0))
                        {
                            // Asked again (over the source's other channel) with the segments.
                            tracing::info!(source = %name, blob = %blob.fmt_short(), "blob does not verify over an unauthenticated channel; asking again");
                        } else if (d.len() as u64) < SEGMENT_LEN || expected_len.is_some() {
                            tracing::warn!(source = %name, blob = %blob.fmt_short(), "blob does not verify; source dropped");
                            report.bad_sources.insert(name.clone());
                            self.strike(&name);
                            dropped.insert(i, "sent bad bytes".into());
                        } else {
                            // A larger blob: outboard and segments. These bytes may well be its
                            // first segment: kept, and checked once the outboard is known.
                            probe = Some(d);
                            break;
                        }
                    }
                    Err(SourceError::NotFound) => {
                        dropped.insert(i, "does not have it".into());
                    }
                    Err(SourceError::Failed(e)) => {
                        errors[i] += 1;
                        tracing::debug!(source = %name, "fetch failed: {e}");
                    }
                }
            }
        }
        let mut outboard_tried: BTreeSet<usize> = BTreeSet::new();
        let mut seg_failed: HashMap<u64, BTreeSet<usize>> = HashMap::new();
        let mut queue: BTreeSet<u64> = BTreeSet::new();
        if let Some((_, p, _)) = &state {
            queue.extend((0..p.have.len() as u64).filter(|&i| !p.have[i as usize]));
        }
        let mut pending: FuturesUnordered<BoxFuture<'_, Done>> = FuturesUnordered::new();
        let mut outboard_pending = false;
        let mut in_flight_segs: BTreeSet<u64> = BTreeSet::new();
        // Bumped whenever the outboard (and partial file) is replaced: answers to requests made
        // under an earlier one are not counted.
        let mut epoch = 0u64;

        loop {
            if let Some((_, p, _)) = &state
                && p.have.iter().all(|&h| h)
            {
                break;
            }
            // Start work.
            let usable = |i: usize, dropped: &BTreeMap<usize, String>| !dropped.contains_key(&i);
            if state.is_none() && !outboard_pending {
                let pick = (0..n_src)
                    .filter(|i| usable(*i, &dropped) && !outboard_tried.contains(i))
                    .min_by_key(|i| in_flight[*i]);
                match pick {
                    Some(i) => {
                        outboard_tried.insert(i);
                        outboard_pending = true;
                        in_flight[i] += 1;
                        let s = self.sources[i].clone();
                        pending.push(Box::pin(async move {
                            Done::Outboard(i, s.outboard(blob).await)
                        }));
                    }
                    None if pending.is_empty() => {
                        bail!(
                            "blob {blob}: no source could deliver it ({})",
                            why(&self.sources, &dropped, n_src)
                        );
                    }
                    None => {}
                }
            }
            if let Some((ob, p, _)) = &state {
                let total: usize = in_flight.iter().sum();
                let mut room = self.cfg.max_in_flight.saturating_sub(total);
                let candidates: Vec<u64> = queue
                    .iter()
                    .copied()
                    .filter(|s| !in_flight_segs.contains(s))
                    .collect();
                for seg in candidates {
                    if room == 0 {
                        break;
                    }
                    let failed = seg_failed.get(&seg);
                    let pick = (0..n_src)
                        .filter(|i| {
                            usable(*i, &dropped)
                                && self.busy[*i].load(std::sync::atomic::Ordering::SeqCst)
                                    < self.cfg.per_source
                                && failed.is_none_or(|f| !f.contains(i))
                        })
                        .min_by_key(|i| (in_flight[*i], errors[*i]));
                    let Some(i) = pick else { continue };
                    let (off, len) = if ob.cvs.is_empty() {
                        (0, SEGMENT_LEN)
                    } else {
                        ob.segment(seg)
                    };
                    in_flight[i] += 1;
                    room -= 1;
                    in_flight_segs.insert(seg);
                    let s = self.sources[i].clone();
                    self.busy[i].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let slot = Slot(self.busy.clone(), i);
                    let (ob, part, ep) = (ob.for_segment(seg), p.part.clone(), epoch);
                    pending.push(Box::pin(async move {
                        let r = s.fetch_range(blob, off, len).await;
                        drop(slot);
                        let r = match r {
                            // Hash and write on the blocking pool: segments land in parallel
                            // while the next ones arrive.
                            Ok(data) => tokio::task::spawn_blocking(move || {
                                let landed = land(&ob, &blob, seg, &data, &part);
                                crate::bufpool::SEGMENTS.give(data);
                                landed
                            })
                            .await
                            .map_err(|e| SourceError::Failed(format!("segment check: {e}"))),
                            Err(e) => Err(e),
                        };
                        Done::Segment(i, seg, ep, r)
                    }));
                }
                if pending.is_empty() {
                    // Nothing could be started: every source that may still serve some
                    // segment is dropped, or each failed the remaining segments.
                    let live: Vec<usize> = (0..n_src).filter(|i| usable(*i, &dropped)).collect();
                    if live.is_empty() {
                        bail!(
                            "blob {blob}: no source could deliver it ({})",
                            why(&self.sources, &dropped, n_src)
                        );
                    }
                    if live.iter().all(|i| {
                        self.busy[*i].load(std::sync::atomic::Ordering::SeqCst)
                            >= self.cfg.per_source
                    }) {
                        // Busy with other blobs: wait for a slot.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    // Live sources all failed some segment already: let them retry.
                    seg_failed.clear();
                    continue;
                }
            }
            let Some(done) = pending.next().await else {
                continue;
            };
            match done {
                Done::Outboard(i, r) => {
                    in_flight[i] -= 1;
                    outboard_pending = false;
                    let name = self.sources[i].name();
                    match r {
                        Ok(bytes) => {
                            let ob = Outboard::decode(&bytes).and_then(|ob| {
                                ob.verify(&blob)?;
                                Ok(ob)
                            });
                            match ob {
                                Ok(ob)
                                    if expected_len.is_some_and(|l| l != ob.len)
                                        && self.sources[i].disown(None) =>
                                {
                                    tracing::info!(source = %name, blob = %blob.fmt_short(), "outboard length differs over an unauthenticated channel; asking again");
                                    outboard_tried.remove(&i);
                                }
                                Ok(ob) if expected_len.is_some_and(|l| l != ob.len) => {
                                    tracing::warn!(source = %name, blob = %blob.fmt_short(), "outboard length {} is not the expected {}", ob.len, expected_len.unwrap_or(0));
                                    report.bad_sources.insert(name.clone());
                                    dropped.insert(i, "wrong outboard length".into());
                                }
                                Ok(ob) => {
                                    let mut p = self.start_partial(&blob, &ob)?;
                                    queue = (0..ob.segments()).collect();
                                    epoch += 1;
                                    if let Some(d) = probe.take()
                                        && !ob.cvs.is_empty()
                                    {
                                        let (seg0, part) = (ob.for_segment(0), p.part.clone());
                                        let landed = tokio::task::spawn_blocking(move || {
                                            let landed = land(&seg0, &blob, 0, &d, &part);
                                            crate::bufpool::SEGMENTS.give(d);
                                            landed
                                        })
                                        .await
                                        .map_err(|e| anyhow!("{e}"))?;
                                        if landed.verified && landed.write_error.is_none() {
                                            p.have[0] = true;
                                            queue.remove(&0);
                                            report.fetched_segments += 1;
                                            if let Some(f) = &progress {
                                                f(landed.len);
                                            }
                                        }
                                    }
                                    state = Some((ob, p, i));
                                }
                                Err(e) if self.sources[i].disown(None) => {
                                    tracing::info!(source = %name, blob = %blob.fmt_short(), "bad outboard over an unauthenticated channel, asking again: {e}");
                                    outboard_tried.remove(&i);
                                }
                                Err(e) => {
                                    tracing::warn!(source = %name, blob = %blob.fmt_short(), "bad outboard: {e}");
                                    report.bad_sources.insert(name.clone());
                                    self.strike(&name);
                                    dropped.insert(i, format!("bad outboard: {e}"));
                                }
                            }
                        }
                        Err(SourceError::NotFound) => {
                            dropped.insert(i, "does not have it".into());
                        }
                        Err(SourceError::Failed(e)) => {
                            errors[i] += 1;
                            if errors[i] >= self.cfg.max_errors {
                                dropped.insert(i, format!("{} errors, last: {e}", errors[i]));
                            } else {
                                outboard_tried.remove(&i);
                            }
                        }
                    }
                }
                Done::Segment(i, seg, ep, r) => {
                    in_flight[i] -= 1;
                    in_flight_segs.remove(&seg);
                    let mut reset = false;
                    let Some((ob, p, ob_src)) = &mut state else {
                        continue;
                    };
                    if ep != epoch {
                        // Asked under an outboard since replaced: its bytes went to the old
                        // partial file; the segment is in the queue again.
                        continue;
                    }
                    let name = self.sources[i].name();
                    match r {
                        Ok(landed) => {
                            report.bytes_received += landed.len;
                            if landed.verified {
                                if let Some(e) = landed.write_error {
                                    bail!("blob {blob}: {e}");
                                }
                                errors[i] = 0;
                                if ob.cvs.is_empty() && landed.len != ob.len {
                                    // One-segment blob: the length comes from the verified bytes.
                                    ob.len = landed.len;
                                }
                                p.have[seg as usize] = true;
                                p.save_bitmap()
                                    .context("Failed to write a partial bitmap")?;
                                queue.remove(&seg);
                                report.fetched_segments += 1;
                                if let Some(f) = &progress {
                                    f(landed.len);
                                }
                            } else if self.sources[i].disown(Some(if ob.cvs.is_empty() {
                                0
                            } else {
                                ob.segment(seg).0
                            })) {
                                // Still queued: asked again, of this source's other channel or
                                // of another source.
                                tracing::info!(source = %name, blob = %blob.fmt_short(), segment = seg, "segment does not verify over an unauthenticated channel; asking again");
                            } else {
                                tracing::warn!(source = %name, blob = %blob.fmt_short(), segment = seg, "segment does not verify; source dropped");
                                report.bad_sources.insert(name.clone());
                                seg_failed.entry(seg).or_default().insert(i);
                                if i == *ob_src {
                                    self.strike(&name);
                                    dropped.insert(i, "sent bad bytes".into());
                                } else {
                                    bad_data.insert(i);
                                    dropped.insert(i, "sent bad bytes".into());
                                }
                                // Two sources disagreeing with the outboard: suspect the outboard.
                                if bad_data.len() >= 2 {
                                    let liar = *ob_src;
                                    tracing::warn!(blob = %blob.fmt_short(), "segments fail at two sources: the outboard is suspect; fetching it again");
                                    if liar != usize::MAX {
                                        let lname = self.sources[liar].name();
                                        self.strike(&lname);
                                        report.bad_sources.insert(lname);
                                        dropped.insert(liar, "sent a lying outboard".into());
                                    }
                                    for j in std::mem::take(&mut bad_data) {
                                        if j != liar {
                                            self.unstrike(&self.sources[j].name());
                                            dropped.remove(&j);
                                            report.bad_sources.remove(&self.sources[j].name());
                                        }
                                    }
                                    reset = true;
                                } else if bad_data.contains(&i) {
                                    self.strike(&name);
                                }
                            }
                        }
                        Err(SourceError::NotFound) => {
                            dropped.insert(i, "does not have it".into());
                        }
                        Err(SourceError::Failed(e)) => {
                            errors[i] += 1;
                            seg_failed.entry(seg).or_default().insert(i);
                            tracing::debug!(source = %name, segment = seg, "segment fetch failed: {e}");
                            if errors[i] >= self.cfg.max_errors {
                                tracing::warn!(source = %name, blob = %blob.fmt_short(), "source dropped after {} errors: {e}", errors[i]);
                                dropped.insert(i, format!("{} errors, last: {e}", errors[i]));
                            }
                        }
                    }
                    if reset {
                        seg_failed.clear();
                        self.discard_partial(&blob);
                        epoch += 1;
                        state = None;
                        queue.clear();
                        outboard_tried = dropped.keys().copied().collect();
                    }
                }
            }
        }
        // Drain what is still running (late answers are not needed).
        drop(pending);
        let (part_p, _, _) = self.paths(&blob);
        let (ob, p, _) = state.expect("complete");
        let store = self.store.clone();
        let len = ob.len;
        let path = part_p.clone();
        // Every segment verified against the outboard, and the outboard against the blob's
        // hash: the file is the blob, so it is adopted without hashing it again.
        tokio::task::spawn_blocking(move || {
            p.part
                .file
                .sync_all()
                .context("Failed to fsync a fetched blob")?;
            drop(p);
            store
                .adopt_verified(&path, &blob, len)
                .with_context(|| format!("Failed to store fetched blob {blob}"))
        })
        .await
        .map_err(|e| anyhow!("{e}"))??;
        self.discard_partial(&blob);
        Ok(report)
    }
}

fn why(sources: &[Arc<dyn BlobSource>], dropped: &BTreeMap<usize, String>, n: usize) -> String {
    if n == 0 {
        return "no sources".into();
    }
    dropped
        .iter()
        .map(|(i, w)| format!("{}: {w}", sources[*i].name()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Computes (and verifies against its name) the outboard of a stored blob. Small in-process
/// cache: outboards of large blobs are asked for by every fetcher.
pub fn outboard_of(store: &FsStore, blob: &Hash) -> Result<Option<Vec<u8>>> {
    // Outboards computed (each a full read and hash of its blob): at most `CACHE_BYTES` of
    // them and `CACHE_ENTRIES`, the oldest dropped first, so that asking for outboards in turn
    // makes a node hash the same blobs again only past that.
    const CACHE_BYTES: usize = 16 << 20;
    const CACHE_ENTRIES: usize = 4096;
    struct Cache {
        map: HashMap<Hash, Arc<Vec<u8>>>,
        order: std::collections::VecDeque<Hash>,
        bytes: usize,
    }
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    if let Some(v) = CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|c| c.map.get(blob).cloned())
    {
        return Ok(Some(v.as_ref().clone()));
    }
    if !store.has(blob)? {
        return Ok(None);
    }
    let path = store.path_of(blob);
    let len = fs::metadata(&path)
        .with_context(|| format!("Failed to stat {}", path.display()))?
        .len();
    if len <= SEGMENT_LEN {
        // No chaining values: the fetcher checks the bytes against the hash.
        return Ok(Some(Outboard { len, cvs: vec![] }.encode()));
    }
    let mut f = File::open(&path).with_context(|| format!("Failed to open {}", path.display()))?;
    let (hash, ob) = Outboard::compute(&mut f)?;
    if hash != *blob {
        bail!("blob {blob} is damaged on disk");
    }
    let bytes = ob.encode();
    let mut g = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let c = g.get_or_insert_with(|| Cache {
        map: HashMap::new(),
        order: Default::default(),
        bytes: 0,
    });
    if c.map.insert(*blob, Arc::new(bytes.clone())).is_none() {
        c.order.push_back(*blob);
        c.bytes += bytes.len();
        while (c.bytes > CACHE_BYTES || c.order.len() > CACHE_ENTRIES) && c.order.len() > 1 {
            if let Some(old) = c.order.pop_front()
                && let Some(v) = c.map.remove(&old)
            {
                c.bytes -= v.len();
            }
        }
    }
    Ok(Some(bytes))
}

/// For logs: a transfer rate.
pub fn rate(bytes: u64, since: Instant) -> String {
    let s = since.elapsed().as_secs_f64().max(1e-6);
    format!("{:.1} MiB/s", bytes as f64 / s / (1 << 20) as f64)
}

/// Convenience for tests and tools: sources from base URLs.
pub fn http_sources(urls: &[String], timeout: Duration) -> Vec<Arc<dyn BlobSource>> {
    urls.iter()
        .map(|u| Arc::new(HttpSource::new(u, timeout)) as Arc<dyn BlobSource>)
        .collect()
}

/// Reads a whole file's outboard (tests, benchmarks).
pub fn outboard_of_file(path: &Path) -> io::Result<(Hash, Outboard)> {
    Outboard::compute(&mut File::open(path)?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Behaviour {
        Honest,
        /// Flips a byte in every range it serves.
        Corrupt,
        /// Serves one byte less than asked.
        Short,
        /// Every second request fails like a dropped connection.
        Flaky,
        /// Serves `n` ranges, then every request fails.
        DiesAfter(u64),
        /// Claims one byte less in the outboard (chaining values are right).
        LyingLength,
        /// Outboard with a flipped chaining value.
        GarbageOutboard,
        /// Has nothing.
        Empty,
    }

    struct MemSource {
        name: String,
        data: Vec<u8>,
        hash: Hash,
        how: Behaviour,
        calls: AtomicU64,
        served: AtomicU64,
        /// Ranges being served now, and the most at once.
        now: AtomicU64,
        peak: AtomicU64,
        /// Other blobs this source also has.
        more: Vec<(Hash, Vec<u8>)>,
    }

    impl MemSource {
        fn new(name: &str, data: &[u8], how: Behaviour) -> Arc<MemSource> {
            Arc::new(MemSource {
                name: name.into(),
                data: data.to_vec(),
                hash: Hash::new(data),
                how,
                calls: AtomicU64::new(0),
                served: AtomicU64::new(0),
                now: AtomicU64::new(0),
                peak: AtomicU64::new(0),
                more: Vec::new(),
            })
        }
    }

    impl BlobSource for MemSource {
        fn name(&self) -> String {
            self.name.clone()
        }
        fn outboard(&self, blob: Hash) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
            Box::pin(async move {
                let data = if blob == self.hash {
                    &self.data
                } else if let Some((_, d)) = self.more.iter().find(|(h, _)| *h == blob) {
                    d
                } else {
                    return Err(SourceError::NotFound);
                };
                if self.how == Behaviour::Empty {
                    return Err(SourceError::NotFound);
                }
                let (_, mut ob) = Outboard::compute(&mut &data[..]).unwrap();
                match self.how {
                    Behaviour::LyingLength => ob.len -= 1,
                    Behaviour::GarbageOutboard => {
                        if let Some(cv) = ob.cvs.first_mut() {
                            cv[0] ^= 1;
                        } else {
                            ob.cvs.push([7; 32]);
                        }
                    }
                    _ => {}
                }
                Ok(ob.encode())
            })
        }
        fn fetch_range(
            &self,
            blob: Hash,
            offset: u64,
            len: u64,
        ) -> BoxFuture<'_, Result<Vec<u8>, SourceError>> {
            Box::pin(async move {
                let data = if blob == self.hash {
                    &self.data
                } else if let Some((_, d)) = self.more.iter().find(|(h, _)| *h == blob) {
                    d
                } else {
                    return Err(SourceError::NotFound);
                };
                let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
                self.peak.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                self.now.fetch_sub(1, Ordering::SeqCst);
                if self.how == Behaviour::Empty {
                    return Err(SourceError::NotFound);
                }
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                match self.how {
                    Behaviour::Flaky if n % 2 == 1 => {
                        return Err(SourceError::Failed("connection reset".into()));
                    }
                    Behaviour::DiesAfter(k) if n >= k => {
                        return Err(SourceError::Failed("connection refused".into()));
                    }
                    _ => {}
                }
                let start = (offset as usize).min(data.len());
                let end = (offset + len).min(data.len() as u64) as usize;
                let mut v = data[start..end].to_vec();
                match self.how {
                    Behaviour::Corrupt if !v.is_empty() => {
                        let m = v.len() / 2;
                        v[m] ^= 0x40;
                    }
                    Behaviour::Short if !v.is_empty() => {
                        v.pop();
                    }
                    _ => {}
                }
                self.served.fetch_add(v.len() as u64, Ordering::SeqCst);
                Ok(v)
            })
        }
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x = seed as u64 | 1;
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    struct Env {
        _dir: tempfile::TempDir,
        store: Arc<FsStore>,
        partial: PathBuf,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::store::open_db(&dir.path().join("db"), &Default::default()).unwrap();
        let (store, _) = FsStore::open(dir.path(), &db).unwrap();
        let partial = dir.path().join("partial");
        Env {
            _dir: dir,
            store: Arc::new(store),
            partial,
        }
    }

    fn fetcher(e: &Env, sources: &[Arc<MemSource>]) -> Fetcher {
        Fetcher::new(
            e.store.clone(),
            e.partial.clone(),
            sources
                .iter()
                .map(|s| s.clone() as Arc<dyn BlobSource>)
                .collect(),
            FetchConfig::default(),
        )
    }

    /// A two-worker runtime for tests (also used by other modules' tests).
    pub(crate) fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    const S: usize = SEGMENT_LEN as usize;

    #[test]
    fn outboard_merges_to_the_blake3_hash() {
        for len in [
            0,
            1,
            1024,
            1025,
            S - 1,
            S,
            S + 1,
            2 * S,
            3 * S + 5,
            5 * S,
            8 * S + 1,
        ] {
            let d = data(len, len as u8);
            let (h, ob) = Outboard::compute(&mut &d[..]).unwrap();
            assert_eq!(h, Hash::new(&d), "len {len}");
            assert_eq!(ob.len, len as u64);
            ob.verify(&h).unwrap();
            for i in 0..ob.segments() {
                let (off, l) = ob.segment(i);
                let seg = &d[off as usize..(off + l) as usize];
                assert!(ob.verify_segment(&h, i, seg), "len {len} segment {i}");
                if !seg.is_empty() {
                    let mut bad = seg.to_vec();
                    bad[0] ^= 1;
                    assert!(!ob.verify_segment(&h, i, &bad));
                }
            }
            assert_eq!(Outboard::decode(&ob.encode()).unwrap(), ob);
            // Another blob's hash does not verify.
            if len > S {
                assert!(ob.verify(&Hash::new(b"other")).is_err());
                let mut lie = ob.clone();
                lie.cvs.swap(0, 1);
                assert!(lie.verify(&h).is_err());
                let mut wrong_count = ob.clone();
                wrong_count.cvs.pop();
                assert!(wrong_count.verify(&h).is_err());
            }
        }
        assert!(Outboard::decode(&[0; 7]).is_err());
        assert!(Outboard::decode(&[0; 9]).is_err());
        assert!(Outboard::decode(&vec![0; MAX_OUTBOARD_BYTES + 32]).is_err());
    }

    #[test]
    fn honest_sources_share_the_work() {
        let d = data(6 * S + 777, 1);
        let h = Hash::new(&d);
        let e = env();
        let srcs = [
            MemSource::new("a", &d, Behaviour::Honest),
            MemSource::new("b", &d, Behaviour::Honest),
            MemSource::new("c", &d, Behaviour::Honest),
        ];
        let f = fetcher(&e, &srcs);
        let r = rt()
            .block_on(f.fetch(h, Some(d.len() as u64), None))
            .unwrap();
        assert_eq!(r.bytes_received, d.len() as u64);
        assert_eq!(r.fetched_segments, 7);
        assert!(r.bad_sources.is_empty());
        assert_eq!(e.store.read(&h).unwrap(), d);
        let used = srcs
            .iter()
            .filter(|s| s.served.load(Ordering::SeqCst) > 0)
            .count();
        assert!(used >= 2, "the segments came from several sources");
        // Nothing left behind; a second fetch is a no-op.
        assert_eq!(fs::read_dir(&e.partial).unwrap().count(), 0);
        assert!(
            rt().block_on(f.fetch(h, None, None))
                .unwrap()
                .already_present
        );
    }

    #[test]
    fn corrupt_and_short_sources_are_dropped_and_the_segment_fetched_elsewhere() {
        let d = data(4 * S + 3, 2);
        let h = Hash::new(&d);
        for bad in [Behaviour::Corrupt, Behaviour::Short] {
            let e = env();
            let srcs = [
                MemSource::new("bad", &d, bad),
                MemSource::new("good", &d, Behaviour::Honest),
            ];
            let f = fetcher(&e, &srcs);
            let r = rt().block_on(f.fetch(h, None, None)).unwrap();
            assert_eq!(e.store.read(&h).unwrap(), d, "{bad:?}");
            assert!(r.bad_sources.contains("bad"), "{bad:?}: {r:?}");
            assert!(!r.bad_sources.contains("good"), "{bad:?}: {r:?}");
        }
        // A small (one-segment) blob too.
        let small = data(1000, 3);
        let hs = Hash::new(&small);
        let e = env();
        let srcs = [
            MemSource::new("bad", &small, Behaviour::Corrupt),
            MemSource::new("good", &small, Behaviour::Honest),
        ];
        let r = rt()
            .block_on(fetcher(&e, &srcs).fetch(hs, None, None))
            .unwrap();
        assert_eq!(e.store.read(&hs).unwrap(), small);
        assert!(r.bad_sources.contains("bad"));
    }

    #[test]
    fn only_bad_sources_fail_cleanly_and_store_nothing() {
        let d = data(2 * S + 9, 4);
        let h = Hash::new(&d);
        let e = env();
        let srcs = [
            MemSource::new("x", &d, Behaviour::Corrupt),
            MemSource::new("y", &d, Behaviour::Empty),
        ];
        let err = rt()
            .block_on(fetcher(&e, &srcs).fetch(h, None, None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no source could deliver"), "{err}");
        assert!(
            err.contains("x: sent bad bytes") && err.contains("y: does not have it"),
            "{err}"
        );
        assert!(!e.store.has(&h).unwrap());
        let none: [Arc<MemSource>; 0] = [];
        assert!(
            rt().block_on(fetcher(&e, &none).fetch(h, None, None))
                .is_err()
        );
    }

    #[test]
    fn flaky_connections_are_retried() {
        let d = data(5 * S, 5);
        let h = Hash::new(&d);
        let e = env();
        let srcs = [
            MemSource::new("flaky1", &d, Behaviour::Flaky),
            MemSource::new("flaky2", &d, Behaviour::Flaky),
        ];
        let r = rt()
            .block_on(fetcher(&e, &srcs).fetch(h, None, None))
            .unwrap();
        assert_eq!(e.store.read(&h).unwrap(), d);
        assert!(r.bad_sources.is_empty(), "errors are not bad bytes: {r:?}");
    }

    #[test]
    fn wrong_outboards_are_refused() {
        let d = data(3 * S + 100, 6);
        let h = Hash::new(&d);
        // Garbage chaining values: refused at once, the next source's outboard is used.
        let e = env();
        let srcs = [
            MemSource::new("garbage", &d, Behaviour::GarbageOutboard),
            MemSource::new("good", &d, Behaviour::Honest),
        ];
        let r = rt()
            .block_on(fetcher(&e, &srcs).fetch(h, None, None))
            .unwrap();
        assert_eq!(e.store.read(&h).unwrap(), d);
        assert!(r.bad_sources.contains("garbage"));
        // A lying length (chaining values right): caught by the expected size...
        let e = env();
        let srcs = [
            MemSource::new("liar", &d, Behaviour::LyingLength),
            MemSource::new("good", &d, Behaviour::Honest),
        ];
        let r = rt()
            .block_on(fetcher(&e, &srcs).fetch(h, Some(d.len() as u64), None))
            .unwrap();
        assert_eq!(e.store.read(&h).unwrap(), d);
        assert!(r.bad_sources.contains("liar"));
        // ...and without one, by two honest sources failing the last segment.
        let e = env();
        let srcs = [
            MemSource::new("liar", &d, Behaviour::LyingLength),
            MemSource::new("good1", &d, Behaviour::Honest),
            MemSource::new("good2", &d, Behaviour::Honest),
        ];
        let r = rt()
            .block_on(fetcher(&e, &srcs).fetch(h, None, None))
            .unwrap();
        assert_eq!(e.store.read(&h).unwrap(), d);
        assert!(r.bad_sources.contains("liar"), "{r:?}");
        assert!(
            !r.bad_sources.contains("good1") && !r.bad_sources.contains("good2"),
            "{r:?}"
        );
    }

    #[test]
    fn an_interrupted_fetch_resumes_and_refetches_only_what_is_missing() {
        let d = data(8 * S + 5, 7);
        let h = Hash::new(&d);
        let e = env();
        // The first request is the one-segment probe (a 4 MiB prefix: kept as segment 0 once the
        // outboard verifies it), then 3 segments.
        let dying = [MemSource::new("dies", &d, Behaviour::DiesAfter(4))];
        let err = rt().block_on(fetcher(&e, &dying).fetch(h, None, None));
        assert!(err.is_err());
        assert!(
            !e.store.has(&h).unwrap(),
            "never a partial blob in the store"
        );
        // Damage one of the saved segments on disk: re-verified at resume, fetched again.
        let part = e.partial.join(format!("{}.part", h.to_hex()));
        let have = fs::read(e.partial.join(format!("{}.have", h.to_hex()))).unwrap();
        let saved: Vec<usize> = (0..have.len()).filter(|&i| have[i] == 1).collect();
        assert_eq!(saved.len(), 4, "{have:?}");
        assert_eq!(saved[0], 0, "the probe is segment 0: {have:?}");
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(b"XX", (saved[0] * S) as u64 + 10).unwrap();
        drop(f);
        // A new fetcher (a restarted process) with an honest source.
        let good = [MemSource::new("good", &d, Behaviour::Honest)];
        let r = rt()
            .block_on(fetcher(&e, &good).fetch(h, None, None))
            .unwrap();
        assert_eq!(e.store.read(&h).unwrap(), d);
        assert_eq!(r.resumed_segments, 3, "{r:?}");
        assert_eq!(r.fetched_segments, 6, "{r:?}");
        assert_eq!(
            good[0].served.load(Ordering::SeqCst),
            d.len() as u64 - 3 * SEGMENT_LEN
        );
    }

    #[test]
    fn per_source_requests_are_capped_across_blobs() {
        let blobs: Vec<Vec<u8>> = (0..3).map(|i| data(5 * S + 1, 20 + 2 * i)).collect();
        let mut src = MemSource::new("one", &blobs[0], Behaviour::Honest);
        Arc::get_mut(&mut src).unwrap().more = blobs[1..]
            .iter()
            .map(|b| (Hash::new(b), b.clone()))
            .collect();
        let e = env();
        let f = fetcher(&e, std::slice::from_ref(&src));
        let rt = rt();
        rt.block_on(async {
            let futs = blobs
                .iter()
                .map(|b| f.fetch(Hash::new(b), Some(b.len() as u64), None));
            for r in futures::future::join_all(futs).await {
                r.unwrap();
            }
        });
        for b in &blobs {
            assert_eq!(e.store.read(&Hash::new(b)).unwrap(), *b);
        }
        let peak = src.peak.load(Ordering::SeqCst);
        assert!(
            peak <= FetchConfig::default().per_source as u64,
            "{peak} requests at once to one source"
        );
        assert!(peak >= 2, "requests run in parallel: {peak}");
    }

    #[test]
    fn the_same_blob_fetched_twice_at_once() {
        let d = data(3 * S + 7, 40);
        let h = Hash::new(&d);
        let e = env();
        let src = [MemSource::new("a", &d, Behaviour::Honest)];
        let f = fetcher(&e, &src);
        let (a, b) =
            rt().block_on(async { futures::join!(f.fetch(h, None, None), f.fetch(h, None, None)) });
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(
            a.already_present != b.already_present,
            "one fetched it, the other found it"
        );
        assert_eq!(e.store.read(&h).unwrap(), d);
    }

    /// Segments fetched one after the other from one HTTP source use one connection: the body
    /// is read to its end, so the connection goes back to the pool.
    #[test]
    fn an_http_source_reuses_its_connection_for_full_segments() {
        use axum::response::IntoResponse;
        let rt = rt();
        let accepted = Arc::new(AtomicU64::new(0));
        let a2 = accepted.clone();
        let addr = rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let l = axum::serve::ListenerExt::tap_io(l, move |_| {
                a2.fetch_add(1, Ordering::SeqCst);
            });
            let app = axum::Router::new().route(
                "/api/v1/blobs/{hash}",
                axum::routing::get(|| async {
                    (
                        axum::http::StatusCode::PARTIAL_CONTENT,
                        [(
                            axum::http::header::CONTENT_RANGE,
                            format!("bytes 0-{}/{}", SEGMENT_LEN - 1, 3 * SEGMENT_LEN),
                        )],
                        vec![7u8; SEGMENT_LEN as usize],
                    )
                        .into_response()
                }),
            );
            tokio::spawn(async move { axum::serve(l, app).await });
            addr
        });
        let src = HttpSource::new(&format!("http://{addr}"), Duration::from_secs(10));
        let blob = Hash::new(b"x");
        for _ in 0..3 {
            let d = rt.block_on(src.fetch_range(blob, 0, SEGMENT_LEN)).unwrap();
            assert_eq!(d.len() as u64, SEGMENT_LEN);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for three segments"
        );
    }
}
