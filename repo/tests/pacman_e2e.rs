//! End to end: real pacman installs a package from a pacmesh-signed repository served over HTTP
//! on 127.0.0.1, with `SigLevel = Required DatabaseRequired`, trusting only the OpenPGP key
//! derived from a node's ed25519 seed (`pacman-key --add` + `--lsign-key`).
//!
//! Negative cases, each against a fresh pacman root:
//! - a package changed by one byte after it was signed is refused;
//! - a database whose `.sig` was made by another (derived) key is refused;
//! - a database without any `.sig` is refused.
//!
//! Needs root (pacman insists on it even with `--root`), pacman, pacman-key, gpg and repo-add;
//! otherwise the test prints a notice and passes without checking anything.
//!
//! The package is written by hand (tar + zstd). Databases are written by pacmesh's own writer
//! (`pacmesh_repo::db::repo_add`, signing through `DetachedSigner`), and once by the shell
//! `repo-add` with signatures from `pacmesh_repo::sign`, which proves the OpenPGP part
//! independently of the database writer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pacmesh_repo::db::{AddOptions, DetachedSigner, repo_add};
use pacmesh_repo::sign::{self, OpenPgpKey};

const SEED_PUBLISHER: [u8; 32] = *b"pacmesh e2e publisher seed 32 b!";
const SEED_OTHER: [u8; 32] = *b"pacmesh e2e someone else seed 32";
const PKGNAME: &str = "pacmesh-hello";
const PKGFILE: &str = "pacmesh-hello-1.0-1-any.pkg.tar.zst";
const HELLO: &[u8] = b"hello from pacmesh\n";

// ---------------------------------------------------------------------------------------------
// child processes with deadlines

fn have(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Clean environment for tools: no proxies (the repo is on 127.0.0.1), C locale.
fn tool(program: &str) -> Command {
    let mut c = Command::new(program);
    for var in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "GNUPGHOME",
    ] {
        c.env_remove(var);
    }
    c.env("no_proxy", "*").env("LC_ALL", "C").env("LANG", "C");
    c
}

fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {desc}: {e}"));
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
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
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
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

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn check(o: Output, what: &str) -> Output {
    assert!(o.status.success(), "{what} failed: {}", text(&o));
    o
}

// ---------------------------------------------------------------------------------------------
// a static file server over std::net (GET and HEAD only)

struct Server {
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

fn serve(root: PathBuf) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let root = root.clone();
            let log = log2.clone();
            std::thread::spawn(move || {
                let _ = handle(stream, &root, &log);
            });
        }
    });
    Server { port, log }
}

fn handle(stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    let file = if path.starts_with('/') && !path.split('/').any(|c| c == "..") {
        Some(root.join(path.trim_start_matches('/')))
    } else {
        None
    };
    let body = file
        .filter(|f| f.is_file())
        .and_then(|f| std::fs::read(f).ok());
    let mut stream = stream;
    let status = match (&body, method) {
        (_, m) if m != "GET" && m != "HEAD" => {
            stream.write_all(
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            405
        }
        (Some(body), _) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            if method == "GET" {
                stream.write_all(body)?;
            }
            200
        }
        (None, _) => {
            stream.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )?;
            404
        }
    };
    stream.flush()?;
    log.lock()
        .unwrap()
        .push(format!("{method} {path} {status}"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// a minimal package

fn pkginfo(size: usize) -> String {
    format!(
        "# Generated by the pacmesh e2e test\n\
         pkgname = {PKGNAME}\n\
         pkgbase = {PKGNAME}\n\
         pkgver = 1.0-1\n\
         pkgdesc = pacmesh signing end-to-end test package\n\
         url = https://example.invalid/pacmesh\n\
         builddate = 1700000000\n\
         packager = pacmesh test <test@pacmesh.invalid>\n\
         size = {size}\n\
         arch = any\n\
         license = MIT\n"
    )
}

/// A `.pkg.tar.zst` with `.PKGINFO` and `usr/share/pacmesh-test/hello` (content `hello`).
fn make_package(hello: &[u8]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], dir: bool| {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        if dir {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
        }
        h.set_path(path).unwrap();
        h.set_cksum();
        tar.append(&h, data).unwrap();
    };
    add(".PKGINFO", pkginfo(hello.len()).as_bytes(), false);
    add("usr/", b"", true);
    add("usr/share/", b"", true);
    add("usr/share/pacmesh-test/", b"", true);
    add("usr/share/pacmesh-test/hello", hello, false);
    let raw = tar.into_inner().unwrap();
    zstd::encode_all(&raw[..], 19).unwrap()
}

// ---------------------------------------------------------------------------------------------
// repositories

/// Which tool writes the repository database.
#[derive(Clone, Copy)]
enum Writer {
    /// `pacmesh_repo::db::repo_add` (signs the database, and the package when it has no `.sig`).
    Pacmesh,
    /// The shell `repo-add`, with the database signed afterwards by `pacmesh_repo::sign`.
    RepoAdd,
}

/// Write `dir/PKGFILE`; with `pkg_sig = Some((signed_bytes, key))` also `PKGFILE.sig` made by
/// `key` over `signed_bytes` (which may differ from `pkg`: "changed after signing"). Then write
/// the database `pacmesh` with `writer`, signed by `db_signer` (no `.sig` when `None`). Both
/// writers embed the package signature as `%PGPSIG%`.
fn make_repo(
    writer: Writer,
    dir: &Path,
    pkg: &[u8],
    pkg_sig: Option<(&[u8], &OpenPgpKey)>,
    db_signer: Option<&OpenPgpKey>,
) {
    std::fs::create_dir_all(dir).unwrap();
    let pkg_path = dir.join(PKGFILE);
    std::fs::write(&pkg_path, pkg).unwrap();
    if let Some((signed, key)) = pkg_sig {
        std::fs::write(
            dir.join(format!("{PKGFILE}.sig")),
            key.sign_detached(signed).unwrap(),
        )
        .unwrap();
    }
    match writer {
        Writer::Pacmesh => {
            let mut opts = AddOptions::default();
            opts.sign_packages = true;
            let signer = db_signer.map(|k| k as &dyn DetachedSigner);
            let report = repo_add(&dir.join("pacmesh.db.tar.zst"), &[&pkg_path], &opts, signer)
                .expect("pacmesh repo_add");
            assert!(report.written.is_some());
        }
        Writer::RepoAdd => {
            let o = run(
                tool("repo-add")
                    .arg("--quiet")
                    .arg(dir.join("pacmesh.db.tar.gz"))
                    .arg(&pkg_path),
                Duration::from_secs(120),
            );
            check(o, "repo-add");
            let db = std::fs::read(dir.join("pacmesh.db")).expect("repo-add made pacmesh.db");
            if let Some(signer) = db_signer {
                let sig = signer.sign_detached(&db).unwrap();
                std::fs::write(dir.join("pacmesh.db.sig"), &sig).unwrap();
                std::fs::write(dir.join("pacmesh.db.tar.gz.sig"), &sig).unwrap();
            }
        }
    }
    assert!(std::fs::read(dir.join(format!("{PKGFILE}.sig"))).is_ok() || pkg_sig.is_none());
}

struct Env {
    tmp: PathBuf,
    gpgdir: PathBuf,
    port: u16,
}

impl Env {
    fn config(&self, name: &str, repo_path: &str) -> PathBuf {
        let conf = self.tmp.join(format!("pacman-{name}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[options]\n\
                 Architecture = auto\n\
                 SigLevel = Required DatabaseRequired\n\
                 LocalFileSigLevel = Required\n\
                 \n\
                 [pacmesh]\n\
                 Server = http://127.0.0.1:{}/{repo_path}\n",
                self.port
            ),
        )
        .unwrap();
        conf
    }

    fn pacman_key(&self, conf: &Path, args: &[&str], timeout: Duration) -> Output {
        run(
            tool("pacman-key")
                .arg("--gpgdir")
                .arg(&self.gpgdir)
                .arg("--config")
                .arg(conf)
                .args(args),
            timeout,
        )
    }

    /// `pacman -Sy PKGNAME` into a fresh root; returns the root and pacman's output.
    fn install(&self, name: &str, repo_path: &str) -> (PathBuf, Output) {
        let conf = self.config(name, repo_path);
        let root = self.tmp.join(format!("root-{name}"));
        for d in [
            "var/lib/pacman/sync",
            "var/cache/pacman/pkg",
            "var/log",
            "etc/pacman.d/hooks",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let o = run(
            tool("pacman")
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
                .arg(&self.gpgdir)
                .arg("--config")
                .arg(&conf)
                .args([
                    "--noconfirm",
                    "--noprogressbar",
                    "--noscriptlet",
                    "--disable-download-timeout",
                    "-Sy",
                    PKGNAME,
                ]),
            Duration::from_secs(180),
        );
        // Shown with --nocapture, and on failure.
        eprintln!("=== pacman -Sy, case {name}:\n{}", text(&o));
        (root, o)
    }
}

struct KillAgents(PathBuf);

impl Drop for KillAgents {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&self.0)
            .args(["--kill", "all"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn pacman_installs_from_signed_pacmesh_repo() {
    for (t, arg) in [
        ("pacman", "--version"),
        ("pacman-key", "--version"),
        ("gpg", "--version"),
        ("repo-add", "--version"),
    ] {
        if !have(t, arg) {
            eprintln!("NOTICE: {t} not available; skipping the pacman end-to-end test");
            return;
        }
    }
    if !is_root() {
        eprintln!("NOTICE: not root; pacman needs root even with --root; skipping");
        return;
    }

    let tmp = tempfile::Builder::new().prefix("pme2e").tempdir().unwrap();
    let publisher =
        OpenPgpKey::from_ed25519_secret(&SEED_PUBLISHER, &sign::default_uid("e2e-publisher"))
            .unwrap();
    let other =
        OpenPgpKey::from_ed25519_secret(&SEED_OTHER, &sign::default_uid("e2e-other")).unwrap();

    // Repositories under srv/:
    //   good          pacmesh database writer, database and package signed by the publisher
    //   good-repo-add shell repo-add, signatures by pacmesh_repo::sign (the OpenPGP part alone)
    //   bad-pkg       package changed by one byte after it was signed
    //   bad-db        database signed by another derived key
    //   no-sig        database without a signature
    let srv = tmp.path().join("srv");
    let pkg = make_package(HELLO);
    let mut hello_tampered = HELLO.to_vec();
    hello_tampered[0] ^= 0x01; // "iello": one byte changed
    let tampered_pkg = make_package(&hello_tampered);
    assert_eq!(pkg.len(), tampered_pkg.len());
    use Writer::{Pacmesh, RepoAdd};
    make_repo(Pacmesh, &srv.join("good"), &pkg, None, Some(&publisher));
    make_repo(
        RepoAdd,
        &srv.join("good-repo-add"),
        &pkg,
        Some((&pkg, &publisher)),
        Some(&publisher),
    );
    make_repo(
        Pacmesh,
        &srv.join("bad-pkg"),
        &tampered_pkg,
        Some((&pkg, &publisher)),
        Some(&publisher),
    );
    make_repo(
        Pacmesh,
        &srv.join("bad-db"),
        &pkg,
        Some((&pkg, &publisher)),
        Some(&other),
    );
    make_repo(
        Pacmesh,
        &srv.join("no-sig"),
        &pkg,
        Some((&pkg, &publisher)),
        None,
    );
    // Our own verifier agrees with what pacman is about to be told.
    let public = publisher.public_key_bytes();
    let read = |p: &str| std::fs::read(srv.join(p)).unwrap();
    sign::verify_detached(
        &public,
        &read("good/pacmesh.db"),
        &read("good/pacmesh.db.sig"),
    )
    .unwrap();
    sign::verify_detached(
        &public,
        &read("good/pacmesh.files"),
        &read("good/pacmesh.files.sig"),
    )
    .unwrap();
    sign::verify_detached(&public, &pkg, &read(&format!("good/{PKGFILE}.sig"))).unwrap();
    assert!(
        sign::verify_detached(
            &public,
            &tampered_pkg,
            &read(&format!("bad-pkg/{PKGFILE}.sig"))
        )
        .is_err()
    );
    assert!(
        sign::verify_detached(
            &public,
            &read("bad-db/pacmesh.db"),
            &read("bad-db/pacmesh.db.sig")
        )
        .is_err()
    );
    assert!(!srv.join("no-sig/pacmesh.db.sig").exists());

    let server = serve(srv.clone());
    let env = Env {
        tmp: tmp.path().to_path_buf(),
        gpgdir: tmp.path().join("gnupg"),
        port: server.port,
    };
    let _agents = KillAgents(env.gpgdir.clone());

    // Keyring: init, add the derived key, locally sign it.
    let conf = env.config("keyring", "good");
    check(
        env.pacman_key(&conf, &["--init"], Duration::from_secs(600)),
        "pacman-key --init",
    );
    let asc = tmp.path().join("publisher.asc");
    std::fs::write(&asc, publisher.public_key_armored()).unwrap();
    check(
        env.pacman_key(
            &conf,
            &["--add", asc.to_str().unwrap()],
            Duration::from_secs(120),
        ),
        "pacman-key --add",
    );
    check(
        env.pacman_key(
            &conf,
            &["--lsign-key", &publisher.fingerprint()],
            Duration::from_secs(120),
        ),
        "pacman-key --lsign-key",
    );
    let o = check(
        env.pacman_key(
            &conf,
            &["--list-keys", &publisher.fingerprint()],
            Duration::from_secs(60),
        ),
        "pacman-key --list-keys",
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(&publisher.fingerprint()),
        "{}",
        text(&o)
    );

    // 1. The good repositories: database and package signatures verify, the file is installed.
    for case in ["good", "good-repo-add"] {
        let (root, o) = env.install(case, case);
        assert!(
            o.status.success(),
            "pacman refused the {case} repo: {}\nserver log: {:?}",
            text(&o),
            server.log.lock().unwrap()
        );
        let installed = root.join("usr/share/pacmesh-test/hello");
        assert_eq!(std::fs::read(&installed).unwrap(), HELLO, "{}", text(&o));
        assert!(
            root.join("var/lib/pacman/local")
                .read_dir()
                .unwrap()
                .any(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("pacmesh-hello-1.0-1")
                })
        );
    }

    // 2. Package changed by one byte after signing (the database lists the changed package's
    //    checksums, so only the OpenPGP signature can catch it).
    let (root, o) = env.install("bad-pkg", "bad-pkg");
    assert!(
        !o.status.success(),
        "pacman accepted a tampered package: {}",
        text(&o)
    );
    assert!(!root.join("usr/share/pacmesh-test/hello").exists());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains(&format!(
            "signature from \"{}\" is invalid",
            publisher.uid()
        )) && msg.contains("(PGP signature)"),
        "refused, but not for the package signature: {}",
        text(&o)
    );

    // 3. Database signed by another key, unknown to the keyring (pacman offers to import it,
    //    cannot fetch it offline, and fails the sync).
    let (root, o) = env.install("bad-db", "bad-db");
    assert!(
        !o.status.success(),
        "pacman accepted a foreign db signature: {}",
        text(&o)
    );
    assert!(!root.join("usr/share/pacmesh-test/hello").exists());
    let msg = String::from_utf8_lossy(&o.stderr);
    assert!(
        msg.contains(&other.fingerprint()) && msg.contains("database (PGP signature)"),
        "refused, but not for the database signature: {}",
        text(&o)
    );

    // 4. Database without a signature (DatabaseRequired).
    let (root, o) = env.install("no-sig", "no-sig");
    assert!(
        !o.status.success(),
        "pacman accepted an unsigned db: {}",
        text(&o)
    );
    assert!(!root.join("usr/share/pacmesh-test/hello").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pacmesh.db.sig"),
        "{}",
        text(&o)
    );

    // 5. The other key is in the keyring but not locally signed: its database signature is of
    //    unknown trust and still refused. (Last: it changes the shared keyring.)
    let other_asc = tmp.path().join("other.asc");
    std::fs::write(&other_asc, other.public_key_armored()).unwrap();
    check(
        env.pacman_key(
            &conf,
            &["--add", other_asc.to_str().unwrap()],
            Duration::from_secs(120),
        ),
        "pacman-key --add (other)",
    );
    let (root, o) = env.install("bad-db-known", "bad-db");
    assert!(
        !o.status.success(),
        "pacman accepted a db signed by an untrusted key: {}",
        text(&o)
    );
    assert!(!root.join("usr/share/pacmesh-test/hello").exists());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown trust"),
        "refused, but not for trust: {}",
        text(&o)
    );
}
