//! The `chroot` profile's per-build copy-on-write layer.
//!
//! bubblewrap 0.8 has no `--overlay`, so the child that will exec bwrap first
//! enters a new user namespace (mapping the caller's uid and gid to 0) and a
//! new mount namespace, and mounts an overlayfs there:
//! `lowerdir=BASE,upperdir=LAYER/upper,workdir=LAYER/work` on `LAYER/merged`.
//! bwrap then runs inside that namespace and binds `LAYER/merged` as `/`.
//! Everything happens in `pre_exec` with raw syscalls; no helper binary and no
//! shell. The mount exists only in that process tree's mount namespace and
//! disappears with it; teardown is removing `LAYER`. The base root is never
//! copied and never written (overlayfs never writes to a lower layer).
//!
//! Needs Linux >= 5.11 (overlayfs in user namespaces); uses the `userxattr`
//! mount option. The base root must be owned by the uid running the node
//! (root, or the unprivileged node user), because other uids are unmapped in
//! the namespace.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy-on-write layer over a base root.
#[derive(Debug, Clone)]
pub struct Layer {
    pub base: PathBuf,
    pub dir: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub merged: PathBuf,
}

fn check_opt_path(p: &Path) -> io::Result<()> {
    let b = p.as_os_str().as_bytes();
    if b.iter().any(|c| matches!(c, b',' | b':' | b'\\' | 0)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "overlay paths cannot contain ',', ':' or '\\': {}",
                p.display()
            ),
        ));
    }
    Ok(())
}

impl Layer {
    /// Create the layer directories under `dir` (which must not exist yet or be empty).
    pub fn create(base: &Path, dir: &Path) -> io::Result<Layer> {
        let base = std::fs::canonicalize(base)?;
        std::fs::create_dir_all(dir)?;
        let dir = std::fs::canonicalize(dir)?;
        let l = Layer {
            upper: dir.join("upper"),
            work: dir.join("work"),
            merged: dir.join("merged"),
            base,
            dir,
        };
        for p in [&l.base, &l.upper, &l.work, &l.merged] {
            check_opt_path(p)?;
        }
        for p in [&l.upper, &l.work, &l.merged] {
            std::fs::create_dir_all(p)?;
        }
        Ok(l)
    }

    /// Make `cmd` run in a new user+mount namespace with the overlay mounted on
    /// [`Layer::merged`]. The caller's uid/gid become 0 in that namespace.
    pub fn attach(&self, cmd: &mut Command) -> io::Result<()> {
        let c =
            |s: &[u8]| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
        // Everything the child needs is prepared here, before fork.
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let uid_map = format!("0 {uid} 1\n").into_bytes();
        let gid_map = format!("0 {gid} 1\n").into_bytes();
        let mut opts = b"lowerdir=".to_vec();
        opts.extend_from_slice(self.base.as_os_str().as_bytes());
        opts.extend_from_slice(b",upperdir=");
        opts.extend_from_slice(self.upper.as_os_str().as_bytes());
        opts.extend_from_slice(b",workdir=");
        opts.extend_from_slice(self.work.as_os_str().as_bytes());
        opts.extend_from_slice(b",userxattr");
        let opts = c(&opts)?;
        let target = c(self.merged.as_os_str().as_bytes())?;
        let overlay = c(b"overlay")?;
        let root = c(b"/")?;
        let setgroups = c(b"/proc/self/setgroups")?;
        let uid_map_path = c(b"/proc/self/uid_map")?;
        let gid_map_path = c(b"/proc/self/gid_map")?;

        // SAFETY: the closure only makes syscalls (unshare, open, write,
        // close, mount) on data prepared above; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                fn check(r: libc::c_int) -> io::Result<()> {
                    if r < 0 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                }
                unsafe fn write_file(path: &CString, data: &[u8]) -> io::Result<()> {
                    unsafe {
                        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                        if fd < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        let n = libc::write(fd, data.as_ptr().cast(), data.len());
                        let e = io::Error::last_os_error();
                        libc::close(fd);
                        if n != data.len() as isize {
                            return Err(e);
                        }
                        Ok(())
                    }
                }
                {
                    check(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    // "deny" is required before an unprivileged gid_map write.
                    let _ = write_file(&setgroups, b"deny");
                    write_file(&uid_map_path, &uid_map)?;
                    write_file(&gid_map_path, &gid_map)?;
                    check(libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ))?;
                    check(libc::mount(
                        overlay.as_ptr(),
                        target.as_ptr(),
                        overlay.as_ptr(),
                        0,
                        opts.as_ptr().cast(),
                    ))?;
                }
                Ok(())
            });
        }
        Ok(())
    }

    /// Remove the layer (upper, work and mount point directories).
    pub fn remove(self) -> io::Result<()> {
        remove_tree(&self.dir)
    }
}

/// `rm -rf` that also copes with directories whose mode forbids listing
/// (overlayfs leaves `work/work` with mode 000).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            make_writable(p);
            match std::fs::remove_dir_all(p) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                r => r,
            }
        }
    }
}

fn make_writable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(md) = std::fs::symlink_metadata(p)
        && md.is_dir()
    {
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}
