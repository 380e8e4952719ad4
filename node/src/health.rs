//! Resource checks: a node that is short of disk or memory refuses new claims (and says why in
//! `/api/v1/status`, `pacmesh status` and the status page) instead of failing builds.
//!
//! [`Health::check`] runs at start-up and then every [`CHECK_INTERVAL`] (from the daemon): free
//! bytes on the data directory's file system (`statvfs`, as available to unprivileged users)
//! and `MemAvailable` from `/proc/meminfo`, against the limits of `[health]` in the config
//! (reloadable with SIGHUP). The executor asks [`Health::refusal`] before every claim; running
//! builds go on.

use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use pacmesh_protocol::Timestamp;
use serde::Deserialize;

use crate::metrics::Metrics;

/// How often the daemon re-checks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Below these, the node claims nothing new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthLimits {
    /// Free bytes on the data directory's file system.
    pub min_free_disk_bytes: u64,
    /// Available memory (`MemAvailable`).
    pub min_free_memory_bytes: u64,
}

impl Default for HealthLimits {
    fn default() -> Self {
        HealthLimits {
            min_free_disk_bytes: 1 << 30,
            min_free_memory_bytes: 256 << 20,
        }
    }
}

/// The last check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthState {
    /// When; `None` before the first check (nothing is refused then).
    pub checked: Option<Timestamp>,
    pub disk_free_bytes: Option<u64>,
    pub memory_available_bytes: Option<u64>,
    /// Why new claims are refused; empty: they are not.
    pub refusals: Vec<String>,
}

/// Shared by the monitor, the executor and the views.
#[derive(Debug, Default)]
pub struct Health {
    state: RwLock<HealthState>,
}

/// `1.5 GiB`-style sizes for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Why this node refuses new claims now, if it does (one line).
    pub fn refusal(&self) -> Option<String> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        (!s.refusals.is_empty()).then(|| s.refusals.join("; "))
    }

    /// The last check.
    pub fn snapshot(&self) -> HealthState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the state from measured values (what [`Health::check`] does after measuring;
    /// public for tests of the refusal logic).
    pub fn set(
        &self,
        disk_free: Option<u64>,
        mem_available: Option<u64>,
        limits: &HealthLimits,
        data_dir: &Path,
    ) -> HealthState {
        let mut refusals = Vec::new();
        if let Some(d) = disk_free
            && d < limits.min_free_disk_bytes
        {
            refusals.push(format!(
                "disk: {} free in {} (below the {} minimum, health.min_free_disk_bytes)",
                human_bytes(d),
                data_dir.display(),
                human_bytes(limits.min_free_disk_bytes)
            ));
        }
        if let Some(m) = mem_available
            && m < limits.min_free_memory_bytes
        {
            refusals.push(format!(
                "memory: {} available (below the {} minimum, health.min_free_memory_bytes)",
                human_bytes(m),
                human_bytes(limits.min_free_memory_bytes)
            ));
        }
        let st = HealthState {
            checked: Some(Timestamp::now()),
            disk_free_bytes: disk_free,
            memory_available_bytes: mem_available,
            refusals,
        };
        let mut cur = self.state.write().unwrap_or_else(|p| p.into_inner());
        if cur.refusals != st.refusals {
            if st.refusals.is_empty() {
                tracing::info!("resources are back: claiming new builds again");
            } else {
                tracing::warn!("refusing new claims: {}", st.refusals.join("; "));
            }
        }
        *cur = st.clone();
        st
    }

    /// Measures disk and memory and updates the state and the metrics.
    pub fn check(&self, data_dir: &Path, limits: &HealthLimits, metrics: &Metrics) -> HealthState {
        let st = self.set(disk_free(data_dir), mem_available(), limits, data_dir);
        if let Some(d) = st.disk_free_bytes {
            metrics.disk_free_bytes.set(d.min(i64::MAX as u64) as i64);
        }
        if let Some(m) = st.memory_available_bytes {
            metrics
                .memory_available_bytes
                .set(m.min(i64::MAX as u64) as i64);
        }
        metrics
            .accepting_claims
            .set(i64::from(st.refusals.is_empty()));
        st
    }
}

/// Free bytes for unprivileged users on the file system holding `path`.
pub fn disk_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// `MemAvailable` in bytes.
pub fn mem_available() -> Option<u64> {
    let m = std::fs::read_to_string("/proc/meminfo").ok()?;
    m.lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_below_the_limits_and_says_why() {
        let h = Health::new();
        assert_eq!(h.refusal(), None, "nothing refused before the first check");
        let lim = HealthLimits {
            min_free_disk_bytes: 2 << 30,
            min_free_memory_bytes: 1 << 30,
        };
        h.set(Some(1 << 30), Some(4 << 30), &lim, Path::new("/data"));
        let why = h.refusal().unwrap();
        assert!(
            why.contains("disk: 1.0 GiB free in /data") && why.contains("2.0 GiB minimum"),
            "{why}"
        );
        h.set(Some(3 << 30), Some(100 << 20), &lim, Path::new("/data"));
        assert!(
            h.refusal()
                .unwrap()
                .starts_with("memory: 100.0 MiB available")
        );
        h.set(Some(3 << 30), Some(2 << 30), &lim, Path::new("/data"));
        assert_eq!(h.refusal(), None);
        let m = Metrics::new();
        let st = h.check(Path::new("/"), &HealthLimits::default(), &m);
        assert!(st.disk_free_bytes.is_some() && st.memory_available_bytes.is_some());
    }
}
