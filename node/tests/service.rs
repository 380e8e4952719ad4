//! The systemd units in `examples/` pass `systemd-analyze verify` (with `ExecStart` pointed at
//! the binary under test, since `/usr/bin/pacmesh` need not exist here) with no warning at all:
//! an unknown or misspelt directive is only a warning to systemd, and counts as a failure here.
//! Skips with a notice when systemd-analyze is missing.

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pacmesh");

fn verify(unit: &str) -> (bool, String) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(unit);
    let text = std::fs::read_to_string(&src).unwrap();
    assert!(text.contains("ExecStart=/usr/bin/pacmesh "), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(unit);
    std::fs::write(&path, text.replace("/usr/bin/pacmesh", BIN)).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("run systemd-analyze");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success() && out.trim().is_empty(), out)
}

fn have_systemd_analyze() -> bool {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: systemd-analyze is not installed (Debian: systemd)");
    }
    ok
}

#[test]
fn node_and_mirror_units_verify_cleanly() {
    if !have_systemd_analyze() {
        return;
    }
    for unit in ["pacmesh-node.service", "pacmesh-mirror.service"] {
        let (ok, out) = verify(unit);
        assert!(ok, "systemd-analyze verify {unit}:\n{out}");
    }
}

#[test]
fn a_misspelt_directive_is_caught() {
    if !have_systemd_analyze() {
        return;
    }
    // The check above can fail: the same verification of a unit with a typo does.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("typo.service");
    std::fs::write(
        &p,
        format!("[Service]\nExecStart={BIN} --version\nProtectSytem=strict\n"),
    )
    .unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("ProtectSytem"));
}

#[test]
fn the_node_unit_keeps_what_bubblewrap_needs() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/pacmesh-node.service"),
    )
    .unwrap();
    let directives: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    // Each of these breaks unprivileged bwrap (user namespaces, a fresh /proc, --hostname).
    for bad in [
        "PrivateUsers",
        "RestrictNamespaces",
        "ProtectKernelTunables",
        "ProtectKernelLogs",
        "ProtectProc",
        "ProcSubset",
        "ProtectHostname",
        "MemoryDenyWriteExecute",
    ] {
        assert!(!directives.contains(&bad), "{bad} would break the sandbox");
    }
    for good in [
        "DynamicUser",
        "StateDirectory",
        "ExecReload",
        "TimeoutStopSec",
    ] {
        assert!(directives.contains(&good), "{good} missing");
    }
}
