//! A person's view: headless Chromium (Debian's `chromium`) loads the status page of a running
//! node, sees a building entry, opens its live log and sees lines appear while the PKGBUILD
//! prints one per second. Screenshots are kept in `target/browser-test/` (`status.png`,
//! `log.png`).
//!
//! The driver is `tests/browser/driver.js` on `playwright-core` (installed with npm into
//! `target/browser-test/` on first run). Skips with a notice when chromium, node or npm are
//! missing; `.ci/prereqs` installs them.

#[path = "common/ops_proc.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const PLAYWRIGHT: &str = "playwright-core@1.65.1";

/// `target/` of this build (the test binary lives in `target/debug/deps/`).
fn target_dir() -> PathBuf {
    if let Ok(t) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(t);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

#[test]
fn status_page_and_live_log_in_chromium() {
    let chromium = std::env::var("PACMESH_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !std::path::Path::new(&chromium).exists() {
        eprintln!(
            "SKIPPED: no chromium at {chromium} (Debian: apt-get install chromium; .ci/prereqs does)"
        );
        return;
    }
    if !have("node") || !have("npm") {
        eprintln!(
            "SKIPPED: node and npm are needed for the browser driver (.ci/prereqs installs them)"
        );
        return;
    }
    if !can_build() {
        return;
    }
    let out = target_dir().join("browser-test");
    std::fs::create_dir_all(&out).unwrap();
    if !out.join("node_modules/playwright-core").is_dir() {
        let o = Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&out)
            .arg(PLAYWRIGHT)
            .output()
            .expect("run npm");
        assert!(
            o.status.success(),
            "npm install {PLAYWRIGHT} failed:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let driver = out.join("driver.js");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/driver.js"),
        &driver,
    )
    .unwrap();

    let mesh = Mesh::new(120);
    let node = NodeProc::start(&["--config", mesh.config("n1", "").to_str().unwrap()]);
    let dir = mesh.pkgbuild(
        "ops-ticker",
        "  for i in $(seq 1 60); do echo \"tick $i\"; sleep 1; done",
    );
    let id = mesh.enqueue(&node.base, &dir);
    node.wait_building(&id, Duration::from_secs(60));

    let o = Command::new("node")
        .arg(&driver)
        .args([&node.base, &id])
        .arg(&out)
        .env("PACMESH_CHROMIUM", &chromium)
        .env("no_proxy", "*")
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "browser driver failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    eprintln!("browser saw: {seen}");
    assert!(seen["later"].as_u64() >= Some(seen["first"].as_u64().unwrap() + 2));
    assert!(seen["note"].as_str().unwrap().starts_with("live"), "{seen}");
    for shot in ["status.png", "log.png"] {
        let p = out.join(shot);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "screenshot {} missing or empty", p.display());
        eprintln!("screenshot: {}", p.display());
    }
}
