//! `pacmesh` as a child process on 127.0.0.1 with fresh keys and a policy (a compact version of
//! the helpers in `e2e.rs`, for the sources tests).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_pacmesh");

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command with a deadline.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .env("no_proxy", "*")
        .env("NO_PROXY", "*")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {desc}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

pub fn show(o: &Output) -> String {
    format!(
        "{:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn pacmesh(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args), Duration::from_secs(120))
}

pub fn pacmesh_ok(args: &[&str]) -> String {
    let o = pacmesh(args);
    assert!(o.status.success(), "pacmesh {args:?}: {}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .env("no_proxy", "*")
            .env("NO_PROXY", "*")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn pacmesh");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("[pacmesh] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().expect("GET");
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_vec().unwrap_or_default())
}

pub fn json(url: &str) -> Value {
    let (code, body) = http_get(url);
    assert_eq!(code, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits until `pred` holds for the node's queue.
pub fn wait_queue(
    base: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let q = json(&format!("{base}/api/v1/queue"));
        let entries = q["entries"].as_array().cloned().unwrap_or_default();
        if pred(&entries) {
            return entries;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reached within {timeout:?}: {entries:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn state_of<'a>(entries: &'a [Value], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["status"]["state"].as_str())
}

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
        let line = p.wait_line("http listening on ", Duration::from_secs(60));
        let base = line
            .split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string();
        (p, base)
    }
}
