//! The state one node process shares between its tasks: identity, event log, content store.
//!
//! Every change to the queue goes through [`Core::ingest_bytes`] (events from outside: HTTP,
//! later gossip and sync) or [`Core::submit`] (events this node authors: claims, build reports,
//! publishes). Both run the same verify-then-apply pipeline in [`crate::ingest`], so an event the
//! node signs itself is checked against the policy exactly like a stranger's. Waiters (the
//! executor, the publisher, HTTP long-polls) subscribe to [`Core::subscribe`] and are woken after
//! every accepted event.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result, anyhow, bail};
use pacmesh_protocol::{Event, EventBody, Hash, PublicKey, Signed, Timestamp};
use tokio::sync::{broadcast, watch};

use crate::peers::PeerTable;

use crate::ingest::{Ingest, IngestOutcome};
use crate::keys::NodeKey;
use crate::store::FsStore;

/// Shared node state; cheap to clone through an `Arc`.
pub struct Core {
    /// The node's own key: libp2p identity and author of claims and build reports.
    pub key: NodeKey,
    /// The node's public key in protocol form.
    pub public: PublicKey,
    /// A key that may publish repositories (may equal `key`), if this node publishes.
    pub publisher_key: Option<NodeKey>,
    /// Event store, derived queue state, policy, counters.
    ingest: Mutex<Ingest>,
    /// Content store (package files, logs, databases, source snapshots).
    pub blobs: Arc<FsStore>,
    /// The node's data directory (never visible to a build sandbox).
    pub data_dir: PathBuf,
    /// Bumped after every accepted event.
    changed: watch::Sender<u64>,
    /// Serialises authoring so that two local events never race for one sequence number.
    author_lock: Mutex<()>,
    /// Prometheus metrics (`GET /metrics`); other layers register into its registry.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Running builds' logs (`GET /logs/ENTRY`), fed by the executor or relayed from peers.
    pub live_logs: crate::livelog::LiveLogs,
    /// Disk and memory checks: whether this node takes new claims.
    pub health: crate::health::Health,
    /// Settings that SIGHUP reloads (webhooks, health limits).
    pub reloadable: watch::Sender<crate::config::Reloadable>,
    /// Every accepted event, with its bytes, where it came from, and decoded (webhooks, the
    /// network layer gossips the local ones).
    accepted: broadcast::Sender<Accepted>,
    /// The other nodes of the mesh, as their announcements describe them.
    pub peers: Mutex<PeerTable>,
    /// This node's capabilities as measured at start-up (status page, `/api/v1/status`).
    capabilities: Mutex<Option<pacmesh_protocol::Capabilities>>,
    /// The running network, once started (unset with the mesh turned off).
    pub net: std::sync::OnceLock<crate::net::NetHandle>,
    /// Entries this node's executor will try again after a transient failure (`queue why`).
    retries: Mutex<std::collections::HashMap<Hash, crate::executor::RetryNote>>,
    /// Whether accepted events pin the blobs they name (`event:<id>`). A node keeps what its
    /// log refers to; a mirror turns this off and pins only the generations it keeps.
    pin_events: std::sync::atomic::AtomicBool,
    /// Set when this node releases its own build output once replicated ([`crate::retention`]).
    pub retention: std::sync::OnceLock<crate::retention::Retention>,
}

/// An event the node accepted (see [`Core::subscribe_accepted`]).
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its id.
    pub id: Hash,
    /// The event.
    pub event: Arc<Event>,
    /// The signed envelope bytes as received.
    pub bytes: Arc<[u8]>,
    /// Where it came from.
    pub origin: Origin,
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Authored here, or handed to this node by a client (HTTP): to be gossiped.
    Local,
    /// Received from a peer (gossip or anti-entropy sync): gossip forwards it by itself.
    Peer,
}

impl Core {
    pub fn new(
        key: NodeKey,
        publisher_key: Option<NodeKey>,
        ingest: Ingest,
        blobs: Arc<FsStore>,
        data_dir: PathBuf,
    ) -> Arc<Self> {
        let public = PublicKey::from(key.signing_key());
        Arc::new(Core {
            key,
            public,
            publisher_key,
            ingest: Mutex::new(ingest),
            blobs,
            data_dir,
            changed: watch::channel(0).0,
            author_lock: Mutex::new(()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            live_logs: crate::livelog::LiveLogs::new(),
            health: crate::health::Health::new(),
            reloadable: watch::channel(crate::config::Reloadable::default()).0,
            accepted: broadcast::channel(1024).0,
            capabilities: Mutex::new(None),
            peers: Mutex::new(PeerTable::default()),
            net: std::sync::OnceLock::new(),
            retries: Mutex::default(),
            pin_events: std::sync::atomic::AtomicBool::new(true),
            retention: std::sync::OnceLock::new(),
        })
    }

    /// Stops (or restarts) pinning the blobs that accepted events name (a mirror).
    pub fn set_pin_events(&self, on: bool) {
        self.pin_events
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The event log and derived state. Hold the guard briefly: never across a build, a
    /// network call or an `.await`.
    pub fn ingest(&self) -> MutexGuard<'_, Ingest> {
        self.ingest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A receiver that changes after every accepted event.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// This node's capabilities, if the daemon measured them.
    pub fn capabilities(&self) -> Option<pacmesh_protocol::Capabilities> {
        self.capabilities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records this node's capabilities (the daemon, at start-up).
    pub fn set_capabilities(&self, c: pacmesh_protocol::Capabilities) {
        *self.capabilities.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    /// Every event accepted from now on, decoded. A receiver that falls more than 1024
    /// events behind loses the oldest (`Lagged`).
    pub fn subscribe_accepted(&self) -> broadcast::Receiver<Accepted> {
        self.accepted.subscribe()
    }

    /// Verifies, stores and applies a signed event from a local client (HTTP, CLI).
    pub fn ingest_bytes(&self, bytes: &[u8]) -> IngestOutcome {
        self.ingest_from(bytes, Origin::Local)
    }

    /// Verifies, stores and applies a signed event that came from `origin`.
    pub fn ingest_from(&self, bytes: &[u8], origin: Origin) -> IngestOutcome {
        // Peer events are applied without waiting for the flush (`Ingest::ingest_deferred`:
        // peers hold them too); what this node signs or a client hands it is durable first.
        let outcome = match origin {
            Origin::Local => self.ingest().ingest(bytes),
            Origin::Peer => self.ingest().ingest_deferred(bytes),
        };
        self.count(&outcome);
        if let IngestOutcome::Accepted { id } = &outcome {
            let ev = self.decode_and_pin(id, bytes);
            self.settled(id, ev, Arc::from(bytes), origin);
        }
        outcome
    }

    /// Stores and applies an event from gossip whose signature was verified on arrival
    /// (`Ingest::ingest_prechecked`: not verified again; durable like [`Origin::Peer`]).
    pub fn ingest_prechecked(&self, p: &crate::ingest::Prechecked) -> IngestOutcome {
        let t0 = std::time::Instant::now();
        let mut ingest = self.ingest();
        let waited = t0.elapsed();
        let outcome = ingest.ingest_prechecked(p);
        drop(ingest);
        if t0.elapsed() > std::time::Duration::from_millis(20) {
            tracing::debug!(
                event = %p.id().fmt_short(),
                lock_ms = waited.as_millis() as u64,
                total_ms = t0.elapsed().as_millis() as u64,
                "slow ingest"
            );
        }
        self.count(&outcome);
        if let IngestOutcome::Accepted { id } = &outcome {
            self.pin_referenced(id, p.event());
            self.settled(id, Some(p.event().clone()), p.bytes().clone(), Origin::Peer);
        }
        outcome
    }

    /// After an event was accepted (and counted): the log line, the waiters, the subscribers.
    fn settled(&self, id: &Hash, ev: Option<Event>, bytes: Arc<[u8]>, origin: Origin) {
        tracing::debug!(event = %id.fmt_short(), ?origin, "accepted");
        self.changed.send_modify(|n| *n += 1);
        if let Some(ev) = ev {
            let _ = self.accepted.send(Accepted {
                id: *id,
                event: Arc::new(ev),
                bytes,
                origin,
            });
        }
    }

    fn count(&self, outcome: &IngestOutcome) {
        match outcome {
            IngestOutcome::Accepted { .. } => self.metrics.event("accepted", ""),
            IngestOutcome::Duplicate { .. } => self.metrics.event("duplicate", ""),
            IngestOutcome::Rejected { reason } => self.metrics.event("rejected", reason.label()),
        }
    }

    /// Wakes the waiters without an event (a blob they may wait for arrived).
    pub fn notify(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Entries this node's executor will try again after a transient failure (hold briefly).
    pub fn retries(
        &self,
    ) -> MutexGuard<'_, std::collections::HashMap<Hash, crate::executor::RetryNote>> {
        self.retries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The peer table (hold briefly).
    pub fn peers(&self) -> MutexGuard<'_, PeerTable> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decodes an accepted event (verified by the ingest: only decoded again here) and pins
    /// what it refers to ([`Core::pin_referenced`]).
    fn decode_and_pin(&self, id: &Hash, bytes: &[u8]) -> Option<Event> {
        let limits = self.ingest().limits().clone();
        let signed = Signed::<Event>::from_bytes(bytes, &limits).ok()?;
        let ev: Event = pacmesh_protocol::Message::decode(&signed.payload, &limits).ok()?;
        self.pin_referenced(id, &ev);
        Some(ev)
    }

    /// Pins every blob an accepted event refers to (snapshots, artifacts, logs, repository files)
    /// as `event:<id>`, so garbage collection keeps what the log needs.
    fn pin_referenced(&self, id: &Hash, ev: &Event) {
        if !self.pin_events.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let tag = format!("event:{id}");
        for h in crate::state::referenced_blobs(&ev.body) {
            if let Err(e) = crate::store::BlobStore::pin(self.blobs.as_ref(), &h, &tag) {
                tracing::warn!(blob = %h.fmt_short(), "cannot pin: {e}");
            }
        }
    }

    /// Signs `body` as this node and ingests it. Fails if the policy refuses it (e.g. this node
    /// is not an allowed builder), with the reason.
    pub fn submit(&self, body: EventBody) -> Result<Hash> {
        self.submit_as(&self.key, body)
    }

    /// Signs `body` with the publisher key and ingests it.
    pub fn submit_as_publisher(&self, body: EventBody) -> Result<Hash> {
        let key = self
            .publisher_key
            .as_ref()
            .ok_or_else(|| anyhow!("this node holds no publisher key"))?;
        self.submit_as(key, body)
    }

    /// Signs `body` as `key` with that author's next sequence number and ingests it.
    pub fn submit_as(&self, key: &NodeKey, body: EventBody) -> Result<Hash> {
        let _serial = self.author_lock.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = {
            let ingest = self.ingest();
            sign_next(&ingest, key, body)?
        };
        match self.ingest_bytes(&bytes) {
            IngestOutcome::Accepted { id } | IngestOutcome::Duplicate { id } => Ok(id),
            IngestOutcome::Rejected { reason } => bail!("own event refused: {reason}"),
        }
    }
}

/// The next event of `key`'s log, signed: sequence number after the stored head, `prev` the
/// id of the head event.
pub fn sign_next(ingest: &Ingest, key: &NodeKey, body: EventBody) -> Result<Vec<u8>> {
    let author = PublicKey::from(key.signing_key());
    // The highest stored event, not the contiguous head: signing after a gap of our own log
    // must not reuse a sequence number that is already taken.
    let (seq, prev) = match ingest
        .events()
        .last(&author)
        .context("reading own event log")?
    {
        Some((seq, slot)) => (seq, Some(slot.id)),
        None => (0, None),
    };
    let ev = Event::new(author, seq + 1, prev, Timestamp::now(), body);
    Ok(Signed::sign(key.signing_key(), &ev)
        .context("encoding own event")?
        .to_bytes())
}
