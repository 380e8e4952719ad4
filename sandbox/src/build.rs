//! Building one PKGBUILD folder in phases.
//!
//! | phase | network | writable | command |
//! |---|---|---|---|
//! | [`Phase::Interfere`] (folders with `.CI/`) | none | `/build` | the interferes ([`crate::interfere`]) |
//! | [`Phase::Srcinfo`] | none | `/build` | `makepkg --printsrcinfo` (stdout captured, parsed) |
//! | [`Phase::FetchSources`] | host | `/build`, `/sources` (this source cache entry) | `makepkg --verifysource` |
//! | [`Phase::InstallDeps`] (chroot) | only for remote repos | the layer (`/`) | `pacman -T`, `pacman -Sy --needed` as uid 0 |
//! | [`Phase::Build`] | none | `/build` | `makepkg --holdver [--nodeps]` |
//! | [`Phase::Collect`] | — | — | hash packages, read `.PKGINFO`/`.BUILDINFO` |
//!
//! The folder is copied (symlinks as symlinks, never followed) into a fresh
//! work dir; the original is never modified.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pacmesh_repo::srcinfo::SrcInfo;
use serde::{Deserialize, Serialize};

use crate::BwrapCommand;
use crate::artifact::{self, Artifact};
use crate::overlay::{self, Layer};
use crate::profile::{self, PacmanRepo, Profile};
use crate::supervise::{self, LogCollector, Outcome, RunOptions};

/// Where the build tree is mounted inside the sandbox (a fixed path, for
/// reproducible builds).
pub const SANDBOX_BUILD: &str = "/build";
/// The copy of the PKGBUILD folder (makepkg's `startdir`).
pub const SANDBOX_STARTDIR: &str = "/build/pkgbuild";
/// makepkg `BUILDDIR`: sources are extracted to `/build/work/PKGBASE/src`.
pub const SANDBOX_BUILDDIR: &str = "/build/work";
/// makepkg `PKGDEST`.
pub const SANDBOX_PKGDEST: &str = "/build/out";
/// makepkg `LOGDEST`.
pub const SANDBOX_LOGDEST: &str = "/build/logs";
/// `HOME` of the build user.
pub const SANDBOX_HOME: &str = "/build/home";
/// makepkg `SRCDEST` during the build phase: symlinks into `/sources`.
pub const SANDBOX_SRCDEST_LINKS: &str = "/build/srcdest";
/// The source cache entry of this build.
pub const SANDBOX_SOURCES: &str = "/sources";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/bin:/usr/sbin:/bin:/sbin";
const SRCINFO_CAP: usize = 4 << 20;

/// Phase 1 fast path: what `makepkg --printsrcinfo` does, minus
/// `lint_pkgbuild` (hundreds of `grep` processes; the build phase's makepkg
/// lints anyway), using makepkg's own library functions, so the output is
/// byte-identical (checked against the corpus by the tests). Exit 90 means
/// this makepkg's library does not have the functions; any failure falls
/// back to `makepkg --printsrcinfo`, whose errors are the canonical ones.
/// A constant script: nothing is interpolated into it.
pub const FAST_SRCINFO_SCRIPT: &str = r#"shopt -s extglob
LIBRARY=${LIBRARY:-/usr/share/makepkg}
for lib in "$LIBRARY"/*.sh; do source "$lib" || exit 90; done
declare -F load_makepkg_config source_safe write_srcinfo_content >/dev/null || exit 90
startdir=$(pwd -P)
BUILDFILE=$startdir/PKGBUILD
IGNOREARCH=1
load_makepkg_config || exit 90
[[ $(<"$BUILDFILE") = *$'\r'* ]] && exit 1
source_safe "$BUILDFILE" || exit 1
pkgbase=${pkgbase:-${pkgname[0]}}
write_srcinfo_content
"#;
/// Capabilities pacman keeps (as uid 0 in its own user namespace) while it
/// installs dependencies into the chroot layer.
const INSTALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
];

/// A build phase (see the module docs for what each may do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Phase {
    Prepare,
    Interfere,
    Srcinfo,
    FetchSources,
    InstallDeps,
    Build,
    Collect,
}

impl Phase {
    /// Whether the sandbox of this phase shares the host network.
    pub fn network(self) -> bool {
        matches!(self, Phase::FetchSources)
    }

    /// Lower-case name used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prepare => "prepare",
            Phase::Interfere => "interfere",
            Phase::Srcinfo => "srcinfo",
            Phase::FetchSources => "fetch-sources",
            Phase::InstallDeps => "install-deps",
            Phase::Build => "build",
            Phase::Collect => "collect",
        }
    }
}

/// Everything a build needs besides the folder.
#[derive(Debug, Clone)]
pub struct BuildConfig {
    pub profile: Profile,
    /// Per-build work dirs are created under it (and removed unless `keep_work_dir`).
    pub work_root: PathBuf,
    /// The node's source cache: one entry per [`source_cache_key`].
    pub source_cache: PathBuf,
    /// Wall-clock limit for the whole build (all phases).
    pub timeout: Duration,
    /// SIGTERM → SIGKILL delay.
    pub grace: Duration,
    /// Bytes of log kept (the rest is discarded with a marker).
    pub log_cap: usize,
    /// `SOURCE_DATE_EPOCH` for makepkg (mtimes, builddate).
    pub source_date_epoch: u64,
    /// `PACKAGER` (the node's identity), e.g. `pacmesh node 12D3Koo... <node@mesh>`.
    pub packager: String,
    /// `CARCH` used to pick `source_ARCH`/`depends_ARCH` from the `.SRCINFO`.
    pub arch: String,
    /// Host paths bound read-only (at the same path) during source fetching
    /// only: local mirrors for `file://` / `git+file://` sources.
    pub fetch_ro_binds: Vec<PathBuf>,
    /// The bubblewrap binary.
    pub bwrap: PathBuf,
    /// Keep the whole work dir (sources, pkg/) after the build, for debugging.
    pub keep_work_dir: bool,
    /// Host profile, node running as root: the unprivileged host `(uid, gid)`
    /// that starts bwrap, so the build user maps to it instead of to root.
    /// Use a dedicated uid that owns nothing. The work dir and the source
    /// cache entry are chowned to it; `work_root`, `source_cache` and their
    /// parents must be traversable (`o+x`) by it. Not supported with the
    /// chroot profile yet.
    pub run_as: Option<(u32, u32)>,
    /// Phase 1 through [`FAST_SRCINFO_SCRIPT`] (makepkg's own functions
    /// without the lint pass; same output), falling back to `makepkg
    /// --printsrcinfo`. Default true.
    pub fast_srcinfo: bool,
    /// Apply the folder's `.CI/` interferes and its `.CI/config` `CI_PACKAGE_BUMP`, and run
    /// its `on-success.sh` / `on-failure.sh` ([`crate::interfere`]). Default true.
    pub interfere: bool,
    /// A pkgrel bump for a rebuild of a published version, `version/count`
    /// (`QueueEntry::pkgrel_bump`): applied in the interfere phase (which then runs even
    /// without `.CI/`), see [`crate::interfere`]. Only `[A-Za-z0-9._+:~-]` and one `/`; anything
    /// else fails the build in the interfere phase.
    pub rebuild_bump: Option<String>,
}

impl BuildConfig {
    /// Defaults: host profile, 1 h timeout, 10 s grace, 16 MiB log, epoch 0 is
    /// not allowed by makepkg so 1, packager "pacmesh", arch of this machine.
    pub fn new(work_root: impl Into<PathBuf>, source_cache: impl Into<PathBuf>) -> Self {
        BuildConfig {
            profile: Profile::Host,
            work_root: work_root.into(),
            source_cache: source_cache.into(),
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(10),
            log_cap: 16 << 20,
            source_date_epoch: 1,
            packager: "pacmesh <pacmesh@localhost>".into(),
            arch: std::env::consts::ARCH.to_string(),
            fetch_ro_binds: Vec::new(),
            bwrap: "bwrap".into(),
            keep_work_dir: false,
            run_as: None,
            fast_srcinfo: true,
            interfere: true,
            rebuild_bump: None,
        }
    }
}

/// What a build produced. The outcome is data, never an `Err`.
#[derive(Debug, Clone, Serialize)]
pub struct BuildResult {
    pub outcome: Outcome,
    /// The phase that failed (None on success).
    pub failed_phase: Option<Phase>,
    /// One-line human summary of a failure.
    pub error: Option<String>,
    /// The `.SRCINFO` as printed by makepkg in phase 1, and parsed.
    pub srcinfo_text: Option<String>,
    pub srcinfo: Option<SrcInfo>,
    /// Packages, sorted by file name (split packages give several).
    pub artifacts: Vec<Artifact>,
    /// `.BUILDINFO` of the first package.
    pub buildinfo: Option<String>,
    /// The whole log of all phases (capped).
    pub log: String,
    pub log_truncated: bool,
    pub duration: Duration,
    /// The work dir; artifacts live in `work_dir/build/out/` until the
    /// caller moves them. Remove it with [`BuildResult::cleanup`].
    pub work_dir: PathBuf,
    /// The source cache entry used (if sources were fetched or reused).
    pub source_cache_dir: Option<PathBuf>,
}

impl BuildResult {
    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Remove the work dir (and the artifacts still in it).
    pub fn cleanup(&self) -> io::Result<()> {
        overlay::remove_tree(&self.work_dir)
    }
}

/// Name of the source cache entry for a `.SRCINFO`:
/// `PKGBASE-` + the first 16 hex digits of blake3 over the sorted, distinct
/// non-local source URLs for `arch` (one per line).
///
/// Why this key: makepkg's `SRCDEST` is one flat directory keyed by file
/// name, so entries must not be shared between unrelated packages (two
/// folders may declare the same pkgbase, and file names like `v1.0.tar.gz`
/// collide). Keying on the URL set means a rebuild of the same PKGBUILD
/// (same URLs, e.g. a pkgrel bump or a VCS package) reuses its downloads and
/// git mirrors, while a new upstream version gets a fresh entry (old entries
/// can be pruned by mtime). Tarballs are checked again against their
/// checksums in the offline build phase, so a poisoned entry fails a build
/// instead of corrupting it; VCS sources are only as trustworthy as their
/// `#commit=`/`#tag=` pins, as with makepkg itself.
pub fn source_cache_key(srcinfo: &SrcInfo, arch: &str) -> String {
    let mut urls: Vec<String> = srcinfo
        .sources_for_arch(arch)
        .into_iter()
        .filter(|s| !s.is_local())
        .map(|s| s.url.clone())
        .collect();
    urls.sort();
    urls.dedup();
    let h = blake3::hash(urls.join("\n").as_bytes()).to_hex();
    let base: String = srcinfo
        .pkgbase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "@._+-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let base = base.trim_start_matches('.');
    format!("{}-{}", if base.is_empty() { "_" } else { base }, &h[..16])
}

/// Runs builds with one configuration.
#[derive(Debug, Clone)]
pub struct Builder {
    cfg: BuildConfig,
}

struct Ctx {
    dir: PathBuf,
    build: PathBuf,
    passwd: PathBuf,
    group: PathBuf,
    layer: Option<Layer>,
    deadline: Instant,
}

fn copy_tree(src: &Path, dst: &Path, top: bool) -> io::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let name = e.file_name();
        let ft = e.file_type()?;
        if top && (name == ".git" || ((name == "src" || name == "pkg") && ft.is_dir())) {
            continue;
        }
        let to = dst.join(&name);
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &to)?;
        } else if ft.is_dir() {
            copy_tree(&e.path(), &to, false)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &to)?;
            let mode = e.metadata()?.permissions().mode() & 0o777 | 0o600;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))?;
        }
        // fifos, sockets and devices are skipped.
    }
    Ok(())
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(p)?.is_dir() {
        for e in std::fs::read_dir(p)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Lock file for a source cache entry (shared while building, exclusive while fetching).
struct CacheLock(#[allow(dead_code)] File);

impl CacheLock {
    fn take(entry: &Path, exclusive: bool) -> io::Result<CacheLock> {
        use std::os::fd::AsRawFd;
        let mut p = entry.as_os_str().to_owned();
        p.push(".lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(p))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        // SAFETY: flock on an fd we own; released when the File closes.
        if unsafe { libc::flock(f.as_raw_fd(), op) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CacheLock(f))
    }
}

impl Builder {
    pub fn new(cfg: BuildConfig) -> Self {
        Builder { cfg }
    }

    pub fn config(&self) -> &BuildConfig {
        &self.cfg
    }

    fn prepare(&self, dir: &Path, deadline: Instant) -> io::Result<Ctx> {
        if !dir.join("PKGBUILD").is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no PKGBUILD in {}", dir.display()),
            ));
        }
        std::fs::create_dir_all(&self.cfg.work_root)?;
        std::fs::create_dir_all(&self.cfg.source_cache)?;
        let wd = tempfile::Builder::new()
            .prefix("pacmesh-build-")
            .tempdir_in(&self.cfg.work_root)?
            .keep();
        let wd = std::fs::canonicalize(&wd)?;
        std::fs::set_permissions(&wd, std::fs::Permissions::from_mode(0o700))?;
        let build = wd.join("build");
        for sub in ["out", "logs", "work", "home", "srcdest"] {
            std::fs::create_dir_all(build.join(sub))?;
        }
        copy_tree(dir, &build.join("pkgbuild"), true)?;
        let etc = wd.join("etc");
        std::fs::create_dir_all(&etc)?;
        let passwd = etc.join("passwd");
        let group = etc.join("group");
        std::fs::write(&passwd, profile::passwd_contents(SANDBOX_HOME))?;
        std::fs::write(&group, profile::group_contents())?;
        let layer = match &self.cfg.profile {
            Profile::Chroot(_) if self.cfg.run_as.is_some() => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "run_as is not supported with the chroot profile yet",
                ));
            }
            Profile::Chroot(c) => Some(Layer::create(&c.base_root, &wd.join("layer"))?),
            Profile::Host => None,
        };
        if let Some((uid, gid)) = self.cfg.run_as {
            chown_tree(&wd, uid, gid)?;
        }
        Ok(Ctx {
            dir: wd,
            build,
            passwd,
            group,
            layer,
            deadline,
        })
    }

    /// The sandbox common to all phases: namespaces, root filesystem, /build.
    fn sandbox(&self, ctx: &Ctx, net: bool, as_root: bool) -> BwrapCommand {
        let mut b = BwrapCommand::with_program(&self.cfg.bwrap);
        b.unshare_all();
        if net {
            b.share_net();
        }
        b.unshare_user().disable_userns();
        if as_root {
            // pacman needs to own files, chroot for scriptlets, and nothing
            // else; in particular no CAP_SYS_ADMIN, which could unmount the
            // read-only /proc/sys cover.
            b.uid(0).gid(0).cap_drop("ALL");
            for cap in INSTALL_CAPS {
                b.cap_add(cap);
            }
        } else {
            b.uid(crate::BUILD_UID).gid(crate::BUILD_GID);
        }
        b.hostname("pacmesh").die_with_parent().new_session();
        match &ctx.layer {
            None => {
                profile::bind_host_system(&mut b);
                profile::bind_host_etc(&mut b, &ctx.passwd, &ctx.group);
                profile::bind_host_pacman_db(&mut b);
                b.proc("/proc").dev("/dev").tmpfs("/tmp").tmpfs("/var/tmp");
                profile::cover_proc(&mut b);
            }
            Some(layer) => {
                b.bind(&layer.merged, "/");
                b.proc("/proc").dev("/dev").tmpfs("/tmp");
                profile::cover_proc(&mut b);
                if !as_root {
                    b.ro_bind(&ctx.passwd, "/etc/passwd")
                        .ro_bind(&ctx.group, "/etc/group");
                }
            }
        }
        if !as_root {
            b.bind(&ctx.build, SANDBOX_BUILD);
        }
        b
    }

    fn env(&self, b: &mut BwrapCommand, srcdest: &str) {
        b.clearenv()
            .setenv("PATH", PATH)
            .setenv("HOME", SANDBOX_HOME)
            .setenv("USER", "builder")
            .setenv("LOGNAME", "builder")
            .setenv("LANG", "C.UTF-8")
            .setenv("TZ", "UTC")
            .setenv("SOURCE_DATE_EPOCH", self.cfg.source_date_epoch.to_string())
            .setenv("PACKAGER", &self.cfg.packager)
            .setenv("PKGEXT", ".pkg.tar.zst")
            .setenv("SRCEXT", ".src.tar.zst")
            .setenv("PKGDEST", SANDBOX_PKGDEST)
            .setenv("LOGDEST", SANDBOX_LOGDEST)
            .setenv("BUILDDIR", SANDBOX_BUILDDIR)
            .setenv("SRCDEST", srcdest)
            .setenv("CARCH", &self.cfg.arch)
            .setenv("FAKEROOTDONTTRYCHOWN", "1")
            .chdir(SANDBOX_STARTDIR);
    }

    fn command(&self, ctx: &Ctx, b: &BwrapCommand) -> std::process::Command {
        let mut c = b.to_command();
        // SAFETY: umask(2) is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            c.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        if let Some((uid, gid)) = self.cfg.run_as {
            // SAFETY: setgroups/setgid/setuid are async-signal-safe syscalls.
            // (The supervisor sets PR_SET_PDEATHSIG after this, since a
            // credential change clears it.)
            unsafe {
                use std::os::unix::process::CommandExt;
                c.pre_exec(move || {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some(layer) = &ctx.layer
            && let Err(e) = layer.attach(&mut c)
        {
            // Surface as a spawn failure of a command that cannot exist.
            let mut bad = std::process::Command::new("/nonexistent/pacmesh-overlay-setup-failed");
            bad.env("PACMESH_ERR", e.to_string());
            return bad;
        }
        c
    }

    fn opts(&self, ctx: &Ctx, capture: Option<usize>) -> RunOptions {
        RunOptions {
            timeout: ctx.deadline.saturating_duration_since(Instant::now()),
            grace: self.cfg.grace,
            capture_stdout: capture,
            ..RunOptions::default()
        }
    }

    /// Build the PKGBUILD folder `dir`; log lines go to `log_sink` as they come.
    pub fn build(&self, dir: &Path, log_sink: &mut dyn FnMut(&str)) -> BuildResult {
        self.run(dir, log_sink, false)
    }

    /// Phase 1 only: the `.SRCINFO` of `dir`, generated in the offline
    /// sandbox (`srcinfo_text`/`srcinfo` of the result; no artifacts).
    pub fn print_srcinfo(&self, dir: &Path, log_sink: &mut dyn FnMut(&str)) -> BuildResult {
        self.run(dir, log_sink, true)
    }

    fn run(&self, dir: &Path, log_sink: &mut dyn FnMut(&str), only_srcinfo: bool) -> BuildResult {
        let start = Instant::now();
        let deadline = start + self.cfg.timeout;
        let mut log = LogCollector::new(self.cfg.log_cap, log_sink);
        let mut res = BuildResult {
            outcome: Outcome::Success,
            failed_phase: None,
            error: None,
            srcinfo_text: None,
            srcinfo: None,
            artifacts: Vec::new(),
            buildinfo: None,
            log: String::new(),
            log_truncated: false,
            duration: Duration::ZERO,
            work_dir: PathBuf::new(),
            source_cache_dir: None,
        };
        log.note(&format!(
            "==> pacmesh: building {} (profile {}, SOURCE_DATE_EPOCH={})",
            dir.display(),
            self.cfg.profile.name(),
            self.cfg.source_date_epoch
        ));
        let ctx = match self.prepare(dir, deadline) {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("cannot prepare the build: {e}");
                log.note(&format!("==> pacmesh: ERROR: {msg}"));
                res.outcome = Outcome::SandboxError { msg: msg.clone() };
                res.failed_phase = Some(Phase::Prepare);
                res.error = Some(msg);
                return finish(res, log, start);
            }
        };
        res.work_dir = ctx.dir.clone();
        let r = self.phases(&ctx, &mut log, &mut res, only_srcinfo);
        if self.cfg.interfere && !only_srcinfo {
            let hook = match &r {
                Ok(()) => Some("on-success.sh"),
                Err((Phase::Interfere, Outcome::Failed { code }, _))
                    if *code == crate::interfere::SKIP_CODE =>
                {
                    None
                }
                Err(_) => Some("on-failure.sh"),
            };
            if let Some(h) = hook {
                self.run_hook(&ctx, h, &mut log);
            }
        }
        if let Err((phase, outcome, msg)) = r {
            log.note(&format!(
                "==> pacmesh: ERROR in phase {}: {msg} ({outcome})",
                phase.name()
            ));
            res.outcome = outcome;
            res.failed_phase = Some(phase);
            res.error = Some(format!("phase {}: {msg}", phase.name()));
        } else if !only_srcinfo {
            log.note(&format!(
                "==> pacmesh: built {} package(s) in {:.1}s",
                res.artifacts.len(),
                start.elapsed().as_secs_f64()
            ));
        }
        if let Some(layer) = ctx.layer.clone()
            && !self.cfg.keep_work_dir
            && let Err(e) = layer.remove()
        {
            log.note(&format!(
                "==> pacmesh: warning: cannot remove the layer: {e}"
            ));
        }
        if !self.cfg.keep_work_dir {
            // Keep only the packages (build/out); sources and pkg/ go.
            for sub in ["work", "pkgbuild", "srcdest", "home", "logs"] {
                let _ = overlay::remove_tree(&ctx.build.join(sub));
            }
            if res.artifacts.is_empty() {
                let _ = overlay::remove_tree(&ctx.dir);
            }
        }
        finish(res, log, start)
    }

    fn run_phase(
        &self,
        ctx: &Ctx,
        phase: Phase,
        b: &BwrapCommand,
        capture: Option<usize>,
        log: &mut LogCollector<'_>,
    ) -> supervise::RunStatus {
        log.note(&format!(
            "==> pacmesh: phase {} (network: {})",
            phase.name(),
            if b.options().iter().any(|o| o == "--share-net") {
                "shared"
            } else {
                "none"
            }
        ));
        let from = log.len();
        let mut st = supervise::run_with_log(self.command(ctx, b), &self.opts(ctx, capture), log);
        log.flush_partial();
        // bwrap exits 1 with "bwrap: ..." when it cannot set the sandbox up:
        // that is a sandbox error, not a failure of the PKGBUILD.
        if st.outcome == (Outcome::Failed { code: 1 })
            && let Some(first) = log.text_from(from).lines().next()
            && first.starts_with("bwrap: ")
        {
            st.outcome = Outcome::SandboxError {
                msg: first.to_string(),
            };
        }
        st
    }

    fn phases(
        &self,
        ctx: &Ctx,
        log: &mut LogCollector<'_>,
        res: &mut BuildResult,
        only_srcinfo: bool,
    ) -> Result<(), (Phase, Outcome, String)> {
        let fail_run = |phase: Phase, outcome: Outcome, what: &str| -> (Phase, Outcome, String) {
            let msg = match &outcome {
                Outcome::Failed { code } => format!("{what} exited with code {code}"),
                Outcome::TimedOut => format!(
                    "{what} exceeded the build timeout of {:?}",
                    self.cfg.timeout
                ),
                Outcome::Killed { signal } => format!("{what} was killed by signal {signal}"),
                Outcome::SandboxError { msg } => format!("sandbox error: {msg}"),
                Outcome::Success => format!("{what} failed"),
            };
            (phase, outcome, msg)
        };

        // ---- interferes (.CI/), offline --------------------------------------
        if self.cfg.interfere {
            self.interfere(ctx, log)?;
        }

        // ---- phase 1: .SRCINFO, offline --------------------------------------
        let mut b = self.sandbox(ctx, false, false);
        self.env(&mut b, SANDBOX_STARTDIR);
        b.remount_ro("/");
        let mut st = None;
        if self.cfg.fast_srcinfo {
            b.command(["bash", "-c", FAST_SRCINFO_SCRIPT, "pacmesh-srcinfo"]);
            let fast = self.run_phase(ctx, Phase::Srcinfo, &b, Some(SRCINFO_CAP), log);
            if fast.outcome.is_success() && !fast.stdout.as_deref().unwrap_or_default().is_empty() {
                st = Some(fast);
            } else if let Outcome::TimedOut | Outcome::SandboxError { .. } = fast.outcome {
                st = Some(fast);
            } else {
                log.note("==> pacmesh: fast .SRCINFO path failed; running makepkg --printsrcinfo");
            }
        }
        let st = match st {
            Some(st) => st,
            None => {
                b.command(["makepkg", "--printsrcinfo"]);
                self.run_phase(ctx, Phase::Srcinfo, &b, Some(SRCINFO_CAP), log)
            }
        };
        if !st.outcome.is_success() {
            return Err(fail_run(
                Phase::Srcinfo,
                st.outcome,
                "makepkg --printsrcinfo (PKGBUILD syntax error?)",
            ));
        }
        if st.stdout_truncated {
            return Err((
                Phase::Srcinfo,
                Outcome::Failed { code: 1 },
                format!(".SRCINFO larger than {SRCINFO_CAP} bytes"),
            ));
        }
        let text = st.stdout.unwrap_or_default();
        let srcinfo = match SrcInfo::from_bytes(&text) {
            Ok(s) => s,
            Err(e) => {
                res.srcinfo_text = Some(String::from_utf8_lossy(&text).into_owned());
                return Err((
                    Phase::Srcinfo,
                    Outcome::Failed { code: 1 },
                    format!("cannot parse the .SRCINFO makepkg printed: {e}"),
                ));
            }
        };
        log.note(&format!(
            "==> pacmesh: pkgbase {} {} -> {}",
            srcinfo.pkgbase(),
            srcinfo.version(),
            srcinfo.pkgnames().join(" ")
        ));
        res.srcinfo_text = Some(String::from_utf8_lossy(&text).into_owned());
        res.srcinfo = Some(srcinfo.clone());
        if only_srcinfo {
            return Ok(());
        }

        // ---- phase 2: fetch sources, network shared ---------------------------
        let remote = srcinfo
            .sources_for_arch(&self.cfg.arch)
            .iter()
            .any(|s| !s.is_local());
        let key = source_cache_key(&srcinfo, &self.cfg.arch);
        let entry = self.cfg.source_cache.join(&key);
        if remote {
            std::fs::create_dir_all(&entry).map_err(|e| {
                (
                    Phase::FetchSources,
                    Outcome::SandboxError { msg: e.to_string() },
                    format!("cannot create {}: {e}", entry.display()),
                )
            })?;
            res.source_cache_dir = Some(entry.clone());
            let _lock = CacheLock::take(&entry, true).map_err(|e| {
                (
                    Phase::FetchSources,
                    Outcome::SandboxError { msg: e.to_string() },
                    format!("cannot lock the source cache: {e}"),
                )
            })?;
            let mut b = self.sandbox(ctx, true, false);
            b.bind(&entry, SANDBOX_SOURCES);
            for p in &self.cfg.fetch_ro_binds {
                b.ro_bind_try(p, p);
            }
            self.env(&mut b, SANDBOX_SOURCES);
            b.command([
                "makepkg",
                "--verifysource",
                "--nodeps",
                "--noconfirm",
                "--noprogressbar",
                "--nocolor",
            ]);
            b.remount_ro("/");
            let st = self.run_phase(ctx, Phase::FetchSources, &b, None, log);
            if !st.outcome.is_success() {
                return Err(fail_run(
                    Phase::FetchSources,
                    st.outcome,
                    "makepkg --verifysource",
                ));
            }
        } else {
            log.note("==> pacmesh: phase fetch-sources skipped (all sources are in the folder)");
        }

        // ---- chroot: install dependencies into the layer ---------------------
        if let Profile::Chroot(cc) = &self.cfg.profile {
            self.install_deps(ctx, cc, &srcinfo, log)?;
        }

        // ---- phase 3: build, offline -----------------------------------------
        let _lock = if remote {
            // Symlink farm: makepkg wants a writable SRCDEST; the cache itself is read-only here.
            let links = ctx.build.join("srcdest");
            if let Ok(rd) = std::fs::read_dir(&entry) {
                for e in rd.flatten() {
                    let _ = std::os::unix::fs::symlink(
                        Path::new(SANDBOX_SOURCES).join(e.file_name()),
                        links.join(e.file_name()),
                    );
                }
            }
            Some(CacheLock::take(&entry, false).map_err(|e| {
                (
                    Phase::Build,
                    Outcome::SandboxError { msg: e.to_string() },
                    format!("cannot lock the source cache: {e}"),
                )
            })?)
        } else {
            None
        };
        let mut b = self.sandbox(ctx, false, false);
        if remote {
            b.ro_bind(&entry, SANDBOX_SOURCES);
        }
        self.env(&mut b, SANDBOX_SRCDEST_LINKS);
        let mut argv: Vec<OsString> = [
            "makepkg",
            "--holdver",
            "--noconfirm",
            "--noprogressbar",
            "--nocolor",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        if matches!(self.cfg.profile, Profile::Host) {
            argv.push("--nodeps".into());
        }
        if ctx.build.join("home/.pacmesh-caur-push.sh").is_file() {
            let mut w: Vec<OsString> = vec![
                "bash".into(),
                "-c".into(),
                crate::interfere::PUSH_WRAPPER.into(),
                "pacmesh-push".into(),
            ];
            w.extend(argv);
            argv = w;
        }
        b.command(argv);
        b.remount_ro("/");
        let st = self.run_phase(ctx, Phase::Build, &b, None, log);
        if !st.outcome.is_success() {
            return Err(fail_run(Phase::Build, st.outcome, "makepkg"));
        }

        // ---- phase 4: collect ---------------------------------------------------
        let arts = artifact::collect(&ctx.build.join("out")).map_err(|e| {
            (
                Phase::Collect,
                Outcome::SandboxError { msg: e.to_string() },
                format!("cannot read the packages: {e}"),
            )
        })?;
        if arts.is_empty() {
            return Err((
                Phase::Collect,
                Outcome::Failed { code: 1 },
                "makepkg succeeded but produced no package".into(),
            ));
        }
        for a in &arts {
            log.note(&format!(
                "==> pacmesh: {} blake3 {} sha256 {} ({} bytes)",
                a.file_name, a.blake3, a.sha256, a.size
            ));
        }
        res.buildinfo = arts.iter().find_map(|a| a.buildinfo.clone());
        res.artifacts = arts;
        Ok(())
    }

    /// The interfere phase ([`crate::interfere`]); nothing to do without `.CI/`.
    fn interfere(
        &self,
        ctx: &Ctx,
        log: &mut LogCollector<'_>,
    ) -> Result<(), (Phase, Outcome, String)> {
        use crate::interfere as i;
        let phase = Phase::Interfere;
        let folder = ctx.build.join("pkgbuild");
        let ci = folder.join(".CI");
        if !std::fs::symlink_metadata(&ci).is_ok_and(|m| m.is_dir())
            && self.cfg.rebuild_bump.is_none()
        {
            return Ok(());
        }
        if let Some(b) = &self.cfg.rebuild_bump {
            let ok = b.split_once('/').is_some_and(|(v, c)| {
                !v.is_empty()
                    && v.bytes()
                        .all(|x| x.is_ascii_alphanumeric() || b"._+:~-".contains(&x))
                    && c.parse::<u32>().is_ok_and(|c| c >= 1)
            });
            if !ok {
                return Err((
                    phase,
                    Outcome::Failed { code: 1 },
                    format!("rebuild bump {b:?} is not VERSION/COUNT"),
                ));
            }
        }
        let cfg = pacmesh_repo::ciconfig::read_folder(&folder)
            .map_err(|e| (phase, Outcome::Failed { code: 1 }, e.to_string()))?;
        for w in cfg.iter().flat_map(|c| &c.warnings) {
            log.note(&format!("==> pacmesh: .CI/config: {w}"));
        }
        let mut b = self.sandbox(ctx, false, false);
        self.env(&mut b, SANDBOX_STARTDIR);
        if let Some(bump) = cfg.and_then(|c| c.package_bump) {
            b.setenv("PACMESH_PACKAGE_BUMP", bump.to_string());
        }
        if let Some(bump) = &self.cfg.rebuild_bump {
            b.setenv("PACMESH_REBUILD_BUMP", bump);
        }
        b.command(["bash", "-c", i::INTERFERE_SCRIPT, "pacmesh-interfere"]);
        b.remount_ro("/");
        let st = self.run_phase(ctx, phase, &b, None, log);
        match st.outcome {
            Outcome::Success => Ok(()),
            Outcome::Failed { code } if code == i::SKIP_CODE => Err((
                phase,
                st.outcome,
                "skipped: .CI/prepare returned CI_CODE_SKIP".into(),
            )),
            Outcome::Failed { code } if code == i::PATCH_FAILED_CODE => Err((
                phase,
                st.outcome,
                ".CI/interfere.patch does not apply".into(),
            )),
            Outcome::Failed { code } if code == i::PREPARE_FAILED_CODE => {
                Err((phase, st.outcome, ".CI/prepare failed".into()))
            }
            Outcome::Failed { code } => Err((
                phase,
                st.outcome,
                format!("applying the interferes failed (status {code})"),
            )),
            o => Err((phase, o.clone(), format!("interferes: {o}"))),
        }
    }

    /// Runs `.CI/HOOK` if the folder has it (its status is only logged).
    fn run_hook(&self, ctx: &Ctx, hook: &str, log: &mut LogCollector<'_>) {
        let folder = ctx.build.join("pkgbuild");
        if !std::fs::symlink_metadata(folder.join(".CI")).is_ok_and(|m| m.is_dir())
            || !folder.join(".CI").join(hook).is_file()
        {
            return;
        }
        let mut b = self.sandbox(ctx, false, false);
        self.env(&mut b, SANDBOX_STARTDIR);
        b.command([
            "bash",
            "-c",
            crate::interfere::HOOK_SCRIPT,
            "pacmesh-hook",
            hook,
        ]);
        b.remount_ro("/");
        log.note(&format!("==> pacmesh: hook .CI/{hook}"));
        let opts = RunOptions {
            timeout: crate::interfere::HOOK_TIMEOUT,
            grace: self.cfg.grace,
            ..RunOptions::default()
        };
        let st = supervise::run_with_log(self.command(ctx, &b), &opts, log);
        log.flush_partial();
        if !st.outcome.is_success() {
            log.note(&format!("==> pacmesh: hook .CI/{hook}: {}", st.outcome));
        }
    }

    fn install_deps(
        &self,
        ctx: &Ctx,
        cc: &profile::ChrootConfig,
        srcinfo: &SrcInfo,
        log: &mut LogCollector<'_>,
    ) -> Result<(), (Phase, Outcome, String)> {
        let phase = Phase::InstallDeps;
        let d = srcinfo.depends_for_arch(&self.cfg.arch);
        let mut deps: Vec<String> = Vec::new();
        for x in d
            .depends
            .iter()
            .chain(&d.makedepends)
            .chain(if cc.install_checkdepends {
                d.checkdepends.iter()
            } else {
                [].iter()
            })
        {
            if !deps.contains(x) {
                deps.push(x.clone());
            }
        }
        if deps.is_empty() {
            log.note("==> pacmesh: phase install-deps skipped (no dependencies)");
            return Ok(());
        }
        let conf = ctx.dir.join("pacman.conf");
        let mut text = String::from(
            "# generated by pacmesh for one build\n[options]\nArchitecture = auto\nCacheDir = /tmp/pacman-cache/\nLogFile = /tmp/pacman.log\nSigLevel = Required DatabaseOptional\n",
        );
        let mut net = false;
        for r in &cc.repos {
            match r {
                PacmanRepo::Local {
                    name, sig_level, ..
                } => {
                    text.push_str(&format!("\n[{name}]\nSigLevel = {sig_level}\nServer = file:///pacmesh/repos/{name}\n"));
                }
                PacmanRepo::Remote {
                    name,
                    server,
                    sig_level,
                } => {
                    net = true;
                    text.push_str(&format!(
                        "\n[{name}]\nSigLevel = {sig_level}\nServer = {server}\n"
                    ));
                }
            }
        }
        std::fs::write(&conf, text).map_err(|e| {
            (
                phase,
                Outcome::SandboxError { msg: e.to_string() },
                format!("cannot write pacman.conf: {e}"),
            )
        })?;
        let mk = |net: bool, argv: Vec<String>| {
            let mut b = self.sandbox(ctx, net, true);
            for r in &cc.repos {
                if let PacmanRepo::Local { name, dir, .. } = r {
                    b.ro_bind(dir, format!("/pacmesh/repos/{name}"));
                }
            }
            b.ro_bind(&conf, "/pacmesh/pacman.conf");
            b.clearenv()
                .setenv("PATH", PATH)
                .setenv("LANG", "C.UTF-8")
                .setenv("HOME", "/root")
                .chdir("/");
            b.command(argv);
            b
        };
        // Which dependencies does the base root not satisfy already?
        let mut argv = vec![
            "pacman".to_string(),
            "--config".into(),
            "/pacmesh/pacman.conf".into(),
            "-T".into(),
            "--".into(),
        ];
        argv.extend(deps.iter().cloned());
        let st = self.run_phase(ctx, phase, &mk(false, argv), Some(1 << 20), log);
        let missing: Vec<String> = match &st.outcome {
            Outcome::Success => Vec::new(),
            Outcome::Failed { code: 127 } => {
                String::from_utf8_lossy(st.stdout.as_deref().unwrap_or_default())
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            o => {
                let o = o.clone();
                return Err((phase, o.clone(), format!("pacman -T failed ({o})")));
            }
        };
        if missing.is_empty() {
            log.note("==> pacmesh: all dependencies are in the base root");
            return Ok(());
        }
        log.note(&format!(
            "==> pacmesh: installing into the layer: {}",
            missing.join(" ")
        ));
        let mut argv: Vec<String> = [
            "pacman",
            "--config",
            "/pacmesh/pacman.conf",
            "--noconfirm",
            "--noprogressbar",
            "--needed",
            "-Sy",
            "--",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(missing);
        let st = self.run_phase(ctx, phase, &mk(net, argv), None, log);
        if !st.outcome.is_success() {
            let msg = match &st.outcome {
                Outcome::Failed { code } => format!(
                    "pacman -S exited with code {code} (dependency not in the configured repositories?)"
                ),
                o => format!("pacman -S: {o}"),
            };
            return Err((phase, st.outcome, msg));
        }
        Ok(())
    }
}

fn finish(mut res: BuildResult, log: LogCollector<'_>, start: Instant) -> BuildResult {
    let (text, truncated) = log.finish();
    res.log = text;
    res.log_truncated = truncated;
    res.duration = start.elapsed();
    res
}
