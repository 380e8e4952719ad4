//! A mirror on the libp2p mesh (`pacmesh mirror --bootstrap MULTIADDR [--listen MULTIADDR]`).
//!
//! The mirror runs the same network layer as a node ([`crate::net`]) with its own ed25519
//! identity (`DATA/node.key`): gossip of signed events with application validation,
//! anti-entropy sync, identify, kademlia, mDNS unless turned off, the blob protocol. Every
//! event it receives goes through [`crate::core::Core::ingest_from`], the same verify-then-apply
//! pipeline as a node's, so a forged or unchained manifest is refused and its sender charged a
//! fault.
//!
//! What differs from a node:
//!
//! - **It never builds or claims.** Its announcements carry zero build slots and the tag
//!   `mirror`, so no node ranks it as a builder ([`crate::peers::PeerTable::eligible`] needs
//!   a free slot); it runs no executor and holds no publisher key.
//! - **It fetches generations, not entries.** It asks for nothing through the node's
//!   replication task; [`crate::mirror::Mirror`] fetches every blob of the newest generation
//!   with the fetch engine, the sources being the connected peers ([`peer_sources`], in a
//!   per-blob rotation so that small packages spread over the providers) plus any `--follow`
//!   peers. A peer caught sending bytes that do not verify is charged a fault and banned
//!   ([`crate::net::NetHandle::fault`]).
//! - **It is a provider.** Its content store answers `/pacmesh/blobs/1` like a node's, so
//!   nodes and other mirrors replicate from it.
//! - **It keeps what it serves.** Accepted events do not pin their blobs
//!   ([`crate::core::Core::set_pin_events`]); the kept generations do.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use libp2p::PeerId;
use pacmesh_protocol::{Capabilities, Hash, Name};
use tokio::sync::watch;

use crate::core::Core;
use crate::fetch::BlobSource;
use crate::mirror::MirrorConfig;
use crate::net::NetHandle;

/// The tag a mirror announces.
pub const MIRROR_TAG: &str = "mirror";

/// How often a mirror announces itself (its digest lets peers see what it lacks).
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a mirror asks a random peer for events it lacks (gossip brings most of them;
/// manifests too large for gossip come by sync after the publisher's announcement).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// What a mirror announces: no build slots (never ranked as a builder), tag `mirror`.
pub fn capabilities(cfg: &MirrorConfig) -> Capabilities {
    let name = |s: &str| Name::new(s).expect("a valid name");
    Capabilities {
        arch: name(std::env::consts::ARCH),
        microarch: 0,
        cores: 0,
        memory_bytes: 0,
        disk_free_bytes: disk_free(&cfg.data_dir).unwrap_or(0),
        tags: vec![name(MIRROR_TAG)],
        profile: name("none"),
        load: 0,
        slots: 0,
        busy: 0,
    }
}

fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Checks the mesh flags of `cfg` (multiaddrs) without starting anything.
pub fn check(cfg: &MirrorConfig) -> Result<()> {
    crate::net::parse_addrs(&cfg.listen).context("--listen")?;
    crate::net::parse_addrs(&cfg.bootstrap).context("--bootstrap")?;
    Ok(())
}

/// Starts the mirror's network. Returns once it listens; runs until `stop` turns true.
pub async fn start(
    core: &Arc<Core>,
    cfg: &MirrorConfig,
    stop: watch::Receiver<bool>,
) -> Result<(NetHandle, tokio::task::JoinHandle<Result<()>>)> {
    let caps = capabilities(cfg);
    let ncfg = crate::net::NetConfig {
        listen: crate::net::parse_addrs(&cfg.listen).context("--listen")?,
        bootstrap: crate::net::parse_addrs(&cfg.bootstrap).context("--bootstrap")?,
        mdns: cfg.mdns,
        relay_server: false,
        relays: Vec::new(),
        announce_interval: ANNOUNCE_INTERVAL,
        sync_interval: SYNC_INTERVAL,
        max_connections: 64,
        capabilities: Arc::new(move || caps.clone()),
        // The mirror fetches generations itself (crate::mirror), nothing else.
        replicate: crate::net::replicate::Wants::default(),
        blob_http_port: None,
    };
    core.set_capabilities(capabilities(cfg));
    let (handle, task) = crate::net::start(core.clone(), ncfg, stop)
        .await
        .context("starting the mesh network")?;
    println!(
        "pacmesh: mirror node {} ({})",
        core.key.peer_id(),
        core.public
    );
    Ok((handle, task))
}

/// The connected peers (direct connections only) as blob sources for `blob`, rotated by the
/// blob's first byte: the fetch engine asks sources in order for blobs of one segment, so the
/// rotation spreads small packages over the providers (larger blobs are spread by segment
/// anyway). A peer with a blob listener is asked there first
/// ([`crate::net::replicate::peer_sources`]).
pub fn peer_sources(core: &Core, net: &NetHandle, blob: &Hash) -> Vec<Arc<dyn BlobSource>> {
    let mut peers = net.blob_peers();
    if !peers.is_empty() {
        let k = blob.as_bytes()[0] as usize % peers.len();
        peers.rotate_left(k);
    }
    crate::net::replicate::peer_sources(core, net, &peers)
}

/// If `source` (a fetch engine source name) is a peer, charges it the fault that disconnects
/// and bans it. Returns whether it was a peer.
pub async fn charge(net: &NetHandle, source: &str) -> bool {
    match source.parse::<PeerId>() {
        Ok(p) => {
            tracing::warn!(peer = %p, "peer sent blob bytes that do not verify: banned");
            net.fault(p, "corrupt blob bytes").await;
            true
        }
        Err(_) => false,
    }
}
