//! `pacmesh node`: open the stores, start the HTTP server, the executor and the publisher, and
//! run until the shutdown future resolves.
//!
//! Supervision: every subsystem runs in one `JoinSet`; an unexpected exit of any of them stops
//! the node with that error. Shutdown tells the executor to abandon a running build (its sandbox
//! dies with it, its work dir is removed, no report is sent; its lease lapses or this node
//! re-claims it at the next start) and flushes the stores.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pacmesh_protocol::{Capabilities, Limits, MeshPolicy, Name, PublicKey, Signed};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::core::Core;
use crate::ingest::{Ingest, IngestConfig};
use crate::keys::NodeKey;
use crate::store::{DbConfig, FsStore, open_db};

/// How often unreferenced blobs are collected, and how old they must be.
const GC_INTERVAL: Duration = Duration::from_secs(3600);
const GC_GRACE: Duration = Duration::from_secs(24 * 3600);

/// What a started node tells its caller (tests, `demo`).
#[derive(Clone)]
pub struct Started {
    pub http: SocketAddr,
    pub core: Arc<Core>,
    /// libp2p listen addresses (empty with the mesh turned off).
    pub p2p: Vec<libp2p::Multiaddr>,
}

/// Loads the node key, creating it on first start.
pub fn load_or_create_key(path: &std::path::Path) -> Result<NodeKey> {
    if path.exists() {
        return NodeKey::load(path);
    }
    let key = NodeKey::generate()?;
    key.save_new(path)?;
    tracing::info!(path = %path.display(), "generated a new node key");
    Ok(key)
}

/// Opens everything and returns the core plus the policy bytes offered.
pub fn open(cfg: &Config) -> Result<Arc<Core>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
    let key = load_or_create_key(&cfg.key)?;
    let publisher_key = cfg
        .publisher_key
        .as_deref()
        .map(NodeKey::load)
        .transpose()?;
    let limits = Limits::default();
    let offered = cfg
        .policy
        .as_deref()
        .map(|p| std::fs::read(p).with_context(|| format!("cannot read policy {}", p.display())))
        .transpose()?;
    let db = open_db(&cfg.data_dir.join("db"), &DbConfig::default()).with_context(|| {
        format!(
            "cannot open the store in {} (is another node running on it?)",
            cfg.data_dir.display()
        )
    })?;
    let root = match &offered {
        Some(bytes) => policy_root(bytes, &limits)?,
        None => stored_root(&db)?,
    };
    let (ingest, report) = Ingest::open(
        &db,
        root,
        offered.as_deref(),
        IngestConfig {
            limits,
            ..Default::default()
        },
    )
    .context("cannot open the event store")?;
    if let Some(why) = &report.offered_policy_ignored {
        tracing::warn!("the --policy file was not used: {why}");
    }
    tracing::info!(events = report.events, policy_version = report.policy_version, elapsed = ?report.elapsed, "event store open");
    let (blobs, repair) =
        FsStore::open(&cfg.data_dir.join("blobs"), &db).context("cannot open the content store")?;
    tracing::debug!(?repair, "content store open");
    Ok(Core::new(
        key,
        publisher_key,
        ingest,
        Arc::new(blobs),
        cfg.data_dir.clone(),
    ))
}

/// The root named by a policy file: its signer (the policy must also say so, checked on open).
fn policy_root(bytes: &[u8], limits: &Limits) -> Result<PublicKey> {
    let signed = Signed::<MeshPolicy>::from_bytes(bytes, limits)
        .context("the policy file is not a signed mesh policy")?;
    Ok(signed.signer)
}

fn stored_root(db: &sled::Db) -> Result<PublicKey> {
    let events = crate::store::EventStore::open(db)?;
    match events.meta("root")? {
        Some(b) => Ok(PublicKey::from_slice(&b).context("stored mesh root is damaged")?),
        None => bail!(
            "this data dir has no mesh yet: start the node with --policy FILE (pacmesh mesh init makes one)"
        ),
    }
}

/// This machine's capabilities, for claiming.
pub fn capabilities(cfg: &Config) -> Capabilities {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let disk_free_bytes = disk_free(&cfg.data_dir).unwrap_or(0);
    Capabilities {
        arch: Name::new(cfg.arch.clone()).expect("validated by Config::resolve"),
        microarch: 0,
        cores,
        memory_bytes,
        disk_free_bytes,
        tags: cfg
            .tags
            .iter()
            .map(|t| Name::new(t.clone()).expect("validated by Config::resolve"))
            .collect(),
        profile: Name::new(cfg.profile.clone())
            .unwrap_or_else(|_| Name::new("host").expect("valid")),
        load: 0,
        slots: cfg.slots,
        busy: 0,
    }
}

fn disk_free(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a valid out-pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (how service managers stop a daemon).
pub async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Runs a node until `shutdown` resolves. `on_start` is called once the HTTP server listens.
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()>,
    on_start: impl FnOnce(&Started),
) -> Result<()> {
    let listen = crate::net::parse_addrs(&cfg.listen)?;
    let bootstrap = crate::net::parse_addrs(&cfg.bootstrap)?;
    let relays = crate::net::parse_addrs(&cfg.relays)?;
    let core = open(&cfg)?;
    crate::ops::prepare(&core, &cfg);
    core.set_capabilities(capabilities(&cfg));
    let c = core.clone();
    tokio::task::spawn_blocking(move || crate::generation::ensure_current(&c))
        .await?
        .context("restoring the served repositories")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks: JoinSet<Result<&'static str>> = JoinSet::new();
    let (http, server) = crate::http::bind(core.clone(), cfg.http).await?;
    {
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            tokio::select! {
                r = server => r.map(|()| "http").context("HTTP server"),
                _ = stop.wait_for(|s| *s) => Ok("http"),
            }
        });
    }
    let busy: Arc<std::sync::atomic::AtomicU32> = Arc::default();
    let net = if cfg.mesh_enabled {
        // The peers' blob listener: on the libp2p TCP listen IP unless configured.
        let default_listen = [crate::net::DEFAULT_TCP_LISTEN.to_string()];
        let listen_s: &[String] = if cfg.listen.is_empty() {
            &default_listen
        } else {
            &cfg.listen
        };
        let blob_http_port = match cfg.blob_http.bind_addr(listen_s) {
            Some(addr) => {
                let (bound, server) = crate::http::bind_blobs(core.clone(), addr).await?;
                println!("pacmesh: blobs served to peers at http://{bound}");
                let mut stop = stop_rx.clone();
                tasks.spawn(async move {
                    tokio::select! {
                        r = server => r.map(|()| "blob http").context("blob HTTP server"),
                        _ = stop.wait_for(|s| *s) => Ok("blob http"),
                    }
                });
                Some(bound.port())
            }
            None => None,
        };
        let caps_cfg = cfg.clone();
        let caps_busy = busy.clone();
        let build_enabled = cfg.build_enabled;
        let ncfg = crate::net::NetConfig {
            listen,
            bootstrap,
            mdns: cfg.mdns,
            relay_server: cfg.relay_server,
            relays,
            announce_interval: cfg.announce_interval,
            sync_interval: cfg.sync_interval,
            max_connections: cfg.max_connections,
            capabilities: Arc::new(move || {
                let mut c = capabilities(&caps_cfg);
                c.busy = caps_busy.load(std::sync::atomic::Ordering::Relaxed);
                if !build_enabled {
                    c.slots = 0;
                }
                c
            }),
            replicate: crate::net::replicate::Wants {
                snapshots: cfg.build_enabled,
                artifacts: core.publisher_key.is_some(),
            },
            blob_http_port,
        };
        let wants = ncfg.replicate;
        let (handle, task) = crate::net::start(core.clone(), ncfg, stop_rx.clone())
            .await
            .context("starting the mesh network")?;
        core.live_logs
            .set_relay(crate::net::logrelay::NetLogRelay::new(
                &core,
                handle.clone(),
            ));
        let _ = core.net.set(handle.clone());
        tasks.spawn(async move {
            match task.await {
                Ok(r) => r.map(|()| "network"),
                Err(e) => Err(anyhow::anyhow!("network task: {e}")),
            }
        });
        let (c, h, s) = (core.clone(), handle.clone(), stop_rx.clone());
        tasks.spawn(async move {
            crate::net::replicate::run(c, h, wants, s).await;
            Ok("replication")
        });
        if cfg.build_enabled && core.publisher_key.is_none() && cfg.replicas > 0 {
            let _ = core.retention.set(crate::retention::Retention {
                replicas: cfg.replicas,
                interval: cfg.retention_interval,
            });
        }
        let (c, h, s) = (core.clone(), handle.clone(), stop_rx.clone());
        tasks.spawn(async move {
            crate::retention::run(c, h, s).await;
            Ok("retention")
        });
        Some(handle)
    } else {
        None
    };
    crate::ops::spawn(&mut tasks, &core, &cfg, stop_rx.clone());
    crate::watch::spawn(&mut tasks, &core, &cfg, stop_rx.clone());
    crate::rebuild::spawn(&mut tasks, &core, &cfg, stop_rx.clone());
    if cfg.build_enabled {
        pacmesh_sandbox::preflight().context(
            "this node cannot build (set build.enabled = false for a non-building node)",
        )?;
        let mut ecfg =
            crate::executor::ExecutorConfig::from_config(&cfg, capabilities(&cfg), &core);
        ecfg.busy = busy.clone();
        if let Some(n) = &net {
            ecfg.ready = Some(n.caught_up());
            let (c, step) = (core.clone(), cfg.claim_step);
            ecfg.claim_delay = Some(crate::executor::ClaimDelay(Arc::new(
                move |id, entry, arches| {
                    let rank = c.peers().rank_of(
                        &c.public,
                        id,
                        entry,
                        arches,
                        pacmesh_protocol::Timestamp::now(),
                    );
                    step * rank as u32
                },
            )));
        }
        let (c, s) = (core.clone(), stop_rx.clone());
        tasks.spawn(async move { crate::executor::run(c, ecfg, s).await.map(|()| "executor") });
    }
    if core.publisher_key.is_some() {
        let pcfg = crate::publisher::PublisherConfig {
            keep: cfg.keep_generations,
            uid: cfg.publish_uid.clone(),
        };
        let (c, s) = (core.clone(), stop_rx.clone());
        tasks.spawn(async move {
            crate::publisher::run(c, pcfg, s)
                .await
                .map(|()| "publisher")
        });
    }
    {
        // Blobs nothing pins (uploads never enqueued, generations pruned by the publisher) are
        // collected once they are a day old.
        let (c, mut stop) = (core.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let mut every = tokio::time::interval(GC_INTERVAL);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop.wait_for(|s| *s) => return Ok("gc"),
                }
                let c = c.clone();
                match tokio::task::spawn_blocking(move || {
                    crate::store::BlobStore::gc(c.blobs.as_ref(), GC_GRACE)
                })
                .await?
                {
                    Ok(stats) => tracing::info!(?stats, "content store collected"),
                    Err(e) => tracing::warn!("content store collection failed: {e}"),
                }
            }
        });
    }
    let started = Started {
        http,
        core: core.clone(),
        p2p: net.as_ref().map(|n| n.listen_addrs()).unwrap_or_default(),
    };
    println!("pacmesh: node {} ({})", core.key.peer_id(), core.public);
    println!("pacmesh: http listening on http://{http}");
    tracing::info!(%http, "node started");
    on_start(&started);

    let result = tokio::select! {
        () = shutdown => Ok(()),
        Some(done) = tasks.join_next() => match done {
            Ok(Ok(name)) => Err(anyhow::anyhow!("{name} stopped unexpectedly")),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("a node task panicked: {e}")),
        },
    };
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(20), drain)
        .await
        .is_err()
    {
        tracing::warn!("tasks did not stop within 20 s; exiting anyway");
    }
    if let Err(e) = core.ingest().events().flush() {
        tracing::warn!("flushing the event store: {e}");
    }
    result
}
