//! Checks that the machine can run sandboxed builds, with messages that say
//! what to do about it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why sandboxed builds cannot run here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PreflightError {
    #[error(
        "bubblewrap (bwrap) is not installed or not on PATH: install bubblewrap (Arch: pacman -S bubblewrap; Debian/Ubuntu: apt install bubblewrap)"
    )]
    BwrapMissing,
    #[error("unprivileged user namespaces are disabled: {hint}")]
    UserNamespacesDisabled { hint: String },
    #[error("bubblewrap is installed but cannot start a sandbox: {stderr}")]
    BwrapFailed { stderr: String },
    #[error(
        "makepkg is not installed or not on PATH: install pacman (it ships makepkg; Debian/Ubuntu: apt install makepkg)"
    )]
    MakepkgMissing,
    #[error(
        "overlayfs cannot be mounted in an unprivileged user namespace (needs Linux >= 5.11): {detail}"
    )]
    OverlayUnavailable { detail: String },
}

/// Find an executable on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn read_sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Explain a failed user-namespace sandbox from the kernel knobs that usually cause it.
fn userns_hint() -> Option<String> {
    if read_sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
        return Some("sysctl kernel.unprivileged_userns_clone=1".into());
    }
    if read_sysctl("/proc/sys/user/max_user_namespaces").as_deref() == Some("0") {
        return Some("sysctl user.max_user_namespaces=15000".into());
    }
    if read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    {
        return Some(
            "AppArmor restricts them: sysctl kernel.apparmor_restrict_unprivileged_userns=0, or add an AppArmor profile allowing userns for bwrap"
                .into(),
        );
    }
    None
}

/// Check bwrap exists and can start the kind of sandbox the builds use.
pub fn check_bwrap() -> Result<PathBuf, PreflightError> {
    let bwrap = which("bwrap").ok_or(PreflightError::BwrapMissing)?;
    let mut b = crate::BwrapCommand::with_program(&bwrap);
    b.unshare_all()
        .unshare_user()
        .uid(1000)
        .gid(1000)
        .die_with_parent()
        .new_session();
    crate::profile::bind_host_system(&mut b);
    b.proc("/proc").dev("/dev").tmpfs("/tmp").command(["true"]);
    let out = b
        .to_command()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| PreflightError::BwrapFailed {
            stderr: e.to_string(),
        })?;
    if out.status.success() {
        return Ok(bwrap);
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(hint) = userns_hint() {
        return Err(PreflightError::UserNamespacesDisabled { hint });
    }
    if stderr.contains("No permission to create new namespace")
        || stderr.contains("setting up uid map")
        || stderr.contains("Operation not permitted")
    {
        return Err(PreflightError::UserNamespacesDisabled {
            hint: format!(
                "bwrap says \"{stderr}\"; enable them (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces) or allow them for bwrap in your container runtime"
            ),
        });
    }
    Err(PreflightError::BwrapFailed { stderr })
}

/// Everything the `host` profile needs: bwrap runs a trivial sandbox, user
/// namespaces work, makepkg is installed.
pub fn preflight() -> Result<(), PreflightError> {
    check_bwrap()?;
    which("makepkg").ok_or(PreflightError::MakepkgMissing)?;
    Ok(())
}

/// What the `chroot` profile needs in addition: overlayfs in a user namespace.
pub fn preflight_chroot(scratch: &Path) -> Result<(), PreflightError> {
    preflight()?;
    let err = |d: String| PreflightError::OverlayUnavailable { detail: d };
    let dir = tempfile::Builder::new()
        .prefix("pacmesh-preflight-")
        .tempdir_in(scratch)
        .map_err(|e| err(e.to_string()))?;
    let base = dir.path().join("base");
    std::fs::create_dir_all(&base).map_err(|e| err(e.to_string()))?;
    let layer = crate::overlay::Layer::create(&base, &dir.path().join("layer"))
        .map_err(|e| err(e.to_string()))?;
    let mut cmd = Command::new("true");
    layer.attach(&mut cmd).map_err(|e| err(e.to_string()))?;
    let st = cmd.status().map_err(|e| err(e.to_string()))?;
    layer.remove().map_err(|e| err(e.to_string()))?;
    if st.success() {
        Ok(())
    } else {
        Err(err(format!("test mount exited with {st}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        assert!(
            PreflightError::BwrapMissing
                .to_string()
                .contains("install bubblewrap")
        );
        let e = PreflightError::UserNamespacesDisabled {
            hint: "sysctl kernel.unprivileged_userns_clone=1".into(),
        };
        assert_eq!(
            e.to_string(),
            "unprivileged user namespaces are disabled: sysctl kernel.unprivileged_userns_clone=1"
        );
        assert!(
            PreflightError::MakepkgMissing
                .to_string()
                .contains("install pacman")
        );
    }

    #[test]
    fn which_finds_sh_and_not_nonsense() {
        assert!(which("sh").is_some());
        assert!(which("pacmesh-no-such-program-42").is_none());
        assert!(which("/nonexistent/bwrap").is_none());
    }

    #[test]
    fn preflight_passes_or_explains() {
        match preflight() {
            Ok(()) => {}
            Err(e) => {
                let msg = e.to_string();
                eprintln!("preflight failed here (fine on machines without bwrap/userns): {msg}");
                assert!(
                    msg.contains("install") || msg.contains("sysctl") || msg.contains("bubblewrap"),
                    "{msg}"
                );
            }
        }
    }
}
