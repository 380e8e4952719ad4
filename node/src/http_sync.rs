//! HTTP handlers for followers (mirrors, other nodes): anti-entropy sync, blob ranges and
//! outboards for the [fetch engine](crate::fetch), single events, repository history and
//! generation-pinned repository files. Routed in [`crate::http::router`].

use std::io::SeekFrom;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pacmesh_protocol::{Hash, Message, Name, SyncRequest};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::core::Core;
use crate::http::{blocking, error};

/// `POST /api/v1/sync`: CBOR `SyncRequest` (size-limited by the protocol limits) → CBOR
/// `SyncResponse`; with `x-pacmesh-delta-bases`, the [`crate::delta`] framing instead.
pub async fn sync(
    State(core): State<Arc<Core>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let bases = headers
        .get(crate::delta::BASES_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(crate::delta::parse_bases);
    let r = blocking(move || -> Result<(&'static str, Vec<u8>), String> {
        let ingest = core.ingest();
        let req = SyncRequest::decode(&body, ingest.limits()).map_err(|e| e.to_string())?;
        let resp = ingest.sync_response(&req).map_err(|e| e.to_string())?;
        match bases {
            Some(bases) => {
                let load = |id: &Hash| ingest.events().get(id).ok().flatten();
                let bytes = crate::delta::encode_response(&resp, &bases, load, ingest.limits());
                Ok((crate::delta::CONTENT_TYPE, bytes))
            }
            None => Ok((
                "application/cbor",
                resp.encode().map_err(|e| e.to_string())?,
            )),
        }
    })
    .await;
    match r {
        Ok(Ok((ct, bytes))) => ([(header::CONTENT_TYPE, ct)], bytes).into_response(),
        Ok(Err(e)) => error(StatusCode::BAD_REQUEST, format!("sync request: {e}")),
        Err(r) => r,
    }
}

/// `GET /api/v1/blobs/HASH/outboard`.
pub async fn outboard(State(core): State<Arc<Core>>, Path(hash): Path<String>) -> Response {
    let Ok(hash) = hash.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a blake3 hash"),
        );
    };
    match blocking(move || crate::fetch::outboard_of(&core.blobs, &hash)).await {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no blob {hash}")),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(r) => r,
    }
}

/// Parses `bytes=A-B` / `bytes=A-` (one range) against a length: `(offset, len)`.
fn parse_range(v: &HeaderValue, size: u64) -> Option<(u64, u64)> {
    let s = v.to_str().ok()?.strip_prefix("bytes=")?;
    let (a, b) = s.split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = match b.trim() {
        "" => size.checked_sub(1)?,
        b => b.parse::<u64>().ok()?.min(size.checked_sub(1)?),
    };
    (start <= end).then(|| (start, end - start + 1))
}

/// A byte range of a stored blob (not verified here: the fetcher verifies each segment against
/// the outboard, and a whole-blob `GET` without `Range` is verified as before). With `turn`
/// (the blob listener, [`crate::http::bind_blobs`]): at most one segment (4 MiB) from the
/// range's start (the `Content-Range` says which), read at once into a pooled buffer that
/// holds the turn until the body is sent. Without: streamed in 256 KiB reads.
pub async fn blob_range(
    core: &Core,
    hash: Hash,
    range: &HeaderValue,
    turn: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let c_has = {
        let blobs = core.blobs.clone();
        blocking(move || crate::store::BlobStore::has(blobs.as_ref(), &hash)).await
    };
    match c_has {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return error(StatusCode::NOT_FOUND, format!("no blob {hash}")),
        Ok(Err(e)) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(r) => return r,
    }
    let path = core.blobs.path_of(&hash);
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return error(StatusCode::NOT_FOUND, format!("no blob {hash}")),
    };
    let size = match f.metadata().await {
        Ok(m) => m.len(),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some((off, len)) = parse_range(range, size) else {
        return Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{size}"))
            .body(Body::empty())
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()));
    };
    let len = if turn.is_some() {
        len.min(crate::bufpool::BUF_LEN as u64)
    } else {
        len
    };
    let partial = |body: Body| {
        Response::builder()
            .status(StatusCode::PARTIAL_CONTENT)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {off}-{}/{size}", off + len - 1),
            )
            .body(body)
            .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
    };
    if let Some(turn) = turn {
        // A fetcher's segment: one read on the blocking pool into a pooled buffer, sent as one
        // body (no per-chunk hops between the runtime and the blocking pool), and the buffer
        // goes back to the pool once sent.
        let f = f.into_std().await;
        let read = blocking(move || -> std::io::Result<Vec<u8>> {
            use std::os::unix::fs::FileExt;
            let mut buf = crate::bufpool::SEGMENTS.take(len as usize);
            f.read_exact_at(&mut buf, off)?;
            Ok(buf)
        })
        .await;
        return match read {
            Ok(Ok(buf)) => partial(Body::from(Bytes::from_owner(crate::bufpool::Pooled(
                buf,
                Some(turn),
            )))),
            Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            Err(r) => r,
        };
    }
    if let Err(e) = f.seek(SeekFrom::Start(off)).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    partial(Body::from_stream(
        tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10),
    ))
}

/// `GET /api/v1/events/ID`: the stored signed event.
pub async fn event(State(core): State<Arc<Core>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an event id"),
        );
    };
    match blocking(move || core.ingest().events().get(&id)).await {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/cbor")], bytes).into_response()
        }
        Ok(Ok(None)) => error(StatusCode::NOT_FOUND, format!("no event {id}")),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        Err(r) => r,
    }
}

/// `GET /api/v1/repos/NAME/history`.
pub async fn history(State(core): State<Arc<Core>>, Path(repo): Path<String>) -> Response {
    let Ok(repo) = Name::new(repo.clone()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{repo:?} is not a repository name"),
        );
    };
    let r = blocking(move || {
        let ingest = core.ingest();
        let arches = ingest.policy().repo(&repo).map(|r| r.arches.clone());
        arches.map(|a| crate::history::history_json(ingest.state(), &repo, &a))
    })
    .await;
    match r {
        Ok(Some(v)) => axum::Json(v).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "no such repository in the mesh policy",
        ),
        Err(r) => r,
    }
}

fn ok_name(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('.') && !s.contains(['/', '\\', '\0'])
}

/// `GET /NAME/gen/G/os/ARCH/FILE`: a file of a kept generation.
pub async fn generation_file(
    State(core): State<Arc<Core>>,
    Path((repo, generation, arch, file)): Path<(String, String, String, String)>,
) -> Response {
    let Ok(g) = generation.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, "no such generation");
    };
    if !ok_name(&repo) || !ok_name(&arch) || !ok_name(&file) {
        return error(StatusCode::NOT_FOUND, "no such file");
    }
    let path = crate::generation::generation_dir(&core.data_dir, &repo, &arch, g).join(&file);
    serve_file(&path, &format!("{repo}/gen/{g}/os/{arch}/{file}")).await
}

/// Streams a regular file (symlinks followed), 404 otherwise.
pub async fn serve_file(path: &std::path::Path, what: &str) -> Response {
    let f = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(_) => return error(StatusCode::NOT_FOUND, format!("{what}: not found")),
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

    #[test]
    fn ranges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(parse_range(&h("bytes=0-9"), 100), Some((0, 10)));
        assert_eq!(parse_range(&h("bytes=90-"), 100), Some((90, 10)));
        assert_eq!(parse_range(&h("bytes=0-4194303"), 100), Some((0, 100)));
        assert_eq!(parse_range(&h("bytes=100-200"), 100), None);
        assert_eq!(parse_range(&h("bytes=5-2"), 100), None);
        assert_eq!(parse_range(&h("bytes=0-0"), 0), None);
        assert_eq!(parse_range(&h("items=0-1"), 100), None);
    }
}
