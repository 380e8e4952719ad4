//! A `pacmesh node` process on 127.0.0.1 with fresh keys and a policy, for the sources tests
//! (the process and HTTP helpers come from `procs.rs`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

// The process and HTTP helpers are the shared ones.
#[path = "procs.rs"]
mod procs;
pub use procs::*;

/// Keys, a policy (repo `test`, this machine's arch) and a node process on a fresh data dir.
pub struct Mesh {
    pub dir: PathBuf,
    pub maintainer: PathBuf,
    pub node_key: PathBuf,
    pub policy: PathBuf,
}

impl Mesh {
    pub fn new(dir: &Path) -> Mesh {
        Self::with_policy_args(dir, &[])
    }

    /// Like [`Mesh::new`] with more `mesh init` arguments (e.g. `--build-timeout-secs`).
    pub fn with_policy_args(dir: &Path, extra: &[&str]) -> Mesh {
        let keys = dir.join("keys");
        let k = |n: &str| {
            let p = keys.join(n);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let (root, maintainer, node_key) = (k("root.key"), k("maint.key"), k("node.key"));
        let public = |p: &Path| {
            let out = pacmesh_ok(&["key", "show", "--key", s(p)]);
            out.lines()
                .find_map(|l| l.strip_prefix("public key: "))
                .unwrap()
                .trim()
                .to_string()
        };
        let policy = dir.join("policy.cbor");
        let (m, n) = (public(&maintainer), public(&node_key));
        let mut args = vec![
            "mesh",
            "init",
            "--key",
            s(&root),
            "--repo",
            "test",
            "--arch",
            std::env::consts::ARCH,
            "--maintainer",
            &m,
            "--publisher",
            &n,
            "--lease-secs",
            "30",
            "--out",
            s(&policy),
        ];
        args.extend_from_slice(extra);
        pacmesh_ok(&args);
        Mesh {
            dir: dir.to_path_buf(),
            maintainer,
            node_key,
            policy,
        }
    }

    /// Starts the node; returns it and its HTTP base URL.
    pub fn start(&self, extra: &[&str]) -> (Proc, String) {
        let data = self.dir.join("data");
        let mut args = vec![
            "node",
            "--policy",
            s(&self.policy),
            "--key",
            s(&self.node_key),
            "--publisher-key",
            s(&self.node_key),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
        ];
        args.extend_from_slice(extra);
        let p = Proc::spawn(&args);
        let base = p.listening("http listening on ", Duration::from_secs(60));
        (p, base)
    }
}
