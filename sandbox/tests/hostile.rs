//! Hostile PKGBUILDs (tests/fixtures/hostile-*/) against the host profile.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use pacmesh_sandbox::{Outcome, Phase};

/// Copy a fixture into `tmp/name`, replacing `@KEY@` placeholders.
fn fixture_with(tmp: &Path, name: &str, subst: &[(&str, String)]) -> PathBuf {
    let dst = tmp.join(name);
    std::fs::create_dir_all(&dst).unwrap();
    let mut text = std::fs::read_to_string(fixture(name).join("PKGBUILD")).unwrap();
    for (k, v) in subst {
        text = text.replace(&format!("@{k}@"), v);
    }
    std::fs::write(dst.join("PKGBUILD"), text).unwrap();
    dst
}

fn live_processes_named(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_string_lossy().parse::<u32>().is_err() {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                v.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    v
}

#[test]
fn cannot_read_secrets() {
    if !sandbox_ready("cannot_read_secrets") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let node = t.path().join("node-data");
    std::fs::create_dir_all(&node).unwrap();
    let secret = node.join("node.key");
    std::fs::write(&secret, "PACMESH-TOP-SECRET-KEY-MATERIAL\n").unwrap();
    let dir = fixture_with(
        t.path(),
        "hostile-read",
        &[
            ("SECRET", secret.display().to_string()),
            ("SECRETDIR", node.display().to_string()),
        ],
    );
    let r = build(&config(t.path()), &dir);
    assert_success(&r);
    assert!(
        !r.log.contains("PACMESH-TOP-SECRET"),
        "secret leaked into the log:\n{}",
        r.log
    );
    let probes: Vec<&str> = r.log.lines().filter(|l| l.starts_with("PROBE-")).collect();
    assert!(probes.len() >= 19, "probes did not run:\n{}", r.log);
    let readable: Vec<&&str> = probes
        .iter()
        .filter(|l| l.starts_with("PROBE-READABLE"))
        .collect();
    assert!(
        readable.is_empty(),
        "readable from the sandbox: {readable:?}\n{}",
        r.log
    );
}

#[test]
fn cannot_write_outside_the_build_dir() {
    if !sandbox_ready("cannot_write_outside_the_build_dir") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let cfg = config(t.path());
    let dir = fixture_with(
        t.path(),
        "hostile-write",
        &[
            ("OUTSIDE", outside.display().to_string()),
            ("CACHE", cfg.source_cache.display().to_string()),
        ],
    );
    let r = build(&cfg, &dir);
    assert_success(&r);
    let wrote: Vec<&str> = r.log.lines().filter(|l| l.starts_with("WROTE")).collect();
    assert!(
        wrote.is_empty(),
        "wrote outside the build dir: {wrote:?}\n{}",
        r.log
    );
    assert_eq!(
        r.log.lines().filter(|l| l.starts_with("DENIED")).count(),
        14,
        "{}",
        r.log
    );
    for p in [
        "/usr/pacmesh-pwned",
        "/usr/bin/pacmesh-pwned",
        "/etc/pacmesh-pwned",
        "/opt/pacmesh-pwned",
    ] {
        assert!(!Path::new(p).exists(), "{p} exists on the host");
    }
    assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
    assert!(!cfg.source_cache.join("pwned").exists());
    assert!(!t.path().join("pwned").exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "the PKGBUILD folder was written to"
    );
}

#[test]
fn cannot_open_tcp_connections() {
    if !sandbox_ready("cannot_open_tcp_connections") {
        return;
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // Sanity: the probe does connect when not sandboxed.
    let ok = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
        .status()
        .unwrap();
    assert!(ok.success());
    let (_c, _) = listener.accept().expect("the unsandboxed probe connected");

    let t = tempfile::tempdir().unwrap();
    let dir = fixture_with(t.path(), "hostile-net", &[("PORT", port.to_string())]);
    let r = build(&config(t.path()), &dir);
    assert_success(&r);
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!(
            "the sandbox reached the host listener: {other:?}\n{}",
            r.log
        ),
    }
    assert!(!r.log.contains("NET-CONNECTED"), "{}", r.log);
    for what in ["sourcing", "build", "package"] {
        assert!(
            r.log.contains(&format!("NET-BLOCKED {what}")),
            "probe {what} did not run:\n{}",
            r.log
        );
    }
}

#[test]
fn no_process_survives_the_build() {
    if !sandbox_ready("no_process_survives_the_build") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = build(&config(t.path()), &fixture("hostile-fork"));
    assert_success(&r);
    assert!(r.log.contains("forked"));
    std::thread::sleep(Duration::from_millis(200));
    let left = live_processes_named("pacmesh-hostile-orphan");
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn timeout_kills_the_build_within_the_grace_period() {
    if !sandbox_ready("timeout_kills_the_build_within_the_grace_period") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut cfg = config(t.path());
    // Long enough for phase 1 and makepkg's start-up on a loaded 2-core machine.
    cfg.timeout = Duration::from_secs(12);
    cfg.grace = Duration::from_secs(2);
    let start = Instant::now();
    let r = build(&cfg, &fixture("hostile-timeout"));
    let el = start.elapsed();
    assert_eq!(r.outcome, Outcome::TimedOut, "{}", r.log);
    assert_eq!(r.failed_phase, Some(Phase::Build));
    assert!(
        el < cfg.timeout + cfg.grace + Duration::from_secs(2),
        "took {el:?}"
    );
    assert!(r.log.contains("sleeping forever"));
    assert!(
        r.error.as_deref().unwrap().contains("timeout"),
        "{:?}",
        r.error
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(live_processes_named("pacmesh-hostile-timeout-sleep").is_empty());
}

#[test]
fn endless_output_is_capped() {
    if !sandbox_ready("endless_output_is_capped") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let mut cfg = config(t.path());
    cfg.timeout = Duration::from_secs(12);
    cfg.grace = Duration::from_secs(1);
    cfg.log_cap = 256 * 1024;
    let mut streamed = 0usize;
    let b = pacmesh_sandbox::Builder::new(cfg.clone());
    let r = b.build(&fixture("hostile-flood"), &mut |l| streamed += l.len() + 1);
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.log_truncated);
    assert!(
        r.log
            .contains("[pacmesh: log truncated after 262144 bytes]")
    );
    assert!(
        r.log.len() < cfg.log_cap + 4096,
        "log is {} bytes",
        r.log.len()
    );
    assert!(streamed < cfg.log_cap + 4096);
    // The child was drained, not blocked: far more than the cap was produced.
    let discarded: u64 = r
        .log
        .lines()
        .find_map(|l| {
            l.strip_prefix("[pacmesh: ")?
                .strip_suffix(" more bytes of output discarded]")?
                .parse()
                .ok()
        })
        .expect("discard count");
    assert!(
        discarded > 10 * cfg.log_cap as u64,
        "only {discarded} bytes discarded"
    );
}

#[test]
fn syntax_error_fails_in_the_srcinfo_phase_with_the_log_tail() {
    if !sandbox_ready("syntax_error_fails_in_the_srcinfo_phase_with_the_log_tail") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = build(&config(t.path()), &fixture("hostile-syntax"));
    assert!(
        matches!(r.outcome, Outcome::Failed { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.failed_phase, Some(Phase::Srcinfo));
    assert!(r.error.as_deref().unwrap().contains("printsrcinfo"));
    let tail = r.log_tail(6);
    assert!(tail.contains("syntax error"), "tail: {tail}");
    assert!(r.artifacts.is_empty());
}

#[test]
fn failing_build_function_fails_with_the_log_tail() {
    if !sandbox_ready("failing_build_function_fails_with_the_log_tail") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let r = build(&config(t.path()), &fixture("hostile-fail"));
    assert!(
        matches!(r.outcome, Outcome::Failed { .. }),
        "{:?}",
        r.outcome
    );
    assert_eq!(r.failed_phase, Some(Phase::Build));
    let tail = r.log_tail(8);
    assert!(
        tail.contains("configure: error: the answer is not 42"),
        "tail: {tail}"
    );
    assert!(
        tail.contains("A failure occurred in build()"),
        "tail: {tail}"
    );
    assert!(r.artifacts.is_empty());
    // Nothing worth keeping: the work dir is gone.
    assert!(!r.work_dir.exists());
}

#[test]
fn root_node_can_start_the_sandbox_as_an_unprivileged_host_uid() {
    if unsafe { libc_geteuid() } != 0 {
        eprintln!(
            "SKIP root_node_can_start_the_sandbox_as_an_unprivileged_host_uid: not running as root"
        );
        return;
    }
    if !sandbox_ready("root_node_can_start_the_sandbox_as_an_unprivileged_host_uid") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let t = tempfile::tempdir().unwrap();
    // The build uid must be able to traverse to the work dir.
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let node = t.path().join("node-data");
    std::fs::create_dir_all(&node).unwrap();
    let secret = node.join("node.key");
    std::fs::write(&secret, "PACMESH-TOP-SECRET-KEY-MATERIAL\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = config(t.path());
    cfg.run_as = Some((61234, 61234));

    let dir = fixture_with(
        t.path(),
        "hostile-read",
        &[
            ("SECRET", secret.display().to_string()),
            ("SECRETDIR", node.display().to_string()),
        ],
    );
    let r = build(&cfg, &dir);
    assert_success(&r);
    assert!(!r.log.contains("PROBE-READABLE"), "{}", r.log);
    assert_eq!(
        std::fs::metadata(&r.artifacts[0].path).unwrap().uid(),
        61234
    );

    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let dir = fixture_with(
        t.path(),
        "hostile-write",
        &[
            ("OUTSIDE", outside.display().to_string()),
            ("CACHE", cfg.source_cache.display().to_string()),
        ],
    );
    let r = build(&cfg, &dir);
    assert_success(&r);
    assert!(!r.log.contains("WROTE"), "{}", r.log);

    let r = build(&cfg, &examples().join("pacmesh-split"));
    assert_success(&r);
    assert_eq!(r.artifacts.len(), 2);
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
