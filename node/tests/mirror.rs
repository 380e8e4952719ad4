//! Mirrors end to end with real processes on 127.0.0.1: a `pacmesh node` (publisher, no
//! builds: the test signs build reports of synthetic packages as a builder), a `pacmesh
//! mirror` following it over HTTP, a hostile HTTP peer in this process (corrupts blob bytes,
//! forges manifests, throttles), and real pacman with `SigLevel = Required DatabaseRequired`
//! installing from the mirror.
//!
//! `cargo test -p pacmesh-node --test mirror`. The pacman parts need root, pacman, pacman-key
//! and gpg, and are skipped with a notice without them (the rest still runs).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use pacmesh_node::client::Client;
use pacmesh_node::keys::NodeKey;
use pacmesh_protocol::{
    Event, EventBody, Hash, Limits, Message, PublicKey, RepoManifest, Sha256, Signed, SyncResponse,
    Timestamp,
};
use pacmesh_repo::package::testutil::SyntheticPackage;
use pacmesh_repo::sign::OpenPgpKey;
use serde_json::Value;

#[path = "common/mirror_util.rs"]
mod mirror_util;
#[path = "common/procs.rs"]
mod procs;
use mirror_util::*;
use procs::{BIN, pacmesh_ok, run, s, show};

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

    fn base(&self, needle: &str) -> String {
        let line = self.wait_line(needle, Duration::from_secs(60));
        line.split("listening on ")
            .nth(1)
            .unwrap()
            .trim()
            .to_string()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn json(url: &str) -> Value {
    let (code, body, _) = get(url);
    assert_eq!(code, 200, "{url}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

/// Keys, a policy, a node process (publisher, no builds) and helpers that publish synthetic
/// packages through it.
struct Mesh {
    dir: PathBuf,
    policy: PathBuf,
    node_key: PathBuf,
    maint: NodeKey,
    builder: NodeKey,
    stranger: NodeKey,
    _node: Option<Proc>,
    base: String,
}

impl Mesh {
    fn new(dir: &Path) -> Mesh {
        let keys = dir.join("keys");
        let k = |n: &str| {
            let p = keys.join(n);
            pacmesh_ok(&["key", "gen", "--out", s(&p)]);
            p
        };
        let (root, maint, builder, stranger, node_key) = (
            k("root.key"),
            k("maint.key"),
            k("builder.key"),
            k("stranger.key"),
            k("node.key"),
        );
        let public = |p: &Path| NodeKey::load(p).unwrap().public_hex();
        let policy = dir.join("policy.cbor");
        pacmesh_ok(&[
            "mesh",
            "init",
            "--key",
            s(&root),
            "--repo",
            REPO,
            "--arch",
            ARCH,
            "--maintainer",
            &public(&maint),
            "--publisher",
            &public(&node_key),
            "--out",
            s(&policy),
        ]);
        let node = Proc::spawn(&[
            "node",
            "--policy",
            s(&policy),
            "--key",
            s(&node_key),
            "--publisher-key",
            s(&node_key),
            "--data-dir",
            s(&dir.join("node")),
            "--http",
            "127.0.0.1:0",
            "--no-mdns",
            "--no-build",
        ]);
        let base = node.base("http listening on ");
        Mesh {
            dir: dir.to_path_buf(),
            policy,
            maint: NodeKey::load(&maint).unwrap(),
            builder: NodeKey::load(&builder).unwrap(),
            stranger: NodeKey::load(&stranger).unwrap(),
            node_key,
            _node: Some(node),
            base,
        }
    }

    /// Enqueues `pkgbase`, reports a build of `pkgs` as the builder, waits until the node
    /// serves generation `expect`.
    fn publish(&self, pkgbase: &str, pkgs: &[SyntheticPackage], expect: u64) {
        let c = Client::new(&self.base);
        enqueue_and_report_built(&c, &[], &self.maint, &self.builder, pkgbase, pkgs);
        wait_until(
            &format!("node serves generation {expect}"),
            Duration::from_secs(60),
            || node_served(&self.base) == Some(expect),
        );
    }

    fn mirror(&self, name: &str, follow: &[&str], extra: &[&str]) -> (Proc, String) {
        let (out, data) = (self.dir.join(name), self.dir.join(format!("{name}-data")));
        let mut args = vec![
            "mirror",
            "--policy",
            s(&self.policy),
            "--out",
            s(&out),
            "--data-dir",
            s(&data),
            "--http",
            "127.0.0.1:0",
            "--interval",
            "1",
        ];
        for f in follow {
            args.extend(["--follow", f]);
        }
        args.extend_from_slice(extra);
        let p = Proc::spawn(&args);
        let base = p.base("mirror http listening on ");
        (p, base)
    }

    fn pgp(&self) -> OpenPgpKey {
        let k = NodeKey::load(&self.node_key).unwrap();
        OpenPgpKey::from_ed25519_secret(k.seed(), "t <t@pacmesh.invalid>").unwrap()
    }
}

fn pkg(name: &str, version: &str) -> SyntheticPackage {
    SyntheticPackage::new(name, version)
}

/// A temporary pacman keyring and root installing from `server` (`.../$repo/os/$arch`).
struct Pacman {
    dir: PathBuf,
}

impl Pacman {
    fn new(dir: &Path, server: &str, asc: &Path, fingerprint: &str) -> Pacman {
        let p = Pacman {
            dir: dir.to_path_buf(),
        };
        std::fs::create_dir_all(p.dir.join("gnupg")).unwrap();
        std::fs::write(
            p.dir.join("pacman.conf"),
            format!(
                "[options]\nArchitecture = auto\nSigLevel = Required DatabaseRequired\n\n[{REPO}]\nServer = {server}/$repo/os/$arch\n"
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
                    .arg(p.dir.join("gnupg"))
                    .arg("--config")
                    .arg(p.dir.join("pacman.conf"))
                    .args(&args),
                Duration::from_secs(300),
            );
            assert!(o.status.success(), "pacman-key {args:?}: {}", show(&o));
        }
        p
    }

    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    fn pacman(&self, args: &[&str]) -> Output {
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
                .arg(self.dir.join("gnupg"))
                .arg("--config")
                .arg(self.dir.join("pacman.conf"))
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

    fn readme(&self, name: &str) -> String {
        std::fs::read_to_string(self.root().join(format!("usr/share/{name}/README")))
            .unwrap_or_default()
    }
}

impl Drop for Pacman {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.dir.join("gnupg"))
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// How a reader fetches the rest of a set after the database.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Signature and packages from `/NAME/gen/G/os/ARCH/` of the generation the database
    /// response named.
    Pinned,
    /// Signature pinned, packages from `/NAME/os/ARCH/`.
    OsPackages,
    /// Everything from `/NAME/os/ARCH/`, in separate requests, like pacman (and slowly: 100 ms
    /// after the database).
    Pacman,
}

/// Checks one consistent set read from `base`: the database, its signature and every package
/// it lists (SHA-256 as the database says, signature by the publisher), read as `mode` says
/// with user agent `ua`. Returns the generation read.
fn check_set(base: &str, pgp: &OpenPgpKey, pinned: bool) -> Result<u64, String> {
    let mode = if pinned {
        Mode::Pinned
    } else {
        Mode::OsPackages
    };
    check_set_as(base, pgp, mode, "pacmesh-test")
}

fn check_set_as(base: &str, pgp: &OpenPgpKey, mode: Mode, ua: &str) -> Result<u64, String> {
    let get = |url: &str| get_as(url, ua);
    let (code, db, g) = get(&format!("{base}/{REPO}/os/{ARCH}/{REPO}.db"));
    if code != 200 {
        return Err(format!("db: HTTP {code}"));
    }
    let g: u64 = g
        .ok_or("no generation header")?
        .parse()
        .map_err(|_| "bad header")?;
    if let Mode::Pacman = mode {
        // A slow client: a switch is likely to happen before its next request.
        std::thread::sleep(Duration::from_millis(100));
    }
    let pinned_dir = format!("{base}/{REPO}/gen/{g}/os/{ARCH}");
    let os_dir = format!("{base}/{REPO}/os/{ARCH}");
    let (dir, sig_dir) = match mode {
        Mode::Pinned => (&pinned_dir, &pinned_dir),
        Mode::OsPackages => (&os_dir, &pinned_dir),
        Mode::Pacman => (&os_dir, &os_dir),
    };
    let (code, sig, _) = get(&format!("{sig_dir}/{REPO}.db.sig"));
    if code != 200 {
        return Err(format!("db.sig: HTTP {code}"));
    }
    pgp.verify_detached(&db, &sig)
        .map_err(|e| format!("generation {g}: database signature: {e}"))?;
    let parsed = pacmesh_repo::db::Database::from_archives(REPO, &db, None)
        .map_err(|e| format!("database: {e}"))?;
    for e in parsed.entries.values() {
        let (code, bytes, _) = get(&format!("{dir}/{}", e.filename));
        if code != 200 {
            return Err(format!("generation {g}: {}: HTTP {code}", e.filename));
        }
        let want = e.sha256sum.clone().unwrap_or_default();
        let got = Sha256::digest(&bytes).to_hex();
        if want != got {
            return Err(format!(
                "generation {g}: {}: sha256 {got}, database says {want}",
                e.filename
            ));
        }
        let (code, psig, _) = get(&format!("{dir}/{}.sig", e.filename));
        if code != 200 {
            return Err(format!("generation {g}: {}.sig: HTTP {code}", e.filename));
        }
        pgp.verify_detached(&bytes, &psig)
            .map_err(|err| format!("generation {g}: {}: package signature: {err}", e.filename))?;
    }
    Ok(g)
}

#[test]
fn mirror_serves_generations_pacman_upgrades_and_rolls_back() {
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    mesh.publish("hello", &[pkg("hello", "1.0-1")], 1);
    let (_mirror, mbase) = mesh.mirror("out", &[&mesh.base], &["--keep", "2"]);
    wait_until(
        "mirror serves generation 1",
        Duration::from_secs(60),
        || mirror_served(&mbase) == Some(1),
    );
    let out = t.path().join("out");
    assert_eq!(
        std::fs::read_link(out.join(REPO).join("os").join(ARCH)).unwrap(),
        PathBuf::from(format!("../gen/1/os/{ARCH}"))
    );
    let pgp = mesh.pgp();
    assert_eq!(check_set(&mbase, &pgp, true), Ok(1));

    let pacman = can_pacman().then(|| {
        let asc = t.path().join("publisher.asc");
        std::fs::write(
            &asc,
            pacmesh_ok(&["key", "openpgp", "--key", s(&mesh.node_key)]),
        )
        .unwrap();
        let fpr = pacmesh_ok(&["key", "show", "--key", s(&mesh.node_key), "--fingerprint"]);
        let p = Pacman::new(&t.path().join("pacman"), &mbase, &asc, fpr.trim());
        let o = p.pacman(&["-Sydd", "hello"]);
        assert!(o.status.success(), "pacman -Sy hello: {}", show(&o));
        assert_eq!(p.readme("hello"), "hello 1.0-1\n");
        p
    });

    // Generation 2: hello 2.0 and a split package base (two packages).
    mesh.publish("hello", &[pkg("hello", "2.0-1")], 2);
    let mut a = pkg("splitty-a", "1.0-1");
    a.lines[0] = ("pkgbase".into(), "splitty".into());
    let mut b = pkg("splitty-b", "1.0-1");
    b.lines[0] = ("pkgbase".into(), "splitty".into());
    mesh.publish("splitty", &[a, b], 3);
    wait_until(
        "mirror serves generation 3",
        Duration::from_secs(60),
        || mirror_served(&mbase) == Some(3),
    );
    assert_eq!(check_set(&mbase, &pgp, false), Ok(3));
    if let Some(p) = &pacman {
        let o = p.pacman(&["-Syudd"]);
        assert!(o.status.success(), "pacman -Syu: {}", show(&o));
        assert_eq!(p.readme("hello"), "hello 2.0-1\n", "upgraded");
    }

    // Rollback to generation 1: generation 4 equals it; pacman -Suu downgrades.
    let o = run(
        Command::new(BIN).args([
            "repo",
            "rollback",
            REPO,
            "1",
            "--key",
            s(&mesh.node_key),
            "--node",
            &mesh.base,
        ]),
        Duration::from_secs(60),
    );
    assert!(o.status.success(), "rollback: {}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("generation 4"),
        "{}",
        show(&o)
    );
    // A key that is not a publisher cannot roll back.
    let o = run(
        Command::new(BIN).args([
            "repo",
            "rollback",
            REPO,
            "2",
            "--key",
            s(&t.path().join("keys/stranger.key")),
            "--node",
            &mesh.base,
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a publisher"),
        "{}",
        show(&o)
    );
    wait_until(
        "mirror serves generation 4",
        Duration::from_secs(60),
        || mirror_served(&mbase) == Some(4),
    );
    assert_eq!(check_set(&mbase, &pgp, true), Ok(4));
    if let Some(p) = &pacman {
        let o = p.pacman(&["-Syuudd"]);
        assert!(o.status.success(), "pacman -Suu: {}", show(&o));
        assert_eq!(p.readme("hello"), "hello 1.0-1\n", "downgraded");
    }
    // The node's publisher does not undo the rollback (hello 2.0 was published once).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_served(&mesh.base), Some(4));

    // History: four generations, the rollback shows the downgrade and the removed split packages.
    let h = pacmesh_ok(&["repo", "history", REPO, "--node", &mesh.base, "--json"]);
    let h: Value = serde_json::from_str(&h).unwrap();
    let gens = h["generations"].as_array().unwrap();
    assert_eq!(
        gens.iter()
            .map(|g| g["generation"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![4, 3, 2, 1]
    );
    assert_eq!(gens[0]["updated"][0]["name"], "hello");
    assert_eq!(gens[0]["updated"][0]["downgrade"], true);
    let removed: Vec<&str> = gens[0]["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["splitty-a", "splitty-b"]);
    assert_eq!(gens[3]["added"][0]["name"], "hello");
    let text = pacmesh_ok(&["repo", "history", REPO, "--node", &mesh.base]);
    assert!(
        text.contains("generation 4") && text.contains("v hello 2.0-1 -> 1.0-1"),
        "{text}"
    );

    // --keep 2: generations 3 and 4 kept, pinned URLs of older ones are gone.
    let kept = json(&format!("{mbase}/api/v1/status"))["repos"][0]["kept"].clone();
    assert_eq!(kept, serde_json::json!([3, 4]));
    assert_eq!(
        get(&format!("{mbase}/{REPO}/gen/2/os/{ARCH}/{REPO}.db")).0,
        404
    );
    assert_eq!(
        get(&format!("{mbase}/{REPO}/gen/3/os/{ARCH}/{REPO}.db")).0,
        200
    );
    // The pinned generation 3 is read-only and complete.
    assert_eq!(check_set_pinned_gen(&mbase, &pgp, 3), Ok(()));
    // Node side too: generation-pinned URLs.
    assert_eq!(
        get(&format!("{}/{REPO}/gen/1/os/{ARCH}/{REPO}.db", mesh.base)).0,
        200
    );
    // hello 2.0 is still in kept generation 3.
    let hello2 = pkg("hello", "2.0-1").archive_bytes();
    assert_eq!(
        get(&format!("{mbase}/api/v1/blobs/{}", Hash::new(&hello2))).0,
        200,
        "still referenced by generation 3"
    );
    // Generation 2's databases are in no kept generation: collected from the mirror's store
    // (the node keeps them: its log references them).
    let manifest_of = |g: u64| -> RepoManifest {
        let id = gens.iter().find(|x| x["generation"] == g).unwrap()["event"]
            .as_str()
            .unwrap()
            .to_string();
        let (_, bytes, _) = get(&format!("{}/api/v1/events/{id}", mesh.base));
        let ev = Signed::<Event>::from_bytes(&bytes, &Limits::default())
            .unwrap()
            .verify_and_decode(&Limits::default())
            .unwrap();
        match ev.body {
            EventBody::Publish(m) => m,
            _ => panic!("not a publish"),
        }
    };
    let (m2, m3) = (manifest_of(2), manifest_of(3));
    assert_eq!(get(&format!("{mbase}/api/v1/blobs/{}", m2.db)).0, 404);
    assert_eq!(get(&format!("{mbase}/api/v1/blobs/{}", m2.files_db)).0, 404);
    assert_eq!(get(&format!("{mbase}/api/v1/blobs/{}", m3.db)).0, 200);
    assert_eq!(get(&format!("{}/api/v1/blobs/{}", mesh.base, m2.db)).0, 200);
}

/// Every package listed by generation `g`'s database is in its pinned directory.
fn check_set_pinned_gen(base: &str, pgp: &OpenPgpKey, g: u64) -> Result<(), String> {
    let dir = format!("{base}/{REPO}/gen/{g}/os/{ARCH}");
    let (code, db, _) = get(&format!("{dir}/{REPO}.db"));
    let (code2, sig, _) = get(&format!("{dir}/{REPO}.db.sig"));
    if code != 200 || code2 != 200 {
        return Err(format!("HTTP {code}/{code2}"));
    }
    pgp.verify_detached(&db, &sig).map_err(|e| e.to_string())?;
    let parsed =
        pacmesh_repo::db::Database::from_archives(REPO, &db, None).map_err(|e| e.to_string())?;
    for e in parsed.entries.values() {
        let (code, bytes, _) = get(&format!("{dir}/{}", e.filename));
        if code != 200 || Some(Sha256::digest(&bytes).to_hex()) != e.sha256sum {
            return Err(format!("{}: {code}", e.filename));
        }
    }
    Ok(())
}

// ---- a hostile peer ---------------------------------------------------------------------------

const CORRUPT: u8 = 1;
const FORGE: u8 = 2;

/// An HTTP peer in front of a real node: forwards requests; with `CORRUPT` flips a byte of
/// every blob body, with `FORGE` appends forged `publish` events to sync answers; `throttle`
/// limits blob bodies to that many bytes per second.
struct Hostile {
    base: String,
    mode: Arc<AtomicU8>,
    throttle: Arc<AtomicU64>,
    blob_bytes: Arc<AtomicU64>,
    forged: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    fn start(upstream: &str) -> Hostile {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = Hostile {
            base,
            mode: Arc::new(AtomicU8::new(0)),
            throttle: Arc::new(AtomicU64::new(0)),
            blob_bytes: Arc::new(AtomicU64::new(0)),
            forged: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (mode, throttle, forged, stop, blob_bytes) = (
            h.mode.clone(),
            h.throttle.clone(),
            h.forged.clone(),
            h.stop.clone(),
            h.blob_bytes.clone(),
        );
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(c) = c else { continue };
                let (mode, throttle, forged, upstream, blob_bytes) = (
                    mode.clone(),
                    throttle.clone(),
                    forged.clone(),
                    upstream.clone(),
                    blob_bytes.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(c, &upstream, &mode, &throttle, &forged, &blob_bytes);
                });
            }
        });
        h
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.base.trim_start_matches("http://"));
    }
}

fn serve(
    mut c: TcpStream,
    upstream: &str,
    mode: &AtomicU8,
    throttle: &AtomicU64,
    forged: &Mutex<Vec<Vec<u8>>>,
    blob_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v.trim().to_string()),
            "content-length" => len = v.trim().parse().unwrap_or(0),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let a = agent();
    let url = format!("{upstream}{path}");
    let mut resp = if method == "POST" {
        a.post(&url).send(&body[..])
    } else {
        let mut req = a.get(&url);
        if let Some(rg) = &range {
            req = req.header("range", rg);
        }
        req.call()
    }
    .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let content_range = resp
        .headers()
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut data = resp
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .map_err(std::io::Error::other)?;
    let is_blob = path.starts_with("/api/v1/blobs/") && !path.ends_with("/outboard");
    let m = mode.load(Ordering::SeqCst);
    if is_blob && status < 300 {
        blob_bytes.fetch_add(data.len() as u64, Ordering::SeqCst);
        if m & CORRUPT != 0 && !data.is_empty() {
            let i = data.len() / 2;
            data[i] ^= 0x20;
        }
    }
    if path == "/api/v1/sync" && status == 200 && m & FORGE != 0 {
        let limits = Limits::default();
        let mut sr = SyncResponse::decode(&data, &limits).map_err(std::io::Error::other)?;
        for f in forged.lock().unwrap().iter() {
            sr.events
                .push(Signed::<Event>::from_bytes(f, &limits).unwrap());
        }
        data = sr.encode().unwrap();
    }
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        data.len()
    );
    if let Some(cr) = content_range {
        head.push_str(&format!("content-range: {cr}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes())?;
    let bps = throttle.load(Ordering::SeqCst);
    if is_blob && bps > 0 {
        for chunk in data.chunks(64 << 10) {
            c.write_all(chunk)?;
            std::thread::sleep(Duration::from_secs_f64(chunk.len() as f64 / bps as f64));
        }
    } else {
        c.write_all(&data)?;
    }
    c.flush()
}

/// A `publish` event of `key` at `seq` (an unused slot, so it is judged on its manifest).
fn forged_publish(key: &NodeKey, seq: u64, m: RepoManifest) -> Vec<u8> {
    let author = PublicKey::from(key.signing_key());
    let ev = Event::new(
        author,
        seq,
        (seq > 1).then(|| Hash::new(b"somewhere")),
        Timestamp::now(),
        EventBody::Publish(m),
    );
    Signed::sign(key.signing_key(), &ev).unwrap().to_bytes()
}

fn latest_manifest(base: &str) -> (Hash, RepoManifest) {
    let h = json(&format!("{base}/api/v1/repos/{REPO}/history"));
    let id: Hash = h["generations"][0]["event"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let (_, bytes, _) = get(&format!("{base}/api/v1/events/{id}"));
    let ev = Signed::<Event>::from_bytes(&bytes, &Limits::default())
        .unwrap()
        .verify_and_decode(&Limits::default())
        .unwrap();
    match ev.body {
        EventBody::Publish(m) => (id, m),
        _ => panic!("not a publish"),
    }
}

#[test]
fn hostile_peers_are_refused_and_a_killed_mirror_resumes() {
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    mesh.publish("hello", &[pkg("hello", "1.0-1")], 1);
    let hostile = Hostile::start(&mesh.base);
    hostile.mode.store(CORRUPT | FORGE, Ordering::SeqCst);

    // Forged manifests: by a non-publisher; by the publisher key but with a broken chain
    // (previous names an unknown event; previous names generation 1 for generation 5).
    let (tip_id, tip) = latest_manifest(&mesh.base);
    let node_key = NodeKey::load(&mesh.node_key).unwrap();
    let mut m = tip.clone();
    m.generation = 2;
    m.previous = Some(tip_id);
    m.packages.clear();
    let mut by_stranger = m.clone();
    by_stranger.publisher = PublicKey::from(mesh.stranger.signing_key());
    let mut unknown_prev = m.clone();
    unknown_prev.previous = Some(Hash::new(b"no such event"));
    let mut wrong_gen = m.clone();
    wrong_gen.generation = 5;
    *hostile.forged.lock().unwrap() = vec![
        forged_publish(&mesh.stranger, 1, by_stranger),
        forged_publish(&node_key, 1000, unknown_prev),
        forged_publish(&node_key, 1001, wrong_gen),
    ];

    // The hostile peer is listed first: its bytes are tried first.
    let (mirror, mbase) = mesh.mirror("out", &[&hostile.base, &mesh.base], &[]);
    wait_until(
        "mirror serves generation 1",
        Duration::from_secs(60),
        || mirror_served(&mbase) == Some(1),
    );
    let pgp = mesh.pgp();
    assert_eq!(
        check_set(&mbase, &pgp, true),
        Ok(1),
        "never the corrupt bytes"
    );
    let st = json(&format!("{mbase}/api/v1/status"));
    assert!(
        st["bad_sources"][&hostile.base].as_u64().unwrap_or(0) >= 1,
        "the corrupting peer was caught: {st:#}"
    );
    let rejected = &st["events"]["rejected"];
    assert!(rejected["not_allowed"].as_u64().unwrap_or(0) >= 1, "{st:#}");
    assert!(
        rejected["unknown_previous"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    assert!(
        rejected["broken_manifest_chain"].as_u64().unwrap_or(0) >= 1,
        "{st:#}"
    );
    // A refused manifest changes nothing: still generation 1 after more rounds.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(mirror_served(&mbase), Some(1));
    assert_eq!(st["repos"][0]["latest"], 1);
    drop(mirror);

    // kill -9 mid-sync: a large package comes slowly through the (now honest) peer only.
    hostile.mode.store(0, Ordering::SeqCst);
    hostile.throttle.store(8 << 20, Ordering::SeqCst);
    let mut noise = vec![0u8; 40 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big = pkg("big", "1.0-1").file("usr/share/big/noise", &noise);
    let big_len = big.archive_bytes().len() as u64;
    mesh.publish("big", &[big], 2);
    let (mut mirror, mbase) = mesh.mirror("out", &[&hostile.base], &[]);
    let partial = t.path().join("out-data/partial");
    let segments_done = || mirror_util::segments_done(&partial);
    wait_until("the mirror is mid-fetch", Duration::from_secs(60), || {
        segments_done() >= 3
    });
    mirror.kill9();
    let out = t.path().join("out");
    assert_eq!(
        pacmesh_node::mirror::served_generation(&out, REPO, ARCH),
        Some(1),
        "a killed mirror serves the old generation"
    );
    assert!(!pacmesh_node::mirror::gen_dir(&out, REPO, ARCH, 2).exists());
    assert!(segments_done() >= 3, "partial download kept");
    // Restart, following the node directly: resumes (fetches less than the package).
    hostile.throttle.store(0, Ordering::SeqCst);
    let before = hostile.blob_bytes.load(Ordering::SeqCst);
    let (_mirror, mbase2) = mesh.mirror("out", &[&mesh.base], &[]);
    let _ = mbase;
    wait_until(
        "mirror serves generation 2",
        Duration::from_secs(120),
        || mirror_served(&mbase2) == Some(2),
    );
    let fetched = json(&format!("{mbase2}/api/v1/status"))["bytes_fetched"]
        .as_u64()
        .unwrap();
    assert!(before > 0);
    assert!(
        fetched + (4 << 20) < big_len,
        "resumed: fetched {fetched} of {big_len} after the restart"
    );
    assert_eq!(check_set(&mbase2, &pgp, true), Ok(2));
}

#[test]
fn readers_never_see_a_mismatched_set_while_generations_switch() {
    let t = tempfile::tempdir().unwrap();
    let mesh = Mesh::new(t.path());
    mesh.publish("cycle", &[pkg("cycle", "1-1"), pkg("steady", "1-1")], 1);
    let (_mirror, mbase) = mesh.mirror("out", &[&mesh.base], &["--keep", "3"]);
    wait_until(
        "mirror serves generation 1",
        Duration::from_secs(60),
        || mirror_served(&mbase) == Some(1),
    );
    let pgp = Arc::new(mesh.pgp());
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..6)
        .map(|i| {
            let (b, p, stop) = (mbase.clone(), pgp.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                let mut sets = 0;
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let mode = [Mode::Pinned, Mode::OsPackages, Mode::Pacman][i % 3];
                    match check_set_as(&b, &p, mode, &format!("reader-{i}")) {
                        Ok(g) => {
                            seen.insert(g);
                            sets += 1;
                        }
                        Err(e) => errors.push(e),
                    }
                }
                (seen, sets, errors)
            })
        })
        .collect();
    for v in 2..=6u64 {
        // Each generation replaces `cycle` (its old file leaves the database).
        mesh.publish("cycle", &[pkg("cycle", &format!("{v}-1"))], v);
        wait_until("mirror follows", Duration::from_secs(60), || {
            mirror_served(&mbase) == Some(v)
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let mut all = std::collections::BTreeSet::new();
    let mut total = 0;
    for r in readers {
        let (seen, sets, errors) = r.join().unwrap();
        assert!(errors.is_empty(), "mismatched sets: {errors:#?}");
        all.extend(seen);
        total += sets;
    }
    eprintln!("{total} consistent sets read across generations {all:?}");
    assert!(all.len() >= 4, "readers saw the switches: {all:?}");
}

#[test]
fn mirror_cli_refuses_what_it_cannot_do() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("root.key");
    pacmesh_ok(&["key", "gen", "--out", s(&key)]);
    let policy = t.path().join("policy.cbor");
    pacmesh_ok(&[
        "mesh",
        "init",
        "--key",
        s(&key),
        "--repo",
        REPO,
        "--arch",
        ARCH,
        "--out",
        s(&policy),
    ]);
    let out = t.path().join("out");
    let data = t.path().join("data");
    let base = [
        "mirror",
        "--policy",
        s(&policy),
        "--out",
        s(&out),
        "--data-dir",
        s(&data),
        "--once",
    ];
    // A bootstrap address that is not a multiaddr: a clear error, exit 1.
    let mut args = base.to_vec();
    args.extend(["--bootstrap", "127.0.0.1:4001"]);
    let o = run(Command::new(BIN).args(&args), Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not a multiaddr"),
        "{}",
        show(&o)
    );
    // Nothing to follow.
    let o = run(Command::new(BIN).args(base), Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("nothing to follow"),
        "{}",
        show(&o)
    );
    // Usage errors exit 2.
    let o = run(
        Command::new(BIN).args(["mirror", "--out", "x"]),
        Duration::from_secs(60),
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    // An unreachable peer: --once still exits 0 (nothing published yet), serving nothing.
    let mut args = base.to_vec();
    args.extend(["--follow", "http://127.0.0.1:9"]);
    let o = run(Command::new(BIN).args(&args), Duration::from_secs(60));
    assert!(o.status.success(), "{}", show(&o));
    assert!(!out.join(REPO).exists());
}
