//! Prometheus metrics of a node, served at `GET /metrics` (OpenMetrics text).
//!
//! One [`Metrics`] per node, held by [`crate::core::Core`]. It owns a
//! [`prometheus_client::registry::Registry`]: the node's own families live in its `pacmesh`
//! sub-registry (so every name starts with `pacmesh_`), and any other layer registers into the
//! same registry through [`Metrics::with_registry`], e.g. the network layer's libp2p metrics:
//!
//! ```ignore
//! let p2p = core.metrics.with_registry(|r| libp2p::metrics::Metrics::new(r));
//! ```
//!
//! | family | type | labels | fed by |
//! | --- | --- | --- | --- |
//! | `pacmesh_builds_total` | counter | `outcome`: success, failed, timed_out, cancelled, already_built, node_error | executor |
//! | `pacmesh_build_duration_seconds` | histogram | | executor (sandbox runs that were not abandoned) |
//! | `pacmesh_sandbox_failures_total` | counter | | executor (the sandbox itself failed: set-up, bwrap) |
//! | `pacmesh_queue_entries` | gauge | `state`: waiting, claimed, built, failed, cancelled, published | refreshed at every scrape |
//! | `pacmesh_events_total` | counter | `result`: accepted, duplicate, rejected; `reason` | every event ingested (HTTP, gossip, own) |
//! | `pacmesh_gossip_messages_total` | counter | `result`: accepted, rejected, ignored; `reason` | network layer |
//! | `pacmesh_peers_connected` | gauge | | network layer |
//! | `pacmesh_relayed_connections_closed_total` | counter | | network layer (a relayed connection closed because a direct one to the same peer opened) |
//! | `pacmesh_replicated_bytes_total` | counter | | network layer (blob bytes received from peers) |
//! | `pacmesh_replicated_http_bytes_total` | counter | | network layer (of those, bytes received from peers' blob HTTP listeners) |
//! | `pacmesh_blob_http_fallbacks_total` | counter | | network layer (fetches that gave a peer's blob listener up, unreachable or failing, and asked the peer over libp2p) |
//! | `pacmesh_retention_released_total` | counter | | retention (own output dropped once enough peers keep it) |
//! | `pacmesh_blobs_fetched_total` | counter | `result`: ok, failed | network layer |
//! | `pacmesh_blobs_stored`, `pacmesh_blobs_stored_bytes` | gauge | | health monitor (every 30 s) |
//! | `pacmesh_publishes_total` | counter | | publisher (generations this node published) |
//! | `pacmesh_repo_generation` | gauge | `repo`, `arch` | refreshed at every scrape (latest generation in the log) |
//! | `pacmesh_webhook_deliveries_total` | counter | `event`, `result`: ok, failed, dropped | webhooks |
//! | `pacmesh_node_accepting_claims` | gauge | | health monitor (0 when disk or memory is short) |
//! | `pacmesh_node_disk_free_bytes`, `pacmesh_node_memory_available_bytes` | gauge | | health monitor |

use std::sync::{Mutex, MutexGuard};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::core::Core;

/// `outcome` label of `pacmesh_builds_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

/// `state` label of `pacmesh_queue_entries`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

/// `result` and `reason` labels of `pacmesh_events_total` and `pacmesh_gossip_messages_total`.
/// `reason` is empty unless the message was rejected (then an ingest reject label such as
/// `bad_signature`, `not_authorized`, `too_large`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultReasonLabels {
    pub result: &'static str,
    pub reason: String,
}

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// `repo` and `arch` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RepoLabels {
    pub repo: String,
    pub arch: String,
}

/// `event` and `result` labels of `pacmesh_webhook_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub event: &'static str,
    pub result: &'static str,
}

/// Build duration buckets, seconds: 1 s … about 4.5 h.
fn duration_buckets() -> impl Iterator<Item = f64> {
    [
        1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
        16200.0,
    ]
    .into_iter()
}

/// The node's metric families (see the [module docs](self)). Handles are cheap clones of
/// atomics: update them directly.
pub struct Metrics {
    registry: Mutex<Registry>,
    pub builds: Family<OutcomeLabels, Counter>,
    pub build_duration: Histogram,
    pub sandbox_failures: Counter,
    pub queue_entries: Family<StateLabels, Gauge>,
    pub events: Family<ResultReasonLabels, Counter>,
    pub gossip_messages: Family<ResultReasonLabels, Counter>,
    pub peers_connected: Gauge,
    pub relayed_closed: Counter,
    pub replicated_bytes: Counter,
    pub replicated_http_bytes: Counter,
    pub blob_http_fallbacks: Counter,
    pub retention_released: Counter,
    pub blobs_fetched: Family<ResultLabels, Counter>,
    pub blobs_stored: Gauge,
    pub blobs_stored_bytes: Gauge,
    pub publishes: Counter,
    pub repo_generation: Family<RepoLabels, Gauge>,
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    pub accepting_claims: Gauge,
    pub disk_free_bytes: Gauge,
    pub memory_available_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Every `state` of `pacmesh_queue_entries`, so that a state with no entry reads 0.
pub const QUEUE_STATES: [&str; 6] = [
    "waiting",
    "claimed",
    "built",
    "failed",
    "cancelled",
    "published",
];

/// Every `outcome` of `pacmesh_builds_total`.
pub const BUILD_OUTCOMES: [&str; 6] = [
    "success",
    "failed",
    "timed_out",
    "cancelled",
    "already_built",
    "node_error",
];

impl Metrics {
    /// A fresh registry with the node's families registered under `pacmesh_`.
    pub fn new() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            builds: Family::default(),
            build_duration: Histogram::new(duration_buckets()),
            sandbox_failures: Counter::default(),
            queue_entries: Family::default(),
            events: Family::default(),
            gossip_messages: Family::default(),
            peers_connected: Gauge::default(),
            relayed_closed: Counter::default(),
            replicated_bytes: Counter::default(),
            replicated_http_bytes: Counter::default(),
            blob_http_fallbacks: Counter::default(),
            retention_released: Counter::default(),
            blobs_fetched: Family::default(),
            blobs_stored: Gauge::default(),
            blobs_stored_bytes: Gauge::default(),
            publishes: Counter::default(),
            repo_generation: Family::default(),
            webhook_deliveries: Family::default(),
            accepting_claims: Gauge::default(),
            disk_free_bytes: Gauge::default(),
            memory_available_bytes: Gauge::default(),
        };
        for outcome in BUILD_OUTCOMES {
            let _ = m.builds.get_or_create(&OutcomeLabels { outcome });
        }
        for state in QUEUE_STATES {
            let _ = m.queue_entries.get_or_create(&StateLabels { state });
        }
        m.accepting_claims.set(1);
        {
            let mut root = m.registry();
            let r = root.sub_registry_with_prefix("pacmesh");
            r.register(
                "builds",
                "Builds run by this node, by outcome",
                m.builds.clone(),
            );
            r.register_with_unit(
                "build_duration",
                "Wall-clock time of sandbox builds on this node",
                Unit::Seconds,
                m.build_duration.clone(),
            );
            r.register(
                "sandbox_failures",
                "Builds that failed because the sandbox itself could not run",
                m.sandbox_failures.clone(),
            );
            r.register(
                "queue_entries",
                "Queue entries by state, as this node sees the queue",
                m.queue_entries.clone(),
            );
            r.register(
                "events",
                "Signed events offered to this node (HTTP, gossip, its own), by result and reject reason",
                m.events.clone(),
            );
            r.register(
                "gossip_messages",
                "Gossip messages validated by this node, by result and reject reason",
                m.gossip_messages.clone(),
            );
            r.register(
                "peers_connected",
                "Mesh peers currently connected",
                m.peers_connected.clone(),
            );
            r.register(
                "relayed_connections_closed",
                "Relayed connections closed because a direct one to the same peer opened",
                m.relayed_closed.clone(),
            );
            r.register_with_unit(
                "replicated",
                "Blob bytes received from peers",
                Unit::Bytes,
                m.replicated_bytes.clone(),
            );
            r.register_with_unit(
                "replicated_http",
                "Blob bytes received from peers' blob HTTP listeners",
                Unit::Bytes,
                m.replicated_http_bytes.clone(),
            );
            r.register(
                "blob_http_fallbacks",
                "Fetches that gave a peer's blob listener up and asked the peer over libp2p",
                m.blob_http_fallbacks.clone(),
            );
            r.register(
                "retention_released",
                "Own build outputs dropped once enough peers keep them",
                m.retention_released.clone(),
            );
            r.register(
                "blobs_fetched",
                "Blobs fetched from peers, by result",
                m.blobs_fetched.clone(),
            );
            r.register(
                "blobs_stored",
                "Blobs in this node's content store",
                m.blobs_stored.clone(),
            );
            r.register_with_unit(
                "blobs_stored",
                "Bytes in this node's content store",
                Unit::Bytes,
                m.blobs_stored_bytes.clone(),
            );
            r.register(
                "publishes",
                "Repository generations published by this node",
                m.publishes.clone(),
            );
            r.register(
                "repo_generation",
                "Latest published generation of each repository and architecture",
                m.repo_generation.clone(),
            );
            r.register(
                "webhook_deliveries",
                "Webhook deliveries by event and result",
                m.webhook_deliveries.clone(),
            );
            r.register(
                "node_accepting_claims",
                "1 when this node claims new builds, 0 when it refuses (disk or memory short, see /api/v1/status)",
                m.accepting_claims.clone(),
            );
            r.register_with_unit(
                "node_disk_free",
                "Free bytes on the file system of the data directory",
                Unit::Bytes,
                m.disk_free_bytes.clone(),
            );
            r.register_with_unit(
                "node_memory_available",
                "MemAvailable of this machine",
                Unit::Bytes,
                m.memory_available_bytes.clone(),
            );
        }
        m
    }

    /// The registry, to register more families (hold the guard briefly).
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the root registry: how other layers register their families, e.g.
    /// `core.metrics.with_registry(|r| libp2p::metrics::Metrics::new(r))`.
    pub fn with_registry<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        f(&mut self.registry())
    }

    /// Counts one build outcome (one of [`BUILD_OUTCOMES`]).
    pub fn build_outcome(&self, outcome: &'static str) {
        self.builds.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Counts one ingested event.
    pub fn event(&self, result: &'static str, reason: &str) {
        self.events
            .get_or_create(&ResultReasonLabels {
                result,
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text of everything registered.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 << 10);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry()) {
            tracing::warn!("encoding metrics: {e}");
        }
        out
    }
}

/// Sets the gauges derived from the queue state (entries by state, latest generations) and
/// returns the exposition text. Called by `GET /metrics`.
pub fn scrape(core: &Core) -> String {
    let now = pacmesh_protocol::Timestamp::now();
    let m = &core.metrics;
    {
        let ingest = core.ingest();
        let state = ingest.state();
        let mut counts = [0i64; QUEUE_STATES.len()];
        for e in state.entries() {
            let l = state.status(e, now).label();
            if let Some(i) = QUEUE_STATES.iter().position(|s| *s == l) {
                counts[i] += 1;
            }
        }
        for (state, n) in QUEUE_STATES.iter().zip(counts) {
            m.queue_entries.get_or_create(&StateLabels { state }).set(n);
        }
        for (repo, arch) in state.published_repos() {
            if let Some(g) = state.latest_generation(repo, arch) {
                m.repo_generation
                    .get_or_create(&RepoLabels {
                        repo: repo.to_string(),
                        arch: arch.to_string(),
                    })
                    .set(g.manifest.generation as i64);
            }
        }
    }
    m.encode()
}

/// The same exposition in the Prometheus text format 0.0.4 (what `promtool check metrics` and
/// older scrapers read): counter families are named by their `_total` samples, `# UNIT` and
/// `# EOF` lines are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len() + 1024);
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_conventions_and_other_layers_can_register() {
        let m = Metrics::new();
        m.build_outcome("success");
        m.build_duration.observe(3.5);
        m.event("rejected", "bad_signature");
        let extra: Counter = Counter::default();
        m.with_registry(|r| {
            r.sub_registry_with_prefix("libp2p").register(
                "test",
                "a family from another layer",
                extra.clone(),
            )
        });
        extra.inc();
        let text = m.encode();
        for want in [
            "pacmesh_builds_total{outcome=\"success\"} 1",
            "pacmesh_builds_total{outcome=\"timed_out\"} 0",
            "pacmesh_build_duration_seconds_count 1",
            "pacmesh_events_total{result=\"rejected\",reason=\"bad_signature\"} 1",
            "pacmesh_blobs_stored_bytes 0",
            "pacmesh_replicated_bytes_total 0",
            "pacmesh_queue_entries{state=\"waiting\"} 0",
            "pacmesh_node_accepting_claims 1",
            "libp2p_test_total 1",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
        let prom = to_prometheus_text(&text);
        assert!(prom.contains("# HELP pacmesh_builds_total Builds run by this node, by outcome.\n# TYPE pacmesh_builds_total counter\n"), "{prom}");
        assert!(prom.contains("# TYPE pacmesh_build_duration_seconds histogram\n"));
        assert!(!prom.contains("# EOF") && !prom.contains("# UNIT"));
    }
}
