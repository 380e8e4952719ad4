//! Build every folder of the shared corpus (`../../shared/corpus/buildable`,
//! real third-party PKGBUILDs) with the host profile. The corpus is not part
//! of the project: the test skips with a notice when it is absent.

mod common;

use std::path::PathBuf;
use std::sync::Mutex;

use common::*;

#[test]
fn corpus_buildable_folders_build_with_the_host_profile() {
    let corpus = manifest_dir().join("../../shared/corpus/buildable");
    if !corpus.is_dir() {
        eprintln!(
            "SKIP corpus test: {} is absent (it lives beside the repository, not in it)",
            corpus.display()
        );
        return;
    }
    if !sandbox_ready("corpus_buildable_folders_build_with_the_host_profile") {
        return;
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("PKGBUILD").is_file())
        .collect();
    dirs.sort();
    let t = tempfile::tempdir().unwrap();
    let cfg = config(t.path());
    let queue = Mutex::new(dirs.clone());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                loop {
                    let Some(dir) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let r = build(&cfg, &dir);
                    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                    results.lock().unwrap().push((name, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by(|a, b| a.0.cmp(&b.0));
    let mut failed = Vec::new();
    for (name, r) in &results {
        if r.outcome.is_success() {
            let files: Vec<_> = r.artifacts.iter().map(|a| a.file_name.as_str()).collect();
            eprintln!(
                "corpus OK   {name}: {} in {:.1}s",
                files.join(", "),
                r.duration.as_secs_f64()
            );
        } else {
            eprintln!(
                "corpus FAIL {name}: {}\n{}",
                r.error.as_deref().unwrap_or("?"),
                r.log_tail(15)
            );
            failed.push(name.clone());
        }
        let _ = r.cleanup();
    }
    assert_eq!(results.len(), dirs.len());
    assert!(
        failed.is_empty(),
        "corpus folders that did not build: {failed:?}"
    );
}
