//! Live logs of builds running on other nodes: when someone follows `/logs/ENTRY` here and the
//! build runs elsewhere, the status page asks [`crate::livelog::LiveLogs::want_remote`], which
//! lands in [`NetLogRelay::follow`]: a task polls the builder over `/pacmesh/logs/1` (every
//! [`POLL`]) and feeds the lines into this node's `LiveLogs`, so local followers see them as if
//! the build ran here, until the builder says the build ended.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use pacmesh_protocol::{Hash, LOGS_VERSION, LogRequest, PublicKey};

use super::NetHandle;
use crate::core::Core;
use crate::livelog::LogRelay;

/// How often the builder is asked for new lines.
pub const POLL: Duration = Duration::from_millis(250);
/// Failed requests in a row after which relaying stops (a follower asks again).
const MAX_ERRORS: u32 = 8;

/// The network layer's [`LogRelay`].
pub struct NetLogRelay {
    core: Weak<Core>,
    net: NetHandle,
    following: Arc<Mutex<HashSet<Hash>>>,
}

impl NetLogRelay {
    /// A relay for `core`'s live logs over `net`.
    pub fn new(core: &Arc<Core>, net: NetHandle) -> Arc<Self> {
        Arc::new(NetLogRelay {
            core: Arc::downgrade(core),
            net,
            following: Arc::default(),
        })
    }
}

impl LogRelay for NetLogRelay {
    fn follow(&self, entry: Hash, builder: PublicKey, attempt: u32) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        if builder == core.public || core.live_logs.is_active(&entry) {
            return;
        }
        let Some(peer) = crate::keys::peer_id_of(&builder) else {
            return;
        };
        if !self
            .following
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(entry)
        {
            return;
        }
        let (net, me, following) = (self.net.clone(), self.core.clone(), self.following.clone());
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            following
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry);
            return;
        };
        rt.spawn(async move {
            relay(me, net, peer, entry, builder, attempt).await;
            following
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry);
        });
    }
}

async fn relay(
    core: Weak<Core>,
    net: NetHandle,
    peer: libp2p::PeerId,
    entry: Hash,
    builder: PublicKey,
    attempt: u32,
) {
    let mut next = 0u64;
    let mut errors = 0u32;
    let mut begun = false;
    loop {
        let req = LogRequest {
            version: LOGS_VERSION,
            entry,
            from: next,
        };
        let r = net.log_request(peer, req).await;
        let Some(core) = core.upgrade() else { return };
        match r {
            Ok(resp) => {
                errors = 0;
                if resp.running && !begun {
                    core.live_logs.begin(entry, attempt, builder);
                    begun = true;
                }
                for l in &resp.lines {
                    core.live_logs.push(entry, attempt, l);
                }
                next = resp.first + resp.lines.len() as u64;
                if !resp.running || resp.ended.is_some() {
                    if begun {
                        core.live_logs.end(
                            entry,
                            attempt,
                            resp.ended.as_deref().unwrap_or("ended"),
                        );
                    }
                    return;
                }
            }
            Err(e) => {
                errors += 1;
                tracing::debug!(entry = %entry.fmt_short(), "log relay: {e:#}");
                if errors >= MAX_ERRORS {
                    if begun {
                        core.live_logs.end(entry, attempt, "builder unreachable");
                    }
                    return;
                }
            }
        }
        drop(core);
        tokio::time::sleep(POLL).await;
    }
}
