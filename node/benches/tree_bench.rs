//! Sources benchmark: planning the sync of a generated packages tree of 1000 folders and
//! computing the queue (dependency order), budget 5 s; and an AUR RPC check of 1000 packages
//! against the local stand-in, budget 10 HTTP requests.
//!
//! `cargo bench -p pacmesh-node --bench tree_bench` (set `PACMESH_BENCH_FOLDERS` to change
//! 1000). The same-run references: reading the tree's folders alone (git objects, `.SRCINFO`
//! and `.CI/config` parsing) and one RPC request for one package.

#[path = "../tests/common/aur_standin.rs"]
#[allow(dead_code)]
mod aur_standin;

use std::path::Path;
use std::time::Instant;

use aur_standin::{AurStandin, commit_dir, info};
use pacmesh_node::tree;

fn write(dir: &Path, rel: &str, text: &str) {
    let f = dir.join(rel);
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(f, text).unwrap();
}

/// Folder `i` depends on folder `i / 2` (a binary tree of dependencies) and has a `.CI/config`.
fn folder(dir: &Path, i: usize, ver: &str) {
    let name = format!("pkg{i:04}");
    let dep = if i > 0 {
        format!("\tdepends = pkg{:04}\n", i / 2)
    } else {
        String::new()
    };
    write(
        dir,
        &format!("{name}/PKGBUILD"),
        &format!("pkgname={name}\npkgver={ver}\npkgrel=1\narch=(any)\npackage() {{ true; }}\n"),
    );
    write(
        dir,
        &format!("{name}/.SRCINFO"),
        &format!(
            "pkgbase = {name}\n\tpkgver = {ver}\n\tpkgrel = 1\n\tarch = any\n{dep}\npkgname = {name}\n"
        ),
    );
    write(
        dir,
        &format!("{name}/.CI/config"),
        "CI_PKGBUILD_SOURCE=custom\nCI_ON_TRIGGER=daily\nCI_HUMAN_REVIEW=true\n",
    );
}

fn main() {
    let n: usize = std::env::var("PACMESH_BENCH_FOLDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    for i in 0..n {
        folder(&work, i, "1.0");
    }
    let repo = git2::Repository::init_bare(t.path().join("tree.git")).unwrap();
    let c1 = commit_dir(&repo, &work, "init", 1_700_000_000);
    // Ten folders change, one of them beyond its version (a review diff is computed).
    for i in (0..n).step_by((n / 10).max(1)).take(10) {
        folder(&work, i, "1.1");
    }
    write(
        &work,
        "pkg0000/PKGBUILD",
        "pkgname=pkg0000\npkgver=1.1\npkgrel=1\narch=(any)\ndepends=(curl)\npackage() { true; }\n",
    );
    let c2 = commit_dir(&repo, &work, "update ten", 1_700_000_100);

    // Reference: reading the folders alone.
    let start = Instant::now();
    let commit = repo.find_commit(c1).unwrap();
    let mut warnings = Vec::new();
    let folders = tree::folders(&repo, &commit, &mut warnings).unwrap();
    let read = start.elapsed();
    assert_eq!(folders.len(), n);

    let start = Instant::now();
    let mut p = tree::plan(&repo, c1, None, None).unwrap();
    let order = tree::build_order(&mut p);
    let first = start.elapsed();
    assert_eq!(order.len(), n);

    let start = Instant::now();
    let mut p = tree::plan(&repo, c2, Some(c1), Some("daily")).unwrap();
    let order2 = tree::build_order(&mut p);
    let later = start.elapsed();
    assert_eq!(order2.len(), n, "the daily trigger selects every folder");
    assert_eq!(p.review.len(), 1, "one folder changed beyond its version");

    println!("tree of {n} folders (each: PKGBUILD, .SRCINFO, .CI/config):");
    println!(
        "  reference: read the folders           {:>8.1} ms",
        ms(read)
    );
    println!(
        "  first sync: plan + dependency order   {:>8.1} ms   (budget 5000 ms)",
        ms(first)
    );
    println!(
        "  later sync: diff + review + trigger   {:>8.1} ms   ({} to build, {} to review)",
        ms(later),
        order2.len(),
        p.review.len()
    );
    assert!(
        first.as_secs_f64() < 5.0 && later.as_secs_f64() < 5.0,
        "over the 5 s budget"
    );

    // The AUR RPC: 1000 packages.
    let aur = AurStandin::start(&t.path().join("aur"));
    let names: Vec<String> = (0..1000).map(|i| format!("aur-package-{i:04}")).collect();
    for nm in &names {
        aur.set_info(info(nm, nm, "1.0-1", 1_700_000_000, &[], &[]));
    }
    let client = pacmesh_node::aur::AurClient::new(&aur.url);
    let start = Instant::now();
    let one = client.info(&[names[0].as_str()]).unwrap();
    let one_t = start.elapsed();
    assert_eq!(one.len(), 1);
    let before = aur.requests();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let start = Instant::now();
    let all = client.info(&refs).unwrap();
    let all_t = start.elapsed();
    let requests = aur.requests() - before;
    assert_eq!(all.len(), 1000);
    println!("AUR RPC info, local stand-in:");
    println!(
        "  reference: 1 package                  {:>8.1} ms   1 request",
        ms(one_t)
    );
    println!(
        "  1000 packages                         {:>8.1} ms   {requests} requests (budget 10)",
        ms(all_t)
    );
    assert!(requests <= 10, "{requests} requests");
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
