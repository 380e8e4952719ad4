//! Reading upstream git heads without cloning (`git ls-remote` through libgit2), and the
//! version-control sources of a package (`git+URL#branch=…` in its `.SRCINFO`), for update
//! detection ([`crate::watch`]).

use std::collections::BTreeMap;

use pacmesh_repo::srcinfo::SrcInfo;

/// The refs a remote advertises: name → commit (annotated tags also as `NAME^{}`, peeled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Heads {
    pub refs: BTreeMap<String, String>,
    /// What the remote's `HEAD` points at (`refs/heads/main`), when it says.
    pub head_target: Option<String>,
}

/// At most this many refs are read from one remote (a hostile server cannot make us hold an
/// unbounded list).
const MAX_REFS: usize = 100_000;

/// Whether `url` names a repository on this machine.
pub fn is_local(url: &str) -> bool {
    url.starts_with("file:") || url.starts_with('/') || url.starts_with('.') || !url.contains(':')
}

/// Lists the refs of `url` without fetching anything (libgit2's network timeouts apply: 30 s
/// to connect, 120 s without data). `allow_local`: accept `file://` URLs and paths.
pub fn ls_remote(url: &str, allow_local: bool) -> Result<Heads, String> {
    if url.starts_with('-') {
        return Err(format!("git url {url:?} starts with '-'"));
    }
    if is_local(url) && !allow_local {
        return Err(format!(
            "git url {url:?} is local and local git sources are turned off on this node"
        ));
    }
    crate::source::set_git_timeouts();
    let mut remote = git2::Remote::create_detached(url).map_err(|e| e.message().to_string())?;
    remote
        .connect_auth(git2::Direction::Fetch, None, None)
        .map_err(|e| format!("cannot read the heads of {url}: {}", e.message()))?;
    let list = remote
        .list()
        .map_err(|e| format!("cannot read the heads of {url}: {}", e.message()))?;
    if list.len() > MAX_REFS {
        return Err(format!("{url} advertises more than {MAX_REFS} refs"));
    }
    let mut h = Heads::default();
    for r in list {
        if r.name() == "HEAD" {
            h.head_target = r.symref_target().map(str::to_string);
        }
        h.refs.insert(r.name().to_string(), r.oid().to_string());
    }
    let _ = remote.disconnect();
    Ok(h)
}

/// Whether `s` is a full commit id.
pub fn is_commit_id(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Heads {
    /// The commit `rev` names: `None` the remote's `HEAD`; otherwise a branch, a tag (peeled),
    /// a full ref name, or a full commit id (returned as is: a pinned commit never changes).
    pub fn resolve(&self, rev: Option<&str>) -> Option<String> {
        let Some(rev) = rev else {
            return self.refs.get("HEAD").cloned().or_else(|| {
                self.head_target
                    .as_ref()
                    .and_then(|t| self.refs.get(t).cloned())
            });
        };
        if is_commit_id(rev) {
            return Some(rev.to_ascii_lowercase());
        }
        let tries = [
            format!("refs/heads/{rev}"),
            format!("refs/tags/{rev}^{{}}"),
            format!("refs/tags/{rev}"),
            format!("{rev}^{{}}"),
            rev.to_string(),
        ];
        tries.iter().find_map(|t| self.refs.get(t).cloned())
    }

    /// The commit of a VCS source's ref (see [`VcsRef`]).
    pub fn resolve_vcs(&self, r: &VcsRef) -> Option<String> {
        match r {
            VcsRef::Head => self.resolve(None),
            VcsRef::Branch(b) => self.refs.get(&format!("refs/heads/{b}")).cloned(),
            VcsRef::Tag(t) => self
                .refs
                .get(&format!("refs/tags/{t}^{{}}"))
                .or_else(|| self.refs.get(&format!("refs/tags/{t}")))
                .cloned(),
            VcsRef::Commit(c) => Some(c.clone()),
        }
    }
}

/// What a VCS source follows (makepkg's `#fragment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcsRef {
    /// No fragment: the remote's default branch.
    Head,
    Branch(String),
    Tag(String),
    /// `#commit=`: pinned, never changes.
    Commit(String),
}

impl std::fmt::Display for VcsRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VcsRef::Head => f.write_str("HEAD"),
            VcsRef::Branch(b) => write!(f, "branch={b}"),
            VcsRef::Tag(t) => write!(f, "tag={t}"),
            VcsRef::Commit(c) => write!(f, "commit={c}"),
        }
    }
}

/// One version-control source of a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcsSource {
    /// `git`, `hg`, `svn`, `bzr`, `fossil`.
    pub protocol: String,
    /// The URL git is given (`git+https://x/y.git#branch=b` → `https://x/y.git`).
    pub url: String,
    pub reference: VcsRef,
    /// The source entry as written.
    pub entry: String,
}

/// Whether a package base is named like a VCS package (`-git`, `-hg`, `-svn`, `-bzr`,
/// `-fossil`, `-darcs`, `-cvs`).
pub fn is_vcs_name(pkgbase: &str) -> bool {
    ["-git", "-hg", "-svn", "-bzr", "-fossil", "-darcs", "-cvs"]
        .iter()
        .any(|s| pkgbase.ends_with(s))
}

/// A VCS source entry of a `.SRCINFO` as a [`VcsSource`].
pub fn vcs_source(s: &pacmesh_repo::srcinfo::Source) -> VcsSource {
    // `git+https://…` → `https://…`; `git://…` stays.
    let url = match s.url.split_once("://") {
        Some((scheme, rest)) => match scheme.split_once('+') {
            Some((_, transport)) => format!("{transport}://{rest}"),
            None => s.url.clone(),
        },
        None => s.url.clone(),
    };
    let url = url.split('#').next().unwrap_or(&url);
    let url = url.split('?').next().unwrap_or(url).to_string();
    let reference = match s.fragment.as_deref().and_then(|f| f.split_once('=')) {
        Some(("branch", b)) => VcsRef::Branch(b.to_string()),
        Some(("tag", t)) => VcsRef::Tag(t.to_string()),
        Some(("commit" | "revision", c)) => VcsRef::Commit(c.to_string()),
        _ => VcsRef::Head,
    };
    VcsSource {
        protocol: s.protocol.clone(),
        url,
        reference,
        entry: s.entry.clone(),
    }
}

/// The VCS sources of a `.SRCINFO` (every architecture), in file order, without duplicates.
pub fn vcs_sources(info: &SrcInfo) -> Vec<VcsSource> {
    let mut out: Vec<VcsSource> = Vec::new();
    for s in info.all_sources() {
        if !s.is_vcs() {
            continue;
        }
        let v = vcs_source(&s);
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcs_sources_are_read_from_srcinfo() {
        let text = "pkgbase = foo-git\n\tpkgver = 1.0.r1.gabc\n\tpkgrel = 1\n\tarch = x86_64\n\
            \tsource = foo::git+https://example.org/foo.git#branch=dev\n\
            \tsource = git+https://example.org/bar.git?signed#tag=v1.2\n\
            \tsource = git://example.org/baz.git\n\
            \tsource = git+https://example.org/pin.git#commit=0123456789abcdef0123456789abcdef01234567\n\
            \tsource = hg+https://example.org/hg\n\
            \tsource = https://example.org/foo.tar.gz\n\
            \tsource = local.patch\n\
            \tsha256sums = SKIP\n\tsha256sums = SKIP\n\tsha256sums = SKIP\n\tsha256sums = SKIP\n\
            \tsha256sums = SKIP\n\tsha256sums = SKIP\n\tsha256sums = SKIP\n\npkgname = foo-git\n";
        let info = SrcInfo::parse(text).unwrap();
        let v = vcs_sources(&info);
        let got: Vec<(&str, &str, String)> = v
            .iter()
            .map(|s| (s.protocol.as_str(), s.url.as_str(), s.reference.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "git",
                    "https://example.org/foo.git",
                    "branch=dev".to_string()
                ),
                ("git", "https://example.org/bar.git", "tag=v1.2".to_string()),
                ("git", "git://example.org/baz.git", "HEAD".to_string()),
                (
                    "git",
                    "https://example.org/pin.git",
                    "commit=0123456789abcdef0123456789abcdef01234567".to_string()
                ),
                ("hg", "https://example.org/hg", "HEAD".to_string()),
            ]
        );
        assert!(is_vcs_name("foo-git") && is_vcs_name("x-hg") && !is_vcs_name("gitg"));
    }

    #[test]
    fn heads_resolve() {
        let mut h = Heads::default();
        let (a, b, c) = ("a".repeat(40), "b".repeat(40), "c".repeat(40));
        h.refs.insert("refs/heads/main".into(), a.clone());
        h.refs.insert("refs/tags/v1".into(), b.clone());
        h.refs.insert("refs/tags/v1^{}".into(), c.clone());
        h.head_target = Some("refs/heads/main".into());
        assert_eq!(h.resolve(None), Some(a.clone()));
        assert_eq!(h.resolve(Some("main")), Some(a.clone()));
        assert_eq!(h.resolve(Some("v1")), Some(c.clone()));
        assert_eq!(h.resolve(Some("refs/tags/v1")), Some(c.clone()));
        assert_eq!(h.resolve(Some(&"D".repeat(40))), Some("d".repeat(40)));
        assert_eq!(h.resolve(Some("nope")), None);
        assert_eq!(h.resolve_vcs(&VcsRef::Tag("v1".into())), Some(c));
        assert_eq!(h.resolve_vcs(&VcsRef::Branch("v1".into())), None);
    }
}
