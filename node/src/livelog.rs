//! Live build logs: one stream per running build, keyed by queue entry, that `GET /logs/ENTRY`
//! follows.
//!
//! Who feeds it: the executor for builds on this node ([`LiveLogs::begin`], [`LiveLogs::push`]
//! per line, [`LiveLogs::end`]); the network layer for builds elsewhere — when somebody follows
//! an entry claimed by another node, [`LiveLogs::want_remote`] calls the installed
//! [`LogRelay`], which subscribes to the builder over the mesh and feeds the lines it relays
//! into the same calls (`begin` with the remote builder's key). Readers never see the
//! difference.
//!
//! Bounded: each stream keeps the last [`BACKLOG_BYTES`] of its lines for followers who join
//! late (older lines are counted, and the complete log is stored as a blob when the build
//! ends), and a follower that cannot keep up loses lines (it is told how many) instead of
//! holding memory.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use pacmesh_protocol::{Hash, PublicKey, Timestamp};
use tokio::sync::broadcast;

/// Bytes of recent lines kept per running build for followers who join late.
pub const BACKLOG_BYTES: usize = 1 << 20;
/// Lines buffered per follower before it starts losing them.
pub const FOLLOWER_BUFFER: usize = 4096;
/// Longest line kept (longer ones are cut with a marker).
pub const MAX_LINE: usize = 16 << 10;

/// What a follower receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveEvent {
    /// One line of output, without its newline.
    Line(Arc<str>),
    /// The build ended (`built`, `failed`, `abandoned`, …); no more lines follow.
    End(Arc<str>),
}

/// Asks the network layer to relay a remote build's log into [`LiveLogs`]. Installed once by
/// the network layer ([`LiveLogs::set_relay`]).
pub trait LogRelay: Send + Sync {
    /// Somebody wants the live log of `entry`, which `builder` is building (attempt
    /// `attempt`). Called again by every new follower while no lines arrived: make it cheap
    /// and idempotent.
    fn follow(&self, entry: Hash, builder: PublicKey, attempt: u32);
}

struct Stream {
    builder: PublicKey,
    attempt: u32,
    started: Timestamp,
    backlog: VecDeque<Arc<str>>,
    backlog_bytes: usize,
    /// Lines dropped from the front of the backlog.
    dropped: u64,
    lines: u64,
    tx: broadcast::Sender<LiveEvent>,
}

/// A running build as listed by [`LiveLogs::active`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveBuild {
    pub entry: Hash,
    pub builder: PublicKey,
    pub attempt: u32,
    pub started: Timestamp,
    pub lines: u64,
}

/// A follower's view of a running build: the recent lines, then everything that follows.
pub struct Follow {
    pub builder: PublicKey,
    pub attempt: u32,
    /// Lines before the backlog that are no longer kept in memory.
    pub skipped: u64,
    pub backlog: Vec<Arc<str>>,
    pub rx: broadcast::Receiver<LiveEvent>,
}

/// The registry of running builds' logs (see the [module docs](self)).
#[derive(Default)]
pub struct LiveLogs {
    streams: Mutex<HashMap<Hash, Stream>>,
    relay: RwLock<Option<Arc<dyn LogRelay>>>,
}

impl LiveLogs {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Hash, Stream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A build of `entry` (attempt `attempt`, by `builder`) started producing output. Replaces
    /// an older attempt's stream (its followers get an `End`).
    pub fn begin(&self, entry: Hash, attempt: u32, builder: PublicKey) {
        let mut s = self.lock();
        if let Some(old) = s.get(&entry) {
            if old.builder == builder && old.attempt == attempt {
                return;
            }
            let _ = old.tx.send(LiveEvent::End("superseded".into()));
        }
        let (tx, _) = broadcast::channel(FOLLOWER_BUFFER);
        s.insert(
            entry,
            Stream {
                builder,
                attempt,
                started: Timestamp::now(),
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                dropped: 0,
                lines: 0,
                tx,
            },
        );
    }

    /// One line of `entry`'s running build. Lines for another attempt than the current
    /// stream's, or without a stream, are ignored.
    pub fn push(&self, entry: Hash, attempt: u32, line: &str) {
        let mut s = self.lock();
        let Some(st) = s.get_mut(&entry) else {
            return;
        };
        if st.attempt != attempt {
            return;
        }
        let line: Arc<str> = if line.len() > MAX_LINE {
            let mut end = MAX_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{} [line cut at {MAX_LINE} bytes]", &line[..end]).into()
        } else {
            line.into()
        };
        st.lines += 1;
        st.backlog_bytes += line.len() + 1;
        st.backlog.push_back(line.clone());
        while st.backlog_bytes > BACKLOG_BYTES {
            match st.backlog.pop_front() {
                Some(l) => {
                    st.backlog_bytes -= l.len() + 1;
                    st.dropped += 1;
                }
                None => break,
            }
        }
        let _ = st.tx.send(LiveEvent::Line(line));
    }

    /// The build of `entry` (attempt `attempt`) ended with `outcome`: followers get an `End`
    /// and the stream is removed (the stored log blob takes over).
    pub fn end(&self, entry: Hash, attempt: u32, outcome: &str) {
        let mut s = self.lock();
        if s.get(&entry).is_some_and(|st| st.attempt == attempt)
            && let Some(st) = s.remove(&entry)
        {
            let _ = st.tx.send(LiveEvent::End(outcome.into()));
        }
    }

    /// Follows `entry`'s running build, if there is one here.
    pub fn follow(&self, entry: &Hash) -> Option<Follow> {
        let s = self.lock();
        let st = s.get(entry)?;
        Some(Follow {
            builder: st.builder,
            attempt: st.attempt,
            skipped: st.dropped,
            backlog: st.backlog.iter().cloned().collect(),
            rx: st.tx.subscribe(),
        })
    }

    /// The held lines of `entry`'s running build from line number `from` on (at most `max`):
    /// `(first line number, lines)`, or `None` when no build of it runs here.
    pub fn lines_since(&self, entry: &Hash, from: u64, max: usize) -> Option<(u64, Vec<String>)> {
        let s = self.lock();
        let st = s.get(entry)?;
        let first = from.max(st.dropped);
        let skip = (first - st.dropped) as usize;
        let lines: Vec<String> = st
            .backlog
            .iter()
            .skip(skip)
            .take(max)
            .map(|l| l.to_string())
            .collect();
        Some((first, lines))
    }

    /// Whether a build of `entry` is producing output here (locally or relayed).
    pub fn is_active(&self, entry: &Hash) -> bool {
        self.lock().contains_key(entry)
    }

    /// Every running build with a stream, oldest first.
    pub fn active(&self) -> Vec<ActiveBuild> {
        let mut v: Vec<ActiveBuild> = self
            .lock()
            .iter()
            .map(|(entry, st)| ActiveBuild {
                entry: *entry,
                builder: st.builder,
                attempt: st.attempt,
                started: st.started,
                lines: st.lines,
            })
            .collect();
        v.sort_by_key(|a| (a.started, a.entry));
        v
    }

    /// Installs the network layer's relay (see [`LogRelay`]).
    pub fn set_relay(&self, relay: Arc<dyn LogRelay>) {
        *self.relay.write().unwrap_or_else(|p| p.into_inner()) = Some(relay);
    }

    /// Asks the relay, if any, for the log of a build running on `builder`. Returns whether a
    /// relay is installed.
    pub fn want_remote(&self, entry: Hash, builder: PublicKey, attempt: u32) -> bool {
        let relay = self.relay.read().unwrap_or_else(|p| p.into_inner()).clone();
        match relay {
            Some(r) => {
                r.follow(entry, builder, attempt);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pacmesh_protocol::SigningKey;

    fn key() -> PublicKey {
        PublicKey::from(&SigningKey::from_bytes(&[7; 32]))
    }

    #[tokio::test]
    async fn late_followers_get_the_backlog_then_live_lines_then_the_end() {
        let logs = LiveLogs::new();
        let e = Hash::new(b"entry");
        assert!(logs.follow(&e).is_none());
        logs.push(e, 1, "before begin: dropped");
        logs.begin(e, 1, key());
        logs.push(e, 1, "one");
        logs.push(e, 2, "other attempt: dropped");
        let mut f = logs.follow(&e).unwrap();
        assert_eq!(f.backlog, vec![Arc::<str>::from("one")]);
        logs.push(e, 1, "two");
        logs.end(e, 1, "built");
        assert_eq!(f.rx.recv().await.unwrap(), LiveEvent::Line("two".into()));
        assert_eq!(f.rx.recv().await.unwrap(), LiveEvent::End("built".into()));
        assert!(!logs.is_active(&e));
        assert!(logs.active().is_empty());
    }

    #[test]
    fn the_backlog_is_bounded() {
        let logs = LiveLogs::new();
        let e = Hash::new(b"entry");
        logs.begin(e, 1, key());
        let line = "x".repeat(1000);
        for _ in 0..3000 {
            logs.push(e, 1, &line);
        }
        logs.push(e, 1, &"y".repeat(MAX_LINE * 2));
        let f = logs.follow(&e).unwrap();
        let bytes: usize = f.backlog.iter().map(|l| l.len() + 1).sum();
        assert!(bytes <= BACKLOG_BYTES, "{bytes}");
        assert!(f.skipped > 0);
        assert_eq!(f.skipped as usize + f.backlog.len(), 3001);
        assert!(
            f.backlog
                .last()
                .unwrap()
                .ends_with("[line cut at 16384 bytes]")
        );
        assert_eq!(logs.active()[0].lines, 3001);
    }

    #[test]
    fn the_relay_is_asked_for_remote_builds() {
        struct R(Mutex<Vec<(Hash, u32)>>);
        impl LogRelay for R {
            fn follow(&self, entry: Hash, _: PublicKey, attempt: u32) {
                self.0.lock().unwrap().push((entry, attempt));
            }
        }
        let logs = LiveLogs::new();
        let e = Hash::new(b"entry");
        assert!(!logs.want_remote(e, key(), 1));
        let r = Arc::new(R(Mutex::new(Vec::new())));
        logs.set_relay(r.clone());
        assert!(logs.want_remote(e, key(), 3));
        assert_eq!(*r.0.lock().unwrap(), vec![(e, 3)]);
    }
}
