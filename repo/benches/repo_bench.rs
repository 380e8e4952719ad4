//! Benchmark: pacmesh's database writer against `repo-add` on the same
//! synthetic package sets.
//!
//! `cargo bench -p pacmesh-repo` runs it. Knobs (environment variables):
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `PACMESH_BENCH_SIZES` | `100,500,2000` | package counts N |
//! | `PACMESH_BENCH_MEM_N` | `5000` | N of the extra memory run (0 = skip) |
//! | `PACMESH_BENCH_REPO_ADD_MAX` | `500` | largest N for a full `repo-add` run (it takes minutes beyond) |
//! | `PACMESH_BENCH_REPO_ADD_ONE_MAX` | `2000` | largest N for `repo-add` adding one package |
//! | `PACMESH_BENCH_RUNS` | `3` | repetitions; the median is reported |
//!
//! For every N it measures: writing an N-package database from scratch
//! (reading and hashing all N packages, building, compressing, fsync,
//! rename), adding one package to an N-package database (load, read one
//! package, rewrite), and the peak RSS of a full write done in a child
//! process (`VmHWM`, read by the child itself from `/proc/self/status`).

use pacmesh_repo::db::{AddOptions, Database, repo_add};
use pacmesh_repo::package::testutil::{SyntheticPackage, generate};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn secs(d: Duration) -> String {
    if d.as_secs_f64() >= 1.0 {
        format!("{:.2} s", d.as_secs_f64())
    } else {
        ms(d)
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
}

/// Write N synthetic packages into `dir` (in parallel); not timed.
fn make_packages(dir: &Path, n: usize) -> Vec<PathBuf> {
    generate(n, 7)
        .par_iter()
        .map(|p| p.write_to(dir).unwrap())
        .collect()
}

fn clean_db(dir: &Path, name: &str) {
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let s = f.file_name().to_string_lossy().into_owned();
        if s.starts_with(&format!("{name}.db")) || s.starts_with(&format!("{name}.files")) {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
}

fn repo_add_cli(db: &Path, pkgs: &[PathBuf]) -> Duration {
    let t = Instant::now();
    let out = Command::new("repo-add")
        .arg("-q")
        .arg(db)
        .args(pkgs)
        .output()
        .unwrap();
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "repo-add failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// Child mode: write the database for the packages in DIR and print the time
/// and this process's peak RSS.
fn child(dir: &Path) {
    let mut pkgs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".pkg.tar.zst"))
        .collect();
    pkgs.sort();
    let out = tempfile::tempdir().unwrap();
    let t = Instant::now();
    repo_add(
        &out.path().join("mem.db.tar.zst"),
        &pkgs,
        &AddOptions::default(),
        None,
    )
    .unwrap();
    let d = t.elapsed();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("0");
    println!("{} {}", d.as_nanos(), hwm);
}

/// (time, peak RSS in MiB) of a full write in a child process.
fn measure_child(dir: &Path) -> (Duration, f64) {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .arg("--pacmesh-child")
        .arg(dir)
        .env(
            "RAYON_NUM_THREADS",
            std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8(out.stdout).unwrap();
    let mut it = s.split_whitespace();
    let nanos: u64 = it.next().unwrap().parse().unwrap();
    let kib: f64 = it.next().unwrap().parse().unwrap();
    (Duration::from_nanos(nanos), kib / 1024.0)
}

/// user + sys CPU time of this process (all threads), or of its waited-for
/// children.
fn rusage(who: libc::c_int) -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    let rc = unsafe { libc::getrusage(who, &mut ru) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn cpu_time() -> Duration {
    rusage(libc::RUSAGE_SELF)
}

fn children_cpu() -> Duration {
    rusage(libc::RUSAGE_CHILDREN)
}

/// `PACMESH_BENCH_BREAKDOWN=N`: time each phase of "add one package to an
/// N-package database".
fn breakdown(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let pkgs = make_packages(dir.path(), n);
    let db = dir.path().join("bd.db.tar.zst");
    repo_add(&db, &pkgs, &AddOptions::default(), None).unwrap();
    let extra = SyntheticPackage::rich("zz-extra", "1.0-1")
        .write_to(dir.path())
        .unwrap();
    // CPU time (user+sys, all threads) of 10 add-one runs, which contention
    // from other processes does not inflate much.
    let extras: Vec<PathBuf> = (0..10)
        .map(|i| {
            SyntheticPackage::rich(&format!("zz-cpu-{i}"), "1.0-1")
                .write_to(dir.path())
                .unwrap()
        })
        .collect();
    let (c0, t0) = (cpu_time(), Instant::now());
    for x in &extras {
        repo_add(&db, std::slice::from_ref(x), &AddOptions::default(), None).unwrap();
    }
    eprintln!(
        "N={n}: add one: {} CPU per run, {} wall per run",
        ms((cpu_time() - c0) / 10),
        ms(t0.elapsed() / 10)
    );
    for _ in 0..3 {
        let t = Instant::now();
        let mut d = Database::load(&db).unwrap();
        let t_load = t.elapsed();
        let t = Instant::now();
        let info = pacmesh_repo::package::read_package(&extra).unwrap();
        let t_read = t.elapsed();
        let t = Instant::now();
        d.add(&info, true).unwrap();
        let (a, b) = d
            .archives(pacmesh_repo::package::Compression::Zstd)
            .unwrap();
        let t_build = t.elapsed();
        let mut t_tar = Duration::MAX;
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for _ in 0..15 {
            let t = Instant::now();
            (ta, tb) = d
                .archives(pacmesh_repo::package::Compression::None)
                .unwrap();
            t_tar = t_tar.min(t.elapsed());
        }
        let mut t_load_min = Duration::MAX;
        for _ in 0..15 {
            let t = Instant::now();
            let _ = Database::load(&db).unwrap();
            t_load_min = t_load_min.min(t.elapsed());
        }
        eprintln!(
            "  min of 15: tar only {}, load {}",
            ms(t_tar),
            ms(t_load_min)
        );
        let t = Instant::now();
        let raw_db = std::fs::read(&db).unwrap();
        let raw_files = std::fs::read(dir.path().join("bd.files.tar.zst")).unwrap();
        let _ = zstd::decode_all(&raw_db[..]).unwrap();
        let _ = zstd::decode_all(&raw_files[..]).unwrap();
        let t_unzstd = t.elapsed();
        let t = Instant::now();
        let _ = zstd::bulk::compress(&ta, 3).unwrap();
        let _ = zstd::bulk::compress(&tb, 3).unwrap();
        let t_zstd = t.elapsed();
        eprintln!(
            "  tar only {} ({} + {} bytes), zstd -3 both {}, unzstd both {}",
            ms(t_tar),
            ta.len(),
            tb.len(),
            ms(t_zstd),
            ms(t_unzstd)
        );
        let t = Instant::now();
        d.write(&db, None).unwrap();
        let t_write = t.elapsed();
        eprintln!(
            "N={n}: load {} read-one {} build+compress {} ({} + {} bytes) full write {}",
            ms(t_load),
            ms(t_read),
            ms(t_build),
            a.len(),
            b.len(),
            ms(t_write)
        );
    }
}

struct Row {
    n: usize,
    write_pm: Duration,
    write_pm_cpu: Duration,
    add_pm_cpu: Duration,
    write_ra_cpu: Option<Duration>,
    write_ra: Option<Duration>,
    add_pm: Duration,
    add_ra: Option<Duration>,
    load: Duration,
    rss_mib: f64,
    db_kib: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--pacmesh-child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    if std::env::var("PACMESH_BENCH_BREAKDOWN").is_ok() {
        breakdown(env_usize("PACMESH_BENCH_BREAKDOWN", 2000));
        return;
    }
    let sizes: Vec<usize> = std::env::var("PACMESH_BENCH_SIZES")
        .unwrap_or_else(|_| "100,500,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let mem_n = env_usize("PACMESH_BENCH_MEM_N", 5000);
    let ra_max = env_usize("PACMESH_BENCH_REPO_ADD_MAX", 500);
    let ra_one_max = env_usize("PACMESH_BENCH_REPO_ADD_ONE_MAX", 2000);
    let runs = env_usize("PACMESH_BENCH_RUNS", 3).max(1);
    let repo_add_ok = have("repo-add");
    if !repo_add_ok {
        eprintln!("note: repo-add not found, measuring pacmesh only");
    }
    eprintln!(
        "pacmesh-repo bench: sizes {sizes:?}, memory run N={mem_n}, repo-add full up to N={ra_max}, add-one up to N={ra_one_max}, {runs} runs, {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );

    let mut rows = Vec::new();
    for &n in &sizes {
        let pkgdir = tempfile::tempdir().unwrap();
        let pkgs = make_packages(pkgdir.path(), n);
        let extra: Vec<PathBuf> = (0..runs)
            .map(|i| {
                SyntheticPackage::rich(&format!("zz-extra-{i}"), "1.0-1")
                    .write_to(pkgdir.path())
                    .unwrap()
            })
            .collect();
        let db = pkgdir.path().join("bench.db.tar.zst");

        // Full write, pacmesh.
        let mut t = Vec::new();
        let mut c = Vec::new();
        for _ in 0..runs {
            clean_db(pkgdir.path(), "bench");
            let (s, c0) = (Instant::now(), cpu_time());
            repo_add(&db, &pkgs, &AddOptions::default(), None).unwrap();
            t.push(s.elapsed());
            c.push(cpu_time() - c0);
        }
        let write_pm = median(t);
        let write_pm_cpu = median(c);
        let db_kib = (std::fs::metadata(&db).unwrap().len()
            + std::fs::metadata(pkgdir.path().join("bench.files.tar.zst"))
                .unwrap()
                .len())
            / 1024;

        // Load only.
        let load = median(
            (0..runs)
                .map(|_| {
                    let s = Instant::now();
                    let d = Database::load(&db).unwrap();
                    assert_eq!(d.len(), n);
                    s.elapsed()
                })
                .collect(),
        );

        // Add one package to the N-package database, pacmesh (a fresh copy
        // of the N-package database each run).
        let base = tempfile::tempdir().unwrap();
        for f in ["bench.db.tar.zst", "bench.files.tar.zst"] {
            std::fs::copy(pkgdir.path().join(f), base.path().join(f)).unwrap();
        }
        let mut t = Vec::new();
        let mut c = Vec::new();
        for x in &extra {
            for f in ["bench.db.tar.zst", "bench.files.tar.zst"] {
                std::fs::copy(base.path().join(f), pkgdir.path().join(f)).unwrap();
            }
            let (s, c0) = (Instant::now(), cpu_time());
            repo_add(&db, std::slice::from_ref(x), &AddOptions::default(), None).unwrap();
            t.push(s.elapsed());
            c.push(cpu_time() - c0);
        }
        let add_pm = median(t);
        let add_pm_cpu = median(c);

        // repo-add, same inputs.
        let mut write_ra = None;
        let mut write_ra_cpu = None;
        let mut add_ra = None;
        if repo_add_ok {
            if n <= ra_max {
                clean_db(pkgdir.path(), "bench");
                eprintln!("  repo-add full write of {n} packages...");
                let c0 = children_cpu();
                write_ra = Some(repo_add_cli(&db, &pkgs));
                write_ra_cpu = Some(children_cpu() - c0);
            }
            if n <= ra_one_max {
                // Start from pacmesh's N-package database (equivalent
                // content; building it with repo-add would take minutes).
                let mut t = Vec::new();
                for x in &extra {
                    for f in ["bench.db.tar.zst", "bench.files.tar.zst"] {
                        std::fs::copy(base.path().join(f), pkgdir.path().join(f)).unwrap();
                    }
                    t.push(repo_add_cli(&db, std::slice::from_ref(x)));
                }
                add_ra = Some(median(t));
            }
        }
        let (_, rss_mib) = measure_child(pkgdir.path());
        // The child read only the N packages plus the extras: fine for RSS.
        let row = Row {
            n,
            write_pm,
            write_pm_cpu,
            add_pm_cpu,
            write_ra_cpu,
            write_ra,
            add_pm,
            add_ra,
            load,
            rss_mib,
            db_kib,
        };
        eprintln!(
            "N={n}: write {} (repo-add {}), add one {} (repo-add {}), load {}, peak RSS {:.1} MiB, db {} KiB",
            secs(row.write_pm),
            row.write_ra.map(secs).unwrap_or("-".into()),
            secs(row.add_pm),
            row.add_ra.map(secs).unwrap_or("-".into()),
            secs(row.load),
            row.rss_mib,
            row.db_kib
        );
        rows.push(row);
    }

    let mut mem = None;
    if mem_n > 0 {
        let pkgdir = tempfile::tempdir().unwrap();
        make_packages(pkgdir.path(), mem_n);
        let (d, rss) = measure_child(pkgdir.path());
        eprintln!(
            "memory run N={mem_n}: write {} peak RSS {rss:.1} MiB",
            secs(d)
        );
        mem = Some((mem_n, d, rss));
    }

    println!();
    println!(
        "| N | pacmesh write (wall / CPU) | repo-add write (wall / CPU) | speed-up (wall) | pacmesh add 1 (wall / CPU) | repo-add add 1 | speed-up | pacmesh load | peak RSS (write) | db + files size |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |a: Option<Duration>, b: Duration| {
        a.map(|a| format!("{:.0}×", a.as_secs_f64() / b.as_secs_f64()))
            .unwrap_or("-".into())
    };
    for r in &rows {
        let ra_write = match (r.write_ra, r.write_ra_cpu) {
            (Some(w), Some(c)) => format!("{} / {}", secs(w), secs(c)),
            _ => "-".into(),
        };
        println!(
            "| {} | {} / {} | {} | {} | {} / {} | {} | {} | {} | {:.1} MiB | {} KiB |",
            r.n,
            secs(r.write_pm),
            secs(r.write_pm_cpu),
            ra_write,
            ratio(r.write_ra, r.write_pm),
            secs(r.add_pm),
            secs(r.add_pm_cpu),
            r.add_ra.map(secs).unwrap_or("-".into()),
            ratio(r.add_ra, r.add_pm),
            secs(r.load),
            r.rss_mib,
            r.db_kib
        );
    }
    if let Some((n, d, rss)) = mem {
        println!(
            "| {n} (memory run, child process) | {} | - | - | - | - | - | - | {rss:.1} MiB | - |",
            secs(d)
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "{} cores; load average at the end: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!(
        "targets: 2000-package write < 1 s; add one to 2000 < 50 ms; peak RSS < 100 MB at 5000"
    );
}
