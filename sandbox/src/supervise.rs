//! The process supervisor: run one child with a wall-clock limit, a byte-capped
//! log and live log lines, and report what happened as data.
//!
//! * The child runs in its own process group (`process_group(0)`), with
//!   `PR_SET_PDEATHSIG=SIGKILL` so it does not outlive the supervising thread.
//! * On timeout: SIGTERM to the whole group, then SIGKILL to the group after
//!   the grace period.
//! * When the main child exits, whatever it left behind in its group is
//!   killed with SIGKILL (no stray `sleep 1000 &`), and the pipes are drained
//!   for a short while only, so a process that escaped the group cannot hold
//!   the supervisor hostage through an inherited pipe.
//! * stdout and stderr share one pipe (so their order is kept) and go to a
//!   [`LogCollector`]: bytes past the cap are read and discarded (the child
//!   never blocks on a full pipe) and a visible
//!   `[pacmesh: log truncated after N bytes]` line marks the cut.
//! * One thread, no async runtime: `poll(2)` over the pipes and a pidfd.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How a supervised run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// Exit code 0.
    Success,
    /// A non-zero exit code.
    Failed { code: i32 },
    /// The wall-clock limit was reached; the process group was terminated.
    TimedOut,
    /// The child died from a signal that the supervisor did not send.
    Killed { signal: i32 },
    /// The run could not be set up (spawn failed, sandbox setup failed, I/O error...).
    SandboxError { msg: String },
}

impl Outcome {
    /// True for [`Outcome::Success`].
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Success => write!(f, "success"),
            Outcome::Failed { code } => write!(f, "failed with exit code {code}"),
            Outcome::TimedOut => write!(f, "timed out"),
            Outcome::Killed { signal } => write!(f, "killed by signal {signal}"),
            Outcome::SandboxError { msg } => write!(f, "sandbox error: {msg}"),
        }
    }
}

/// Limits for one supervised run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Wall-clock limit, measured from spawn.
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL to the process group.
    pub grace: Duration,
    /// How long to keep reading the pipes after the child exited (leftovers were killed).
    pub drain: Duration,
    /// Capture stdout separately (not into the log), keeping at most this many bytes.
    pub capture_stdout: Option<usize>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            timeout: Duration::from_secs(3600),
            grace: Duration::from_secs(5),
            drain: Duration::from_millis(500),
            capture_stdout: None,
        }
    }
}

/// What one supervised run produced (the log is in the [`LogCollector`]).
#[derive(Debug, Clone)]
pub struct RunStatus {
    pub outcome: Outcome,
    pub duration: Duration,
    /// Captured stdout when [`RunOptions::capture_stdout`] was set.
    pub stdout: Option<Vec<u8>>,
    /// True if captured stdout went past its cap (the rest was discarded).
    pub stdout_truncated: bool,
}

/// The result of [`run`]: outcome, log and duration.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub outcome: Outcome,
    pub log: String,
    pub log_truncated: bool,
    pub duration: Duration,
    pub stdout: Option<Vec<u8>>,
}

/// Longest line handed to the line callback; longer runs are cut into pieces.
pub const MAX_LINE: usize = 8 * 1024;

/// A byte-capped log that also streams complete lines to a callback.
///
/// Several runs (the build phases) can write into one collector, so the cap
/// applies to the whole build.
pub struct LogCollector<'a> {
    buf: Vec<u8>,
    cap: usize,
    truncated: bool,
    discarded: u64,
    partial: Vec<u8>,
    sink: &'a mut dyn FnMut(&str),
}

impl std::fmt::Debug for LogCollector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogCollector")
            .field("len", &self.buf.len())
            .field("cap", &self.cap)
            .field("truncated", &self.truncated)
            .field("discarded", &self.discarded)
            .finish()
    }
}

impl<'a> LogCollector<'a> {
    /// A collector keeping at most `cap` bytes of child output.
    pub fn new(cap: usize, sink: &'a mut dyn FnMut(&str)) -> Self {
        LogCollector {
            buf: Vec::new(),
            cap,
            truncated: false,
            discarded: 0,
            partial: Vec::new(),
            sink,
        }
    }

    /// The truncation marker for a given cap.
    pub fn marker(cap: usize) -> String {
        format!("[pacmesh: log truncated after {cap} bytes]")
    }

    /// Child output: kept up to the cap, then counted and dropped.
    pub fn push(&mut self, data: &[u8]) {
        if self.truncated {
            self.discarded += data.len() as u64;
            return;
        }
        let room = self.cap.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        self.stream(&data[..take]);
        if take < data.len() {
            self.truncated = true;
            self.discarded += (data.len() - take) as u64;
            self.flush_partial();
            let m = Self::marker(self.cap);
            if !self.buf.is_empty() && !self.buf.ends_with(b"\n") {
                self.buf.push(b'\n');
            }
            self.buf.extend_from_slice(m.as_bytes());
            self.buf.push(b'\n');
            (self.sink)(&m);
        }
    }

    /// A line written by pacmesh itself (phase headers, outcome): always kept
    /// and streamed, even after truncation, so the log says how it ended.
    pub fn note(&mut self, line: &str) {
        self.flush_partial();
        if !self.buf.is_empty() && !self.buf.ends_with(b"\n") {
            self.buf.push(b'\n');
        }
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
        (self.sink)(line);
    }

    fn stream(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    self.emit_partial();
                    data = &data[i + 1..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
            }
            while self.partial.len() >= MAX_LINE {
                let rest = self.partial.split_off(MAX_LINE);
                self.emit_partial();
                self.partial = rest;
            }
        }
    }

    fn emit_partial(&mut self) {
        let mut line = std::mem::take(&mut self.partial);
        if line.ends_with(b"\r") {
            line.pop();
        }
        (self.sink)(&String::from_utf8_lossy(&line));
    }

    /// Hand a pending incomplete line to the callback.
    pub fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            self.emit_partial();
        }
    }

    /// True once output was cut at the cap.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes read and discarded after the cap.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// The log so far (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The log from byte `offset` on (lossy UTF-8).
    pub fn text_from(&self, offset: usize) -> String {
        String::from_utf8_lossy(self.buf.get(offset..).unwrap_or_default()).into_owned()
    }

    /// Bytes held in memory.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True if nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Finish: flush the pending line and return the log text.
    pub fn finish(mut self) -> (String, bool) {
        self.flush_partial();
        if self.truncated {
            let m = format!(
                "[pacmesh: {} more bytes of output discarded]",
                self.discarded
            );
            self.note(&m);
        }
        (
            String::from_utf8_lossy(&self.buf).into_owned(),
            self.truncated,
        )
    }
}

/// Run `cmd` with limits, collecting its output into a fresh log.
pub fn run(
    cmd: Command,
    opts: &RunOptions,
    log_cap: usize,
    on_line: &mut dyn FnMut(&str),
) -> RunResult {
    let mut log = LogCollector::new(log_cap, on_line);
    let st = run_with_log(cmd, opts, &mut log);
    let (text, truncated) = log.finish();
    RunResult {
        outcome: st.outcome,
        log: text,
        log_truncated: truncated,
        duration: st.duration,
        stdout: st.stdout,
    }
}

fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: plain syscall; a non-negative return is a new fd that we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        None
    } else {
        Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }
}

fn killpg(pgid: i32, sig: i32) {
    // SAFETY: kill(2) on a negative pid signals the process group.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

struct Stream {
    reader: io::PipeReader,
    open: bool,
    is_log: bool,
}

/// Run `cmd` with limits, appending its output to `log`.
///
/// The command's stdin is /dev/null; its stdout and stderr are replaced.
pub fn run_with_log(mut cmd: Command, opts: &RunOptions, log: &mut LogCollector<'_>) -> RunStatus {
    let start = Instant::now();
    let fail = |msg: String, start: Instant| RunStatus {
        outcome: Outcome::SandboxError { msg },
        duration: start.elapsed(),
        stdout: None,
        stdout_truncated: false,
    };
    let (log_r, log_w) = match io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot create a pipe: {e}"), start),
    };
    let mut streams = vec![Stream {
        reader: log_r,
        open: true,
        is_log: true,
    }];
    cmd.stdin(Stdio::null());
    if opts.capture_stdout.is_some() {
        let (out_r, out_w) = match io::pipe() {
            Ok(p) => p,
            Err(e) => return fail(format!("cannot create a pipe: {e}"), start),
        };
        streams.push(Stream {
            reader: out_r,
            open: true,
            is_log: false,
        });
        cmd.stdout(out_w);
    } else {
        match log_w.try_clone() {
            Ok(w) => {
                cmd.stdout(w);
            }
            Err(e) => return fail(format!("cannot duplicate a pipe: {e}"), start),
        }
    }
    cmd.stderr(log_w);
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing is allocated in the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let program = cmd.get_program().to_string_lossy().into_owned();
    let spawned = cmd.spawn();
    // Drop our copies of the pipe's write ends, or we would never see EOF.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {program}: {e}"), start),
    };
    let pid = child.id();
    let pgid = pid as i32;
    let pidfd = pidfd_open(pid);
    for s in &streams {
        set_nonblocking(s.reader.as_raw_fd());
    }

    let deadline = start + opts.timeout;
    let mut term_at: Option<Instant> = None; // when SIGTERM was sent
    let mut killed = false;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until: Option<Instant> = None;
    let mut stdout_buf: Vec<u8> = Vec::new();
    let mut stdout_truncated = false;
    let stdout_cap = opts.capture_stdout.unwrap_or(0);
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        let now = Instant::now();
        // Decide what to wait for next.
        if status.is_none() {
            if term_at.is_none() && now >= deadline {
                killpg(pgid, libc::SIGTERM);
                term_at = Some(now);
            }
            if let Some(t) = term_at
                && !killed
                && now >= t + opts.grace
            {
                killpg(pgid, libc::SIGKILL);
                killed = true;
            }
        }
        let any_open = streams.iter().any(|s| s.open);
        if status.is_some() {
            let until = *drain_until.get_or_insert(now + opts.drain);
            if !any_open || now >= until {
                break;
            }
        }
        let wake = if status.is_some() {
            drain_until.unwrap()
        } else if killed {
            now + Duration::from_millis(100)
        } else if let Some(t) = term_at {
            t + opts.grace
        } else {
            deadline
        };
        let mut timeout_ms = wake
            .saturating_duration_since(now)
            .as_millis()
            .min(i32::MAX as u128) as i32;
        if status.is_none() && pidfd.is_none() {
            timeout_ms = timeout_ms.min(10); // no pidfd: poll for exit
        }
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        let mut idx: Vec<usize> = Vec::with_capacity(2);
        for (i, s) in streams.iter().enumerate() {
            if s.open {
                fds.push(libc::pollfd {
                    fd: s.reader.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                idx.push(i);
            }
        }
        let pidfd_slot = match (&pidfd, status.is_none()) {
            (Some(p), true) => {
                fds.push(libc::pollfd {
                    fd: p.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                Some(fds.len() - 1)
            }
            _ => None,
        };
        // SAFETY: fds is a valid array of pollfd for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            killpg(pgid, libc::SIGKILL);
            let _ = child.wait();
            return fail(format!("poll failed: {e}"), start);
        }
        for (k, &i) in idx.iter().enumerate() {
            if fds[k].revents == 0 {
                continue;
            }
            let s = &mut streams[i];
            // Read what is there now (non-blocking), bounded per wake-up so a
            // flood cannot starve the timeout check.
            for _ in 0..16 {
                match s.reader.read(&mut buf) {
                    Ok(0) => {
                        s.open = false;
                        break;
                    }
                    Ok(n) => {
                        if s.is_log {
                            log.push(&buf[..n]);
                        } else {
                            let room = stdout_cap.saturating_sub(stdout_buf.len());
                            let take = room.min(n);
                            stdout_buf.extend_from_slice(&buf[..take]);
                            if take < n {
                                stdout_truncated = true;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        s.open = false;
                        break;
                    }
                }
            }
        }
        let exited = match pidfd_slot {
            Some(k) => fds[k].revents != 0,
            None => status.is_none(),
        };
        if exited && status.is_none() {
            match child.try_wait() {
                Ok(Some(st)) => {
                    status = Some(st);
                    // Kill whatever the child left behind in its group.
                    killpg(pgid, libc::SIGKILL);
                }
                Ok(None) => {}
                Err(e) => {
                    killpg(pgid, libc::SIGKILL);
                    let _ = child.wait();
                    return fail(format!("wait failed: {e}"), start);
                }
            }
        }
    }
    let status = status.expect("loop ends only after exit");
    let duration = start.elapsed();
    let outcome = if term_at.is_some() {
        Outcome::TimedOut
    } else if let Some(code) = status.code() {
        if code == 0 {
            Outcome::Success
        } else {
            Outcome::Failed { code }
        }
    } else {
        Outcome::Killed {
            signal: status.signal().unwrap_or(0),
        }
    };
    RunStatus {
        outcome,
        duration,
        stdout: opts.capture_stdout.map(|_| stdout_buf),
        stdout_truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_caps_and_marks() {
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_string());
        let mut c = LogCollector::new(10, &mut sink);
        c.push(b"abc\ndef\n");
        c.push(b"ghijkl\n");
        c.push(b"more");
        let (text, t) = c.finish();
        assert!(t);
        assert_eq!(
            text,
            "abc\ndef\ngh\n[pacmesh: log truncated after 10 bytes]\n[pacmesh: 9 more bytes of output discarded]\n"
        );
        assert_eq!(
            lines,
            vec![
                "abc",
                "def",
                "gh",
                "[pacmesh: log truncated after 10 bytes]",
                "[pacmesh: 9 more bytes of output discarded]"
            ]
        );
    }

    #[test]
    fn collector_splits_long_lines_and_handles_bad_utf8() {
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_string());
        let mut c = LogCollector::new(1 << 20, &mut sink);
        c.push(&vec![b'x'; MAX_LINE + 5]);
        c.push(b"\n\xff\xfe ok\r\n");
        drop(c.finish());
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "xxxxx");
        assert_eq!(lines[2], "\u{fffd}\u{fffd} ok");
    }

    #[test]
    fn notes_survive_truncation() {
        let mut sink = |_: &str| {};
        let mut c = LogCollector::new(4, &mut sink);
        c.push(b"123456");
        c.note("==> done");
        assert!(c.text().ends_with("==> done\n"));
    }
}
