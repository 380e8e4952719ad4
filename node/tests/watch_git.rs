//! Update detection of git sources, packages trees and VCS packages, in process on a real
//! node core (event store, policy, ingest) with real git repositories (no builds): heads read
//! by ls-remote, builds pinned to the new head, review of PKGBUILD changes, tree syncs of the
//! changed folders only with `[deploy NAME]`, VCS upstream commits (`CI_GIT_COMMIT` as the
//! first known value) enqueuing one folder, trigger firings, reports without a maintainer key,
//! and per-source failures that keep what was recorded.

mod common {
    #[path = "aur_standin.rs"]
    pub mod aur_standin;
    #[path = "executor_env.rs"]
    pub mod executor_env;
}

use common::aur_standin::{commit_dir, write};
use common::executor_env::{Env, MAINT};
use pacmesh_node::keys::NodeKey;
use pacmesh_node::watch::{WatchGit, WatchSection, WatchTree};
use pacmesh_node::watch_git::{check_sources, fire};
use pacmesh_protocol::{EventBody, Hash, Source, Timestamp};
use serde_json::Value;

fn pkgbuild(name: &str, ver: &str, extra: &str) -> String {
    format!(
        "pkgname={name}\npkgver={ver}\npkgrel=1\narch=('any')\nlicense=('MIT')\n\
         package() {{\n  install -Dm644 /dev/stdin \"$pkgdir/usr/share/{name}/v\" <<<\"$pkgver\"\n{extra}}}\n"
    )
}

/// Sources of the entries in the queue, oldest first.
fn sources(env: &Env) -> Vec<(Hash, Source, Option<String>)> {
    let ingest = env.core.ingest();
    let mut v: Vec<_> = ingest
        .state()
        .entries()
        .filter_map(|e| {
            let q = e.enqueued.as_ref()?;
            Some((q.time, e.id, q.entry.source.clone(), q.entry.review.clone()))
        })
        .collect();
    v.sort_by_key(|(t, id, ..)| (*t, *id));
    v.into_iter().map(|(_, id, s, r)| (id, s, r)).collect()
}

fn cancel_all(env: &Env, maint: &NodeKey) {
    for (id, ..) in sources(env) {
        let cancelled = env
            .core
            .ingest()
            .state()
            .entry(&id)
            .is_some_and(|e| e.cancelled.is_some());
        if !cancelled {
            env.core
                .submit_as(maint, EventBody::Cancel { entry: id })
                .unwrap();
        }
    }
}

fn state(env: &Env) -> serde_json::Map<String, Value> {
    pacmesh_node::watch::load(&env.core.data_dir)
}

#[test]
fn git_heads_enqueue_pinned_builds_and_failures_stay_per_source() {
    let env = Env::new();
    let maint = NodeKey::from_seed(&[MAINT; 32]);
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    let bare = t.path().join("src.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    write(
        &work,
        &[("pkg/hello-w/PKGBUILD", &pkgbuild("hello-w", "1.0", ""))],
    );
    let c1 = commit_dir(&repo, &work, "1.0", 1_700_000_000);
    let good = WatchGit {
        url: format!("file://{}", bare.display()),
        rev: Some("main".into()),
        subdir: Some("pkg/hello-w".into()),
        ..Default::default()
    };
    let dead = WatchGit {
        url: "http://127.0.0.1:9/nothing.git".into(),
        ..Default::default()
    };
    let bad_ref = WatchGit {
        url: good.url.clone(),
        rev: Some("no-such-branch".into()),
        subdir: Some("pkg/hello-w".into()),
        ..Default::default()
    };
    let w = WatchSection {
        git: vec![dead.clone(), good.clone(), bad_ref.clone()],
        ..Default::default()
    };

    // Without a maintainer key: reported, nothing signed.
    let r = check_sources(&env.core, &w, "http://127.0.0.1:9", None).unwrap();
    assert_eq!(r.reported, ["hello-w"], "{r:?}");
    assert!(sources(&env).is_empty());
    let v = pacmesh_node::why::why(&env.core, "hello-w", Timestamp::now());
    assert!(
        v["answer"].as_str().unwrap().contains("may not enqueue"),
        "{v:#}"
    );

    // With one: the first head is enqueued, pinned; the dead URL and the bad ref fail alone.
    let r = check_sources(&env.core, &w, "http://127.0.0.1:9", Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    let errs: Vec<&String> = r.errors.iter().map(|(_, e)| e).collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("127.0.0.1:9") || errs[1].contains("127.0.0.1:9"),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("ref \"no-such-branch\" is not a branch, tag or commit")),
        "{errs:?}"
    );
    let s = sources(&env);
    assert_eq!(
        s[0].1,
        Source::Git {
            url: good.url.clone(),
            rev: Some(c1.to_string()),
            subdir: Some("pkg/hello-w".into())
        }
    );
    // Unchanged: nothing more.
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty(), "{r:?}");

    // A version bump: enqueued at the new commit, no review.
    write(
        &work,
        &[("pkg/hello-w/PKGBUILD", &pkgbuild("hello-w", "1.1", ""))],
    );
    let c2 = commit_dir(&repo, &work, "1.1", 1_700_000_100);
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    let s = sources(&env);
    assert!(
        matches!(&s[1].1, Source::Git { rev: Some(r), .. } if *r == c2.to_string()),
        "{s:?}"
    );
    assert_eq!(s[1].2, None, "a version bump needs no review");

    // The repository becomes unreachable: a clear error; the recorded head is kept.
    let key = pacmesh_node::watch_git::git_key(&good);
    let before = state(&env)[&key]["head"].clone();
    let moved = t.path().join("moved.git");
    std::fs::rename(&bare, &moved).unwrap();
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty());
    let st = state(&env);
    assert_eq!(st[&key]["head"], before);
    assert!(
        st[&key]["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the heads of"),
        "{:#}",
        st[&key]
    );
    let v = pacmesh_node::why::why(&env.core, "hello-w", Timestamp::now());
    assert!(
        v["answer"]
            .as_str()
            .unwrap()
            .contains("update detection (git): cannot read the heads"),
        "{v:#}"
    );
    std::fs::rename(&moved, &bare).unwrap();

    // A change to what the PKGBUILD runs: enqueued with the diff for review.
    write(
        &work,
        &[(
            "pkg/hello-w/PKGBUILD",
            &pkgbuild("hello-w", "1.2", "  touch \"$pkgdir/usr/share/new\"\n"),
        )],
    );
    commit_dir(&repo, &work, "1.2", 1_700_000_200);
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    let s = sources(&env);
    let diff = s[2].2.as_deref().expect("awaits review");
    assert!(
        diff.contains("+  touch \"$pkgdir/usr/share/new\""),
        "{diff}"
    );
    assert!(state(&env)[&key]["error"].is_null());

    // queue why shows the watched head.
    let v = pacmesh_node::why::why(&env.core, "hello-w", Timestamp::now());
    let watched = v["watched"].as_array().unwrap();
    assert!(
        watched
            .iter()
            .any(|x| x["source"] == "git" && x["head"].as_str().is_some()),
        "{v:#}"
    );
    let text = pacmesh_node::why::render(&v, false);
    assert!(text.contains("watched    git file://"), "{text}");
}

#[test]
fn trees_sync_changed_folders_vcs_commits_rebuild_and_triggers_select() {
    let env = Env::new();
    let maint = NodeKey::from_seed(&[MAINT; 32]);
    let t = tempfile::tempdir().unwrap();
    // The upstream of a VCS package.
    let up_work = t.path().join("up-work");
    let up = git2::Repository::init_bare(t.path().join("up.git")).unwrap();
    write(&up_work, &[("README", "v1\n")]);
    let u1 = commit_dir(&up, &up_work, "u1", 1_700_000_000);
    let up_url = format!("file://{}", t.path().join("up.git").display());
    // The tree.
    let work = t.path().join("tree-work");
    let srcinfo = format!(
        "pkgbase = foo-git\n\tpkgver = r1\n\tpkgrel = 1\n\tarch = any\n\
         \tsource = foo::git+{up_url}#branch=main\n\tsha256sums = SKIP\n\npkgname = foo-git\n"
    );
    write(
        &work,
        &[
            ("alpha/PKGBUILD", &pkgbuild("alpha", "1", "")),
            ("alpha/.CI/config", "CI_ON_TRIGGER=nightly\n"),
            ("beta/PKGBUILD", &pkgbuild("beta", "1", "")),
            ("gamma/PKGBUILD", &pkgbuild("gamma", "1", "")),
            ("gamma/.CI/config", "CI_ON_TRIGGER=weekly\n"),
            ("foo-git/PKGBUILD", &pkgbuild("foo-git", "r1", "")),
            ("foo-git/.SRCINFO", &srcinfo),
            ("foo-git/.CI/config", &format!("CI_GIT_COMMIT={u1}\n")),
            ("bar-git/PKGBUILD", &pkgbuild("bar-git", "r1", "")),
        ],
    );
    let bare = t.path().join("tree.git");
    let repo = git2::Repository::init_bare(&bare).unwrap();
    let c1 = commit_dir(&repo, &work, "init", 1_700_000_000);
    let url = format!("file://{}", bare.display());
    let w = WatchSection {
        tree: vec![WatchTree {
            url: url.clone(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let names = |r: &pacmesh_node::watch::Round| {
        let mut v: Vec<String> = r.enqueued.iter().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    };

    // First round: the first sync builds every folder; foo-git's upstream is what its
    // CI_GIT_COMMIT says (no rebuild); bar-git's VCS source is unknown (no .SRCINFO).
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert_eq!(
        names(&r),
        ["alpha", "bar-git", "beta", "foo-git", "gamma"],
        "{r:?}"
    );
    let st = state(&env);
    let vcs = &st[&format!("vcs:foo-git tree:{url}#HEAD")];
    assert_eq!(vcs["commit"], u1.to_string(), "{vcs:#}");
    assert!(vcs["changed"].is_null(), "{vcs:#}");
    let bar = &st[&format!("vcs:bar-git tree:{url}#HEAD")];
    assert!(
        bar["error"].as_str().unwrap().contains("no .SRCINFO"),
        "{bar:#}"
    );
    assert!(
        r.errors
            .iter()
            .any(|(k, e)| k.contains("bar-git") && e.contains("no .SRCINFO"))
    );
    // Unchanged head: nothing.
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty(), "{r:?}");

    // A commit changing beta and deploying alpha: those two only, at the new commit.
    write(&work, &[("beta/PKGBUILD", &pkgbuild("beta", "2", ""))]);
    let c2 = commit_dir(&repo, &work, "beta 2 [deploy alpha]", 1_700_000_100);
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert_eq!(names(&r), ["alpha", "beta"], "{r:?}");
    let s = sources(&env);
    assert!(
        s.iter().rev().take(2).all(
            |(_, src, _)| matches!(src, Source::Tree { rev: Some(r), .. } if *r == c2.to_string())
        ),
        "{s:?}"
    );
    assert_ne!(c1, c2);

    // A new upstream commit of foo-git: that folder alone, at the synced tree commit — but not
    // while a build of it is still waiting.
    write(&up_work, &[("README", "v2\n")]);
    let u2 = commit_dir(&up, &up_work, "u2", 1_700_000_200);
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty(), "foo-git is still waiting: {r:?}");
    let st = state(&env);
    let vcs = &st[&format!("vcs:foo-git tree:{url}#HEAD")];
    assert_eq!(vcs["commit"], u2.to_string());
    assert!(
        vcs["action"].as_str().unwrap().contains("already waiting"),
        "{vcs:#}"
    );
    cancel_all(&env, &maint);
    write(&up_work, &[("README", "v3\n")]);
    let u3 = commit_dir(&up, &up_work, "u3", 1_700_000_300);
    let n = sources(&env).len();
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert_eq!(names(&r), ["foo-git"], "{r:?}");
    let s = sources(&env);
    assert_eq!(s.len(), n + 1);
    assert_eq!(
        s[n].1,
        Source::Tree {
            url: url.clone(),
            rev: Some(c2.to_string()),
            pkgbases: vec![pacmesh_protocol::Name::new("foo-git").unwrap()]
        }
    );
    let v = pacmesh_node::why::why(&env.core, "foo-git", Timestamp::now());
    let vcs = v["watched"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["source"] == "vcs")
        .unwrap();
    assert_eq!(vcs["commit"], u3.to_string(), "{v:#}");
    let text = pacmesh_node::why::render(&v, false);
    assert!(
        text.contains(&format!("upstream commit {}", &u3.to_string()[..12])),
        "{text}"
    );

    // A trigger firing: the CI_ON_TRIGGER=nightly folder only (the tree is unchanged).
    cancel_all(&env, &maint);
    let r = fire(&env.core, &w, "", Some(&maint), "nightly").unwrap();
    assert_eq!(names(&r), ["alpha"], "{r:?}");
    // Fired again while that build still waits: not stacked.
    let r = fire(&env.core, &w, "", Some(&maint), "nightly").unwrap();
    assert!(r.enqueued.is_empty(), "{r:?}");
    let v = pacmesh_node::why::why(&env.core, "alpha", Timestamp::now());
    assert!(
        v["watched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["source"] == "tree" && x["on_trigger"] == "nightly"),
        "{v:#}"
    );

    // Without a maintainer key a moved head is reported with the folders it would build.
    write(&work, &[("gamma/PKGBUILD", &pkgbuild("gamma", "2", ""))]);
    commit_dir(&repo, &work, "gamma 2", 1_700_000_400);
    let n = sources(&env).len();
    let r = check_sources(&env.core, &w, "", None).unwrap();
    assert_eq!(r.reported, ["gamma"], "{r:?}");
    assert_eq!(sources(&env).len(), n);
    let v = pacmesh_node::why::why(&env.core, "gamma", Timestamp::now());
    assert!(
        v["answer"]
            .as_str()
            .unwrap()
            .contains("pacmesh tree sync --git"),
        "{v:#}"
    );
    // A broken tree URL: reported on that tree; the recorded sync is kept.
    let key = pacmesh_node::watch_git::tree_key(&w.tree[0]);
    let synced = state(&env)[&key]["synced"].clone();
    std::fs::rename(&bare, t.path().join("gone.git")).unwrap();
    let r = check_sources(&env.core, &w, "", Some(&maint)).unwrap();
    assert!(r.errors.iter().any(|(k, _)| k == &key), "{r:?}");
    assert_eq!(state(&env)[&key]["synced"], synced);
}

/// The `[watch]` and `[[schedule]]` configuration: the new tables parse, unknown keys are
/// refused, bad schedules are named at start-up.
#[test]
fn watch_and_schedule_config() {
    let f: pacmesh_node::config::ConfigFile = toml::from_str(
        "[watch]\naur = [\"a\"]\naur_on_trigger = { daily = [\"a\"] }\n\
         [[watch.git]]\nurl = \"https://x/y.git\"\nref = \"main\"\nsubdir = \"p\"\non_trigger = \"nightly\"\n\
         [[watch.tree]]\nurl = \"https://x/t.git\"\n\
         [[schedule]]\nname = \"nightly\"\ncron = \"30 3 * * *\"\n",
    )
    .unwrap();
    assert_eq!(f.watch.git[0].rev.as_deref(), Some("main"));
    assert_eq!(f.watch.tree.len(), 1);
    assert_eq!(f.schedule[0].name, "nightly");
    for bad in [
        "[[watch.git]]\nurl = \"u\"\nbranch = \"main\"\n",
        "[[watch.tree]]\nurl = \"u\"\nsubdir = \"x\"\n",
        "[[schedule]]\nname = \"x\"\nat = \"3am\"\n",
    ] {
        assert!(
            toml::from_str::<pacmesh_node::config::ConfigFile>(bad).is_err(),
            "{bad}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "[[schedule]]\nname = \"x\"\ncron = \"61 * * * *\"\n").unwrap();
    let e = pacmesh_node::config::Config::resolve(pacmesh_node::config::Flags {
        config: Some(cfg),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("schedule x: cron = \"61 * * * *\": minute: 61 is outside 0-59"),
        "{e:#}"
    );
}

/// VCS packages outside trees: a watched `-git` AUR package and a watched git source whose
/// `.SRCINFO` has a `git+` source. Their upstream (served over smart HTTP by `git
/// http-backend`) moves: each is rebuilt once, from its own source.
#[test]
fn vcs_commits_of_aur_and_git_sources_rebuild_them() {
    use common::aur_standin::{AurStandin, info};
    let env = Env::new();
    let maint = NodeKey::from_seed(&[MAINT; 32]);
    let t = tempfile::tempdir().unwrap();
    let aur = AurStandin::start(&t.path().join("aur"));
    // The upstream project, served over HTTP.
    let up_work = t.path().join("up-work");
    write(&up_work, &[("README", "v1\n")]);
    let u1 = aur.push("upstream", &up_work, "u1");
    let up_url = format!("{}/upstream.git", aur.url);
    let srcinfo = |base: &str| {
        format!(
            "pkgbase = {base}\n\tpkgver = r1\n\tpkgrel = 1\n\tarch = any\n\
             \tsource = git+{up_url}#branch=main\n\tsha256sums = SKIP\n\npkgname = {base}\n"
        )
    };
    // An AUR VCS package.
    let a = t.path().join("baz-git");
    write(
        &a,
        &[
            ("PKGBUILD", &pkgbuild("baz-git", "r1", "")),
            (".SRCINFO", &srcinfo("baz-git")),
        ],
    );
    aur.push("baz-git", &a, "r1");
    aur.set_info(info("baz-git", "baz-git", "r1-1", 100, &[], &[]));
    // A git source whose PKGBUILD follows the same upstream (not named -git).
    let g = t.path().join("g-work");
    write(
        &g,
        &[
            ("PKGBUILD", &pkgbuild("follower", "r1", "")),
            (".SRCINFO", &srcinfo("follower")),
        ],
    );
    let gbare = t.path().join("follower.git");
    let grepo = git2::Repository::init_bare(&gbare).unwrap();
    let g1 = commit_dir(&grepo, &g, "r1", 1_700_000_000);
    let w = WatchSection {
        aur: vec!["baz-git".into()],
        git: vec![WatchGit {
            url: format!("file://{}", gbare.display()),
            ..Default::default()
        }],
        aur_on_trigger: [("nightly".to_string(), vec!["baz-git".to_string()])].into(),
        ..Default::default()
    };
    let r = pacmesh_node::watch::check_once(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    let r = check_sources(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert_eq!(r.enqueued.len(), 1, "the git source's first build: {r:?}");
    assert!(r.errors.is_empty(), "{r:?}");
    let st = state(&env);
    assert_eq!(st["vcs:baz-git aur"]["commit"], u1.as_str(), "{st:#?}");
    let gk = pacmesh_node::watch_git::git_key(&w.git[0]);
    assert_eq!(st[&format!("vcs:follower {gk}")]["commit"], u1.as_str());

    // Upstream moves; the builds are done (cancelled here): each is rebuilt once.
    cancel_all(&env, &maint);
    write(&up_work, &[("README", "v2\n")]);
    let u2 = aur.push("upstream", &up_work, "u2");
    let n = sources(&env).len();
    let r = check_sources(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    let mut names: Vec<&str> = r.enqueued.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    assert_eq!(names, ["baz-git", "follower"], "{r:?}");
    let s = sources(&env);
    assert_eq!(s.len(), n + 2);
    assert!(s[n..].iter().any(|(_, src, _)| matches!(src,
        Source::Aur { pkgbase } if pkgbase.as_str() == "baz-git")));
    assert!(s[n..].iter().any(|(_, src, _)| matches!(src,
        Source::Git { rev: Some(r), .. } if *r == g1.to_string())));
    assert_eq!(state(&env)["vcs:baz-git aur"]["commit"], u2.as_str());
    // Unchanged: nothing more.
    let r = check_sources(&env.core, &w, &aur.url, Some(&maint)).unwrap();
    assert!(r.enqueued.is_empty(), "{r:?}");

    // The nightly trigger enqueues the AUR package configured with it (not the git source).
    cancel_all(&env, &maint);
    let r = fire(&env.core, &w, &aur.url, Some(&maint), "nightly").unwrap();
    assert_eq!(r.enqueued.len(), 1, "{r:?}");
    assert_eq!(r.enqueued[0].0, "baz-git");
    let v = pacmesh_node::why::why(&env.core, "baz-git", Timestamp::now());
    assert!(
        v["watched"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["source"] == "schedule" && x["name"] == "nightly"),
        "{v:#}"
    );
    // A trigger no schedule defines is refused in the configuration.
    let schedules = pacmesh_node::schedule::resolve_all(&[]).unwrap();
    let e = w.check_triggers(&schedules).unwrap_err();
    assert!(e.contains("\"nightly\", which is no schedule"), "{e}");
}
