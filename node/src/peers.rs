//! What this node knows of the other nodes of its mesh: their latest signed capability
//! announcement, whether they are connected, and the ranking of live eligible builders that
//! decides who claims an entry first (DESIGN.md, "Claiming without a coordinator").
//!
//! Filled by the network layer ([`crate::net`]); read by the executor's claim delay, by
//! `pacmesh status` and the status page. Knows nothing of libp2p beyond a peer id string.

use std::collections::BTreeMap;
use std::time::Duration;

use pacmesh_protocol::{
    Announcement, Capabilities, Hash, Name, PublicKey, QueueEntry, Timestamp, matches,
    rendezvous_rank,
};
use serde_json::{Value, json};

/// Most peers remembered; announcements of further nodes are dropped (an announcement costs
/// nothing to make, so the table must not grow without bound).
pub const MAX_PEERS: usize = 4096;

/// One known node.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Its libp2p id, as text.
    pub peer_id: String,
    /// Its latest verified announcement.
    pub announcement: Announcement,
    /// Whether the policy lets it build (when the announcement was accepted).
    pub builder: bool,
    /// When this node received the announcement.
    pub received: Timestamp,
    /// Whether a connection to it is open now.
    pub connected: bool,
}

/// The table of known nodes, keyed by public key.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: BTreeMap<PublicKey, Peer>,
}

impl PeerTable {
    /// Records an announcement (already verified). Returns `false` if it is older than the
    /// one held, or the table is full.
    pub fn announce(&mut self, peer_id: String, a: Announcement, builder: bool) -> bool {
        if let Some(p) = self.peers.get(&a.node)
            && p.announcement.time >= a.time
        {
            return false;
        }
        if !self.peers.contains_key(&a.node) && self.peers.len() >= MAX_PEERS {
            self.expire(Timestamp::now());
            if self.peers.len() >= MAX_PEERS {
                return false;
            }
        }
        let connected = self.peers.get(&a.node).is_some_and(|p| p.connected);
        self.peers.insert(
            a.node,
            Peer {
                peer_id,
                announcement: a,
                builder,
                received: Timestamp::now(),
                connected,
            },
        );
        true
    }

    /// Marks the node with this peer id connected or not.
    pub fn set_connected(&mut self, peer_id: &str, connected: bool) {
        for p in self.peers.values_mut() {
            if p.peer_id == peer_id {
                p.connected = connected;
            }
        }
    }

    /// Forgets nodes whose announcement expired more than an hour ago.
    pub fn expire(&mut self, now: Timestamp) {
        let hour = Duration::from_secs(3600);
        self.peers
            .retain(|_, p| p.announcement.expires.saturating_add(hour) > now);
    }

    /// A node's entry.
    pub fn get(&self, node: &PublicKey) -> Option<&Peer> {
        self.peers.get(node)
    }

    /// All known nodes.
    pub fn iter(&self) -> impl Iterator<Item = (&PublicKey, &Peer)> {
        self.peers.iter()
    }

    /// Number of known nodes.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// The builders, other than `me`, that are live at `now` (announcement not expired), may
    /// build, have a free slot, and could build `entry` for one of `arches`.
    pub fn eligible<'a>(
        &'a self,
        me: &'a PublicKey,
        entry: &'a QueueEntry,
        arches: &'a [Name],
        now: Timestamp,
    ) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.peers.iter().filter_map(move |(k, p)| {
            let c = &p.announcement.capabilities;
            let ok = k != me
                && p.builder
                && p.announcement.expires > now
                && c.slots > 0
                && c.busy < c.slots
                && arches.contains(&c.arch)
                && matches(c, &entry.needs).is_ok();
            ok.then_some(k)
        })
    }

    /// This node's position (0 = first) in the rendezvous ranking of itself and the live
    /// eligible builders for `entry`.
    pub fn rank_of(
        &self,
        me: &PublicKey,
        id: &Hash,
        entry: &QueueEntry,
        arches: &[Name],
        now: Timestamp,
    ) -> usize {
        let mut keys: Vec<PublicKey> = self.eligible(me, entry, arches, now).copied().collect();
        keys.push(*me);
        rendezvous_rank(id, keys.iter().copied())
            .iter()
            .position(|k| k == me)
            .unwrap_or(0)
    }

    /// JSON for `pacmesh status` and the status page.
    pub fn view(&self, now: Timestamp) -> Vec<Value> {
        self.peers
            .iter()
            .map(|(k, p)| {
                let a = &p.announcement;
                let c: &Capabilities = &a.capabilities;
                json!({
                    "node": k.to_string(),
                    "peer_id": p.peer_id,
                    "connected": p.connected,
                    "live": a.expires > now,
                    "builder": p.builder,
                    "arch": c.arch.as_str(),
                    "microarch": c.microarch,
                    "cores": c.cores,
                    "mem_bytes": c.memory_bytes,
                    "disk_free_bytes": c.disk_free_bytes,
                    "tags": c.tags.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                    "profile": c.profile.as_str(),
                    "load": c.load,
                    "slots": c.slots,
                    "busy": c.busy,
                    "digest": a.digest.map(|d| d.to_string()),
                    "blob_http_port": a.blob_http_port,
                    "last_seen": p.received.0,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::{Requirement, SigningKey, Source};

    fn key(n: u8) -> PublicKey {
        PublicKey::from(&SigningKey::from_bytes(&[n; 32]))
    }

    fn caps(arch: &str, tags: &[&str], busy: u32) -> Capabilities {
        Capabilities {
            arch: Name::new(arch).unwrap(),
            microarch: 0,
            cores: 4,
            memory_bytes: 8 << 30,
            disk_free_bytes: 100 << 30,
            tags: tags.iter().map(|t| Name::new(*t).unwrap()).collect(),
            profile: Name::new("host").unwrap(),
            load: 0,
            slots: 1,
            busy,
        }
    }

    fn ann(n: u8, c: Capabilities, t: u64) -> Announcement {
        Announcement {
            version: 1,
            node: key(n),
            time: Timestamp::from_millis(t),
            expires: Timestamp::from_millis(t + 60_000),
            capabilities: c,
            digest: None,
            blob_http_port: None,
        }
    }

    #[test]
    fn ranking_counts_only_live_matching_free_builders() {
        let now = Timestamp::now();
        let t = now.0 - 1000;
        let mut table = PeerTable::default();
        assert!(table.announce("a".into(), ann(1, caps("x86_64", &["bigmem"], 0), t), true));
        assert!(table.announce("b".into(), ann(2, caps("x86_64", &[], 0), t), true));
        assert!(table.announce("c".into(), ann(3, caps("aarch64", &[], 0), t), true));
        assert!(table.announce("d".into(), ann(4, caps("x86_64", &[], 1), t), true)); // busy
        assert!(table.announce("e".into(), ann(5, caps("x86_64", &[], 0), t), false)); // not a builder
        let mut no_slots = caps("x86_64", &[], 0);
        no_slots.slots = 0;
        assert!(table.announce("g".into(), ann(7, no_slots, t), true)); // --no-build
        let mut old = ann(6, caps("x86_64", &[], 0), t - 120_000);
        old.expires = Timestamp::from_millis(t - 60_000);
        assert!(table.announce("f".into(), old, true)); // expired
        // An older announcement does not replace a newer one.
        assert!(!table.announce("a".into(), ann(1, caps("x86_64", &[], 0), t - 1), true));

        let mut entry = pacmesh_protocol::QueueEntry::new(
            Name::new("extra").unwrap(),
            Source::Aur {
                pkgbase: Name::new("x").unwrap(),
            },
        );
        let arches = [Name::new("x86_64").unwrap()];
        let me = key(9);
        let mut got: Vec<_> = table.eligible(&me, &entry, &arches, now).copied().collect();
        got.sort();
        let mut want = vec![key(1), key(2)];
        want.sort();
        assert_eq!(got, want);
        entry.needs = vec![Requirement::parse("tag=bigmem").unwrap()];
        let got: Vec<_> = table.eligible(&me, &entry, &arches, now).copied().collect();
        assert_eq!(got, vec![key(1)]);
        // Every node computes the same ranking: the position of each member is distinct.
        let id = Hash::new(b"entry");
        entry.needs.clear();
        assert!(table.announce("me".into(), ann(9, caps("x86_64", &[], 0), t), true));
        let ranks: Vec<usize> = [key(1), key(2), me]
            .iter()
            .map(|k| table.rank_of(k, &id, &entry, &arches, now))
            .collect();
        let mut sorted = ranks.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 2], "{ranks:?}");
    }
}
