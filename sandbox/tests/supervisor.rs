//! The supervisor, tested with `sh -c` scripts (no sandbox needed).

use std::process::Command;
use std::time::{Duration, Instant};

use pacmesh_sandbox::Outcome;
use pacmesh_sandbox::supervise::{LogCollector, RunOptions, run, run_with_log};

fn sh(script: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(script);
    c
}

fn opts(timeout_ms: u64, grace_ms: u64) -> RunOptions {
    RunOptions {
        timeout: Duration::from_millis(timeout_ms),
        grace: Duration::from_millis(grace_ms),
        ..RunOptions::default()
    }
}

/// Processes whose command line contains `needle` (excluding ourselves).
fn procs_with(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                // zombies have an empty cmdline, so a match is a live process
                v.push(pid);
            }
        }
    }
    v
}

#[test]
fn success_and_output_order() {
    let mut lines = Vec::new();
    let r = run(
        sh("echo one; echo two >&2; printf three"),
        &opts(10_000, 1000),
        1 << 20,
        &mut |l| lines.push(l.to_string()),
    );
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.log, "one\ntwo\nthree");
    assert_eq!(lines, ["one", "two", "three"]);
    assert!(!r.log_truncated);
}

#[test]
fn exit_codes_are_failures() {
    for code in [1, 2, 42, 255] {
        let r = run(
            sh(&format!("echo bye; exit {code}")),
            &opts(10_000, 1000),
            1 << 20,
            &mut |_| {},
        );
        assert_eq!(r.outcome, Outcome::Failed { code });
        assert_eq!(r.log, "bye\n");
    }
}

#[test]
fn death_by_signal_is_reported() {
    let r = run(sh("kill -9 $$"), &opts(10_000, 1000), 1 << 20, &mut |_| {});
    assert_eq!(r.outcome, Outcome::Killed { signal: 9 });
    let r = run(
        sh("kill -SEGV $$"),
        &opts(10_000, 1000),
        1 << 20,
        &mut |_| {},
    );
    assert_eq!(r.outcome, Outcome::Killed { signal: 11 });
}

#[test]
fn missing_program_is_a_sandbox_error() {
    let r = run(
        Command::new("/nonexistent/pacmesh-test-binary"),
        &opts(1000, 100),
        1 << 20,
        &mut |_| {},
    );
    match r.outcome {
        Outcome::SandboxError { msg } => {
            assert!(msg.contains("/nonexistent/pacmesh-test-binary"), "{msg}")
        }
        o => panic!("unexpected {o:?}"),
    }
}

#[test]
fn timeout_sends_sigterm_to_the_group() {
    let t = Instant::now();
    let r = run(
        sh("echo start; sleep 30; echo never"),
        &opts(500, 5000),
        1 << 20,
        &mut |_| {},
    );
    assert_eq!(r.outcome, Outcome::TimedOut);
    // sh and sleep both die from SIGTERM at once: no need to wait for the grace period.
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert!(r.log.starts_with("start\n"));
}

#[test]
fn sigterm_ignored_means_sigkill_after_grace() {
    let t = Instant::now();
    let tag = "pacmesh-grace-test-4711";
    let script =
        format!("trap '' TERM; echo armed; exec sh -c 'trap \"\" TERM; sleep 30; : {tag}'");
    let r = run(sh(&script), &opts(300, 700), 1 << 20, &mut |_| {});
    let el = t.elapsed();
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(
        el >= Duration::from_millis(950),
        "killed before the grace period ended: {el:?}"
    );
    assert!(
        el < Duration::from_millis(3000),
        "grace period not enforced: {el:?}"
    );
    assert!(procs_with(tag).is_empty());
}

#[test]
fn background_processes_do_not_outlive_the_run() {
    let tag = "pacmesh-bg-test-1234";
    let t = Instant::now();
    // The background job keeps the log pipe open; the supervisor must not wait for it.
    let r = run(
        sh(&format!("sh -c 'sleep 1000; : {tag}' & echo started")),
        &opts(20_000, 1000),
        1 << 20,
        &mut |_| {},
    );
    assert_eq!(r.outcome, Outcome::Success);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "waited for the background job: {:?}",
        t.elapsed()
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(procs_with(tag).is_empty(), "background process survived");
}

#[test]
fn endless_output_is_truncated_and_memory_stays_bounded() {
    let cap = 64 * 1024;
    let mut streamed = 0usize;
    let t = Instant::now();
    // 2 s of `yes` is hundreds of MB; the supervisor keeps reading (so yes never blocks) and discards.
    let r = run(sh("yes pacmesh-flood"), &opts(2000, 500), cap, &mut |l| {
        streamed += l.len() + 1
    });
    assert_eq!(r.outcome, Outcome::TimedOut);
    assert!(r.log_truncated);
    assert!(
        r.log
            .contains(&format!("[pacmesh: log truncated after {cap} bytes]")),
        "no marker"
    );
    assert!(
        r.log.len() < cap + 200,
        "log grew past the cap: {}",
        r.log.len()
    );
    assert!(streamed < cap + 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    let discarded_line = r.log.lines().last().unwrap();
    let n: u64 = discarded_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        n > cap as u64 * 10,
        "the child was blocked instead of drained: only {n} bytes discarded"
    );
}

#[test]
fn output_without_newlines_is_cut_into_lines() {
    let mut lines = 0;
    let r = run(
        sh("head -c 100000 /dev/zero | tr '\\0' x"),
        &opts(10_000, 500),
        1 << 20,
        &mut |l| {
            assert!(l.len() <= pacmesh_sandbox::supervise::MAX_LINE);
            lines += 1;
        },
    );
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.log.len(), 100_000);
    assert!(lines >= 100_000 / pacmesh_sandbox::supervise::MAX_LINE);
}

#[test]
fn stdout_can_be_captured_apart_from_the_log() {
    let mut sink = |_: &str| {};
    let mut log = LogCollector::new(1 << 20, &mut sink);
    let o = RunOptions {
        capture_stdout: Some(5),
        ..opts(10_000, 500)
    };
    let st = run_with_log(sh("printf 'data-is-long'; echo diag >&2"), &o, &mut log);
    assert_eq!(st.outcome, Outcome::Success);
    assert_eq!(st.stdout.as_deref(), Some(&b"data-"[..]));
    assert!(st.stdout_truncated);
    assert_eq!(log.text(), "diag\n");
}

#[test]
fn one_log_across_runs_shares_the_cap() {
    let mut sink = |_: &str| {};
    let mut log = LogCollector::new(10, &mut sink);
    run_with_log(sh("printf 12345678"), &opts(5000, 500), &mut log);
    run_with_log(sh("printf abcdef"), &opts(5000, 500), &mut log);
    let (text, truncated) = log.finish();
    assert!(truncated);
    assert!(
        text.starts_with("12345678ab\n[pacmesh: log truncated after 10 bytes]"),
        "{text}"
    );
}
