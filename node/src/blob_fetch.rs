//! `pacmesh blob fetch HASH`: have a node fetch one blob by its BLAKE3 from its mesh peers.
//!
//! The node runs the same replication as for the blobs its role wants
//! ([`crate::net::replicate::fetch`]): outboards from every connected peer, 4 MiB segments
//! from all peers whose outboard matches, each segment verified before it is written, the
//! finished file fsynced and moved into the store (not hashed again: every segment verified).
//! Useful to pre-seed a mirror or a new builder with
//! a large blob, to check that the mesh still holds one, and to measure replication
//! (`node/benches/mesh_bench.rs`).
//!
//! HTTP: `POST /api/v1/blobs/HASH/fetch` (empty body) answers when the blob is in the store:
//! `{"blake3", "size", "transferred", "peers", "elapsed_ms"}`; 502 with the reason if no
//! connected peer has it or every holder failed; 503 without the mesh or when
//! [`MAX_MANUAL_FETCHES`] are running. The blob is not pinned: unless an event refers to it,
//! garbage collection removes it after its grace period (a day).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use clap::Subcommand;
use pacmesh_protocol::Hash;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::core::Core;
use crate::store::BlobStore;

/// Fetches requested over HTTP that may run at once per process.
pub const MAX_MANUAL_FETCHES: usize = 2;

static SLOTS: Semaphore = Semaphore::const_new(MAX_MANUAL_FETCHES);

/// `pacmesh blob ...`
#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Ask a node to fetch a blob (package, log, snapshot, database) by BLAKE3 from its peers,
    /// verified segment by segment; prints the size, bytes transferred and the rate.
    Fetch {
        /// The blob's BLAKE3 (64 hex digits).
        hash: String,
        #[arg(long, default_value = crate::config::DEFAULT_NODE_URL, value_name = "URL")]
        node: String,
        #[arg(long)]
        json: bool,
    },
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

/// `POST /api/v1/blobs/{hash}/fetch`.
pub async fn fetch_handler(State(core): State<Arc<Core>>, Path(hash): Path<String>) -> Response {
    let Ok(hash) = hash.parse::<Hash>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a blake3 hash (64 hex digits)"),
        );
    };
    let Some(net) = core.net.get().cloned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this node runs without the mesh (mesh.enabled = false)",
        );
    };
    let Ok(_slot) = SLOTS.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_MANUAL_FETCHES} fetches are running already; try again later"),
        );
    };
    let peers = net.blob_peers();
    let start = Instant::now();
    let r = crate::net::replicate::fetch(&core, &net, hash, &peers).await;
    let elapsed = start.elapsed();
    match r {
        Ok(transferred) => {
            let size = core.blobs.info(&hash).ok().flatten().map_or(0, |i| i.size);
            tracing::info!(blob = %hash.fmt_short(), size, transferred, ?elapsed, "blob fetched on request");
            axum::Json(json!({
                "blake3": hash.to_string(),
                "size": size,
                "transferred": transferred,
                "peers": peers.len(),
                "elapsed_ms": elapsed.as_secs_f64() * 1000.0,
            }))
            .into_response()
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("{e:#}")),
    }
}

/// Runs `pacmesh blob ...`.
pub fn command(cmd: BlobCommand) -> Result<()> {
    match cmd {
        BlobCommand::Fetch { hash, node, json } => {
            let h: Hash = hash
                .parse()
                .map_err(|_| anyhow!("{hash:?} is not a blake3 hash (64 hex digits)"))?;
            let v = request_fetch(&node, &h)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let size = v["size"].as_u64().unwrap_or(0);
                let ms = v["elapsed_ms"].as_f64().unwrap_or(0.0);
                let rate = if ms > 0.0 {
                    size as f64 / (1 << 20) as f64 / (ms / 1000.0)
                } else {
                    0.0
                };
                println!(
                    "{h}: {size} bytes ({} transferred from {} connected peer(s)) in {:.0} ms, {rate:.0} MiB/s",
                    v["transferred"].as_u64().unwrap_or(0),
                    v["peers"].as_u64().unwrap_or(0),
                    ms
                );
            }
            Ok(())
        }
    }
}

/// Asks the node at `node` to fetch `hash`; returns its JSON answer.
pub fn request_fetch(node: &str, hash: &Hash) -> Result<Value> {
    let base = node.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("{base}/api/v1/blobs/{hash}/fetch");
    let mut resp = agent
        .post(&url)
        .send_empty()
        .map_err(|e| anyhow!("cannot reach the node at {base}: {e}"))?;
    let status = resp.status();
    let text = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .context("reading the node's answer")?;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if !status.is_success() {
        let msg = v["error"]
            .as_str()
            .map_or_else(|| v.to_string(), str::to_string);
        bail!("the node could not fetch {}: {msg}", hash.fmt_short());
    }
    Ok(v)
}
