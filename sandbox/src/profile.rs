//! Build profiles: what the sandbox sees as its root filesystem.
//!
//! * [`Profile::Host`]: an allow-list of the host's system directories,
//!   read-only (`/usr`, the `/bin /lib /lib64 /sbin ...` links or directories
//!   as the host has them, `/opt` if present) and a curated `/etc` on a tmpfs
//!   ([`ETC_ALLOW`]); never the whole root, never `/root`, `/home`, `/var`
//!   (except a pacman database for `.BUILDINFO`), `/srv`, `/mnt`, `/run`.
//!   makepkg runs with `--nodeps`.
//! * [`Profile::Chroot`]: a base root directory (pacstrap'd base-devel on
//!   Arch) plus a per-build copy-on-write layer ([`crate::overlay::Layer`])
//!   into which the `.SRCINFO` dependencies are installed with pacman from
//!   the configured repositories.

use std::path::{Path, PathBuf};

use crate::BwrapCommand;

/// Which root filesystem a build sees.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Profile {
    /// Host system directories read-only, `makepkg --nodeps`.
    Host,
    /// A base root plus a per-build overlay with the dependencies installed.
    Chroot(ChrootConfig),
}

impl Profile {
    /// Short name: `host` or `chroot`.
    pub fn name(&self) -> &'static str {
        match self {
            Profile::Host => "host",
            Profile::Chroot(_) => "chroot",
        }
    }
}

/// Configuration of the `chroot` profile.
#[derive(Debug, Clone)]
pub struct ChrootConfig {
    /// The base root (e.g. `pacstrap -c base-devel`), owned by the node's uid.
    /// It must contain pacman, makepkg and a local pacman database.
    pub base_root: PathBuf,
    /// Repositories dependencies are installed from, in priority order.
    pub repos: Vec<PacmanRepo>,
    /// Also install `checkdepends` (when `check()` runs).
    pub install_checkdepends: bool,
}

impl ChrootConfig {
    /// A chroot profile over `base_root` with no repositories yet.
    pub fn new(base_root: impl Into<PathBuf>) -> Self {
        ChrootConfig {
            base_root: base_root.into(),
            repos: Vec::new(),
            install_checkdepends: true,
        }
    }
}

/// A pacman repository to install dependencies from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacmanRepo {
    /// A directory holding `NAME.db` and the packages (e.g. the mesh's own
    /// repo, or one made with `repo-add`); bound read-only into the sandbox.
    Local {
        name: String,
        dir: PathBuf,
        sig_level: String,
    },
    /// A remote repository; the install step then shares the network.
    Remote {
        name: String,
        server: String,
        sig_level: String,
    },
}

impl PacmanRepo {
    /// A local directory repository.
    pub fn local(
        name: impl Into<String>,
        dir: impl Into<PathBuf>,
        sig_level: impl Into<String>,
    ) -> Self {
        PacmanRepo::Local {
            name: name.into(),
            dir: dir.into(),
            sig_level: sig_level.into(),
        }
    }

    /// A remote repository (`Server =` URL, `$repo`/`$arch` allowed).
    pub fn remote(
        name: impl Into<String>,
        server: impl Into<String>,
        sig_level: impl Into<String>,
    ) -> Self {
        PacmanRepo::Remote {
            name: name.into(),
            server: server.into(),
            sig_level: sig_level.into(),
        }
    }

    /// The repository name.
    pub fn name(&self) -> &str {
        match self {
            PacmanRepo::Local { name, .. } | PacmanRepo::Remote { name, .. } => name,
        }
    }
}

/// Top-level host entries that are links or directories of system files.
pub const HOST_ROOT_LINKS: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// `/etc` entries the host profile binds read-only (a trailing `*` matches a
/// prefix). Everything else in `/etc` is absent: `shadow`, `gshadow`,
/// `sudoers*`, `ssh/` (host keys), `ssl/private` (see [`ETC_MASK`]),
/// `pacman.d/gnupg`, `machine-id`, `NetworkManager/`, `wireguard/`... The
/// sandbox gets its own `passwd` and `group`.
pub const ETC_ALLOW: &[&str] = &[
    "alternatives",
    "bash.bashrc",
    "ca-certificates",
    "ca-certificates.conf",
    "crypto-policies",
    "debian_version",
    "fonts",
    "gai.conf",
    "gitconfig",
    "host.conf",
    "hosts",
    "inputrc",
    "java-*",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "locale.alias",
    "locale.conf",
    "localtime",
    "login.defs",
    "lsb-release",
    "makepkg.conf",
    "makepkg.conf.d",
    "mime.types",
    "networks",
    "nsswitch.conf",
    "os-release",
    "pacman.conf",
    "perl",
    "pki",
    "protocols",
    "python3*",
    "resolv.conf",
    "services",
    "sgml",
    "shells",
    "ssl",
    "terminfo",
    "texmf",
    "timezone",
    "xdg",
    "xml",
];

/// Paths under allowed `/etc` entries that are hidden again (an empty tmpfs
/// is mounted over them when they exist).
pub const ETC_MASK: &[&str] = &["ssl/private", "pki/tls/private", "pki/CA/private"];

fn etc_allowed(name: &str) -> bool {
    ETC_ALLOW.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => *a == name,
    })
}

/// Bind the host's system directories read-only: `/usr`, the root links or
/// directories as the host has them, and `/opt` if present. Not `/etc`.
pub fn bind_host_system(b: &mut BwrapCommand) {
    b.ro_bind("/usr", "/usr");
    for name in HOST_ROOT_LINKS {
        let p = Path::new("/").join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(&p) {
                    b.symlink(target, &p);
                }
            }
            Ok(md) if md.is_dir() => {
                b.ro_bind(&p, &p);
            }
            _ => {}
        }
    }
    if Path::new("/opt").is_dir() {
        b.ro_bind("/opt", "/opt");
    }
}

/// A tmpfs `/etc` holding the allow-listed host entries (read-only), the
/// masks, and the given `passwd`/`group` files.
pub fn bind_host_etc(b: &mut BwrapCommand, passwd: &Path, group: &Path) {
    b.tmpfs("/etc");
    let mut names: Vec<String> = std::fs::read_dir("/etc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        if !etc_allowed(&name) {
            continue;
        }
        let p = Path::new("/etc").join(&name);
        match std::fs::symlink_metadata(&p) {
            // Symlinks are recreated as symlinks (resolv.conf -> /run/...
            // stays dangling rather than exposing /run).
            Ok(md) if md.file_type().is_symlink() => {
                if let Ok(t) = std::fs::read_link(&p) {
                    if t.is_relative() || t.starts_with("/etc") || t.starts_with("/usr") {
                        b.symlink(t, &p);
                    } else if p.exists() {
                        // e.g. resolv.conf -> /run/systemd/resolve/stub-resolv.conf:
                        // bind the file it points to, not its directory.
                        b.ro_bind(&p, &p);
                    }
                }
            }
            Ok(md) if md.is_dir() || md.is_file() => {
                b.ro_bind(&p, &p);
            }
            _ => {}
        }
    }
    for m in ETC_MASK {
        let p = Path::new("/etc").join(m);
        if p.is_dir() {
            b.tmpfs(&p);
        }
    }
    // bash wants this for `source /etc/profile` in some PKGBUILDs; harmless.
    b.ro_bind(passwd, "/etc/passwd");
    b.ro_bind(group, "/etc/group");
    b.remount_ro("/etc");
}

/// Make the kernel knobs under the sandbox's `/proc` read-only.
///
/// When the node runs as root, the build user (uid 1000 inside) *is* host
/// uid 0 without capabilities, and the kernel lets uid 0 write many
/// root-owned sysctls without a capability check (`kernel.core_pattern`
/// among them, which would run a program as real root on the next crash).
/// bubblewrap does not cover `/proc/sys` in that case, so we bind it
/// read-only ourselves, plus `/proc/sysrq-trigger`.
pub fn cover_proc(b: &mut BwrapCommand) {
    b.ro_bind("/proc/sys", "/proc/sys");
    b.ro_bind_try("/proc/sysrq-trigger", "/proc/sysrq-trigger");
}

/// If the host has a pacman database (an Arch host), bind it read-only so
/// makepkg can list installed packages in `.BUILDINFO`.
pub fn bind_host_pacman_db(b: &mut BwrapCommand) {
    if Path::new("/var/lib/pacman/local").is_dir() {
        b.ro_bind("/var/lib/pacman", "/var/lib/pacman");
    }
}

/// `/etc/passwd` for the sandbox: the build user at uid 1000.
pub fn passwd_contents(home: &str) -> String {
    format!(
        "root:x:0:0:root:/root:/bin/bash\nbuilder:x:{uid}:{gid}:pacmesh builder:{home}:/bin/bash\nnobody:x:65534:65534:Nobody:/:/usr/bin/nologin\n",
        uid = crate::BUILD_UID,
        gid = crate::BUILD_GID
    )
}

/// `/etc/group` for the sandbox.
pub fn group_contents() -> String {
    format!(
        "root:x:0:\nbuilder:x:{gid}:\nnobody:x:65534:\n",
        gid = crate::BUILD_GID
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_allow_list_excludes_secrets() {
        for secret in [
            "shadow",
            "gshadow",
            "shadow-",
            "sudoers",
            "sudoers.d",
            "ssh",
            "machine-id",
            "pacman.d",
            "subuid",
            "wireguard",
            "NetworkManager",
            "pacmesh",
        ] {
            assert!(!etc_allowed(secret), "{secret} must not be bound");
        }
        for ok in [
            "ld.so.cache",
            "java-17-openjdk",
            "python3.11",
            "makepkg.conf",
            "ssl",
        ] {
            assert!(etc_allowed(ok), "{ok} should be bound");
        }
    }

    #[test]
    fn host_system_binds_never_the_root() {
        let mut b = BwrapCommand::new();
        bind_host_system(&mut b);
        let opts: Vec<_> = b
            .options()
            .iter()
            .map(|o| o.to_string_lossy().into_owned())
            .collect();
        assert!(opts.windows(3).any(|w| w == ["--ro-bind", "/usr", "/usr"]));
        for w in opts.windows(3) {
            if w[0] == "--ro-bind" || w[0] == "--bind" {
                assert_ne!(w[1], "/", "the host root must never be bound");
            }
        }
        assert!(
            !opts
                .iter()
                .any(|o| o == "/root" || o == "/home" || o == "/etc")
        );
    }
}
