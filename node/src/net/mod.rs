//! The mesh: libp2p networking of a node.
//!
//! ```text
//!  transports   TCP + noise + yamux, QUIC, relay client (circuit v2, signalling only)
//!  behaviours   identify, ping, connection limits, gossipsub (events, announcements),
//!               mDNS (optional), kademlia (server mode, peer discovery), autonat, dcutr,
//!               relay server (optional, tiny byte budget), request-response:
//!               /pacmesh/sync/1 (anti-entropy) and /pacmesh/blobs/1 (segments by BLAKE3)
//! ```
//!
//! One task owns the [`Swarm`]; everything else talks to it through a bounded command channel.
//! Work that touches the stores (ingesting an event, answering a sync request, reading a blob
//! segment) runs on the blocking pool and hands its result back as a command, so the swarm
//! loop never waits on the disk.
//!
//! - **Gossip.** Events this node authors or receives from a local client ([`Origin::Local`])
//!   and that are small ([`GOSSIP_EVENT_MAX`]) are published on the mesh's events topic.
//!   Gossipsub runs with `validate_messages`: a received event is forwarded only after its
//!   size, envelope, signature and the signer's role in the policy checked out
//!   ([`crate::ingest::precheck`], in this task as it arrives; the ingest then stores and
//!   applies it); a rejected one is reported `Reject`, which lowers the sender's peer score,
//!   and after [`MAX_PEER_FAULTS`] faults the peer is disconnected and refused for [`BAN_TIME`].
//! - **Announcements.** Every `announce_interval` (15 s by default, from a random phase so
//!   that nodes started together do not announce in step), within a second of a material
//!   change of its capabilities (busy slots, tags, …), and within a second of a new peer
//!   subscribing, the node signs its capabilities (with its current load and busy slots) and
//!   its queue-state digest. Peers keep them in the [`crate::peers::PeerTable`]; a peer whose
//!   digest differs from ours is asked for what we lack (at most one such sync a second).
//! - **Anti-entropy.** `SyncRequest` (our per-author heads) → `SyncResponse` (what follows),
//!   on connection, on a differing digest, and every `sync_interval` (random phase) with a
//!   random peer.
//!   Events that do not fit gossip (large `publish` manifests) travel this way only.
//! - **Blobs.** Served by segment; fetched by [`replicate`].

pub mod codec;
pub mod logrelay;
pub mod muxer;
pub mod replicate;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, gossipsub,
    identify, kad, mdns, noise, ping, relay, tcp, yamux,
};
use pacmesh_protocol::{
    Announcement, BlobRequest, BlobResponse, BlobWant, Capabilities, Hash, Limits, LogRequest,
    LogResponse, Roles, Signed, SyncRequest, SyncResponse, Timestamp, announce_topic, events_topic,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{Core, Origin};
use crate::ingest::IngestOutcome;

/// Largest event published by gossip; larger ones (repository manifests) go by sync only.
pub const GOSSIP_EVENT_MAX: usize = 64 << 10;
/// Gossipsub's transmit cap (an event or announcement plus gossipsub's framing).
const GOSSIP_TRANSMIT_MAX: usize = 128 << 10;
/// Rejected messages or responses after which a peer is disconnected and refused.
pub const MAX_PEER_FAULTS: u32 = 5;
/// How long a misbehaving peer is refused.
pub const BAN_TIME: Duration = Duration::from_secs(600);
/// Most events asked for in one sync round.
const SYNC_BATCH: u32 = 1024;
/// Gossip messages being ingested at once; more are ignored (they come again by sync).
const MAX_INFLIGHT_INGEST: usize = 256;

/// A gossip event whose ingest (waiting for a blocking thread included) takes longer than this
/// is logged at debug level with where the time went.
const SLOW_INGEST: Duration = Duration::from_millis(50);

/// Connections to a peer this node fetches segments from: the regular one plus extra direct
/// ones, dialled when the transfer starts. Requests are spread over a peer's connections (one
/// noise session and one yamux window each), which one connection's flow control and
/// connection task otherwise bound (docs/benchmarks.md). Extra connections close when idle.
const BULK_CONNECTIONS: usize = 4;

/// The most connections one peer may hold to this node.
const MAX_CONNECTIONS_PER_PEER: u32 = BULK_CONNECTIONS as u32 + 1;

/// How long after dialling a peer's extra connections this node does not dial them again.
const BULK_REDIAL: Duration = Duration::from_secs(30);

/// The most addresses remembered per connected peer for extra connections.
const MAX_PEER_ADDRS: usize = 8;

/// How the node takes part in the mesh.
#[derive(Clone)]
pub struct NetConfig {
    /// Listen addresses (`/ip4/0.0.0.0/tcp/0`, `/ip4/…/udp/0/quic-v1`, …).
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start-up (and again when no peer is connected); `/p2p/ID` optional.
    pub bootstrap: Vec<Multiaddr>,
    /// mDNS discovery on the LAN.
    pub mdns: bool,
    /// Run a circuit-relay v2 server for NATed peers (signalling only: tiny byte budget).
    pub relay_server: bool,
    /// Relays (`/ip4/…/tcp/…/p2p/RELAYID`) through which this node, when it is not reachable
    /// itself (NAT, an HPC login node), takes reservations and is reachable at
    /// `RELAY/p2p-circuit/p2p/OURID`; direct connections are then attempted by hole punching.
    pub relays: Vec<Multiaddr>,
    /// How often capabilities are announced (announcements expire after 3 intervals).
    pub announce_interval: Duration,
    /// How often a random peer is asked for missing events.
    pub sync_interval: Duration,
    /// Most established connections.
    pub max_connections: u32,
    /// The node's capabilities right now (load and busy slots change).
    pub capabilities: Arc<dyn Fn() -> Capabilities + Send + Sync>,
    /// Which blobs this node fetches from peers.
    pub replicate: replicate::Wants,
    /// The port of this node's blob listener (`[mesh] blob_http`), announced to peers.
    pub blob_http_port: Option<u16>,
}

impl std::fmt::Debug for NetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetConfig")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mdns", &self.mdns)
            .field("announce_interval", &self.announce_interval)
            .finish_non_exhaustive()
    }
}

/// The TCP listen address of a node configured with none (with QUIC on the same IP).
pub const DEFAULT_TCP_LISTEN: &str = "/ip4/0.0.0.0/tcp/0";

/// Most announced blob HTTP ports remembered; past it only connected peers' are kept.
const MAX_BLOB_PORTS: usize = 4096;

/// The IP address a multiaddr starts with (`/ip4/…` or `/ip6/…`), if it does.
fn multiaddr_ip(a: &Multiaddr) -> Option<std::net::IpAddr> {
    match a.iter().next()? {
        libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
        libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    }
}

/// Parses multiaddrs from text, naming the bad one.
pub fn parse_addrs(list: &[String]) -> Result<Vec<Multiaddr>> {
    list.iter()
        .map(|s| {
            s.parse::<Multiaddr>()
                .with_context(|| format!("{s:?} is not a multiaddr (e.g. /ip4/127.0.0.1/tcp/4001)"))
        })
        .collect()
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    sync: request_response::Behaviour<codec::MsgCodec<SyncRequest, SyncResponse>>,
    blobs: request_response::Behaviour<codec::BlobCodec>,
    logs: request_response::Behaviour<codec::MsgCodec<LogRequest, LogResponse>>,
    relay_client: relay::client::Behaviour,
    relay: Toggle<relay::Behaviour>,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
}

enum Command {
    Validated {
        id: gossipsub::MessageId,
        source: PeerId,
        acceptance: gossipsub::MessageAcceptance,
    },
    Publish(Arc<[u8]>),
    AnnounceNow,
    SyncWith(PeerId),
    SyncDone(PeerId),
    SyncRespond(ResponseChannel<SyncResponse>, SyncResponse),
    BlobRespond(ResponseChannel<BlobResponse>, BlobResponse),
    LogRequest {
        peer: PeerId,
        req: LogRequest,
        reply: oneshot::Sender<Result<LogResponse>>,
    },
    BlobRequest {
        peer: PeerId,
        req: BlobRequest,
        reply: oneshot::Sender<Result<BlobResponse>>,
    },
    Fault(PeerId, &'static str, u32),
}

/// A handle on the running network, for the other tasks of the node.
#[derive(Clone)]
pub struct NetHandle {
    tx: mpsc::Sender<Command>,
    /// This node's libp2p id.
    pub peer_id: PeerId,
    shared: Arc<Shared>,
}

struct Shared {
    listen: Mutex<Vec<Multiaddr>>,
    connected: Mutex<HashSet<PeerId>>,
    /// Connected peers reached only through a relay circuit: never asked for blobs (the
    /// relay's byte budget is for signalling).
    relayed_only: Mutex<HashSet<PeerId>>,
    /// The remote IP address of a direct connection to each peer that has one.
    direct_ip: Mutex<HashMap<PeerId, std::net::IpAddr>>,
    /// The blob HTTP port each peer announced last ([`Announcement::blob_http_port`]).
    blob_ports: Mutex<HashMap<PeerId, u16>>,
    /// True once the node has caught up: a first sync round completed, or no peer answered
    /// within [`CATCH_UP_WAIT`].
    caught_up: watch::Sender<bool>,
}

/// How long a starting node waits for a first sync before it builds anyway.
pub const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

impl NetHandle {
    /// Addresses the node listens on now.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared
            .listen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Turns true once the node caught up with its peers (see [`CATCH_UP_WAIT`]).
    pub fn caught_up(&self) -> watch::Receiver<bool> {
        self.shared.caught_up.subscribe()
    }

    /// Connected peers to ask for blobs: those with a direct connection (a peer reached only
    /// through a relay circuit is left out: segments would go through the relay's budget).
    pub fn blob_peers(&self) -> Vec<PeerId> {
        let relayed = self.relayed_only();
        let mut v = self.connected();
        v.retain(|p| !relayed.contains(p));
        v
    }

    /// Where `peer` serves blobs over plain HTTP (`http://IP:PORT`): the port it announced, at
    /// the IP address of this node's direct connection to it. Never an address the peer named
    /// itself: an announcement cannot point this node's requests at a third host. `None`
    /// without a direct connection or an announced port.
    pub fn blob_http_base(&self, peer: &PeerId) -> Option<String> {
        let port = *self
            .shared
            .blob_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)?;
        let ip = *self
            .shared
            .direct_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(peer)?;
        Some(format!("http://{}", std::net::SocketAddr::new(ip, port)))
    }

    /// Connected peers reached only through a relay circuit.
    pub fn relayed_only(&self) -> HashSet<PeerId> {
        self.shared
            .relayed_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Peers connected now.
    pub fn connected(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self
            .shared
            .connected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort();
        v
    }

    /// Sends a blob request to `peer` and waits for the answer.
    pub async fn blob_request(&self, peer: PeerId, req: BlobRequest) -> Result<BlobResponse> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::BlobRequest { peer, req, reply })
            .await
            .map_err(|_| anyhow!("the network is shut down"))?;
        rx.await.map_err(|_| anyhow!("the network is shut down"))?
    }

    /// Asks `peer` for lines of a running build's log.
    pub async fn log_request(&self, peer: PeerId, req: LogRequest) -> Result<LogResponse> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::LogRequest { peer, req, reply })
            .await
            .map_err(|_| anyhow!("the network is shut down"))?;
        rx.await.map_err(|_| anyhow!("the network is shut down"))?
    }

    /// Records a fault of `peer`: enough of them and it is disconnected. Bytes that fail
    /// verification against a hash are proof of a bad peer: they count as all the faults
    /// allowed ([`MAX_PEER_FAULTS`]) at once.
    pub async fn fault(&self, peer: PeerId, what: &'static str) {
        let _ = self
            .tx
            .send(Command::Fault(peer, what, MAX_PEER_FAULTS))
            .await;
    }
}

/// Starts the network. Returns once it listens; runs until `stop` turns true.
pub async fn start(
    core: Arc<Core>,
    cfg: NetConfig,
    stop: watch::Receiver<bool>,
) -> Result<(NetHandle, tokio::task::JoinHandle<Result<()>>)> {
    let limits = Limits::default();
    let root = *core.ingest().root();
    let keypair = core.key.keypair();
    let peer_id = keypair.public().to_peer_id();
    let events = gossipsub::IdentTopic::new(events_topic(&root));
    let announce = gossipsub::IdentTopic::new(announce_topic(&root));
    let mdns_on = cfg.mdns;
    let relay_on = cfg.relay_server;
    let max_conn = cfg.max_connections;
    let kad_proto = StreamProtocol::try_from_owned(format!("/pacmesh/{root}/kad/1"))
        .map_err(|e| anyhow!("kademlia protocol name: {e}"))?;
    let lim = limits.clone();
    let mut swarm: Swarm<Behaviour> = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            // yamux with data frames of one noise frame (see `muxer`): blob segments cost
            // a quarter of the frames, encryptions and syscalls.
            muxer::Config::default,
        )?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour({
            let metrics = core.metrics.clone();
            move |key, relay_client| {
                let local = key.public().to_peer_id();
                // Anonymous gossip: every event and announcement is signed by its author's key in
                // the payload and verified once per message by this node; gossipsub's own
                // per-message signature (checked again on every duplicate copy a peer forwards,
                // before duplicates are dropped) added nothing but CPU: in a 50-node mesh it was a
                // quarter of an idle node's work (docs/benchmarks.md, "Where the 50-node time
                // went").
                let gcfg = gossipsub::ConfigBuilder::default()
                    .validate_messages()
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .max_transmit_size(GOSSIP_TRANSMIT_MAX)
                    .heartbeat_interval(Duration::from_millis(500))
                    .message_id_fn(|m: &gossipsub::Message| {
                        gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                    })
                    .build()
                    .map_err(|e| anyhow!("gossipsub config: {e}"))?;
                let gossipsub =
                    gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gcfg)
                        .map_err(|e| anyhow!("gossipsub: {e}"))?;
                // Mesh sizes, copies received per topic, IWANTs… under libp2p_gossipsub_* in /metrics.
                let mut gossipsub = metrics.with_registry(|r| {
                    gossipsub.with_metrics(
                        r.sub_registry_with_prefix("libp2p_gossipsub"),
                        gossipsub::MetricsConfig::default(),
                    )
                });
                let mut params = gossipsub::PeerScoreParams {
                    // No penalty for peers sharing an IP address. Nodes of one mesh often do (one
                    // host in tests and benchmarks, an HPC allocation or an office behind one NAT);
                    // with the default (-5 × surplus² beyond 10 peers per address) every peer of a
                    // node with more than ~14 loopback connections is graylisted at once, and
                    // gossip among 50 nodes on 127.0.0.1 stops. Sybils gain nothing here anyway:
                    // only events signed by keys of the policy count.
                    ip_colocation_factor_weight: 0.0,
                    ..Default::default()
                };
                for t in [&events, &announce] {
                    params.topics.insert(
                        t.hash(),
                        gossipsub::TopicScoreParams {
                            invalid_message_deliveries_weight: -100.0,
                            invalid_message_deliveries_decay: 0.5,
                            ..Default::default()
                        },
                    );
                }
                gossipsub
                    .with_peer_score(params, gossipsub::PeerScoreThresholds::default())
                    .map_err(|e| anyhow!("gossipsub scoring: {e}"))?;
                let mdns = if mdns_on {
                    Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
                } else {
                    None
                };
                let mut kcfg = kad::Config::new(kad_proto.clone());
                kcfg.set_query_timeout(Duration::from_secs(30));
                let mut kad =
                    kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kcfg);
                kad.set_mode(Some(kad::Mode::Server));
                let rr = request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(60))
                    .with_max_concurrent_streams(64);
                let relay = relay_on.then(|| {
                    relay::Behaviour::new(
                        local,
                        relay::Config {
                            // Signalling for hole punching only: no artifact goes through a relay.
                            max_circuit_bytes: 64 << 10,
                            max_circuit_duration: Duration::from_secs(120),
                            ..Default::default()
                        },
                    )
                });
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(max_conn))
                            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
                            .with_max_pending_incoming(Some(32))
                            .with_max_pending_outgoing(Some(32)),
                    ),
                    identify: identify::Behaviour::new(
                        identify::Config::new("/pacmesh/1".into(), key.public())
                            .with_agent_version(format!("pacmesh/{}", env!("CARGO_PKG_VERSION"))),
                    ),
                    ping: ping::Behaviour::default(),
                    gossipsub,
                    mdns: mdns.into(),
                    kad,
                    sync: request_response::Behaviour::with_codec(
                        codec::MsgCodec::new(lim.clone()),
                        [(
                            StreamProtocol::new(pacmesh_protocol::SYNC_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        rr.clone(),
                    ),
                    blobs: request_response::Behaviour::with_codec(
                        codec::BlobCodec::new(lim.clone()),
                        [(
                            StreamProtocol::new(pacmesh_protocol::BLOBS_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        rr.clone(),
                    ),
                    logs: request_response::Behaviour::with_codec(
                        codec::MsgCodec::new(lim.clone()),
                        [(
                            StreamProtocol::new(pacmesh_protocol::LOGS_PROTOCOL),
                            ProtocolSupport::Full,
                        )],
                        rr,
                    ),
                    relay_client,
                    relay: relay.into(),
                    dcutr: dcutr::Behaviour::new(local),
                    autonat: autonat::Behaviour::new(local, autonat::Config::default()),
                })
            }
        })
        .map_err(|e| anyhow!("libp2p behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();

    let events = gossipsub::IdentTopic::new(events_topic(&root));
    let announce = gossipsub::IdentTopic::new(announce_topic(&root));
    swarm.behaviour_mut().gossipsub.subscribe(&events)?;
    swarm.behaviour_mut().gossipsub.subscribe(&announce)?;
    let listen = if cfg.listen.is_empty() {
        vec![
            DEFAULT_TCP_LISTEN.parse()?,
            "/ip4/0.0.0.0/udp/0/quic-v1".parse()?,
        ]
    } else {
        cfg.listen.clone()
    };
    for a in &listen {
        swarm
            .listen_on(a.clone())
            .with_context(|| format!("cannot listen on {a}"))?;
    }
    let (tx, rx) = mpsc::channel(1024);
    let handle = NetHandle {
        tx: tx.clone(),
        peer_id,
        shared: Arc::new(Shared {
            listen: Mutex::default(),
            connected: Mutex::default(),
            relayed_only: Mutex::default(),
            direct_ip: Mutex::default(),
            blob_ports: Mutex::default(),
            caught_up: watch::channel(false).0,
        }),
    };
    let mut lp = Loop {
        swarm,
        core: core.clone(),
        cfg,
        limits,
        tx,
        events,
        announce,
        handle: handle.clone(),
        syncing: HashSet::new(),
        last_sync: HashMap::new(),
        last_digest_sync: None,
        bootstrap_dialed: HashMap::new(),
        blob_waiters: HashMap::new(),
        log_waiters: HashMap::new(),
        faults: HashMap::new(),
        banned: HashMap::new(),
        inflight: Arc::new(AtomicUsize::new(0)),
        policy: Arc::new(Mutex::new(Arc::new(core.ingest().policy().clone()))),
        p2p_metrics: core.metrics.with_registry(libp2p::metrics::Metrics::new),
        last_announced: None,
        announce_soon: false,
        links: HashMap::new(),
        conn_ips: HashMap::new(),
        peer_addrs: HashMap::new(),
        bulk_dialed: HashMap::new(),
    };
    // Wait for the listeners so that the addresses printed at start-up are real.
    let want = listen.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while lp.handle.listen_addrs().len() < want && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), lp.swarm.select_next_some()).await {
            Ok(ev) => lp.on_swarm(ev),
            Err(_) => continue,
        }
    }
    for a in lp.cfg.bootstrap.clone() {
        lp.dial_bootstrap(a);
    }
    for r in lp.cfg.relays.clone() {
        let circuit = r.clone().with(libp2p::multiaddr::Protocol::P2pCircuit);
        if let Err(e) = lp.swarm.listen_on(circuit.clone()) {
            tracing::warn!(relay = %r, "cannot listen through the relay: {e}");
        }
    }
    spawn_local_gossip(core, handle.tx.clone(), stop.clone());
    let task = tokio::spawn(async move { lp.run(rx, stop).await });
    Ok((handle, task))
}

/// Forwards events accepted from local clients to the swarm for gossip.
fn spawn_local_gossip(core: Arc<Core>, tx: mpsc::Sender<Command>, mut stop: watch::Receiver<bool>) {
    let mut rx = core.subscribe_accepted();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = rx.recv() => m,
                _ = stop.wait_for(|s| *s) => return,
            };
            let cmd = match msg {
                Ok(a) if a.origin == Origin::Local && a.bytes.len() <= GOSSIP_EVENT_MAX => {
                    Command::Publish(a.bytes)
                }
                // Large or peer events: peers learn of them from our next announcement's
                // digest and pull them; make that announcement now.
                Ok(a) if a.origin == Origin::Local => Command::AnnounceNow,
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Command::AnnounceNow,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(cmd).await.is_err() {
                return;
            }
        }
    });
}

struct Loop {
    swarm: Swarm<Behaviour>,
    core: Arc<Core>,
    cfg: NetConfig,
    limits: Limits,
    tx: mpsc::Sender<Command>,
    events: gossipsub::IdentTopic,
    announce: gossipsub::IdentTopic,
    handle: NetHandle,
    syncing: HashSet<PeerId>,
    last_sync: HashMap<PeerId, Instant>,
    /// When an announcement's differing digest last started a sync (at most one a second).
    last_digest_sync: Option<Instant>,
    blob_waiters: HashMap<OutboundRequestId, oneshot::Sender<Result<BlobResponse>>>,
    log_waiters: HashMap<OutboundRequestId, oneshot::Sender<Result<LogResponse>>>,
    faults: HashMap<PeerId, u32>,
    banned: HashMap<PeerId, Instant>,
    inflight: Arc<AtomicUsize>,
    /// The policy as of the last event this node ingested from gossip, for the early checks
    /// done without the ingest lock.
    policy: Arc<Mutex<Arc<pacmesh_protocol::MeshPolicy>>>,
    /// libp2p's own metrics, in the node's registry (`GET /metrics`).
    p2p_metrics: libp2p::metrics::Metrics,
    /// The capabilities last announced: a material change is announced at once.
    last_announced: Option<Capabilities>,
    /// A peer subscribed to the announcements since our last one: it has not seen ours, so
    /// the next capability check (within a second) announces.
    announce_soon: bool,
    /// Each peer's open connections, and whether each goes through a relay circuit (one being
    /// closed because a direct one opened is already left out).
    links: HashMap<PeerId, HashMap<ConnectionId, bool>>,
    /// The remote IP address of each direct connection to each peer (`Shared::direct_ip` is
    /// one of them while any is open).
    conn_ips: HashMap<PeerId, HashMap<ConnectionId, std::net::IpAddr>>,
    /// Direct (not relayed) addresses of connected peers: where extra connections go.
    peer_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// When this node last dialled extra connections to a peer.
    bulk_dialed: HashMap<PeerId, Instant>,
    /// When each bootstrap address naming a peer was last dialled (see [`BOOTSTRAP_RETRY`]).
    bootstrap_dialed: HashMap<Multiaddr, Instant>,
}

/// A bootstrap address that names its peer (`…/p2p/ID`, a relay circuit included) is dialled
/// again this often while that peer is not connected. A first dial can fail for reasons that
/// pass: the peer was not up yet, or (for a circuit address) the dial to the relay that the
/// circuit needs was still under way and the circuit dial was cancelled.
pub const BOOTSTRAP_RETRY: Duration = Duration::from_secs(10);

/// The peer an address ends with (`…/p2p/ID`; for a circuit address, the far end).
fn target_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(libp2p::multiaddr::Protocol::P2p(p)) => Some(p),
        _ => None,
    }
}

/// Whether `new` differs from `old` in something peers rank or match by and that changes by
/// steps: not the load, the available memory or the free disk, which drift all the time and
/// travel with the periodic announcement.
fn material_change(old: &Capabilities, new: &Capabilities) -> bool {
    old.slots != new.slots
        || old.busy != new.busy
        || old.tags != new.tags
        || old.arch != new.arch
        || old.microarch != new.microarch
        || old.profile != new.profile
        || old.cores != new.cores
}

/// How often the capabilities are compared with the last announced ones.
const CAPS_CHECK: Duration = Duration::from_secs(1);

/// At most one sync a second started by an announcement's differing digest.
const DIGEST_SYNC_EVERY: Duration = Duration::from_secs(1);

impl Loop {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<()> {
        // Random phases: nodes started together (a restart of the whole mesh, a test) would
        // otherwise announce and sync in step, and every node would handle every announcement
        // in the same second.
        let mut announce = tokio::time::interval_at(
            tokio::time::Instant::now() + jitter(self.cfg.announce_interval),
            self.cfg.announce_interval,
        );
        let mut sync = tokio::time::interval_at(
            tokio::time::Instant::now() + jitter(self.cfg.sync_interval),
            self.cfg.sync_interval,
        );
        let mut kad = tokio::time::interval(Duration::from_secs(60));
        let mut caps_check = tokio::time::interval(CAPS_CHECK.min(self.cfg.announce_interval));
        caps_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let catch_up = tokio::time::sleep(CATCH_UP_WAIT);
        tokio::pin!(catch_up);
        announce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(cmd) = rx.recv() => self.on_command(cmd),
                _ = announce.tick() => self.announce(None),
                _ = caps_check.tick() => {
                    crate::bufpool::SEGMENTS.trim(Instant::now());
                    // Busy slots, tags, …: peers rank builders by them, so a change is
                    // announced now rather than at the next periodic announcement (at most
                    // once per check).
                    let caps = (self.cfg.capabilities)();
                    if self
                        .last_announced
                        .as_ref()
                        .is_some_and(|old| material_change(old, &caps))
                    {
                        self.announce(Some(caps));
                        announce.reset();
                    } else if self.announce_soon {
                        self.announce(Some(caps));
                    }
                }
                _ = sync.tick() => self.sync_round(),
                _ = kad.tick() => {
                    if !self.handle.connected().is_empty() {
                        let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    }
                }
                () = &mut catch_up, if !*self.handle.shared.caught_up.borrow() => {
                    tracing::info!("no peer answered a sync within {CATCH_UP_WAIT:?}: building with what this node has");
                    self.handle.shared.caught_up.send_replace(true);
                }
                _ = stop.wait_for(|s| *s) => return Ok(()),
            }
        }
    }

    fn dial_bootstrap(&mut self, addr: Multiaddr) {
        self.bootstrap_dialed.insert(addr.clone(), Instant::now());
        self.dial(addr);
    }

    fn dial(&mut self, addr: Multiaddr) {
        if let Err(e) = self.swarm.dial(addr.clone()) {
            tracing::warn!(%addr, "cannot dial: {e}");
        }
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Validated {
                id,
                source,
                acceptance,
            } => {
                if matches!(acceptance, gossipsub::MessageAcceptance::Reject) {
                    self.fault(source, "invalid gossip");
                }
                self.report(&id, &source, acceptance);
            }
            Command::Publish(bytes) => {
                let topic = self.events.clone();
                match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, bytes.to_vec())
                {
                    Ok(_) => {}
                    Err(gossipsub::PublishError::Duplicate) => {}
                    // Nobody to send to yet: peers pull it by sync when they connect.
                    Err(e) => tracing::debug!("event not gossiped: {e}"),
                }
            }
            Command::AnnounceNow => self.announce(None),
            Command::SyncWith(p) => self.sync_with(p, true),
            Command::SyncDone(p) => {
                self.syncing.remove(&p);
                self.handle
                    .shared
                    .caught_up
                    .send_if_modified(|v| !std::mem::replace(v, true));
            }
            Command::SyncRespond(ch, resp) => {
                let _ = self.swarm.behaviour_mut().sync.send_response(ch, resp);
            }
            Command::BlobRespond(ch, resp) => {
                let _ = self.swarm.behaviour_mut().blobs.send_response(ch, resp);
            }
            Command::LogRequest { peer, req, reply } => {
                let id = self.swarm.behaviour_mut().logs.send_request(&peer, req);
                self.log_waiters.insert(id, reply);
            }
            Command::BlobRequest { peer, req, reply } => {
                if matches!(req.want, BlobWant::Range { .. }) {
                    self.widen(peer);
                }
                let id = self.swarm.behaviour_mut().blobs.send_request(&peer, req);
                self.blob_waiters.insert(id, reply);
            }
            Command::Fault(peer, what, weight) => self.fault_by(peer, what, weight),
        }
    }

    fn fault(&mut self, peer: PeerId, what: &'static str) {
        self.fault_by(peer, what, 1);
    }

    fn fault_by(&mut self, peer: PeerId, what: &'static str, weight: u32) {
        let n = self.faults.entry(peer).or_default();
        *n += weight;
        tracing::warn!(%peer, faults = *n, "peer fault: {what}");
        if *n >= MAX_PEER_FAULTS {
            tracing::warn!(%peer, "disconnecting a misbehaving peer for {} s", BAN_TIME.as_secs());
            self.banned.insert(peer, Instant::now() + BAN_TIME);
            self.faults.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
        }
    }

    fn is_banned(&mut self, peer: &PeerId) -> bool {
        match self.banned.get(peer) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                self.banned.remove(peer);
                false
            }
            None => false,
        }
    }

    /// Tells gossipsub whether to forward a message it handed over for validation.
    fn report(
        &mut self,
        id: &gossipsub::MessageId,
        source: &PeerId,
        acceptance: gossipsub::MessageAcceptance,
    ) {
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, source, acceptance);
    }

    /// Remembers a direct address of a connected peer (relayed ones are not: segments never go
    /// through a relay).
    fn remember_addr(&mut self, peer: PeerId, addr: Multiaddr) {
        let relayed = addr
            .iter()
            .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit));
        if relayed || !self.links.contains_key(&peer) {
            return;
        }
        let list = self.peer_addrs.entry(peer).or_default();
        if !list.contains(&addr) && list.len() < MAX_PEER_ADDRS {
            list.push(addr);
        }
    }

    /// Before segments are requested from `peer`: dials extra direct connections to it, up to
    /// [`BULK_CONNECTIONS`], at most once per [`BULK_REDIAL`].
    fn widen(&mut self, peer: PeerId) {
        let have = self.links.get(&peer).map_or(0, |l| l.len());
        if have == 0 || have >= BULK_CONNECTIONS {
            return;
        }
        if self
            .bulk_dialed
            .get(&peer)
            .is_some_and(|t| t.elapsed() < BULK_REDIAL)
        {
            return;
        }
        let Some(addrs) = self
            .peer_addrs
            .get(&peer)
            .filter(|a| !a.is_empty())
            .cloned()
        else {
            return;
        };
        self.bulk_dialed.insert(peer, Instant::now());
        for _ in have..BULK_CONNECTIONS {
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(addrs.clone())
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, "extra connection not dialled: {e}");
                break;
            }
        }
    }

    /// Once a peer has a direct connection, its relayed ones are closed: request-response
    /// spreads requests over all connections to a peer, and a segment sent over a circuit
    /// would go through the relay's byte budget. A peer with relayed connections only is
    /// listed in `relayed_only` (not asked for blobs).
    fn prune_relayed(&mut self, peer: PeerId) {
        let links = self.links.get(&peer);
        let direct = links.is_some_and(|l| l.values().any(|r| !r));
        let relayed: Vec<ConnectionId> = links
            .map(|l| l.iter().filter(|(_, r)| **r).map(|(c, _)| *c).collect())
            .unwrap_or_default();
        if direct {
            for c in relayed.iter() {
                if self.swarm.close_connection(*c) {
                    tracing::debug!(%peer, "direct connection open: relayed one closed");
                    self.core.metrics.relayed_closed.inc();
                }
                // Closing: not a route any more (and not closed, nor counted, twice).
                if let Some(l) = self.links.get_mut(&peer) {
                    l.remove(c);
                }
            }
        }
        let mut only = self
            .handle
            .shared
            .relayed_only
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !direct && !relayed.is_empty() {
            only.insert(peer);
        } else {
            only.remove(&peer);
        }
    }

    /// The ingest lock, from the network task: a wait here holds up every connection of the
    /// node, so a long one is logged (debug).
    fn ingest(&self) -> std::sync::MutexGuard<'_, crate::ingest::Ingest> {
        let t = Instant::now();
        let g = self.core.ingest();
        let w = t.elapsed();
        if w > Duration::from_millis(5) {
            tracing::debug!(target: "pacmesh_node::core", wait_ms = w.as_millis() as u64, "network task waited for the ingest lock");
        }
        g
    }

    /// Signs and gossips an announcement of `caps` (computed now when `None`).
    fn announce(&mut self, caps: Option<Capabilities>) {
        let now = Timestamp::now();
        let digest = self.ingest().state().digest();
        let capabilities = caps.unwrap_or_else(|| (self.cfg.capabilities)());
        self.last_announced = Some(capabilities.clone());
        self.announce_soon = false;
        let a = Announcement {
            version: pacmesh_protocol::ANNOUNCEMENT_VERSION,
            node: self.core.public,
            time: now,
            expires: now.saturating_add(self.cfg.announce_interval * 3),
            capabilities,
            digest: Some(digest),
            blob_http_port: self.cfg.blob_http_port,
        };
        let bytes = match Signed::sign(self.core.key.signing_key(), &a) {
            Ok(s) => s.to_bytes(),
            Err(e) => {
                tracing::warn!("cannot sign the announcement: {e}");
                return;
            }
        };
        let topic = self.announce.clone();
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            tracing::debug!("announcement not sent: {e}");
        }
    }

    fn sync_round(&mut self) {
        let peers = self.handle.connected();
        for a in self.cfg.bootstrap.clone() {
            let due = match target_peer(&a) {
                // A named peer: again while it is not connected, every BOOTSTRAP_RETRY.
                Some(p) => {
                    p != self.handle.peer_id
                        && !peers.contains(&p)
                        && !self.is_banned(&p)
                        && self
                            .bootstrap_dialed
                            .get(&a)
                            .is_none_or(|t| t.elapsed() >= BOOTSTRAP_RETRY)
                }
                // An address alone: only while this node has no peer at all.
                None => peers.is_empty(),
            };
            if due {
                self.dial_bootstrap(a);
            }
        }
        if peers.is_empty() {
            return;
        }
        let pick = peers[rand_index(peers.len())];
        self.sync_with(pick, false);
    }

    /// Asks `peer` for the events we lack (at most one round in flight per peer; a round not
    /// forced is skipped if the peer was asked less than a second ago).
    fn sync_with(&mut self, peer: PeerId, force: bool) {
        if self.syncing.contains(&peer) {
            return;
        }
        if !force
            && self
                .last_sync
                .get(&peer)
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        let req = self.ingest().sync_request(SYNC_BATCH);
        self.syncing.insert(peer);
        self.last_sync.insert(peer, Instant::now());
        self.swarm.behaviour_mut().sync.send_request(&peer, req);
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.p2p_metrics.record(&ev);
        if let SwarmEvent::Behaviour(b) = &ev {
            match b {
                BehaviourEvent::Gossipsub(e) => self.p2p_metrics.record(e),
                BehaviourEvent::Identify(e) => self.p2p_metrics.record(e),
                BehaviourEvent::Kad(e) => self.p2p_metrics.record(e),
                BehaviourEvent::Ping(e) => self.p2p_metrics.record(e),
                BehaviourEvent::Relay(e) => self.p2p_metrics.record(e),
                BehaviourEvent::Dcutr(e) => self.p2p_metrics.record(e),
                _ => {}
            }
        }
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                let full = if matches!(
                    address.iter().last(),
                    Some(libp2p::multiaddr::Protocol::P2p(_))
                ) {
                    address.clone()
                } else {
                    address
                        .clone()
                        .with(libp2p::multiaddr::Protocol::P2p(self.handle.peer_id))
                };
                println!("pacmesh: p2p listening on {full}");
                if self.cfg.relay_server
                    && !address
                        .iter()
                        .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2pCircuit))
                {
                    // A relay server is publicly reachable by the operator's word: its listen
                    // addresses go into the reservations it grants.
                    self.swarm.add_external_address(address.clone());
                }
                tracing::info!(%full, "listening");
                self.handle
                    .shared
                    .listen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                endpoint,
                ..
            } => {
                if self.is_banned(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.links
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, endpoint.is_relayed());
                self.prune_relayed(peer_id);
                if !endpoint.is_relayed()
                    && let Some(ip) = multiaddr_ip(endpoint.get_remote_address())
                {
                    self.conn_ips
                        .entry(peer_id)
                        .or_default()
                        .insert(connection_id, ip);
                    // The newest direct connection's address.
                    self.handle
                        .shared
                        .direct_ip
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(peer_id, ip);
                }
                if let libp2p::core::ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.remember_addr(peer_id, address.clone());
                }
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "peer connected");
                    self.handle
                        .shared
                        .connected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(peer_id);
                    self.core
                        .metrics
                        .peers_connected
                        .set(self.handle.connected().len() as i64);
                    self.core.peers().set_connected(&peer_id.to_string(), true);
                    self.sync_with(peer_id, true);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(l) = self.links.get_mut(&peer_id) {
                    l.remove(&connection_id);
                    if l.is_empty() {
                        self.links.remove(&peer_id);
                    }
                }
                self.prune_relayed(peer_id);
                {
                    // The address of a direct connection still open, if any.
                    let left = self.conn_ips.get_mut(&peer_id).and_then(|m| {
                        m.remove(&connection_id);
                        m.values().next().copied()
                    });
                    let mut ips = self
                        .handle
                        .shared
                        .direct_ip
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    match left {
                        Some(ip) => {
                            if !self.conn_ips[&peer_id]
                                .values()
                                .any(|v| Some(v) == ips.get(&peer_id))
                            {
                                ips.insert(peer_id, ip);
                            }
                        }
                        None => {
                            self.conn_ips.remove(&peer_id);
                            ips.remove(&peer_id);
                        }
                    }
                }
                if num_established == 0 {
                    self.peer_addrs.remove(&peer_id);
                    self.bulk_dialed.remove(&peer_id);
                    tracing::info!(peer = %peer_id, "peer disconnected");
                    self.handle
                        .shared
                        .connected
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&peer_id);
                    self.core
                        .metrics
                        .peers_connected
                        .set(self.handle.connected().len() as i64);
                    self.core.peers().set_connected(&peer_id.to_string(), false);
                    self.syncing.remove(&peer_id);
                }
            }
            SwarmEvent::Behaviour(b) => self.on_behaviour(b),
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::warn!(?addresses, ?reason, "listener closed");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!("listener error: {error}");
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
            }
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => self.on_gossip(propagation_source, message_id, message),
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })
                if topic == self.announce.hash() =>
            {
                self.announce_soon = true;
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "direct connection by hole punching")
                }
                Err(e) => tracing::debug!(peer = %remote_peer_id, "hole punching failed: {e}"),
            },
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let ours = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == pacmesh_protocol::SYNC_PROTOCOL);
                if ours {
                    for a in info.listen_addrs {
                        self.remember_addr(peer_id, a.clone());
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, a);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    if !self.handle.connected().contains(&peer) && !self.is_banned(&peer) {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, addr.clone());
                        self.dial(addr);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                let connected = self.handle.connected();
                if !connected.contains(&peer)
                    && peer != self.handle.peer_id
                    && connected.len() < 16
                    && !self.is_banned(&peer)
                {
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(addresses.into_vec())
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let (core, tx) = (self.core.clone(), self.tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let resp = core.ingest().sync_response(&request);
                            let resp = match resp {
                                Ok(r) => r,
                                Err(e) => {
                                    tracing::warn!("cannot answer a sync request: {e}");
                                    return;
                                }
                            };
                            let _ = tx.blocking_send(Command::SyncRespond(channel, resp));
                        });
                    }
                    request_response::Message::Response { response, .. } => {
                        self.on_sync_response(peer, response);
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer, error, ..
            }) => {
                tracing::debug!(%peer, "sync request failed: {error}");
                self.syncing.remove(&peer);
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    // A malformed or oversized request.
                    self.fault(peer, "bad sync request");
                }
            }
            BehaviourEvent::Blobs(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let (core, tx) = (self.core.clone(), self.tx.clone());
                        tokio::task::spawn_blocking(move || {
                            let resp = replicate::serve(&core, &request);
                            let _ = tx.blocking_send(Command::BlobRespond(channel, resp));
                        });
                        let _ = peer;
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(w) = self.blob_waiters.remove(&request_id) {
                            let _ = w.send(Ok(response));
                        }
                    }
                }
            }
            BehaviourEvent::Logs(request_response::Event::Message { message, .. }) => match message
            {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let resp = match self.core.live_logs.lines_since(
                        &request.entry,
                        request.from,
                        pacmesh_protocol::MAX_LOG_LINES,
                    ) {
                        Some((first, lines)) => LogResponse {
                            version: pacmesh_protocol::LOGS_VERSION,
                            running: true,
                            first,
                            lines,
                            ended: None,
                        },
                        None => LogResponse {
                            version: pacmesh_protocol::LOGS_VERSION,
                            running: false,
                            first: request.from,
                            lines: Vec::new(),
                            ended: Some("not running here".into()),
                        },
                    };
                    let _ = self.swarm.behaviour_mut().logs.send_response(channel, resp);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(w) = self.log_waiters.remove(&request_id) {
                        let _ = w.send(Ok(response));
                    }
                }
            },
            BehaviourEvent::Logs(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(w) = self.log_waiters.remove(&request_id) {
                    let _ = w.send(Err(anyhow!("log request failed: {error}")));
                }
            }
            BehaviourEvent::Blobs(request_response::Event::OutboundFailure {
                request_id,
                error,
                ..
            }) => {
                if let Some(w) = self.blob_waiters.remove(&request_id) {
                    let _ = w.send(Err(anyhow!("blob request failed: {error}")));
                }
            }
            _ => {}
        }
    }

    fn on_sync_response(&mut self, peer: PeerId, resp: SyncResponse) {
        let (core, tx) = (self.core.clone(), self.tx.clone());
        tokio::task::spawn_blocking(move || {
            let (mut accepted, mut bad) = (0usize, 0usize);
            for ev in &resp.events {
                match core.ingest_from(&ev.to_bytes(), Origin::Peer) {
                    IngestOutcome::Accepted { .. } => accepted += 1,
                    IngestOutcome::Duplicate { .. } => {}
                    IngestOutcome::Rejected { reason } => {
                        tracing::debug!(%peer, "synced event refused: {reason}");
                        if reason.is_peer_fault() {
                            bad += 1;
                        }
                    }
                }
            }
            if accepted > 0 {
                tracing::debug!(%peer, accepted, "events synced");
            }
            let _ = tx.blocking_send(Command::SyncDone(peer));
            if bad > 0 {
                let _ =
                    tx.blocking_send(Command::Fault(peer, "invalid events in a sync response", 1));
            }
            if !resp.complete && accepted > 0 {
                let _ = tx.blocking_send(Command::SyncWith(peer));
            }
        });
    }

    fn on_gossip(&mut self, source: PeerId, id: gossipsub::MessageId, msg: gossipsub::Message) {
        if msg.topic == self.events.hash() {
            // The message id is the event id (BLAKE3 of the signed bytes): where a delivery's
            // time goes (arrival here vs "accepted" after the ingest) shows in the log.
            tracing::debug!(
                target: "pacmesh_node::core",
                event = %Hash::new(&msg.data).fmt_short(),
                peer = %source,
                "gossip received"
            );
            if self.inflight.load(Ordering::Relaxed) >= MAX_INFLIGHT_INGEST {
                self.report(&id, &source, gossipsub::MessageAcceptance::Ignore);
                return;
            }
            // Signature and role here, without the ingest lock or a thread hop: an event that
            // passes is forwarded now, before this node stores and applies it
            // (docs/threat-model.md, "Forwarding before storing"). Each hop of the mesh waits
            // for this, so it is kept short: one ed25519 check (tens of microseconds).
            let arrived = Instant::now();
            let data: Arc<[u8]> = Arc::from(msg.data);
            let snapshot = self
                .policy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let pre = crate::ingest::precheck(data.clone(), &snapshot, &self.limits).ok();
            let early = pre.as_ref().is_some_and(|p| p.forward_early());
            if early {
                self.report(&id, &source, gossipsub::MessageAcceptance::Accept);
            }
            self.inflight.fetch_add(1, Ordering::Relaxed);
            let (core, tx, inflight) = (self.core.clone(), self.tx.clone(), self.inflight.clone());
            let policy = self.policy.clone();
            tokio::task::spawn_blocking(move || {
                // A prechecked event is not verified again; anything else gets every check.
                let queued = arrived.elapsed();
                let outcome = match &pre {
                    Some(p) => core.ingest_prechecked(p),
                    None => core.ingest_from(&data, Origin::Peer),
                };
                let took = arrived.elapsed();
                if took > SLOW_INGEST {
                    tracing::debug!(
                        target: "pacmesh_node::core",
                        event = %Hash::new(&data).fmt_short(),
                        queued_ms = queued.as_millis() as u64,
                        total_ms = took.as_millis() as u64,
                        "slow gossip ingest"
                    );
                }
                {
                    let ingest = core.ingest();
                    if ingest.policy().policy_version != snapshot.policy_version {
                        *policy.lock().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(ingest.policy().clone());
                    }
                }
                let (acceptance, result, why) = match outcome {
                    IngestOutcome::Accepted { .. } => (
                        gossipsub::MessageAcceptance::Accept,
                        "accepted",
                        String::new(),
                    ),
                    IngestOutcome::Duplicate { .. } => (
                        gossipsub::MessageAcceptance::Ignore,
                        "ignored",
                        "duplicate".into(),
                    ),
                    IngestOutcome::Rejected { reason } => {
                        tracing::info!(peer = %source, "gossiped event refused: {reason}");
                        if reason.is_peer_fault() {
                            (
                                gossipsub::MessageAcceptance::Reject,
                                "rejected",
                                reason.label().into(),
                            )
                        } else {
                            (
                                gossipsub::MessageAcceptance::Ignore,
                                "ignored",
                                reason.label().into(),
                            )
                        }
                    }
                };
                core.metrics
                    .gossip_messages
                    .get_or_create(&crate::metrics::ResultReasonLabels {
                        result,
                        reason: why,
                    })
                    .inc();
                inflight.fetch_sub(1, Ordering::Relaxed);
                if early {
                    // Reported already; a fault the full checks found still counts.
                    if matches!(acceptance, gossipsub::MessageAcceptance::Reject) {
                        let _ = tx.blocking_send(Command::Fault(source, "invalid gossip", 1));
                    }
                    return;
                }
                let _ = tx.blocking_send(Command::Validated {
                    id,
                    source,
                    acceptance,
                });
            });
        } else if msg.topic == self.announce.hash() {
            let (acceptance, result, why) = match self.on_announcement(&msg) {
                Ok(true) => (gossipsub::MessageAcceptance::Accept, "accepted", ""),
                Ok(false) => (
                    gossipsub::MessageAcceptance::Ignore,
                    "ignored",
                    "stale_announcement",
                ),
                Err(e) => {
                    tracing::info!(peer = %source, "announcement refused: {e:#}");
                    (
                        gossipsub::MessageAcceptance::Reject,
                        "rejected",
                        "bad_announcement",
                    )
                }
            };
            self.core
                .metrics
                .gossip_messages
                .get_or_create(&crate::metrics::ResultReasonLabels {
                    result,
                    reason: why.into(),
                })
                .inc();
            if matches!(acceptance, gossipsub::MessageAcceptance::Reject) {
                self.fault(source, "invalid announcement");
            }
            self.report(&id, &source, acceptance);
        }
    }

    /// Verifies and records an announcement; `Ok(false)`: valid but not newer.
    fn on_announcement(&mut self, msg: &gossipsub::Message) -> Result<bool> {
        let signed = Signed::<Announcement>::from_bytes(&msg.data, &self.limits)?;
        let a = signed.verify_and_decode(&self.limits)?;
        let from =
            crate::keys::peer_id_of(&a.node).context("announcing key is not a libp2p key")?;
        // No check of who relayed it: the signature binds it to `a.node`, and a replayed old
        // one is not newer than what the table holds.
        if a.node == self.core.public {
            return Ok(false);
        }
        let (builder, ours) = {
            let ingest = self.ingest();
            (
                ingest.policy().role_of(&a.node).contains(Roles::BUILDER),
                ingest.state().digest(),
            )
        };
        let differs = a.digest.is_some_and(|d| d != ours);
        let connected = self.handle.connected().contains(&from);
        let fresh = {
            let mut peers = self.core.peers();
            let port = a.blob_http_port;
            let fresh = peers.announce(from.to_string(), a, builder);
            if fresh {
                let mut ports = self
                    .handle
                    .shared
                    .blob_ports
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                match port {
                    Some(p) if p != 0 => ports.insert(from, p),
                    _ => ports.remove(&from),
                };
                // Bounded: announcements are cheap to make under fresh keys.
                if ports.len() > MAX_BLOB_PORTS {
                    let connected = self.handle.connected();
                    ports.retain(|p, _| connected.contains(p));
                }
            }
            // A peer's first announcement usually arrives after its connection was
            // established, when it was not in the table yet to be marked connected.
            if fresh && connected {
                peers.set_connected(&from.to_string(), true);
            }
            fresh
        };
        // While events are spreading, most announcements carry a digest that differs from
        // ours for a moment; one sync a second covers a real gap (the periodic round and the
        // next announcements cover the rest) without a round of requests to every peer that
        // announced at the same time.
        if fresh
            && differs
            && connected
            && self
                .last_digest_sync
                .is_none_or(|t| t.elapsed() >= DIGEST_SYNC_EVERY)
        {
            self.last_digest_sync = Some(Instant::now());
            self.sync_with(from, false);
        }
        Ok(fresh)
    }
}

/// A random duration in `[0, d)`.
fn jitter(d: Duration) -> Duration {
    let ms = d.as_millis().clamp(1, u64::MAX as u128) as u64;
    Duration::from_millis(rand_index(ms as usize) as u64)
}

fn rand_index(n: usize) -> usize {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::Name;

    fn caps() -> Capabilities {
        Capabilities {
            arch: Name::new("x86_64").unwrap(),
            microarch: 3,
            cores: 8,
            memory_bytes: 16 << 30,
            disk_free_bytes: 100 << 30,
            tags: vec![Name::new("bigmem").unwrap()],
            profile: Name::new("host").unwrap(),
            load: 2,
            slots: 2,
            busy: 0,
        }
    }

    #[test]
    fn drifting_figures_are_not_announced_at_once_but_slots_and_tags_are() {
        let old = caps();
        let mut drift = caps();
        drift.load = 7;
        drift.memory_bytes -= 123 << 20;
        drift.disk_free_bytes -= 1 << 30;
        assert!(!material_change(&old, &drift));
        let mut busy = caps();
        busy.busy = 1;
        assert!(material_change(&old, &busy));
        let mut tags = caps();
        tags.tags.clear();
        assert!(material_change(&old, &tags));
        let mut slots = caps();
        slots.slots = 0;
        assert!(material_change(&old, &slots));
    }
}
