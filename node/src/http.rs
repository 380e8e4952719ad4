//! The node's HTTP server: the pacman repository, a JSON API, health.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /health` | `ok` |
//! | `GET /`, `/pkg`, `/logs/ENTRY`, `/metrics` | status page, package history, live logs, Prometheus ([`crate::web`]) |
//! | `GET /NAME/os/ARCH/FILE` | the served generation of a repository (what pacman fetches) |
//! | `GET /api/v1/status` | node identity, policy, counters, queue summary, state digest, generations |
//! | `GET /api/v1/queue` | every queue entry with its status |
//! | `GET /api/v1/entries/ID` | one entry: source, claims, reports |
//! | `GET /api/v1/authors/KEY/head` | an author's highest stored sequence number and its event id |
//! | `GET /api/v1/policy` | the signed mesh policy (CBOR) |
//! | `POST /api/v1/events` | a `Signed<Event>` (CBOR); 200 accepted/duplicate, 4xx with the reason |
//! | `PUT /api/v1/blobs` | upload a blob (a source snapshot); answers its blake3 |
//! | `GET /api/v1/blobs/HASH` | a blob (build logs, packages, snapshots), verified on read; with `Range: bytes=A-B` the part asked for, unverified (fetchers verify it against the outboard) |
//! | `GET /api/v1/blobs/HASH/outboard` | the blob's length and segment chaining values ([`crate::fetch`]) |
//! | `POST /api/v1/sync` | anti-entropy: a CBOR `SyncRequest` answered by a CBOR `SyncResponse` |
//! | `GET /api/v1/events/ID` | one stored `Signed<Event>` (CBOR), as received |
//! | `GET /api/v1/repos/NAME/history` | the generations of a repository (every architecture), newest first, with package changes |
//! | `GET /NAME/gen/G/os/ARCH/FILE` | a file of generation G (kept generations only), read-only |
//! | `POST /api/v1/blobs/HASH/fetch` | fetch a blob from the mesh peers ([`crate::blob_fetch`]) |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use pacmesh_protocol::{Hash, PublicKey, Timestamp};
use serde_json::json;

use crate::core::Core;
use crate::ingest::IngestOutcome;
use crate::store::BlobStore;
use crate::views;

/// Largest uploaded blob (a PKGBUILD folder snapshot).
pub const MAX_UPLOAD: usize = 64 << 20;

/// Binds `addr` and returns the bound address (port 0 picks one) and the server future.
pub async fn bind(
    core: Arc<Core>,
    addr: SocketAddr,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for HTTP on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = router(core);
    let listener = axum::serve::ListenerExt::tap_io(listener, nodelay);
    Ok((local, async move { axum::serve(listener, app).await }))
}

/// Requests the blob listener ([`bind_blobs`]) answers at once; more wait for a turn. A turn
/// is held until the response body has been sent, so at most this many segment buffers
/// (4 MiB) are held by the listener at any time.
pub const BLOB_HTTP_CONCURRENCY: usize = 16;

/// Connections the blob listener keeps open at once; one more is accepted and closed at once
/// (the fetcher then asks over libp2p).
pub const BLOB_HTTP_CONNECTIONS: usize = 128;

/// Connections the blob listener keeps open at once from one IP address (a fetching node
/// keeps a few per blob it fetches).
pub const BLOB_HTTP_CONNECTIONS_PER_IP: usize = 16;

/// A connection of the blob listener that neither reads nor writes a byte for this long is
/// closed: an idle keep-alive connection, a client that sends no request or stops reading.
pub const BLOB_HTTP_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// A TCP listener that holds a bounded number of accepted connections (each carries a
/// permit and its IP's count, returned when hyper drops it), closes connections that stay
/// idle, and sets `TCP_NODELAY` on them.
struct Limited {
    inner: tokio::net::TcpListener,
    permits: Arc<tokio::sync::Semaphore>,
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    max_per_ip: usize,
    idle: std::time::Duration,
}

/// An accepted connection of a [`Limited`] listener.
struct Permitted {
    stream: tokio::net::TcpStream,
    _permit: tokio::sync::OwnedSemaphorePermit,
    ip: std::net::IpAddr,
    per_ip: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    idle: std::time::Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Drop for Permitted {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Permitted {
    /// After an I/O poll: progress pushes the idle deadline back; no progress past it is an
    /// error that closes the connection.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        r: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::future::Future;
        match r {
            std::task::Poll::Ready(r) => {
                let next = tokio::time::Instant::now() + self.idle;
                self.deadline.as_mut().reset(next);
                std::task::Poll::Ready(r)
            }
            std::task::Poll::Pending => match self.deadline.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "blob listener: connection idle",
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

impl tokio::io::AsyncRead for Permitted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let r = std::pin::Pin::new(&mut self.stream).poll_read(cx, buf);
        self.watch(cx, r)
    }
}

impl tokio::io::AsyncWrite for Permitted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, r)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl axum::serve::Listener for Limited {
    type Io = Permitted;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Permitted, SocketAddr) {
        loop {
            let (mut stream, addr) = match self.inner.accept().await {
                Ok(a) => a,
                // As axum's own TCP listener: a failed accept (a reset connection, or no file
                // descriptor left) is logged and retried, after a pause when the process is
                // short of resources.
                Err(e) => {
                    tracing::debug!("blob listener: accept failed: {e}");
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    continue;
                }
            };
            // Full, or too many from this address: closed at once (dropped), so that the
            // client learns it now rather than after a timeout.
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                tracing::debug!(%addr, "blob listener full: connection closed");
                continue;
            };
            let ip = addr.ip();
            {
                let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                let n = m.entry(ip).or_insert(0);
                if *n >= self.max_per_ip {
                    tracing::debug!(%addr, "blob listener: too many connections from this address");
                    continue;
                }
                *n += 1;
            }
            nodelay(&mut stream);
            let deadline = Box::pin(tokio::time::sleep(self.idle));
            return (
                Permitted {
                    stream,
                    _permit: permit,
                    ip,
                    per_ip: self.per_ip.clone(),
                    idle: self.idle,
                    deadline,
                },
                addr,
            );
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// `GET /api/v1/blobs/HASH` on the blob listener: ranges only, at most one segment (4 MiB)
/// per request, the bytes unverified (the fetcher checks them against the outboard). Nothing
/// on this listener hashes a whole blob per request (outboards are computed once and cached),
/// so a stranger's requests cost reads and sends, as on `/pacmesh/blobs/2`.
async fn blob_segment(
    State((core, turns)): State<(Arc<Core>, Arc<tokio::sync::Semaphore>)>,
    Path(hash): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(hash) = hash.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a blake3 hash"),
        );
    };
    let Some(range) = headers.get(header::RANGE) else {
        return error(
            StatusCode::BAD_REQUEST,
            "this listener serves byte ranges only (Range: bytes=A-B, at most 4 MiB)",
        );
    };
    let Ok(turn) = turns.acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    crate::http_sync::blob_range(&core, hash, range, Some(turn)).await
}

/// `GET /api/v1/blobs/HASH/outboard` on the blob listener, one turn of the listener's.
async fn blob_outboard(
    State((core, turns)): State<(Arc<Core>, Arc<tokio::sync::Semaphore>)>,
    path: Path<String>,
) -> Response {
    let Ok(_turn) = turns.acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    crate::http_sync::outboard(State(core), path).await
}

/// Binds the peers' blob listener at `addr` (`[mesh] blob_http`): only `GET
/// /api/v1/blobs/HASH` with `Range` (at most 4 MiB per request, unverified bytes, checked by
/// the fetcher against the outboard) and `GET /api/v1/blobs/HASH/outboard`, at most
/// [`BLOB_HTTP_CONCURRENCY`] at once over at most [`BLOB_HTTP_CONNECTIONS`] connections
/// ([`BLOB_HTTP_CONNECTIONS_PER_IP`] from one address), each closed after
/// [`BLOB_HTTP_IDLE`] without progress. Nothing else of the node's API is reachable there.
pub async fn bind_blobs(
    core: Arc<Core>,
    addr: SocketAddr,
) -> anyhow::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for blob HTTP on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let turns = Arc::new(tokio::sync::Semaphore::new(BLOB_HTTP_CONCURRENCY));
    let app = Router::new()
        .route("/api/v1/blobs/{hash}", get(blob_segment))
        .route("/api/v1/blobs/{hash}/outboard", get(blob_outboard))
        .with_state((core, turns));
    let listener = Limited::new(
        listener,
        BLOB_HTTP_CONNECTIONS,
        BLOB_HTTP_CONNECTIONS_PER_IP,
        BLOB_HTTP_IDLE,
    );
    Ok((local, async move { axum::serve(listener, app).await }))
}

impl Limited {
    fn new(
        inner: tokio::net::TcpListener,
        max: usize,
        max_per_ip: usize,
        idle: std::time::Duration,
    ) -> Self {
        Limited {
            inner,
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            per_ip: Default::default(),
            max_per_ip,
            idle,
        }
    }
}

/// Sets `TCP_NODELAY` on an accepted connection. hyper writes a response's head and body
/// separately; with Nagle's algorithm on, every request after the first on a keep-alive
/// connection then waits for the client's delayed ACK (40 ms on Linux): 4000 small blobs
/// fetched by a mirror, or the packages pacman downloads one after another, paid that each.
pub fn nodelay(s: &mut tokio::net::TcpStream) {
    if let Err(e) = s.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
}

pub fn router(core: Arc<Core>) -> Router {
    let (events_limit, sync_limit) = {
        let l = core.ingest().limits().clone();
        (
            l.max_event_bytes.max(l.max_manifest_bytes) + 1024,
            l.max_sync_bytes,
        )
    };
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(status))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/entries/{id}", get(entry))
        .route("/api/v1/why/{pkg}", get(why))
        .route("/api/v1/authors/{key}/head", get(author_head))
        .route("/api/v1/policy", get(policy))
        .route(
            "/api/v1/events",
            post(submit_event).layer(DefaultBodyLimit::max(events_limit)),
        )
        .route(
            "/api/v1/blobs",
            put(upload_blob).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/api/v1/blobs/{hash}", get(get_blob))
        .route(
            "/api/v1/blobs/{hash}/outboard",
            get(crate::http_sync::outboard),
        )
        .route(
            "/api/v1/sync",
            post(crate::http_sync::sync).layer(DefaultBodyLimit::max(sync_limit)),
        )
        .route("/api/v1/events/{id}", get(crate::http_sync::event))
        .route(
            "/api/v1/repos/{repo}/history",
            get(crate::http_sync::history),
        )
        .route(
            "/{repo}/gen/{generation}/os/{arch}/{file}",
            get(crate::http_sync::generation_file),
        )
        .route(
            "/api/v1/blobs/{hash}/fetch",
            post(crate::blob_fetch::fetch_handler),
        )
        .route("/{repo}/os/{arch}/{file}", get(repo_file))
        .merge(crate::web::routes())
        .with_state(core)
}

pub(crate) fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

/// Runs a read of the node's state off the async workers: the ingest lock may be held by a
/// durable write.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

async fn status(State(core): State<Arc<Core>>) -> Response {
    match blocking(move || views::status(&core, Timestamp::now())).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn queue(State(core): State<Arc<Core>>) -> Response {
    match blocking(move || views::queue(&core.ingest(), Timestamp::now())).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn entry(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an entry id (64 hex digits)"),
        );
    };
    let found = blocking(move || {
        let ingest = core.ingest();
        ingest
            .state()
            .entry(&id)
            .map(|e| views::entry(&ingest, e, Timestamp::now(), true))
    })
    .await;
    match found {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no entry {id}")),
        Err(r) => r,
    }
}

async fn why(State(core): State<Arc<Core>>, Path(pkg): Path<String>) -> Response {
    if pkg.is_empty() || pkg.len() > 256 {
        return error(
            StatusCode::BAD_REQUEST,
            "a package name is 1 to 256 characters",
        );
    }
    match blocking(move || crate::why::why(&core, &pkg, Timestamp::now())).await {
        Ok(v) => axum::Json(v).into_response(),
        Err(r) => r,
    }
}

async fn author_head(State(core): State<Arc<Core>>, Path(key): Path<String>) -> Response {
    let Ok(author) = key.parse::<PublicKey>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{key:?} is not a public key (64 hex digits)"),
        );
    };
    let last = match blocking(move || core.ingest().events().last(&author)).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let (seq, id) = match last {
        Ok(Some((seq, slot))) => (seq, Some(slot.id.to_string())),
        Ok(None) => (0, None),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    axum::Json(json!({ "author": author.to_string(), "seq": seq, "id": id })).into_response()
}

async fn policy(State(core): State<Arc<Core>>) -> Response {
    let bytes = core.ingest().signed_policy().to_bytes();
    ([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response()
}

async fn submit_event(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let c = core.clone();
    let outcome = match tokio::task::spawn_blocking(move || c.ingest_bytes(&body)).await {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match outcome {
        IngestOutcome::Accepted { id } => {
            axum::Json(json!({ "result": "accepted", "id": id.to_string() })).into_response()
        }
        IngestOutcome::Duplicate { id } => {
            axum::Json(json!({ "result": "duplicate", "id": id.to_string() })).into_response()
        }
        IngestOutcome::Rejected { reason } => {
            tracing::info!(reason = %reason, label = reason.label(), "event rejected");
            // A storage failure on this node is not the client's fault: retry later.
            let code = if reason.is_peer_fault() {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            (
                code,
                axum::Json(json!({ "error": reason.to_string(), "reason": reason.label() })),
            )
                .into_response()
        }
    }
}

async fn upload_blob(State(core): State<Arc<Core>>, body: Bytes) -> Response {
    let c = core.clone();
    match tokio::task::spawn_blocking(move || c.blobs.import_bytes(&body)).await {
        Ok(Ok(hash)) => axum::Json(json!({ "blake3": hash.to_string() })).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub(crate) async fn get_blob(
    State(core): State<Arc<Core>>,
    Path(hash): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(hash) = hash.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a blake3 hash"),
        );
    };
    if let Some(range) = headers.get(header::RANGE) {
        return crate::http_sync::blob_range(&core, hash, range, None).await;
    }
    // Verified by hashing the file first (streaming, bounded memory), then streamed; the file
    // is read-only and named by its hash, so what was verified is what is sent.
    let c = core.clone();
    let checked = blocking(
        move || -> std::io::Result<Option<(std::path::PathBuf, u64)>> {
            if !c.blobs.has(&hash).map_err(std::io::Error::other)? {
                return Ok(None);
            }
            let path = c.blobs.path_of(&hash);
            let mut f = std::fs::File::open(&path)?;
            let mut h = blake3::Hasher::new();
            let len = std::io::copy(&mut f, &mut h)?;
            if Hash::from(h.finalize()) != hash {
                return Err(std::io::Error::other(format!(
                    "blob {hash} is damaged on disk"
                )));
            }
            Ok(Some((path, len)))
        },
    )
    .await;
    let (path, len) = match checked {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return error(StatusCode::NOT_FOUND, format!("no blob {hash}")),
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(r) => return r,
    };
    stream_file(&path, len).await
}

async fn stream_file(path: &std::path::Path, len: u64) -> Response {
    let f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(f, 256 << 10),
        ))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A file of the served generation. Names are checked (no path separators, no dot files), and
/// the `current` link is resolved once per request, so one response is one generation's file.
async fn repo_file(
    State(core): State<Arc<Core>>,
    Path((repo, arch, file)): Path<(String, String, String)>,
) -> Response {
    let ok_name = |s: &str| !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0']);
    if !ok_name(&repo) || !ok_name(&arch) || !ok_name(&file) {
        return error(StatusCode::NOT_FOUND, "no such file");
    }
    let path = crate::generation::served_dir(&core.data_dir, &repo, &arch).join(&file);
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("{repo}/os/{arch}/{file}: not published"),
            );
        }
    };
    let len = match f.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return error(StatusCode::NOT_FOUND, "no such file"),
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(f, 256 << 10),
        ))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::tests::rt;
    use std::io::{Read, Write};
    use std::time::Duration;

    fn serve(rt: &tokio::runtime::Runtime, max: usize, per_ip: usize, idle_ms: u64) -> SocketAddr {
        rt.block_on(async {
            let inner = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = inner.local_addr().unwrap();
            let listener = Limited::new(inner, max, per_ip, Duration::from_millis(idle_ms));
            let app = Router::new().route("/", get(|| async { "hi" }));
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        })
    }

    fn connect(addr: SocketAddr) -> std::net::TcpStream {
        let c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    /// Sends a request; the answer's text ("" when the server closed the connection).
    fn ask(c: &mut std::net::TcpStream) -> String {
        let _ = c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n");
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).to_string()
    }

    /// A [`Limited`] listener holds at most its number of connections: one more is closed at
    /// once (not left waiting in the accept queue, where its client would only time out), and
    /// a connection is served again once an earlier one closed.
    #[test]
    fn the_blob_listener_holds_a_bounded_number_of_connections() {
        let rt = rt();
        let addr = serve(&rt, 2, 2, 60_000);
        let (mut a, mut b) = (connect(addr), connect(addr));
        assert!(ask(&mut a).ends_with("hi"));
        assert!(ask(&mut b).ends_with("hi"));
        let t = std::time::Instant::now();
        let mut c = connect(addr);
        assert_eq!(ask(&mut c), "", "a third connection was served");
        assert!(t.elapsed() < Duration::from_secs(3), "closed at once");
        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut d = connect(addr);
            if ask(&mut d).ends_with("hi") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never served again");
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(b);
    }

    /// At most `per_ip` connections from one address.
    #[test]
    fn the_blob_listener_limits_connections_per_address() {
        let rt = rt();
        let addr = serve(&rt, 10, 1, 60_000);
        let mut a = connect(addr);
        assert!(ask(&mut a).ends_with("hi"));
        let mut b = connect(addr);
        assert_eq!(
            ask(&mut b),
            "",
            "a second connection from 127.0.0.1 was served"
        );
        assert!(ask(&mut a).ends_with("hi"), "the first one still is");
    }

    /// A connection without a request, or idle after one, is closed after the idle time and
    /// frees its place.
    #[test]
    fn the_blob_listener_closes_idle_connections() {
        let rt = rt();
        let addr = serve(&rt, 1, 1, 300);
        let mut a = connect(addr);
        let t = std::time::Instant::now();
        let mut buf = [0u8; 16];
        assert_eq!(
            a.read(&mut buf).unwrap_or(0),
            0,
            "an idle connection stays open"
        );
        assert!(t.elapsed() < Duration::from_secs(4));
        // Its place is free again.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut b = connect(addr);
            if ask(&mut b).ends_with("hi") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the place was not freed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
