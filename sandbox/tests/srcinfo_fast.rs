//! Phase 1's fast path (makepkg's own srcinfo functions without the lint
//! pass) must print exactly what `makepkg --printsrcinfo` prints.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use common::*;
use pacmesh_sandbox::Builder;

fn compare(dirs: Vec<PathBuf>) {
    let t = tempfile::tempdir().unwrap();
    let mut fast_cfg = config(t.path());
    fast_cfg.fast_srcinfo = true;
    let mut slow_cfg = fast_cfg.clone();
    slow_cfg.fast_srcinfo = false;
    let (fast, slow) = (Builder::new(fast_cfg), Builder::new(slow_cfg));
    let n = dirs.len();
    let queue = Mutex::new(dirs);
    let diffs = Mutex::new(Vec::new());
    let fallbacks = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(dir) = queue.lock().unwrap().pop() {
                    let a = fast.print_srcinfo(&dir, &mut |_| {});
                    let b = slow.print_srcinfo(&dir, &mut |_| {});
                    if a.log.contains("fast .SRCINFO path failed") {
                        fallbacks.lock().unwrap().push(dir.display().to_string());
                    }
                    // makepkg --printsrcinfo checks with `pacman -T` that the VCS
                    // client (hg, svn, bzr...) is installed and prints nothing when it
                    // cannot (on Debian pacman has no database): a check of the
                    // machine, not of the PKGBUILD; the fast path does not make it.
                    if a.outcome.is_success()
                        && !b.outcome.is_success()
                        && (b.log.contains("Cannot find the")
                            || b.log.contains("'pacman' returned a fatal error"))
                    {
                        eprintln!(
                            "{}: makepkg refused (VCS client missing here); fast path printed it",
                            dir.display()
                        );
                        continue;
                    }
                    if a.outcome != b.outcome || a.srcinfo_text != b.srcinfo_text {
                        diffs.lock().unwrap().push(format!(
                            "{}: fast {:?} vs makepkg {:?}\n--- fast ---\n{}\n--- makepkg ---\n{}\n--- makepkg log tail ---\n{}",
                            dir.display(),
                            a.outcome,
                            b.outcome,
                            a.srcinfo_text.unwrap_or_default(),
                            b.srcinfo_text.clone().unwrap_or_default(),
                            b.log_tail(6)
                        ));
                    }
                }
            });
        }
    });
    let fallbacks = fallbacks.into_inner().unwrap();
    eprintln!(
        "{n} folders compared; fast path fell back to makepkg for {}: {fallbacks:?}",
        fallbacks.len()
    );
    let diffs = diffs.into_inner().unwrap();
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n\n")
    );
}

fn folders(root: PathBuf) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.join("PKGBUILD").is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn fast_srcinfo_matches_makepkg_on_examples_fixtures_and_buildable_corpus() {
    if !sandbox_ready("fast_srcinfo_matches_makepkg_on_examples_fixtures_and_buildable_corpus") {
        return;
    }
    let mut dirs = folders(examples());
    dirs.extend(
        [
            "chroot-dep-a",
            "chroot-dep-b",
            "hostile-syntax",
            "hostile-fail",
        ]
        .map(fixture),
    );
    let corpus = manifest_dir().join("../../shared/corpus/buildable");
    if corpus.is_dir() {
        dirs.extend(folders(corpus));
    } else {
        eprintln!(
            "NOTICE: {} absent; comparing examples and fixtures only",
            corpus.display()
        );
    }
    compare(dirs);
}

/// The 100 real PKGBUILDs of `shared/corpus/srcinfo` (several minutes):
/// `cargo test -p pacmesh-sandbox --test srcinfo_fast -- --ignored`.
#[test]
#[ignore]
fn fast_srcinfo_matches_makepkg_on_the_srcinfo_corpus() {
    let corpus = manifest_dir().join("../../shared/corpus/srcinfo");
    if !corpus.is_dir() {
        eprintln!("SKIP: {} absent", corpus.display());
        return;
    }
    if !sandbox_ready("fast_srcinfo_matches_makepkg_on_the_srcinfo_corpus") {
        return;
    }
    let only = std::env::var("PACMESH_SRCINFO_ONLY").ok();
    let dirs = folders(corpus)
        .into_iter()
        .filter(|d| only.as_deref().is_none_or(|o| d.ends_with(o)))
        .collect();
    compare(dirs);
}
