//! Helpers of the mirror tests (`mirror.rs` over HTTP, `mirror_mesh.rs` over libp2p): the
//! repository they publish, GETs that keep the generation header, waiting, what a node or
//! mirror serves, and the progress of a partial download. Included by path; needs the
//! including test's `procs` module (`common/procs.rs`).

#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use pacmesh_node::client::Client;
use pacmesh_node::keys::NodeKey;
use pacmesh_protocol::{Artifact, EventBody, FileName, Name, QueueEntry, Sha256, Source};
use pacmesh_repo::package::testutil::SyntheticPackage;

use crate::procs::{have, is_root, json};

pub const REPO: &str = "mtest";
pub const ARCH: &str = "x86_64";

/// Enqueues AUR base `pkgbase` of [`REPO`] as `maint` through `c`, stores `pkgs` and a build
/// log there (the packages also at each of `also`: other holders of the builder's output) and
/// reports the build as `builder`.
pub fn enqueue_and_report_built(
    c: &Client,
    also: &[&Client],
    maint: &NodeKey,
    builder: &NodeKey,
    pkgbase: &str,
    pkgs: &[SyntheticPackage],
) {
    let entry = c
        .submit(
            maint,
            EventBody::Enqueue(QueueEntry::new(
                Name::new(REPO).unwrap(),
                Source::Aur {
                    pkgbase: Name::new(pkgbase).unwrap(),
                },
            )),
        )
        .unwrap();
    let mut artifacts = Vec::new();
    for p in pkgs {
        let bytes = p.archive_bytes();
        let blake3 = c.put_blob(&bytes).unwrap();
        for o in also {
            assert_eq!(o.put_blob(&bytes).unwrap(), blake3);
        }
        artifacts.push(Artifact {
            file_name: FileName::new(p.file_name()).unwrap(),
            blake3,
            sha256: Sha256::digest(&bytes),
            size: bytes.len() as u64,
        });
    }
    let log = c
        .put_blob(format!("build log of {pkgbase}\n").as_bytes())
        .unwrap();
    c.submit(
        builder,
        EventBody::Built {
            entry,
            attempt: 1,
            artifacts,
            log,
            source_commit: None,
        },
    )
    .unwrap();
}

/// Whether pacman can run here (tools present, root); prints why not.
pub fn can_pacman() -> bool {
    let missing: Vec<&str> = ["pacman", "pacman-key", "gpg"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED (pacman part): missing {missing:?}");
        return false;
    }
    if !is_root() {
        eprintln!("SKIPPED (pacman part): pacman needs root");
        return false;
    }
    true
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// GET: status, body, `X-Pacmesh-Generation`.
pub fn get(url: &str) -> (u16, Vec<u8>, Option<String>) {
    get_as(url, "pacmesh-test")
}

/// A GET with a user agent (the mirror tells clients apart by address and user agent).
pub fn get_as(url: &str, ua: &str) -> (u16, Vec<u8>, Option<String>) {
    let mut r = agent()
        .get(url)
        .header("user-agent", ua)
        .call()
        .expect("GET");
    let code = r.status().as_u16();
    let g = r
        .headers()
        .get("x-pacmesh-generation")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap_or_default();
    (code, body, g)
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The generation a mirror serves.
pub fn mirror_served(base: &str) -> Option<u64> {
    json(&format!("{base}/api/v1/status"))["repos"][0]["served"].as_u64()
}

/// The generation of [`REPO`] a node serves.
pub fn node_served(base: &str) -> Option<u64> {
    json(&format!("{base}/api/v1/status"))["generations"]
        .as_array()?
        .iter()
        .find(|g| g["repo"] == REPO)?["served"]
        .as_u64()
}

/// The most segments any partial download in `partial` (a mirror's `DATA/partial`) has.
pub fn segments_done(partial: &Path) -> usize {
    std::fs::read_dir(partial)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".have"))
        .map(|e| {
            std::fs::read(e.path())
                .unwrap_or_default()
                .iter()
                .filter(|&&b| b == 1)
                .count()
        })
        .max()
        .unwrap_or(0)
}
