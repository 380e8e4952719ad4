//! Live build logs between nodes (`/pacmesh/logs/1`, request-response): a node that shows a
//! build running elsewhere asks the builder for the lines after the ones it has, about every
//! 300 ms, until the builder says the build ended. Logs are not signed: they are informative
//! while the build runs; the finished log is a content-addressed blob named by the signed
//! build report.

use serde::{Deserialize, Serialize};

use crate::Hash;
use crate::codec::{DecodeError, Limits, Message, check_len, check_text};

/// The newest log message version this build understands and writes.
pub const LOGS_VERSION: u32 = 1;

/// libp2p stream protocol for live logs.
pub const LOGS_PROTOCOL: &str = "/pacmesh/logs/1";

/// Most lines in one [`LogResponse`].
pub const MAX_LOG_LINES: usize = 2048;

/// Largest encoded [`LogResponse`].
pub const MAX_LOG_RESPONSE_BYTES: usize = 1 << 20;

/// "Send me the lines of `entry`'s running build from line number `from` on."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRequest {
    /// Format version ([`LOGS_VERSION`]).
    pub version: u32,
    /// The queue entry.
    pub entry: Hash,
    /// First line wanted (0: from the start, as far as the builder still holds it).
    pub from: u64,
}

/// The answer to a [`LogRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogResponse {
    /// Format version ([`LOGS_VERSION`]).
    pub version: u32,
    /// Whether a build of the entry is running (or just ended) on the builder.
    pub running: bool,
    /// Line number of the first line in `lines` (later than asked if the builder dropped
    /// older lines).
    pub first: u64,
    /// The lines, without newlines.
    pub lines: Vec<String>,
    /// How the build ended, once it has (`built`, `failed`, …); no lines follow.
    pub ended: Option<String>,
}

impl Message for LogRequest {
    const KIND: &'static str = "log request";
    const VERSION: u32 = LOGS_VERSION;
    fn max_bytes(_limits: &Limits) -> usize {
        256
    }
    fn validate(&self, _limits: &Limits) -> Result<(), DecodeError> {
        Ok(())
    }
}

impl Message for LogResponse {
    const KIND: &'static str = "log response";
    const VERSION: u32 = LOGS_VERSION;
    fn max_bytes(_limits: &Limits) -> usize {
        MAX_LOG_RESPONSE_BYTES
    }
    fn validate(&self, limits: &Limits) -> Result<(), DecodeError> {
        check_len("log lines", self.lines.len(), MAX_LOG_LINES)?;
        if let Some(e) = &self.ended {
            check_text("log end", e, limits.max_text)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_caps() {
        let l = Limits::default();
        let r = LogResponse {
            version: 1,
            running: true,
            first: 3,
            lines: vec!["tick 3".into(), "tick 4".into()],
            ended: None,
        };
        assert_eq!(LogResponse::decode(&r.encode().unwrap(), &l).unwrap(), r);
        let big = LogResponse {
            lines: vec![String::new(); MAX_LOG_LINES + 1],
            ..r
        };
        assert!(LogResponse::decode(&big.encode().unwrap(), &l).is_err());
        for junk in [&b""[..], b"\xa0", b"\xff\xff"] {
            assert!(LogRequest::decode(junk, &l).is_err());
        }
    }
}
