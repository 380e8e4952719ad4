//! Dependants are built against the mesh's fresh packages (chroot profile): a real
//! `pacmesh node` with `[build] profile = "chroot"` syncs a packages tree whose folder B
//! makedepends on folder A; B is built after A, in a build root where pacman installed the
//! A package this node just built (from the job-local `pacmesh-deps` repository), and B's
//! own build step fails if A's file is not there.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "node_proc.rs"]
    pub mod node_proc;
}
#[path = "../../sandbox/tests/common/chroot_base.rs"]
mod chroot_base;

use std::time::Duration;

use common::aur_standin::commit_dir;
use common::node_proc::*;

#[test]
fn a_dependant_is_built_against_the_package_its_dependency_entry_built() {
    if !(have("bwrap") && have("makepkg") && have("pacman")) {
        eprintln!("SKIPPED: needs bwrap, makepkg and pacman");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    if let Err(e) = pacmesh_sandbox::preflight_chroot(t.path()) {
        eprintln!("SKIPPED: the chroot profile cannot run here: {e}");
        return;
    }
    let Some(base) = chroot_base::make_base(t.path()) else {
        return;
    };
    // The tree: A installs a marker file, B's build() copies it (fails without it).
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sandbox/tests/fixtures");
    let work = t.path().join("tree-work");
    for (folder, srcinfo) in [
        (
            "pacmesh-chroot-a",
            "pkgbase = pacmesh-chroot-a\n\tpkgver = 1.0\n\tpkgrel = 1\n\tarch = any\n\npkgname = pacmesh-chroot-a\n",
        ),
        (
            "pacmesh-chroot-b",
            "pkgbase = pacmesh-chroot-b\n\tpkgver = 1.0\n\tpkgrel = 1\n\tarch = any\n\tmakedepends = pacmesh-chroot-a\n\npkgname = pacmesh-chroot-b\n",
        ),
    ] {
        let d = work.join(folder);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixtures
                .join(folder.replace("pacmesh-chroot-", "chroot-dep-"))
                .join("PKGBUILD"),
            d.join("PKGBUILD"),
        )
        .unwrap();
        std::fs::write(d.join(".SRCINFO"), srcinfo).unwrap();
    }
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    commit_dir(&repo, &work, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());

    let mesh = Mesh::new(t.path());
    let cfg = t.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[build]\nprofile = \"chroot\"\nbase_root = \"{}\"\n",
            base.display()
        ),
    )
    .unwrap();
    let (_node, node_url) = mesh.start(&["--config", s(&cfg)]);
    let cache = t.path().join("cache");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pacmesh"))
        .args([
            "tree",
            "sync",
            "--key",
            s(&mesh.maintainer),
            "--node",
            &node_url,
            "--git",
            &url,
        ])
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", show(&o));
    let entries = wait_queue(&node_url, "both built", Duration::from_secs(300), |e| {
        ["tree/pacmesh-chroot-a", "tree/pacmesh-chroot-b"]
            .iter()
            .all(|n| matches!(state_of(e, n), Some("published" | "failed")))
    });
    let b = entries
        .iter()
        .find(|e| e["name"] == "tree/pacmesh-chroot-b")
        .unwrap();
    assert_eq!(
        state_of(&entries, "tree/pacmesh-chroot-b"),
        Some("published"),
        "{b:#}"
    );
    assert_eq!(
        state_of(&entries, "tree/pacmesh-chroot-a"),
        Some("published")
    );
    // B's log: pacman installed A from the job-local repository of what the mesh built.
    let id = b["id"].as_str().unwrap();
    let (code, log) = http_get(&format!("{node_url}/logs/{id}?format=text"));
    assert_eq!(code, 200);
    let log = String::from_utf8_lossy(&log);
    assert!(
        log.contains("installing into the layer: pacmesh-chroot-a"),
        "{log}"
    );
}
