//! Helpers shared by the repo integration tests: tool detection and building
//! the example PKGBUILDs with makepkg inside bubblewrap.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Is `tool` on PATH (or an absolute path that exists)?
pub fn have(tool: &str) -> bool {
    if tool.starts_with('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Print a skip notice and return false when one of `tools` is missing.
pub fn require(test: &str, tools: &[&str]) -> bool {
    for t in tools {
        if !have(t) {
            eprintln!("SKIPPED {test}: `{t}` is not installed");
            return false;
        }
    }
    true
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Build the three example PKGBUILDs once per test binary (in a temp dir kept
/// for the process lifetime). `None` if bwrap/makepkg are missing or the build
/// fails (with a printed notice).
pub fn real_packages() -> Option<&'static [PathBuf]> {
    static PKGS: OnceLock<Option<(tempfile::TempDir, Vec<PathBuf>)>> = OnceLock::new();
    PKGS.get_or_init(|| {
        if !require(
            "real package build",
            &["bwrap", "makepkg", "fakeroot", "bsdtar"],
        ) {
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = workspace_root().join("examples/packages");
        let mut out = Vec::new();
        let mut names: Vec<_> = std::fs::read_dir(&src)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for d in names {
            if !d.join("PKGBUILD").exists() {
                continue;
            }
            let copy = tmp.path().join(d.file_name().unwrap());
            let st = Command::new("cp")
                .arg("-r")
                .arg(&d)
                .arg(&copy)
                .status()
                .ok()?;
            assert!(st.success());
            Command::new("chmod")
                .arg("-R")
                .arg("a+rwX")
                .arg(tmp.path())
                .status()
                .ok()?;
            let output = bwrap_in(
                &copy,
                &[
                    "env",
                    "PKGEXT=.pkg.tar.zst",
                    "SOURCE_DATE_EPOCH=1700000000",
                    "makepkg",
                    "--nodeps",
                ],
            )
            .output()
            .ok()?;
            if !output.status.success() {
                eprintln!(
                    "SKIPPED real packages: makepkg failed in {}:\n{}",
                    d.display(),
                    String::from_utf8_lossy(&output.stderr)
                );
                return None;
            }
            for f in std::fs::read_dir(&copy).ok()?.flatten() {
                let p = f.path();
                if p.to_string_lossy().ends_with(".pkg.tar.zst") {
                    out.push(p);
                }
            }
        }
        out.sort();
        Some((tmp, out))
    })
    .as_ref()
    .map(|(_, v)| v.as_slice())
}

/// Run a command, panic with its stderr on failure, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Extract every member of a (compressed) tar with bsdtar into a map
/// path → contents (directories map to None).
pub fn tar_members(path: &Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let bytes = std::fs::read(path).unwrap();
    let comp = pacmesh_repo::package::Compression::detect(&bytes);
    let mut map = std::collections::BTreeMap::new();
    let Some(comp) = comp else {
        return map;
    };
    let dec = comp.decoder(&bytes[..]).unwrap();
    let mut ar = tar::Archive::new(dec);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let p = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        if e.header().entry_type().is_dir() {
            map.insert(p, None);
        } else {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            map.insert(p, Some(v));
        }
    }
    map
}

/// `bwrap` running `cmd` as uid 1000 in `dir` (bound at `/build`), offline, with the host's
/// `/usr` and `/etc` read-only: how the tests run makepkg as root's unprivileged stand-in.
pub fn bwrap_in(dir: &Path, cmd: &[&str]) -> Command {
    let mut c = Command::new("bwrap");
    c.args(["--unshare-all", "--uid", "1000", "--gid", "1000"])
        .args(["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"])
        .args([
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/lib",
            "/lib",
        ])
        .args(["--symlink", "usr/lib64", "/lib64"])
        .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"])
        .arg("--bind")
        .arg(dir)
        .arg("/build")
        .args(["--chdir", "/build", "--setenv", "HOME", "/tmp"])
        .args(cmd);
    c
}

/// Files of `dir` whose extension is `ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// Compare `actual` with the snapshot file, or write it when `UPDATE_SNAPSHOTS` is set.
pub fn check_snapshot(path: &Path, actual: &str, failures: &mut Vec<String>) {
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    match std::fs::read_to_string(path) {
        Ok(expected) if expected == actual => {}
        Ok(expected) => failures.push(format!(
            "{}: snapshot differs\n--- expected\n{expected}\n--- actual\n{actual}",
            path.display()
        )),
        Err(_) => failures.push(format!(
            "{}: no snapshot (run with UPDATE_SNAPSHOTS=1)\n{actual}",
            path.display()
        )),
    }
}
