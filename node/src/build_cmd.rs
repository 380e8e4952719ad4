//! `pacmesh build DIR`: one PKGBUILD folder through the sandbox, artifacts copied to `--out`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pacmesh_sandbox::{BuildConfig, Builder, ChrootConfig, PacmanRepo, Profile};

use crate::keys::{NodeKey, default_data_dir};

/// What the user asked for; resolved into a [`BuildConfig`] by [`run`].
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub profile: String,
    pub base_root: Option<PathBuf>,
    /// `NAME=DIR` local repositories for the chroot profile's dependencies.
    pub dep_repos: Vec<String>,
    pub timeout: u64,
    pub source_date_epoch: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub quiet: bool,
    pub json: bool,
}

pub fn run(req: BuildRequest) -> Result<()> {
    if !req.dir.join("PKGBUILD").is_file() {
        bail!("{} has no PKGBUILD", req.dir.display());
    }
    pacmesh_sandbox::preflight().context("the build sandbox cannot run on this machine")?;
    let data_dir = req.data_dir.clone().unwrap_or_else(default_data_dir);
    let profile = match req.profile.as_str() {
        "host" => Profile::Host,
        "chroot" => {
            let base = req.base_root.clone().context(
                "--profile chroot needs --base-root DIR (a root with pacman and makepkg)",
            )?;
            let mut cfg = ChrootConfig::new(base);
            for spec in &req.dep_repos {
                let (name, dir) = spec
                    .split_once('=')
                    .with_context(|| format!("--dep-repo {spec:?}: expected NAME=DIR"))?;
                cfg.repos.push(PacmanRepo::local(
                    name,
                    std::fs::canonicalize(dir)
                        .with_context(|| format!("--dep-repo {spec}: cannot open {dir}"))?,
                    "Optional TrustAll",
                ));
            }
            pacmesh_sandbox::preflight_chroot(&data_dir.join("work"))
                .context("the chroot profile cannot run on this machine")?;
            Profile::Chroot(cfg)
        }
        other => bail!("unknown profile {other:?}: use host or chroot"),
    };
    let epoch = match req.source_date_epoch {
        Some(e) => e,
        None => default_epoch(&req.dir)?,
    };
    let mut cfg = BuildConfig::new(data_dir.join("work"), data_dir.join("sources"));
    cfg.profile = profile;
    cfg.timeout = Duration::from_secs(req.timeout);
    cfg.source_date_epoch = epoch;
    cfg.packager = packager(req.key.as_deref());
    std::fs::create_dir_all(&cfg.work_root)
        .with_context(|| format!("cannot create {}", cfg.work_root.display()))?;
    std::fs::create_dir_all(&req.out)
        .with_context(|| format!("cannot create {}", req.out.display()))?;

    let quiet = req.quiet;
    let result = Builder::new(cfg).build(&req.dir, &mut |line: &str| {
        if !quiet {
            eprintln!("{line}");
        }
    });
    if !result.outcome.is_success() {
        let tail = result.log_tail(20);
        let _ = result.cleanup();
        if quiet {
            eprintln!("{tail}");
        }
        bail!(
            "build of {} {}{}",
            req.dir.display(),
            result.outcome,
            result
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
    }
    let mut placed = Vec::new();
    for a in &result.artifacts {
        let dest = req.out.join(&a.file_name);
        copy_atomic(&a.path, &dest)?;
        placed.push((dest, a));
    }
    let _ = result.cleanup();
    if req.json {
        let list: Vec<_> = placed
            .iter()
            .map(|(p, a)| {
                serde_json::json!({
                    "path": p, "file_name": a.file_name, "blake3": a.blake3, "sha256": a.sha256,
                    "size": a.size, "pkgname": a.pkgname, "pkgver": a.pkgver,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "source_date_epoch": epoch, "artifacts": list,
            }))?
        );
    } else {
        for (p, a) in &placed {
            println!("{}  {}", a.blake3, p.display());
        }
    }
    Ok(())
}

/// `SOURCE_DATE_EPOCH` from the environment, else the PKGBUILD's modification time, so that
/// rebuilding an unchanged folder gives the same bytes.
fn default_epoch(dir: &Path) -> Result<u64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"));
    }
    let m = std::fs::metadata(dir.join("PKGBUILD"))?.modified()?;
    Ok(m.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(1)
        .max(1))
}

/// `PACKAGER` names the node when its key is readable, a generic packager otherwise.
fn packager(key: Option<&Path>) -> String {
    let path = key
        .map(Path::to_path_buf)
        .unwrap_or_else(crate::keys::default_key_path);
    match NodeKey::load(&path) {
        Ok(k) => format!("pacmesh node <{}@pacmesh.invalid>", k.peer_id()),
        Err(_) => "pacmesh <pacmesh@localhost>".into(),
    }
}

fn copy_atomic(from: &Path, to: &Path) -> Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let mut src =
        std::fs::File::open(from).with_context(|| format!("cannot read {}", from.display()))?;
    std::io::copy(&mut src, tmp.as_file_mut())?;
    tmp.as_file().sync_all()?;
    tmp.persist(to)
        .with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}
