//! `CI_PKGBUILD_SOURCE`: a packages-tree folder whose PKGBUILD lives elsewhere.
//!
//! A tree folder whose `.CI/config` says
//!
//! | value | the PKGBUILD and its files come from |
//! | --- | --- |
//! | `aur` | the AUR package base named like the folder: `AUR_URL/FOLDER.git` (`--aur-url`) |
//! | `gitlab:ID` | the GitLab project ID: its `http_url_to_repo` from `GITLAB_URL/api/v4/projects/ID` (config `gitlab_url`, default `https://gitlab.com`) |
//! | a git URL | that repository |
//! | `custom` or nothing | the folder itself (nothing is done here) |
//!
//! is built from the newest commit of that repository's default branch, with the folder's own
//! `.CI/` (config and interferes: `prepare`, `interfere.patch`, `PKGBUILD.prepend`,
//! `PKGBUILD.append`, hooks) put in place of any `.CI/` upstream has: the folder's files win for
//! interferes, the upstream PKGBUILD and its other files are used (Chaotic-AUR's "pull the
//! repository and replace the existing files with the new ones"). The commit used is recorded
//! in the `built` event (`source_commit`); the tree commit stays in the entry.
//!
//! Fetching goes through [`crate::source`] (git2, the node's mirrors, its size and path rules).
//! A network failure is transient ([`SourceError::Network`]: the executor retries with
//! backoff); a project or package base that does not exist, or an answer that is not GitLab's
//! JSON, fails the entry with the reason.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use pacmesh_repo::ciconfig::PkgbuildSource;

use crate::source::{Fetched, SourceConfig, SourceError};

/// The largest GitLab API answer read.
const MAX_API_BYTES: u64 = 1 << 20;

/// Where an upstream PKGBUILD was taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `aur`, `gitlab:ID` or the URL, as the config says.
    pub what: String,
    /// The git URL fetched.
    pub url: String,
    /// The commit used.
    pub commit: String,
}

/// The git URL of GitLab project `id`: `http_url_to_repo` of `BASE/api/v4/projects/ID`.
pub fn gitlab_repo_url(api_base: &str, id: u64) -> Result<String, SourceError> {
    let url = format!("{}/api/v4/projects/{id}", api_base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .user_agent(concat!("pacmesh/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut resp = agent
        .get(&url)
        .header("accept", "application/json")
        .call()
        .map_err(|e| SourceError::Network(format!("GitLab API {url}: {e}")))?;
    let status = resp.status().as_u16();
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_API_BYTES)
        .read_to_vec()
        .map_err(|e| SourceError::Network(format!("GitLab API {url}: {e}")))?;
    if status == 429 || status >= 500 {
        return Err(SourceError::Network(format!(
            "GitLab API {url}: HTTP {status}"
        )));
    }
    if status == 404 {
        return Err(SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE=gitlab:{id}: no such GitLab project ({url} answered 404)"
        )));
    }
    if status != 200 {
        return Err(SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE=gitlab:{id}: {url} answered HTTP {status}"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE=gitlab:{id}: {url} is not GitLab's JSON: {e}"
        ))
    })?;
    match v["http_url_to_repo"].as_str() {
        Some(u) if !u.is_empty() && !u.starts_with('-') && u.len() <= 4096 => Ok(u.to_string()),
        _ => Err(SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE=gitlab:{id}: {url} gives no http_url_to_repo"
        ))),
    }
}

/// When `fetched` (a tree folder `folder`) names an upstream PKGBUILD source, fetches it into
/// `dest` (must not exist), puts the folder's `.CI/` over it and returns the new folder and
/// where it came from; `Ok(None)` for a folder that is its own source (or whose `.CI/config`
/// is invalid: the sandbox's interfere phase fails it with the line named).
pub fn overlay(
    cfg: &SourceConfig,
    gitlab_url: &str,
    fetched: &Fetched,
    folder: &str,
    dest: &Path,
    cancel: &AtomicBool,
) -> Result<Option<(Fetched, Upstream)>, SourceError> {
    let Ok(Some(ci)) = pacmesh_repo::ciconfig::read_folder(&fetched.dir) else {
        return Ok(None);
    };
    let (what, url) = match &ci.pkgbuild_source {
        None | Some(PkgbuildSource::Custom) => return Ok(None),
        Some(PkgbuildSource::Aur) => ("aur".to_string(), crate::aur::git_url(&cfg.aur_url, folder)),
        Some(PkgbuildSource::Gitlab(id)) => {
            (format!("gitlab:{id}"), gitlab_repo_url(gitlab_url, *id)?)
        }
        Some(PkgbuildSource::Git(u)) => (u.clone(), u.clone()),
    };
    let context = |e: SourceError| match e {
        SourceError::NoSuchRev { .. } if what == "aur" => SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE=aur: {url} has no commit: {folder} is not (or no longer) in the AUR"
        )),
        SourceError::Network(m) => SourceError::Network(format!("CI_PKGBUILD_SOURCE={what}: {m}")),
        SourceError::Git(m) => SourceError::Git(format!("CI_PKGBUILD_SOURCE={what}: {m}")),
        SourceError::Refused(m) => SourceError::Refused(format!("CI_PKGBUILD_SOURCE={what}: {m}")),
        e => e,
    };
    let up = crate::source::git_checkout(cfg, &url, None, None, dest, cancel).map_err(context)?;
    if !up.dir.join("PKGBUILD").is_file() {
        return Err(SourceError::Refused(format!(
            "CI_PKGBUILD_SOURCE={what}: {url} has no PKGBUILD"
        )));
    }
    // The folder's .CI/ replaces upstream's (both were written by the source module, whose
    // rules keep every link inside its folder; a rename keeps them as they are).
    let theirs = up.dir.join(".CI");
    if std::fs::symlink_metadata(&theirs).is_ok() {
        let r = if std::fs::symlink_metadata(&theirs).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir_all(&theirs)
        } else {
            std::fs::remove_file(&theirs)
        };
        r.map_err(|source| SourceError::Io {
            context: format!("cannot remove {}", theirs.display()),
            source,
        })?;
    }
    let ours: PathBuf = fetched.dir.join(".CI");
    std::fs::rename(&ours, &theirs).map_err(|source| SourceError::Io {
        context: format!("cannot move {} to {}", ours.display(), theirs.display()),
        source,
    })?;
    let commit = up.commit.clone().unwrap_or_default();
    Ok(Some((
        Fetched {
            dir: up.dir,
            commit: up.commit,
            // The tree commit's time: the entry pins the tree, upstream may move.
            commit_time: fetched.commit_time.or(up.commit_time),
        },
        Upstream { what, url, commit },
    )))
}
