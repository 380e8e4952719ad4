//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use pacmesh_sandbox::{BuildConfig, BuildResult, Builder};

/// True when bwrap, user namespaces and makepkg work; prints a SKIP notice otherwise.
pub fn sandbox_ready(test: &str) -> bool {
    match pacmesh_sandbox::preflight() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIP {test}: {e}");
            false
        }
    }
}

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn examples() -> PathBuf {
    manifest_dir().join("../examples/packages")
}

pub fn fixture(name: &str) -> PathBuf {
    manifest_dir().join("tests/fixtures").join(name)
}

/// A config for tests: work dirs and source cache under `tmp`.
pub fn config(tmp: &Path) -> BuildConfig {
    let mut c = BuildConfig::new(tmp.join("work"), tmp.join("sources"));
    c.timeout = Duration::from_secs(120);
    c.grace = Duration::from_secs(2);
    c.source_date_epoch = 1_700_000_000;
    c.packager = "pacmesh test node <test@pacmesh.invalid>".into();
    c
}

/// Build and print the log if the outcome is not what the test expects.
pub fn build(cfg: &BuildConfig, dir: &Path) -> BuildResult {
    let b = Builder::new(cfg.clone());
    b.build(dir, &mut |_| {})
}

pub fn assert_success(r: &BuildResult) {
    assert!(
        r.outcome.is_success(),
        "build failed: {:?} {:?}\n--- log ---\n{}",
        r.outcome,
        r.error,
        r.log
    );
}
