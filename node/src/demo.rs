//! `pacmesh demo`: one node, fresh keys, the example PKGBUILDs built and published as a signed
//! repository served on 127.0.0.1, and the exact pacman configuration to use it.
//!
//! The example folders are compiled into the binary, so the demo works from any directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::client::Client;
use crate::config::{Config, Flags, host_arch};
use crate::keys::NodeKey;
use crate::mesh_cli::{AddSource, MeshInit, QueueAdd, mesh_init, queue_add};

/// The repository the demo publishes.
pub const DEMO_REPO: &str = "pacmesh-demo";

/// (folder, file, contents) of the example PKGBUILD folders in `examples/packages/`.
pub const EXAMPLES: &[(&str, &str, &[u8])] = &[
    (
        "pacmesh-hello",
        "PKGBUILD",
        include_bytes!("../../examples/packages/pacmesh-hello/PKGBUILD"),
    ),
    (
        "pacmesh-hello",
        "hello.sh",
        include_bytes!("../../examples/packages/pacmesh-hello/hello.sh"),
    ),
    (
        "pacmesh-split",
        "PKGBUILD",
        include_bytes!("../../examples/packages/pacmesh-split/PKGBUILD"),
    ),
    (
        "pacmesh-epoch",
        "PKGBUILD",
        include_bytes!("../../examples/packages/pacmesh-epoch/PKGBUILD"),
    ),
];

/// Writes the example folders under `dir` and returns their paths.
pub fn write_examples(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    for (folder, file, bytes) in EXAMPLES {
        let d = dir.join(folder);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(file), bytes)?;
        if !folders.contains(&d) {
            folders.push(d);
        }
    }
    Ok(folders)
}

pub fn run(exit_after_publish: bool, http: &str, dir: Option<PathBuf>) -> Result<()> {
    let _tmp;
    let base = match dir {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            std::fs::canonicalize(&d)?
        }
        None => {
            let t = tempfile::Builder::new().prefix("pacmesh-demo.").tempdir()?;
            let p = t.path().to_path_buf();
            _tmp = t;
            p
        }
    };
    let root = base.join("keys/root.key");
    let maintainer = base.join("keys/maintainer.key");
    let node_key = base.join("keys/node.key");
    for k in [&root, &maintainer, &node_key] {
        if !k.exists() {
            NodeKey::generate()?.save_new(k)?;
        }
    }
    let node = NodeKey::load(&node_key)?;
    let policy = base.join("policy.cbor");
    if !policy.exists() {
        mesh_init(&MeshInit {
            root_key: root.clone(),
            repos: vec![DEMO_REPO.into()],
            arches: vec![host_arch()],
            maintainers: vec![NodeKey::load(&maintainer)?.public_hex()],
            publishers: vec![node.public_hex()],
            builders: Vec::new(),
            quorum: 1,
            lease_secs: 120,
            build_timeout_secs: 600,
            policy_version: 1,
            out: policy.clone(),
        })?;
    }
    let folders = write_examples(&base.join("examples"))?;
    let cfg = Config::resolve(Flags {
        data_dir: Some(base.join("data")),
        policy: Some(policy),
        key: Some(node_key.clone()),
        publisher_key: Some(node_key.clone()),
        http: Some(http.to_string()),
        no_mdns: true,
        ..Default::default()
    })?;

    let rt = tokio::runtime::Runtime::new()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let daemon = rt.spawn(crate::daemon::run(
        cfg,
        async move {
            let _ = stop_rx.await;
        },
        move |s| {
            let _ = started_tx.send(s.http);
        },
    ));
    let addr = match started_rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => a,
        Err(why) => {
            // Stopped before listening (report its error), or too slow (stop it).
            let _ = stop_tx.send(());
            let err = rt.block_on(daemon).context("the demo node")?.err();
            bail!(
                "the demo node did not start ({why}): {}",
                err.map(|e| format!("{e:#}")).unwrap_or_default()
            );
        }
    };
    // Whatever happens from here on, the node is stopped and joined (builds abandoned, stores
    // flushed) before the demo returns.
    let result = publish_and_serve(
        &rt,
        &base,
        &maintainer,
        &node,
        &folders,
        addr,
        exit_after_publish,
    );
    let _ = stop_tx.send(());
    let stopped = rt.block_on(daemon).context("the demo node");
    result?;
    stopped??;
    Ok(())
}

fn publish_and_serve(
    rt: &tokio::runtime::Runtime,
    base: &Path,
    maintainer: &Path,
    node: &NodeKey,
    folders: &[PathBuf],
    addr: std::net::SocketAddr,
    exit_after_publish: bool,
) -> Result<()> {
    let url = format!("http://{addr}");
    let client = Client::new(&url);
    println!("pacmesh demo: enqueueing {} example folders", folders.len());
    let mut ids = Vec::new();
    for f in folders {
        let id = queue_add(&QueueAdd {
            key: maintainer.to_path_buf(),
            node: url.clone(),
            source: AddSource::Dir(f.clone()),
            repo: Some(DEMO_REPO.into()),
            arches: Vec::new(),
            needs: Vec::new(),
            source_date_epoch: Some(1_700_000_000),
            timeout_secs: None,
            aur_url: None,
        })?;
        ids.push(id.to_string());
    }
    wait_published(&client, &ids, Duration::from_secs(900))?;
    wait_served(&client, Duration::from_secs(60))?;
    let asc = base.join("pacmesh-demo.asc");
    let pgp = pacmesh_repo::sign::OpenPgpKey::from_ed25519_secret(
        node.seed(),
        &pacmesh_repo::sign::default_uid(&node.peer_id().to_string()),
    )?;
    std::fs::write(&asc, pgp.public_key_armored())?;
    println!();
    println!(
        "Published and served at {url}/{DEMO_REPO}/os/{}/",
        host_arch()
    );
    println!();
    println!("Trust the publisher key (as root):");
    println!("  pacman-key --add {}", asc.display());
    println!("  pacman-key --lsign-key {}", pgp.fingerprint());
    println!();
    println!("Add to /etc/pacman.conf:");
    println!("  [{DEMO_REPO}]");
    println!("  SigLevel = Required DatabaseRequired");
    println!("  Server = {url}/$repo/os/$arch");
    println!();
    println!(
        "Then: pacman -Sy pacmesh-hello   (files of this demo: {})",
        base.display()
    );
    if !exit_after_publish {
        println!("Serving until Ctrl-C.");
        rt.block_on(crate::daemon::stop_signal());
    }
    Ok(())
}

/// Polls the node's status until every published generation is also the one it serves.
pub fn wait_served(client: &Client, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let st = client.get_json("/api/v1/status")?;
        let gens = st["generations"].as_array().cloned().unwrap_or_default();
        if !gens.is_empty() && gens.iter().all(|g| g["served"] == g["generation"]) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "published but not served after {} s: {gens:?}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the queue until every entry in `ids` is published; fails on a failed entry.
pub fn wait_published(client: &Client, ids: &[String], limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let q = client.get_json("/api/v1/queue")?;
        let entries = q["entries"].as_array().cloned().unwrap_or_default();
        let mut published = 0;
        let mut line = Vec::new();
        for id in ids {
            let e = entries.iter().find(|e| e["id"].as_str() == Some(id));
            let state = e
                .and_then(|e| e["status"]["state"].as_str())
                .unwrap_or("unknown");
            if state == "failed" {
                let reason = e.and_then(|e| e["status"]["reason"].as_str()).unwrap_or("");
                bail!(
                    "the build of {} failed: {reason}",
                    e.and_then(|e| e["name"].as_str()).unwrap_or(id)
                );
            }
            if state == "published" {
                published += 1;
            }
            line.push(format!(
                "{}: {state}",
                e.and_then(|e| e["name"].as_str()).unwrap_or("?")
            ));
        }
        let now = line.join(", ");
        if now != last {
            println!("  {now}");
            last = now;
        }
        if published == ids.len() {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("not published after {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
