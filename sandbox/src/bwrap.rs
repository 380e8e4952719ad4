//! A typed builder for `bwrap` (bubblewrap) command lines.
//!
//! Every option is a method; the result is an argv of [`OsString`]s handed to
//! [`std::process::Command`] directly. No shell is involved anywhere, so a path
//! or an environment value can contain spaces, quotes or `$` without changing
//! the meaning of the command.
//!
//! bubblewrap applies its mount operations in argv order, so the builder keeps
//! the order in which the methods were called.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bubblewrap invocation: sandbox options plus the command to run inside.
///
/// ```
/// use pacmesh_sandbox::BwrapCommand;
/// let mut b = BwrapCommand::new();
/// b.unshare_all().die_with_parent().ro_bind("/usr", "/usr").proc("/proc");
/// b.command(["true"]);
/// assert_eq!(
///     b.argv(),
///     ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
///      "--proc", "/proc", "--", "true"]
///         .iter().map(std::ffi::OsString::from).collect::<Vec<_>>()
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwrapCommand {
    program: PathBuf,
    options: Vec<OsString>,
    command: Vec<OsString>,
}

impl Default for BwrapCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl BwrapCommand {
    /// A command that runs `bwrap` found on `PATH`.
    pub fn new() -> Self {
        Self::with_program("bwrap")
    }

    /// A command that runs the given bubblewrap binary.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        BwrapCommand {
            program: program.into(),
            options: Vec::new(),
            command: Vec::new(),
        }
    }

    fn flag(&mut self, f: &str) -> &mut Self {
        self.options.push(f.into());
        self
    }

    fn flag1(&mut self, f: &str, a: impl AsRef<OsStr>) -> &mut Self {
        self.options.push(f.into());
        self.options.push(a.as_ref().to_owned());
        self
    }

    fn flag2(&mut self, f: &str, a: impl AsRef<OsStr>, b: impl AsRef<OsStr>) -> &mut Self {
        self.options.push(f.into());
        self.options.push(a.as_ref().to_owned());
        self.options.push(b.as_ref().to_owned());
        self
    }

    // ---- mounts -------------------------------------------------------------

    /// `--ro-bind SRC DEST`: bind host path `src` read-only at `dest`.
    pub fn ro_bind(&mut self, src: impl AsRef<Path>, dest: impl AsRef<Path>) -> &mut Self {
        self.flag2("--ro-bind", src.as_ref(), dest.as_ref())
    }

    /// `--ro-bind-try SRC DEST`: like [`ro_bind`](Self::ro_bind), ignored when `src` is missing.
    pub fn ro_bind_try(&mut self, src: impl AsRef<Path>, dest: impl AsRef<Path>) -> &mut Self {
        self.flag2("--ro-bind-try", src.as_ref(), dest.as_ref())
    }

    /// `--bind SRC DEST`: bind host path `src` read-write at `dest`.
    pub fn bind(&mut self, src: impl AsRef<Path>, dest: impl AsRef<Path>) -> &mut Self {
        self.flag2("--bind", src.as_ref(), dest.as_ref())
    }

    /// `--dev-bind SRC DEST`: read-write bind that also allows device access.
    pub fn dev_bind(&mut self, src: impl AsRef<Path>, dest: impl AsRef<Path>) -> &mut Self {
        self.flag2("--dev-bind", src.as_ref(), dest.as_ref())
    }

    /// `--remount-ro DEST`: make an already mounted `dest` read-only (not recursive).
    pub fn remount_ro(&mut self, dest: impl AsRef<Path>) -> &mut Self {
        self.flag1("--remount-ro", dest.as_ref())
    }

    /// `--tmpfs DEST`: a fresh tmpfs at `dest`.
    pub fn tmpfs(&mut self, dest: impl AsRef<Path>) -> &mut Self {
        self.flag1("--tmpfs", dest.as_ref())
    }

    /// `--size BYTES --tmpfs DEST`: a tmpfs limited to `bytes`.
    pub fn tmpfs_sized(&mut self, dest: impl AsRef<Path>, bytes: u64) -> &mut Self {
        self.flag1("--size", bytes.to_string());
        self.tmpfs(dest)
    }

    /// `--symlink TARGET LINK`: create a symlink at `link` pointing to `target`.
    pub fn symlink(&mut self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> &mut Self {
        self.flag2("--symlink", target.as_ref(), link.as_ref())
    }

    /// `--proc DEST`: a new procfs (of the sandbox's pid namespace) at `dest`.
    pub fn proc(&mut self, dest: impl AsRef<Path>) -> &mut Self {
        self.flag1("--proc", dest.as_ref())
    }

    /// `--dev DEST`: a minimal new /dev (null, zero, full, random, urandom, tty, pts, shm).
    pub fn dev(&mut self, dest: impl AsRef<Path>) -> &mut Self {
        self.flag1("--dev", dest.as_ref())
    }

    /// `--dir DEST`: create an (empty) directory at `dest`.
    pub fn dir(&mut self, dest: impl AsRef<Path>) -> &mut Self {
        self.flag1("--dir", dest.as_ref())
    }

    /// `--chmod OCTAL PATH`: change the mode of an existing path inside the sandbox.
    pub fn chmod(&mut self, mode: u32, path: impl AsRef<Path>) -> &mut Self {
        self.flag2("--chmod", format!("{mode:o}"), path.as_ref())
    }

    // ---- namespaces -----------------------------------------------------------

    /// `--unshare-all`: new user, ipc, pid, net, uts and cgroup namespaces.
    pub fn unshare_all(&mut self) -> &mut Self {
        self.flag("--unshare-all")
    }

    /// `--share-net`: keep the host network namespace (only with [`unshare_all`](Self::unshare_all)).
    pub fn share_net(&mut self) -> &mut Self {
        self.flag("--share-net")
    }

    /// `--unshare-net`: a new, empty network namespace (only a down loopback).
    pub fn unshare_net(&mut self) -> &mut Self {
        self.flag("--unshare-net")
    }

    /// `--unshare-user`: a new user namespace (always, even when started by root).
    pub fn unshare_user(&mut self) -> &mut Self {
        self.flag("--unshare-user")
    }

    /// `--unshare-pid`: a new pid namespace; everything in it dies with its init.
    pub fn unshare_pid(&mut self) -> &mut Self {
        self.flag("--unshare-pid")
    }

    /// `--unshare-ipc`.
    pub fn unshare_ipc(&mut self) -> &mut Self {
        self.flag("--unshare-ipc")
    }

    /// `--unshare-uts`.
    pub fn unshare_uts(&mut self) -> &mut Self {
        self.flag("--unshare-uts")
    }

    /// `--disable-userns`: the sandbox cannot create further user namespaces
    /// (bubblewrap ≥ 0.8; needs [`unshare_user`](Self::unshare_user)).
    pub fn disable_userns(&mut self) -> &mut Self {
        self.flag("--disable-userns")
    }

    /// `--uid UID`: the uid inside the sandbox.
    pub fn uid(&mut self, uid: u32) -> &mut Self {
        self.flag1("--uid", uid.to_string())
    }

    /// `--gid GID`: the gid inside the sandbox.
    pub fn gid(&mut self, gid: u32) -> &mut Self {
        self.flag1("--gid", gid.to_string())
    }

    /// `--hostname NAME` (needs a new uts namespace).
    pub fn hostname(&mut self, name: impl AsRef<OsStr>) -> &mut Self {
        self.flag1("--hostname", name)
    }

    /// `--cap-drop CAP` (`ALL` for every capability); only honoured for
    /// uid 0 in the sandbox.
    pub fn cap_drop(&mut self, cap: &str) -> &mut Self {
        self.flag1("--cap-drop", cap)
    }

    /// `--cap-add CAP`, e.g. `CAP_CHOWN`.
    pub fn cap_add(&mut self, cap: &str) -> &mut Self {
        self.flag1("--cap-add", cap)
    }

    // ---- process --------------------------------------------------------------

    /// `--die-with-parent`: the sandboxed process gets SIGKILL when bwrap's parent dies.
    pub fn die_with_parent(&mut self) -> &mut Self {
        self.flag("--die-with-parent")
    }

    /// `--new-session`: setsid() in the sandbox, so it cannot inject input into our terminal
    /// (TIOCSTI).
    pub fn new_session(&mut self) -> &mut Self {
        self.flag("--new-session")
    }

    /// `--chdir DIR`: working directory inside the sandbox.
    pub fn chdir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.flag1("--chdir", dir.as_ref())
    }

    // ---- environment ----------------------------------------------------------

    /// `--clearenv`: start from an empty environment.
    pub fn clearenv(&mut self) -> &mut Self {
        self.flag("--clearenv")
    }

    /// `--setenv VAR VALUE`.
    pub fn setenv(&mut self, var: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.flag2("--setenv", var, value)
    }

    /// `--unsetenv VAR`.
    pub fn unsetenv(&mut self, var: impl AsRef<OsStr>) -> &mut Self {
        self.flag1("--unsetenv", var)
    }

    // ---- command --------------------------------------------------------------

    /// The program and its arguments to run inside the sandbox (replaces any earlier one).
    pub fn command<I, S>(&mut self, argv: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command = argv.into_iter().map(|s| s.as_ref().to_owned()).collect();
        self
    }

    /// Append arguments to the command run inside the sandbox.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command
            .extend(args.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// The bubblewrap binary this command runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// The sandbox options only (no program, no command).
    pub fn options(&self) -> &[OsString] {
        &self.options
    }

    /// The full argv: `[bwrap, options..., "--", command...]`.
    pub fn argv(&self) -> Vec<OsString> {
        let mut v = Vec::with_capacity(self.options.len() + self.command.len() + 2);
        v.push(self.program.clone().into_os_string());
        v.extend(self.options.iter().cloned());
        v.push("--".into());
        v.extend(self.command.iter().cloned());
        v
    }

    /// A [`Command`] ready to spawn (environment and stdio untouched).
    pub fn to_command(&self) -> Command {
        let argv = self.argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<&str> {
        v.iter().map(|s| s.to_str().unwrap()).collect()
    }

    #[test]
    fn argv_keeps_call_order_and_separates_the_command() {
        let mut b = BwrapCommand::new();
        b.unshare_all()
            .unshare_user()
            .disable_userns()
            .uid(1000)
            .gid(1000)
            .hostname("pacmesh")
            .die_with_parent()
            .new_session()
            .ro_bind("/usr", "/usr")
            .symlink("usr/bin", "/bin")
            .proc("/proc")
            .dev("/dev")
            .tmpfs("/tmp")
            .dir("/var/tmp")
            .bind("/srv/work/b1", "/build")
            .clearenv()
            .setenv("PKGEXT", ".pkg.tar.zst")
            .unsetenv("LD_PRELOAD")
            .chdir("/build")
            .command(["makepkg", "--printsrcinfo"]);
        assert_eq!(
            strs(&b.argv()),
            vec![
                "bwrap",
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--uid",
                "1000",
                "--gid",
                "1000",
                "--hostname",
                "pacmesh",
                "--die-with-parent",
                "--new-session",
                "--ro-bind",
                "/usr",
                "/usr",
                "--symlink",
                "usr/bin",
                "/bin",
                "--proc",
                "/proc",
                "--dev",
                "/dev",
                "--tmpfs",
                "/tmp",
                "--dir",
                "/var/tmp",
                "--bind",
                "/srv/work/b1",
                "/build",
                "--clearenv",
                "--setenv",
                "PKGEXT",
                ".pkg.tar.zst",
                "--unsetenv",
                "LD_PRELOAD",
                "--chdir",
                "/build",
                "--",
                "makepkg",
                "--printsrcinfo",
            ]
        );
    }

    #[test]
    fn values_are_single_argv_elements_never_shell_split() {
        let mut b = BwrapCommand::with_program("/opt/bwrap");
        b.setenv("PACKAGER", "Jane Doe <jane@example.org>; rm -rf /")
            .ro_bind("/path with space/$HOME", "/x y")
            .command(["sh", "-c", "echo \"$1\"", "sh", "a b"]);
        assert_eq!(
            strs(&b.argv()),
            vec![
                "/opt/bwrap",
                "--setenv",
                "PACKAGER",
                "Jane Doe <jane@example.org>; rm -rf /",
                "--ro-bind",
                "/path with space/$HOME",
                "/x y",
                "--",
                "sh",
                "-c",
                "echo \"$1\"",
                "sh",
                "a b",
            ]
        );
    }

    #[test]
    fn network_and_misc_flags() {
        let mut b = BwrapCommand::new();
        b.unshare_all()
            .share_net()
            .unshare_net()
            .unshare_pid()
            .unshare_ipc()
            .unshare_uts()
            .dev_bind("/dev/null", "/dev/null")
            .ro_bind_try("/opt", "/opt")
            .tmpfs_sized("/tmp", 1 << 20)
            .chmod(0o755, "/build")
            .cap_drop("ALL")
            .cap_add("CAP_CHOWN")
            .remount_ro("/")
            .command(["true"])
            .args(["x"]);
        assert_eq!(
            strs(&b.argv()),
            vec![
                "bwrap",
                "--unshare-all",
                "--share-net",
                "--unshare-net",
                "--unshare-pid",
                "--unshare-ipc",
                "--unshare-uts",
                "--dev-bind",
                "/dev/null",
                "/dev/null",
                "--ro-bind-try",
                "/opt",
                "/opt",
                "--size",
                "1048576",
                "--tmpfs",
                "/tmp",
                "--chmod",
                "755",
                "/build",
                "--cap-drop",
                "ALL",
                "--cap-add",
                "CAP_CHOWN",
                "--remount-ro",
                "/",
                "--",
                "true",
                "x",
            ]
        );
    }

    #[test]
    fn to_command_uses_the_same_argv() {
        let mut b = BwrapCommand::new();
        b.tmpfs("/tmp").command(["echo", "hi"]);
        let c = b.to_command();
        assert_eq!(c.get_program(), "bwrap");
        let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
        assert_eq!(args, b.argv()[1..].to_vec());
    }

    #[test]
    fn non_utf8_paths_survive() {
        use std::os::unix::ffi::OsStrExt;
        let weird = Path::new(OsStr::from_bytes(b"/tmp/\xff\xfe"));
        let mut b = BwrapCommand::new();
        b.ro_bind(weird, "/w");
        assert_eq!(b.options()[1].as_bytes(), b"/tmp/\xff\xfe");
    }
}
