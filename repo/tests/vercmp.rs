//! `pacmesh_repo::version::vercmp` against pacman's own `/usr/bin/vercmp`
//! on hand-picked tricky pairs and a few thousand generated ones.

mod common;

use pacmesh_repo::version::{Version, vercmp};
use std::cmp::Ordering;
use std::process::Command;

const TRICKY: &[(&str, &str)] = &[
    ("1.5.0", "1.5.0"),
    ("1.5.1", "1.5.0"),
    ("1.5.1", "1.5"),
    ("1.5.0-1", "1.5.0-2"),
    ("1.5-1", "1.5.1-1"),
    ("1.5", "1.5-1"),
    ("1.1-1", "1.1"),
    ("1.5b-1", "1.5-1"),
    ("1.5b", "1.5"),
    ("1.5b", "1.5.1"),
    ("1.0a", "1.0alpha"),
    ("1.0alpha", "1.0b"),
    ("1.0b", "1.0beta"),
    ("1.0beta", "1.0rc"),
    ("1.0rc", "1.0"),
    ("1.5.a", "1.5"),
    ("1.5.b", "1.5.a"),
    ("1.5.1", "1.5.b"),
    ("1.0", "1.0.0"),
    ("1.0a", "1.0.0"),
    ("1.0.a", "1.0a"),
    ("1.0", "1_0"),
    ("1..0", "1.0"),
    ("1.0..", "1.0."),
    ("1.0~rc1", "1.0"),
    ("1.0+git5", "1.0"),
    ("1:1.0", "2.0"),
    ("1:1.0", "1:1.1"),
    ("0:1.0", "1.0"),
    (":1.0", "1.0"),
    ("1:", "1"),
    (":", ""),
    ("", ""),
    ("", "a"),
    ("", "1"),
    ("a", "1"),
    ("-", ""),
    ("--1", "-1"),
    ("1.0-", "1.0"),
    ("1.0--1", "1.0-1"),
    ("1.0-1-2", "1.0-1-1"),
    ("01", "1"),
    ("0001.2", "1.02"),
    (
        "123456789012345678901234567890",
        "123456789012345678901234567891",
    ),
    ("99999999999999999999", "100000000000000000000"),
    ("1.0é", "1.0"),
    ("1.0é1", "1.0.1"),
    ("2:1.0-1", "10:0.1-1"),
    ("1.0-1.1", "1.0-1"),
    ("1.0-1.a", "1.0-1"),
    ("abc", "abd"),
    ("ABC", "abc"),
    ("1.0-1", "1.0alpha-1"),
    ("1.0.0-1", "1.0-2"),
    ("20240101", "2024.01.01"),
    ("r123.abcdef", "r124.000000"),
    ("1.0rc1", "1.0.rc1"),
    ("0.9", "0.10"),
    ("1.a.1", "1.1"),
    ("1a1", "1.1"),
    ("1.0a1", "1.0a2"),
    ("1+1", "1_1"),
    ("1++1", "1_1"),
    ("1:0.9-1", "0.9-1"),
    ("a:1.0", "1.0"),
    ("1a:1.0", "1.0"),
];

/// Seeded xorshift64*.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn gen_version(r: &mut Rng) -> String {
    let mut s = String::new();
    if r.below(5) == 0 {
        s.push_str(&r.below(3).to_string());
        s.push(':');
    }
    let segs = 1 + r.below(5);
    for i in 0..segs {
        if i > 0 || r.below(10) == 0 {
            let seps = [".", ".", ".", "_", "+", "~", "..", "-", "", "._"];
            s.push_str(seps[r.below(seps.len() as u64) as usize]);
        }
        match r.below(6) {
            0 => s.push_str(
                ["a", "b", "rc", "alpha", "beta", "pre", "git", "r"][r.below(8) as usize],
            ),
            1 => s.push_str(&format!("{:0w$}", r.below(20), w = r.below(3) as usize)),
            2 => {
                s.push_str(&r.below(10).to_string());
                s.push_str(["a", "b", "rc"][r.below(3) as usize]);
            }
            _ => s.push_str(&r.below(12).to_string()),
        }
    }
    if r.below(4) != 0 {
        s.push('-');
        s.push_str(&(1 + r.below(3)).to_string());
        if r.below(8) == 0 {
            s.push_str(".1");
        }
    }
    s
}

fn mutate(r: &mut Rng, v: &str) -> String {
    // Small edits of the same version make the interesting comparisons.
    let mut b: Vec<char> = v.chars().collect();
    match r.below(5) {
        0 if !b.is_empty() => {
            let i = r.below(b.len() as u64) as usize;
            b.remove(i);
        }
        1 => {
            let i = r.below(b.len() as u64 + 1) as usize;
            b.insert(i, ['.', '1', 'a', '0', '_', '-'][r.below(6) as usize]);
        }
        2 if !b.is_empty() => {
            let i = r.below(b.len() as u64) as usize;
            b[i] = ['.', '1', 'a', '9', '_', '0'][r.below(6) as usize];
        }
        _ => return gen_version(r),
    }
    b.into_iter().collect()
}

/// Ask the real vercmp about many pairs, on a few threads.
fn real_vercmp(pairs: &[(String, String)]) -> Vec<i32> {
    let threads = 4;
    let chunk = pairs.len().div_ceil(threads);
    std::thread::scope(|s| {
        let hs: Vec<_> = pairs
            .chunks(chunk.max(1))
            .map(|c| {
                s.spawn(move || {
                    c.iter()
                        .map(|(a, b)| {
                            let out = Command::new("vercmp").arg(a).arg(b).output().unwrap();
                            String::from_utf8(out.stdout)
                                .unwrap()
                                .trim()
                                .parse::<i32>()
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

fn ord(i: i32) -> Ordering {
    i.cmp(&0)
}

#[test]
fn matches_pacman_vercmp() {
    if !common::require("matches_pacman_vercmp", &["vercmp"]) {
        return;
    }
    let mut pairs: Vec<(String, String)> = Vec::new();
    for (a, b) in TRICKY {
        pairs.push((a.to_string(), b.to_string()));
        pairs.push((b.to_string(), a.to_string()));
    }
    let mut r = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..3000 {
        let a = gen_version(&mut r);
        let b = if r.below(2) == 0 {
            mutate(&mut r, &a)
        } else {
            gen_version(&mut r)
        };
        pairs.push((a, b));
    }
    let want = real_vercmp(&pairs);
    let mut bad = Vec::new();
    for ((a, b), w) in pairs.iter().zip(&want) {
        let got = vercmp(a, b);
        if got != ord(*w) {
            bad.push(format!("vercmp({a:?}, {b:?}) = {got:?}, pacman says {w}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} mismatches:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn version_type_orders_like_vercmp() {
    let mut r = Rng(42);
    let mut vs: Vec<Version> = (0..500)
        .filter_map(|_| Version::parse(&gen_version(&mut r)).ok())
        .collect();
    assert!(vs.len() > 300);
    for w in vs.windows(2) {
        assert_eq!(w[0].cmp(&w[1]), vercmp(w[0].as_str(), w[1].as_str()));
        assert_eq!(w[0].cmp(&w[1]), w[1].cmp(&w[0]).reverse());
    }
    // Versions with a pkgrel on both sides sort consistently.
    vs.retain(|v| v.pkgrel().is_some());
    vs.sort();
    for w in vs.windows(2) {
        assert_ne!(
            vercmp(w[0].as_str(), w[1].as_str()),
            Ordering::Greater,
            "{:?} {:?}",
            w[0],
            w[1]
        );
    }
    let v = Version::parse("1:0.9-1").unwrap();
    assert_eq!(serde_json::to_string(&v).unwrap(), "\"1:0.9-1\"");
    let back: Version = serde_json::from_str("\"1:0.9-1\"").unwrap();
    assert_eq!(back.as_str(), "1:0.9-1");
    assert!(serde_json::from_str::<Version>("\"x:1\"").is_err());
}
