//! Real `pacmesh node` processes on 127.0.0.1 for the operations tests: keys and a policy made
//! with the CLI, a config file per node, PKGBUILD folders, HTTP helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

// Process helpers shared with the other end-to-end tests.
#[path = "procs.rs"]
mod procs;
pub use procs::{BIN, have, pacmesh_ok};

/// Whether builds can run here; prints a notice when not.
pub fn can_build() -> bool {
    match pacmesh_sandbox::preflight() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPED: the sandbox cannot run here: {e}");
            false
        }
    }
}

/// A mesh: a root key (maintainer and publisher) and a signed policy.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub root_key: PathBuf,
    pub policy: PathBuf,
}

impl Mesh {
    pub fn new(lease_secs: u32) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let root_key = dir.path().join("root.key");
        pacmesh_ok(&["key", "gen", "--out", root_key.to_str().unwrap()]);
        let policy = dir.path().join("policy.cbor");
        pacmesh_ok(&[
            "mesh",
            "init",
            "--key",
            root_key.to_str().unwrap(),
            "--repo",
            "opsrepo",
            "--lease-secs",
            &lease_secs.to_string(),
            "--out",
            policy.to_str().unwrap(),
        ]);
        Mesh {
            dir,
            root_key,
            policy,
        }
    }

    /// Writes `NAME/PKGBUILD` (a package `NAME`, arch any) with the given `build()` body.
    pub fn pkgbuild(&self, name: &str, build_body: &str) -> PathBuf {
        let d = self.dir.path().join("pkgs").join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("PKGBUILD"),
            format!(
                "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='pacmesh operations test'\narch=(any)\nlicense=(MIT)\n\
                 build() {{\n{build_body}\n}}\n\
                 package() {{\n  mkdir -p \"$pkgdir/usr/share/{name}\"\n  echo ok > \"$pkgdir/usr/share/{name}/ok\"\n}}\n"
            ),
        )
        .unwrap();
        d
    }

    /// A config file for a node whose data dir is `data` (the root key publishes), with
    /// `extra` TOML appended.
    pub fn config(&self, name: &str, extra: &str) -> PathBuf {
        let data = self.dir.path().join(format!("{name}-data"));
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "data_dir = {:?}\npolicy = {:?}\npublisher_key = {:?}\nhttp = \"127.0.0.1:0\"\n{extra}\n",
                data, self.policy, self.root_key
            ),
        )
        .unwrap();
        cfg
    }

    /// `pacmesh queue add --dir DIR`; returns the entry id.
    pub fn enqueue(&self, base: &str, dir: &Path) -> String {
        let out = pacmesh_ok(&[
            "queue",
            "add",
            "--key",
            self.root_key.to_str().unwrap(),
            "--node",
            base,
            "--dir",
            dir.to_str().unwrap(),
        ]);
        let id = out
            .split_whitespace()
            .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no entry id in {out:?}"));
        id.to_string()
    }
}

/// A `pacmesh node` child process; killed on drop.
pub struct NodeProc {
    pub child: Child,
    pub base: String,
    lines: mpsc::Receiver<String>,
}

impl NodeProc {
    pub fn start(args: &[&str]) -> NodeProc {
        let mut child = Command::new(BIN)
            .arg("node")
            .args(args)
            .env("RUST_LOG", "info")
            .env("no_proxy", "*")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pacmesh node");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[node] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut n = NodeProc {
            child,
            base: String::new(),
            lines,
        };
        let l = n.wait_line("http listening on", Duration::from_secs(60));
        n.base = l.rsplit(' ').next().unwrap().to_string();
        n
    }

    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!("no line containing {needle:?} within {timeout:?}"),
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn json(&self, path: &str) -> Value {
        let (code, body) = get(&self.url(path), &[]);
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    pub fn text(&self, path: &str) -> String {
        let (code, body) = get(&self.url(path), &[]);
        assert_eq!(code, 200, "{path}: {}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    }

    /// Waits until the entry's state is one of `states`; returns the entry JSON.
    pub fn wait_state(&self, id: &str, states: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let e = self.json(&format!("/api/v1/entries/{id}"));
            if states.contains(&e["status"]["state"].as_str().unwrap_or("")) {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "entry not {states:?} within {timeout:?}: {e:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the node streams a live log for `id`.
    pub fn wait_building(&self, id: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.json("/api/v1/status");
            if st["building"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|x| x["entry"] == id && x["lines"].as_u64() > Some(1))
            }) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not building within {timeout:?}: {st:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// GET with extra headers: status and body (not decompressed).
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let mut req = agent().get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut r = req.call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let code = r.status().as_u16();
    (
        code,
        r.body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .unwrap_or_default(),
    )
}

/// The value of the sample `name{labels}` (exact match of the part before the value) in a
/// Prometheus text exposition.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
