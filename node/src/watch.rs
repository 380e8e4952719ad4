//! What update detection last saw upstream, per package: kept in `DATA/watch/state.json` (one
//! JSON object: package → `{source, version, last_modified, checked_at, reported?}`), written
//! atomically by the checker and read by [`crate::why`].
//!
//! The periodic checker itself (AUR `LastModified`, git heads, VCS upstream commits) is not
//! written yet; see the issue notes.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The largest state file read (a node watching thousands of packages stays far below).
const MAX_STATE_BYTES: u64 = 16 << 20;

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("watch").join("state.json")
}

/// Everything recorded, or an empty map (a missing, oversized or unreadable file is logged and
/// treated as empty: the next check records again).
pub fn load(data_dir: &Path) -> Map<String, Value> {
    let p = path(data_dir);
    let Ok(meta) = std::fs::metadata(&p) else {
        return Map::new();
    };
    if meta.len() > MAX_STATE_BYTES {
        tracing::warn!(path = %p.display(), "watch state too large; ignored");
        return Map::new();
    }
    match std::fs::read(&p).map(|b| serde_json::from_slice::<Map<String, Value>>(&b)) {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            tracing::warn!(path = %p.display(), error = %e, "watch state unreadable; ignored");
            Map::new()
        }
        Err(e) => {
            tracing::warn!(path = %p.display(), error = %e, "watch state unreadable; ignored");
            Map::new()
        }
    }
}

/// Replaces the recorded state (write to a temporary file, then rename).
pub fn store(data_dir: &Path, state: &Map<String, Value>) -> std::io::Result<()> {
    let p = path(data_dir);
    let dir = p.parent().expect("has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, &p)
}

/// What was last seen upstream for `pkg`, if anything.
pub fn observed(data_dir: &Path, pkg: &str) -> Option<Value> {
    load(data_dir).remove(pkg)
}
