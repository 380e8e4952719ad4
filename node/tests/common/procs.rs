//! Child-process helpers shared by the end-to-end tests: `pacmesh` as a real process, HTTP
//! on 127.0.0.1, and a real pacman (in its own root) against a node's repository.
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

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Skips (with a notice) when a tool is missing, or when `root` is asked and we are not root
/// (pacman insists on it even with `--root`).
pub fn skip(needs: &[&str], root: bool) -> bool {
    let missing: Vec<&&str> = needs.iter().filter(|t| !have(t)).collect();
    if !missing.is_empty() {
        eprintln!("SKIPPED: missing {missing:?}");
        return true;
    }
    if root && !is_root() {
        eprintln!("SKIPPED: pacman needs root");
        return true;
    }
    false
}

/// Runs a command with a deadline and returns its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .env("no_proxy", "*")
        .env("LC_ALL", "C")
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
        Proc::spawn_cmd(BIN, args)
    }

    /// [`Proc::spawn`] of `program` (a wrapper such as `ip netns exec NS pacmesh ...`).
    pub fn spawn_cmd(program: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .env("no_proxy", "*")
            .env("NO_PROXY", "*")
            .args(args)
            .env("RUST_LOG", "info")
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

    /// Waits for a stdout line containing `needle`; returns it.
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

    /// Waits for a "… listening on ADDR" line containing `needle`; returns ADDR.
    pub fn listening(&self, needle: &str, timeout: Duration) -> String {
        self.wait_line(needle, timeout)
            .split("listening on ")
            .nth(1)
            .unwrap_or_else(|| panic!("no address after \"listening on\" for {needle:?}"))
            .trim()
            .to_string()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
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
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns error statuses as answers instead of errors.
pub fn lenient_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn http_get(url: &str) -> (u16, Vec<u8>) {
    let mut r = lenient_agent().get(url).call().expect("GET");
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_vec().unwrap_or_default())
}

pub fn http_post(url: &str, body: &[u8]) -> (u16, Value) {
    let mut r = match lenient_agent().post(url).send(body) {
        Ok(r) => r,
        // The server may answer 413 and close before the body is sent.
        Err(ureq::Error::Io(_)) => return (0, Value::Null),
        Err(e) => panic!("POST {url}: {e}"),
    };
    let code = r.status().as_u16();
    let text = r
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
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

/// Waits until the node serves the generation it published (the switch follows the event).
pub fn wait_served(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = json(&format!("{base}/api/v1/status"));
        let gens = st["generations"].as_array().cloned().unwrap_or_default();
        if !gens.is_empty() && gens.iter().all(|g| g["served"] == g["generation"]) {
            return;
        }
        assert!(Instant::now() < deadline, "not served: {st:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn state_of<'a>(entries: &'a [Value], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["status"]["state"].as_str())
}

/// A temporary pacman keyring and root that install from `server` (`.../$repo/os/$arch`).
pub struct Pacman {
    dir: PathBuf,
}

impl Pacman {
    pub fn new(dir: &Path, repo: &str, server: &str, asc: &Path, fingerprint: &str) -> Pacman {
        let p = Pacman {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(p.gpgdir()).unwrap();
        std::fs::write(
            p.conf(),
            format!(
                "[options]\nArchitecture = auto\nSigLevel = Required DatabaseRequired\n\n[{repo}]\nServer = {server}\n"
            ),
        )
        .unwrap();
        for args in [
            vec!["--init"],
            vec!["--add", s(asc)],
            vec!["--lsign-key", fingerprint],
        ] {
            let o = run(
                Command::new("pacman-key")
                    .arg("--gpgdir")
                    .arg(p.gpgdir())
                    .arg("--config")
                    .arg(p.conf())
                    .args(&args),
                Duration::from_secs(300),
            );
            assert!(o.status.success(), "pacman-key {args:?}: {}", show(&o));
        }
        p
    }
    pub fn gpgdir(&self) -> PathBuf {
        self.dir.join("gnupg")
    }
    pub fn conf(&self) -> PathBuf {
        self.dir.join("pacman.conf")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// `pacman -Sydd` (the test root has no `sh` to satisfy dependencies with).
    pub fn install(&self, pkgs: &[&str]) -> Output {
        let mut args = vec!["-Sydd"];
        args.extend_from_slice(pkgs);
        self.pacman(&args)
    }

    /// pacman with `args` (e.g. `-Syudd`) on the test root, keyring and configuration.
    pub fn pacman(&self, args: &[&str]) -> Output {
        let root = self.root();
        for d in [
            "var/lib/pacman",
            "var/cache/pacman/pkg",
            "var/log",
            "etc/pacman.d/hooks",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        run(
            Command::new("pacman")
                .arg("--root")
                .arg(&root)
                .arg("--dbpath")
                .arg(root.join("var/lib/pacman"))
                .arg("--cachedir")
                .arg(root.join("var/cache/pacman/pkg"))
                .arg("--logfile")
                .arg(root.join("var/log/pacman.log"))
                .arg("--hookdir")
                .arg(root.join("etc/pacman.d/hooks"))
                .arg("--gpgdir")
                .arg(self.gpgdir())
                .arg("--config")
                .arg(self.conf())
                .args([
                    "--noconfirm",
                    "--noprogressbar",
                    "--noscriptlet",
                    "--disable-download-timeout",
                ])
                .args(args),
            Duration::from_secs(180),
        )
    }
}

impl Drop for Pacman {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.gpgdir())
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
