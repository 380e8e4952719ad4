//! The daemon's operational tasks: the health monitor (disk, memory, content store size), the
//! webhooks, and configuration reload on SIGHUP.
//!
//! # What SIGHUP reloads
//!
//! The config file is read again and resolved with the same command-line flags. Taken over at
//! once: `[[webhook]]` (added, removed, changed) and `[health]` (the limits below which the node
//! refuses new claims; checked again immediately). Every other key needs a restart: the node
//! logs which ones changed. A file that no longer parses or resolves is refused with the
//! reason, and the node keeps its running configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::core::Core;
use crate::store::BlobStore;

/// How often the content store's size is measured for the metrics.
pub const BLOB_STATS_INTERVAL: Duration = Duration::from_secs(30);

/// Before the executor starts: the reloadable settings, this node's capabilities, a first
/// health check (a node short of disk never claims).
pub fn prepare(core: &Core, cfg: &Config) {
    core.reloadable.send_replace(cfg.reloadable());
    core.health.check(&cfg.data_dir, &cfg.health, &core.metrics);
    if let Err(e) = blob_stats(core) {
        tracing::warn!("measuring the content store: {e}");
    }
}

/// Updates `pacmesh_blobs_stored` and `pacmesh_blobs_stored_bytes`.
pub fn blob_stats(core: &Core) -> Result<()> {
    let list = core.blobs.list()?;
    let mut bytes = 0u64;
    for h in &list {
        if let Some(i) = core.blobs.info(h)? {
            bytes += i.size;
        }
    }
    core.metrics.blobs_stored.set(list.len() as i64);
    core.metrics
        .blobs_stored_bytes
        .set(bytes.min(i64::MAX as u64) as i64);
    Ok(())
}

/// Re-reads the configuration (see the [module docs](self)); returns the keys that changed but
/// need a restart.
pub fn reload(core: &Core, running: &Config) -> Result<Vec<&'static str>> {
    let new = Config::resolve(running.flags.clone())?;
    let restart = running.needs_restart(&new);
    let r = new.reloadable();
    core.reloadable.send_if_modified(|cur| {
        let changed = *cur != r;
        *cur = r;
        changed
    });
    Ok(restart)
}

/// Spawns the health monitor, the webhooks and the SIGHUP handler into the node's task set.
pub fn spawn(
    tasks: &mut JoinSet<Result<&'static str>>,
    core: &Arc<Core>,
    cfg: &Config,
    stop: watch::Receiver<bool>,
) {
    {
        let (core, data_dir, mut stop) = (core.clone(), cfg.data_dir.clone(), stop.clone());
        let mut settings = core.reloadable.subscribe();
        tasks.spawn(async move {
            let mut every = tokio::time::interval(crate::health::CHECK_INTERVAL);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_stats = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    r = settings.changed() => if r.is_err() { return Ok("health") },
                    _ = stop.wait_for(|s| *s) => return Ok("health"),
                }
                let limits = settings.borrow_and_update().health;
                let stats = last_stats.elapsed() >= BLOB_STATS_INTERVAL;
                if stats {
                    last_stats = tokio::time::Instant::now();
                }
                let (c, d) = (core.clone(), data_dir.clone());
                tokio::task::spawn_blocking(move || {
                    c.health.check(&d, &limits, &c.metrics);
                    if stats && let Err(e) = blob_stats(&c) {
                        tracing::warn!("measuring the content store: {e}");
                    }
                })
                .await?;
            }
        });
    }
    {
        let (core, stop) = (core.clone(), stop.clone());
        tasks.spawn(async move { crate::webhooks::run(core, stop).await });
    }
    {
        let (core, cfg, mut stop) = (core.clone(), cfg.clone(), stop);
        tasks.spawn(async move {
            let mut hup =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("cannot watch SIGHUP (no config reload): {e}");
                        let _ = stop.wait_for(|s| *s).await;
                        return Ok("reload");
                    }
                };
            loop {
                tokio::select! {
                    r = hup.recv() => if r.is_none() { return Ok("reload") },
                    _ = stop.wait_for(|s| *s) => return Ok("reload"),
                }
                let (c, conf) = (core.clone(), cfg.clone());
                match tokio::task::spawn_blocking(move || reload(&c, &conf)).await? {
                    Ok(restart) if restart.is_empty() => {
                        tracing::info!("configuration reloaded")
                    }
                    Ok(restart) => tracing::warn!(
                        "configuration reloaded; these changes need a restart: {}",
                        restart.join(", ")
                    ),
                    Err(e) => tracing::error!(
                        "configuration not reloaded (keeping the running one): {e:#}"
                    ),
                }
            }
        });
    }
}
