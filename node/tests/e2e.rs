//! End to end with real processes: `pacmesh node` and `pacmesh demo` as child processes on
//! 127.0.0.1, real makepkg in bubblewrap, and real pacman installing from the node over HTTP
//! with `SigLevel = Required DatabaseRequired`.
//!
//! Needs root (pacman insists on it even with `--root`), bwrap, makepkg, pacman and gpg; each
//! test skips with a printed notice when they are missing.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_pacmesh");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Skips (with a notice) when a tool is missing, or when `root` is asked and we are not root
/// (pacman insists on it even with `--root`).
fn skip(needs: &[&str], root: bool) -> bool {
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
fn run(cmd: &mut Command, timeout: Duration) -> Output {
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

fn show(o: &Output) -> String {
    format!(
        "{:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn pacmesh(args: &[&str]) -> Output {
    run(Command::new(BIN).args(args), Duration::from_secs(120))
}

fn pacmesh_ok(args: &[&str]) -> String {
    let o = pacmesh(args);
    assert!(o.status.success(), "pacmesh {args:?}: {}", show(&o));
    String::from_utf8(o.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A child process whose stdout lines arrive on a channel; killed on drop.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
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
    fn wait_line(&self, needle: &str, timeout: Duration) -> String {
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

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
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

fn http_get(url: &str) -> (u16, Vec<u8>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().expect("GET");
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_vec().unwrap_or_default())
}

fn http_post(url: &str, body: &[u8]) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = match agent.post(url).send(body) {
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

fn json(url: &str) -> Value {
    let (code, body) = http_get(url);
    assert_eq!(code, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Waits until `pred` holds for the node's queue.
fn wait_queue(
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
fn wait_served(base: &str) {
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

fn state_of<'a>(entries: &'a [Value], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["status"]["state"].as_str())
}

/// A temporary pacman keyring and root that install from `server` (`.../$repo/os/$arch`).
struct Pacman {
    dir: PathBuf,
}

impl Pacman {
    fn new(dir: &Path, repo: &str, server: &str, asc: &Path, fingerprint: &str) -> Pacman {
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
    fn gpgdir(&self) -> PathBuf {
        self.dir.join("gnupg")
    }
    fn conf(&self) -> PathBuf {
        self.dir.join("pacman.conf")
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// `pacman -Sydd` (the test root has no `sh` to satisfy dependencies with).
    fn install(&self, pkgs: &[&str]) -> Output {
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
                    "-Sydd",
                ])
                .args(pkgs),
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

#[test]
fn demo_publishes_and_pacman_installs_over_http() {
    if skip(&["bwrap", "makepkg", "pacman", "pacman-key", "gpg"], true) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let demo_dir = t.path().join("demo");
    let mut demo = Proc::spawn(&["demo", "--dir", s(&demo_dir), "--http", "127.0.0.1:0"]);
    let server = demo.wait_line("Server = ", Duration::from_secs(600));
    let server = server.trim().trim_start_matches("Server = ").to_string();
    let asc = demo_dir.join("pacmesh-demo.asc");
    let fpr = pacmesh_ok(&[
        "key",
        "show",
        "--key",
        s(&demo_dir.join("keys/node.key")),
        "--fingerprint",
    ]);
    let pacman = Pacman::new(
        &t.path().join("pacman"),
        "pacmesh-demo",
        &server,
        &asc,
        fpr.trim(),
    );

    let o = pacman.install(&["pacmesh-hello", "pacmesh-split-bin", "pacmesh-epoch"]);
    assert!(o.status.success(), "pacman -Sy: {}", show(&o));
    let hello = std::fs::read_to_string(pacman.root().join("usr/bin/pacmesh-hello")).unwrap();
    assert!(hello.contains("hello from pacmesh"), "{hello}");
    assert!(pacman.root().join("usr/bin/pacmesh-split").is_file());
    assert!(pacman.root().join("etc/pacmesh-epoch.conf").is_file());
    // A pacman.conf without the key trusted refuses the same repository.
    let stranger = Pacman::new(
        &t.path().join("pacman2"),
        "pacmesh-demo",
        &server,
        &asc,
        fpr.trim(),
    );
    let _ = run(
        Command::new("pacman-key")
            .arg("--gpgdir")
            .arg(stranger.gpgdir())
            .arg("--config")
            .arg(stranger.conf())
            .args(["--delete", fpr.trim()]),
        Duration::from_secs(60),
    );
    let o = stranger.install(&["pacmesh-hello"]);
    assert!(
        !o.status.success(),
        "pacman must refuse an untrusted repository: {}",
        show(&o)
    );

    // Ctrl-C stops the demo cleanly.
    demo.signal("-INT");
    assert_eq!(demo.wait_exit(Duration::from_secs(30)), Some(0));
}

/// Keys, a policy and a node process on a fresh data dir.
struct Mesh {
    dir: PathBuf,
    maintainer: PathBuf,
    stranger: PathBuf,
    node_key: PathBuf,
    policy: PathBuf,
}

impl Mesh {
    fn new(dir: &Path) -> Mesh {
        let keys = dir.join("keys");
        let k = |n: &str| {
            let p = keys.join(n);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let (root, maintainer, stranger, node_key) = (
            k("root.key"),
            k("maint.key"),
            k("stranger.key"),
            k("node.key"),
        );
        let public = |p: &Path| {
            let out = pacmesh_ok(&["key", "show", "--key", s(p)]);
            out.lines()
                .find_map(|l| l.strip_prefix("public key: "))
                .unwrap()
                .trim()
                .to_string()
        };
        let policy = dir.join("policy.cbor");
        pacmesh_ok(&[
            "mesh",
            "init",
            "--key",
            s(&root),
            "--repo",
            "test",
            "--arch",
            "x86_64",
            "--maintainer",
            &public(&maintainer),
            "--publisher",
            &public(&node_key),
            "--lease-secs",
            "6",
            "--out",
            s(&policy),
        ]);
        Mesh {
            dir: dir.to_path_buf(),
            maintainer,
            stranger,
            node_key,
            policy,
        }
    }

    fn start(&self, extra: &[&str]) -> (Proc, String) {
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

fn write_pkgbuild(dir: &Path, name: &str, build: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("PKGBUILD"),
        format!(
            "pkgname={name}\npkgver=1.0\npkgrel=1\npkgdesc='test package'\narch=('any')\nlicense=('MIT')\n\
             build() {{\n{build}\n}}\npackage() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/data\" <<<'{name}'\n}}\n"
        ),
    )
    .unwrap();
    d
}

#[test]
fn node_refuses_bad_events_and_keeps_running() {
    // The node runs with --no-build: nothing to skip for.
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    let (_node, base) = mesh.start(&["--no-build"]);
    let pkg = write_pkgbuild(t.path(), "refused-pkg", "true");

    // Enqueued by a key that is not a maintainer: refused with the reason, nothing stored.
    let o = pacmesh(&[
        "queue",
        "add",
        "--key",
        s(&mesh.stranger),
        "--node",
        &base,
        "--dir",
        s(&pkg),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("maintainer"), "{err}");
    // A good one is accepted.
    let id = pacmesh_ok(&[
        "queue",
        "add",
        "--key",
        s(&mesh.maintainer),
        "--node",
        &base,
        "--dir",
        s(&pkg),
    ]);
    let id = id.trim();
    let before = json(&format!("{base}/api/v1/status"));
    assert_eq!(before["events"]["accepted"], 1, "{before}");

    let events = format!("{base}/api/v1/events");
    // Garbage, truncated, oversized bytes.
    let (code, v) = http_post(&events, b"\xff\x00garbage");
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let (code, _) = http_post(&events, &[0xa1; 8 << 20]);
    assert!(code == 413 || code == 0, "oversized: {code}");
    // The stored event itself, replayed: a harmless duplicate; truncated: refused.
    let q = json(&format!("{base}/api/v1/entries/{id}"));
    assert_eq!(q["id"], id);
    let status_before = json(&format!("{base}/api/v1/status"));
    // Sign a fresh event by the maintainer, then tamper with its signature.
    let (_, head) = http_get(&format!("{base}/api/v1/policy"));
    assert!(!head.is_empty());
    let key = pacmesh_node::keys::NodeKey::load(&mesh.maintainer).unwrap();
    let author = pacmesh_protocol::PublicKey::from(key.signing_key());
    let hd = json(&format!("{base}/api/v1/authors/{author}/head"));
    assert_eq!(hd["seq"], 1);
    let ev = pacmesh_protocol::Event::new(
        author,
        2,
        Some(hd["id"].as_str().unwrap().parse().unwrap()),
        pacmesh_protocol::Timestamp::now(),
        pacmesh_protocol::EventBody::Cancel {
            entry: id.parse().unwrap(),
        },
    );
    let signed = pacmesh_protocol::Signed::sign(key.signing_key(), &ev).unwrap();
    let mut bad = signed.clone();
    bad.sig[0] ^= 1;
    let (code, v) = http_post(&events, &bad.to_bytes());
    assert_eq!(code, 400, "bad signature: {v}");
    let bytes = signed.to_bytes();
    let (code, v) = http_post(&events, &bytes[..bytes.len() - 3]);
    assert_eq!(code, 400, "truncated: {v}");
    let after = json(&format!("{base}/api/v1/status"));
    assert_eq!(
        after["state_digest"], status_before["state_digest"],
        "rejections change nothing"
    );
    assert!(
        after["events"]["rejected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum::<u64>()
            >= 4
    );
    // The real one goes through; replaying it is a duplicate and changes nothing.
    let (code, v) = http_post(&events, &bytes);
    assert_eq!((code, v["result"].as_str()), (200, Some("accepted")), "{v}");
    let digest = json(&format!("{base}/api/v1/status"))["state_digest"].clone();
    let (code, v) = http_post(&events, &bytes);
    assert_eq!(
        (code, v["result"].as_str()),
        (200, Some("duplicate")),
        "{v}"
    );
    assert_eq!(
        json(&format!("{base}/api/v1/status"))["state_digest"],
        digest
    );
    let entries = wait_queue(&base, "cancelled", Duration::from_secs(5), |e| {
        state_of(e, "refused-pkg") == Some("cancelled")
    });
    assert_eq!(entries.len(), 1);
    assert_eq!(http_get(&format!("{base}/health")).0, 200);
    // The CLI views work against it.
    let ls = pacmesh_ok(&["queue", "ls", "--node", &base]);
    assert!(
        ls.contains("refused-pkg") && ls.contains("cancelled"),
        "{ls}"
    );
    let st = pacmesh_ok(&["status", "--node", &base]);
    assert!(st.contains("queue") && st.contains("1 cancelled"), "{st}");
}

#[test]
fn failed_build_reports_and_kill_9_restart_publishes_once() {
    if skip(&["bwrap", "makepkg"], false) {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    let (mut node, base) = mesh.start(&[]);
    let add = |dir: &Path| {
        pacmesh_ok(&[
            "queue",
            "add",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &base,
            "--dir",
            s(dir),
        ])
        .trim()
        .to_string()
    };
    // A failing build reports Failed with the log tail; the next entry still builds and publishes.
    add(&write_pkgbuild(
        t.path(),
        "broken-pkg",
        "echo 'compiler exploded here' >&2; false",
    ));
    add(&write_pkgbuild(t.path(), "first-pkg", "true"));
    let entries = wait_queue(&base, "first published", Duration::from_secs(300), |e| {
        state_of(e, "first-pkg") == Some("published") && state_of(e, "broken-pkg") == Some("failed")
    });
    let broken = entries.iter().find(|e| e["name"] == "broken-pkg").unwrap();
    let reason = broken["status"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("compiler exploded here"),
        "the log tail is in the reason: {reason}"
    );
    wait_served(&base);
    let db_url = format!("{base}/test/os/x86_64/test.db");
    let (code, db_before) = http_get(&db_url);
    assert_eq!(code, 200);

    // A slow build, killed with SIGKILL while it runs.
    add(&write_pkgbuild(t.path(), "slow-pkg", "sleep 4"));
    wait_queue(&base, "slow claimed", Duration::from_secs(120), |e| {
        state_of(e, "slow-pkg") == Some("claimed")
    });
    std::thread::sleep(Duration::from_millis(1500));
    node.signal("-KILL");
    node.wait_exit(Duration::from_secs(10))
        .map(|_| ())
        .unwrap_or(());
    drop(node);

    let (_node, base) = mesh.start(&[]);
    // The repository served before the kill is served again at once.
    let (code, db_again) = http_get(&format!("{base}/test/os/x86_64/test.db"));
    assert_eq!(code, 200);
    assert_eq!(
        db_again, db_before,
        "generation 1 stays served while the slow build reruns"
    );
    let entries = wait_queue(&base, "slow published", Duration::from_secs(300), |e| {
        state_of(e, "slow-pkg") == Some("published")
    });
    wait_served(&base);
    let st = json(&format!("{base}/api/v1/status"));
    let gens = st["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 1, "{st}");
    assert_eq!(
        gens[0]["generation"], 2,
        "one generation per published build: {st}"
    );
    assert_eq!(gens[0]["packages"], 2, "{st}");
    let (code, db_after) = http_get(&format!("{base}/test/os/x86_64/test.db"));
    assert_eq!(code, 200);
    assert_ne!(db_after, db_before, "generation 2 is served");
    // The slow entry was built by exactly one completed attempt.
    let slow = entries.iter().find(|e| e["name"] == "slow-pkg").unwrap();
    let detail = json(&format!(
        "{base}/api/v1/entries/{}",
        slow["id"].as_str().unwrap()
    ));
    let built: Vec<&Value> = detail["reports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "built")
        .collect();
    assert_eq!(built.len(), 1, "{detail:#}");
}
