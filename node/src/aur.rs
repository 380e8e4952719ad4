//! The AUR: the RPC v5 `info` client and the resolution of AUR dependencies.
//!
//! `BASE` is the AUR base URL (`--aur-url`, config `aur_url`, default
//! `https://aur.archlinux.org`): the RPC is at `BASE/rpc/v5/info?arg[]=A&arg[]=B…`, a package
//! base's git repository at `BASE/PKGBASE.git` (fetched by [`crate::source`]).
//!
//! # Requests
//!
//! Many names go in one request: names are packed into `info` queries until the URL would
//! exceed [`MAX_URL_BYTES`] (aurweb refuses longer URIs) or [`MAX_ARGS`] names. 1000 names of
//! up to 30 characters take at most 9 requests. Each answer is capped at [`MAX_ANSWER_BYTES`]
//! and must be the RPC's JSON: `{"version":5,"type":"multiinfo","results":[…]}`; an answer of
//! `"type":"error"` is an error carrying the RPC's own message, anything else a clear
//! "malformed answer" error naming the URL.
//!
//! # Dependencies
//!
//! [`resolve`] looks up the requested names, then every `Depends`, `MakeDepends` and
//! `CheckDepends` entry (version constraints stripped) that it has not seen yet, level by level
//! (one batch of requests per level). A name the AUR does not know is taken to come from the
//! distribution's repositories and is listed in [`Resolution::external`]. Package bases are
//! ordered dependencies first (a topological order; ties by name); a cycle between package
//! bases is an error naming it ([`AurError::Cycle`]). A package base depending on its own
//! split packages is not a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

/// Longest request URL (aurweb answers "URI too long" above 4443 bytes).
pub const MAX_URL_BYTES: usize = 4400;
/// Most names in one request.
pub const MAX_ARGS: usize = 250;
/// Largest answer read.
pub const MAX_ANSWER_BYTES: u64 = 32 << 20;

/// One package as the RPC describes it (the fields pacmesh uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AurPackage {
    /// The package name.
    pub name: String,
    /// Its package base (the git repository).
    pub package_base: String,
    /// `[epoch:]pkgver-pkgrel`.
    pub version: String,
    /// Seconds since the epoch of the last change of the package base.
    #[serde(default)]
    pub last_modified: u64,
    #[serde(default)]
    pub depends: Vec<String>,
    #[serde(default)]
    pub make_depends: Vec<String>,
    #[serde(default)]
    pub check_depends: Vec<String>,
    #[serde(default)]
    pub provides: Vec<String>,
}

impl AurPackage {
    /// Names this package needs to build and run (version constraints stripped).
    pub fn build_needs(&self) -> impl Iterator<Item = &str> {
        self.depends
            .iter()
            .chain(&self.make_depends)
            .chain(&self.check_depends)
            .map(|d| dep_name(d))
    }
}

/// `foo>=1.2` → `foo`.
pub fn dep_name(dep: &str) -> &str {
    let end = dep.find(['<', '>', '=']).unwrap_or(dep.len());
    dep[..end].trim()
}

#[derive(Debug, Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    results: Vec<serde_json::Value>,
}

/// Why an AUR query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AurError {
    /// No answer (connection refused, timeout, DNS): may work later.
    #[error("AUR RPC {url}: {msg}")]
    Unreachable { url: String, msg: String },
    /// An HTTP error status.
    #[error("AUR RPC {url}: HTTP {status}")]
    Http { url: String, status: u16 },
    /// The RPC answered `"type":"error"`.
    #[error("AUR RPC error: {0}")]
    Rpc(String),
    /// Not the RPC's JSON.
    #[error("AUR RPC {url}: malformed answer: {msg}")]
    Malformed { url: String, msg: String },
    /// A name that cannot be a package name.
    #[error("{0:?} is not a valid package name")]
    BadName(String),
    /// The requested package is not in the AUR.
    #[error("{0} is not in the AUR")]
    NotFound(String),
    /// Package bases that depend on each other.
    #[error("AUR dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
}

impl AurError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            AurError::Unreachable { .. } => true,
            AurError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// A blocking RPC client.
#[derive(Debug, Clone)]
pub struct AurClient {
    base: String,
    agent: ureq::Agent,
}

/// Whether `s` can be a package name ([`pacmesh_protocol::Name`] rules).
pub fn valid_pkgname(s: &str) -> bool {
    pacmesh_protocol::Name::new(s).is_ok()
}

impl AurClient {
    /// A client of the AUR at `base` (no trailing slash needed), 60 s per request.
    pub fn new(base: &str) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .user_agent(concat!("pacmesh/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        AurClient {
            base: base.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The git URL of a package base.
    pub fn git_url(&self, pkgbase: &str) -> String {
        git_url(&self.base, pkgbase)
    }

    /// The request URLs for `names` (see the module docs for the packing).
    pub fn info_urls(&self, names: &[&str]) -> Vec<String> {
        let head = format!("{}/rpc/v5/info?", self.base);
        let mut urls = Vec::new();
        let mut cur = head.clone();
        let mut n = 0;
        for name in names {
            let arg = format!("arg[]={}", encode(name));
            let extra = arg.len() + usize::from(n > 0);
            if n > 0 && (cur.len() + extra > MAX_URL_BYTES || n >= MAX_ARGS) {
                urls.push(std::mem::replace(&mut cur, head.clone()));
                n = 0;
            }
            if n > 0 {
                cur.push('&');
            }
            cur.push_str(&arg);
            n += 1;
        }
        if n > 0 {
            urls.push(cur);
        }
        urls
    }

    /// `info` for `names` (any number; batched). Names the AUR does not know are simply absent
    /// from the result.
    pub fn info(&self, names: &[&str]) -> Result<Vec<AurPackage>, AurError> {
        for n in names {
            if !valid_pkgname(n) {
                return Err(AurError::BadName(n.to_string()));
            }
        }
        let mut out = Vec::new();
        for url in self.info_urls(names) {
            out.extend(self.get(&url)?);
        }
        Ok(out)
    }

    fn get(&self, url: &str) -> Result<Vec<AurPackage>, AurError> {
        let mut resp = self
            .agent
            .get(url)
            .header("accept", "application/json")
            .call()
            .map_err(|e| AurError::Unreachable {
                url: url.to_string(),
                msg: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| AurError::Unreachable {
                url: url.to_string(),
                msg: format!("reading the answer: {e}"),
            });
        // aurweb answers errors with a JSON body and a 4xx/5xx status: prefer its message.
        let parsed = body
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice::<Answer>(b).ok());
        if let Some(a) = &parsed
            && a.kind == "error"
        {
            return Err(AurError::Rpc(
                a.error.clone().unwrap_or_else(|| "(no message)".into()),
            ));
        }
        if !(200..300).contains(&status) {
            return Err(AurError::Http {
                url: url.to_string(),
                status,
            });
        }
        let body = body?;
        let malformed = |msg: String| AurError::Malformed {
            url: url.to_string(),
            msg,
        };
        let a: Answer = serde_json::from_slice(&body).map_err(|e| malformed(e.to_string()))?;
        if a.kind != "multiinfo" && a.kind != "info" {
            return Err(malformed(format!("unexpected type {:?}", a.kind)));
        }
        a.results
            .into_iter()
            .map(|r| {
                let p: AurPackage =
                    serde_json::from_value(r).map_err(|e| malformed(format!("a result: {e}")))?;
                if !valid_pkgname(&p.name) || !valid_pkgname(&p.package_base) {
                    return Err(malformed(format!(
                        "a result names {:?} (base {:?}), not a package name",
                        p.name, p.package_base
                    )));
                }
                Ok(p)
            })
            .collect()
    }
}

/// `BASE/PKGBASE.git`.
pub fn git_url(base: &str, pkgbase: &str) -> String {
    format!("{}/{pkgbase}.git", base.trim_end_matches('/'))
}

/// Percent-encodes what is not safe in a query value (package names rarely need it: `+`, `@`).
fn encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// What [`resolve`] found.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// Package bases to build, dependencies before dependants.
    pub order: Vec<String>,
    /// Package base → the package bases it needs (AUR ones only).
    pub needs: BTreeMap<String, BTreeSet<String>>,
    /// Every AUR package seen, by name.
    pub packages: BTreeMap<String, AurPackage>,
    /// Dependency names the AUR does not know (from the distribution's repositories).
    pub external: BTreeSet<String>,
    /// HTTP requests made.
    pub requests: usize,
}

/// Resolves `names` and their AUR dependencies (see the module docs).
pub fn resolve(client: &AurClient, names: &[&str]) -> Result<Resolution, AurError> {
    let mut r = Resolution::default();
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut first = true;
    while !todo.is_empty() {
        todo.sort();
        todo.dedup();
        asked.extend(todo.iter().cloned());
        let refs: Vec<&str> = todo.iter().map(String::as_str).collect();
        r.requests += client.info_urls(&refs).len();
        let found = client.info(&refs)?;
        let got: BTreeSet<String> = found.iter().map(|p| p.name.clone()).collect();
        for n in &todo {
            if !got.contains(n) {
                if first {
                    return Err(AurError::NotFound(n.clone()));
                }
                r.external.insert(n.clone());
            }
        }
        first = false;
        let mut next = Vec::new();
        for p in found {
            for d in p.build_needs() {
                if valid_pkgname(d) && !asked.contains(d) {
                    next.push(d.to_string());
                }
            }
            r.packages.insert(p.name.clone(), p);
        }
        todo = next;
    }
    // Package-base graph.
    for p in r.packages.values() {
        let deps: BTreeSet<String> = p
            .build_needs()
            .filter_map(|d| r.packages.get(d))
            .map(|d| d.package_base.clone())
            .filter(|b| *b != p.package_base)
            .collect();
        r.needs
            .entry(p.package_base.clone())
            .or_default()
            .extend(deps);
    }
    r.order = topo_order(&r.needs)?;
    Ok(r)
}

/// Dependencies first; ties by name. A cycle is an error naming it.
pub fn topo_order(needs: &BTreeMap<String, BTreeSet<String>>) -> Result<Vec<String>, AurError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        n: &str,
        needs: &BTreeMap<String, BTreeSet<String>>,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<(), AurError> {
        match marks.get(n) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Open) => {
                let start = path.iter().position(|p| p == n).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(n.to_string());
                return Err(AurError::Cycle(cycle));
            }
            None => {}
        }
        marks.insert(n.to_string(), Mark::Open);
        path.push(n.to_string());
        for d in needs.get(n).into_iter().flatten() {
            visit(d, needs, marks, path, out)?;
        }
        path.pop();
        marks.insert(n.to_string(), Mark::Done);
        out.push(n.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for n in needs.keys() {
        visit(n, needs, &mut marks, &mut Vec::new(), &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_names_and_batching() {
        assert_eq!(dep_name("foo>=1.2"), "foo");
        assert_eq!(dep_name("libfoo.so=1-64"), "libfoo.so");
        assert_eq!(dep_name("bar"), "bar");
        let c = AurClient::new("http://127.0.0.1:1/");
        let names: Vec<String> = (0..1000)
            .map(|i| format!("package-name-{i:04}-with-30-char"))
            .collect();
        assert!(names.iter().all(|n| n.len() == 30));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let urls = c.info_urls(&refs);
        assert!(urls.len() <= 10, "{} requests", urls.len());
        assert!(urls.iter().all(|u| u.len() <= MAX_URL_BYTES));
        let total: usize = urls.iter().map(|u| u.matches("arg[]=").count()).sum();
        assert_eq!(total, 1000);
        assert!(urls[0].starts_with("http://127.0.0.1:1/rpc/v5/info?arg[]=package-name-0000"));
        assert_eq!(
            c.info_urls(&["a+b"]),
            vec!["http://127.0.0.1:1/rpc/v5/info?arg[]=a%2Bb".to_string()]
        );
        assert!(c.info_urls(&[]).is_empty());
        assert_eq!(c.git_url("yay"), "http://127.0.0.1:1/yay.git");
    }

    #[test]
    fn topological_order_and_cycles() {
        let g = |edges: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
            edges
                .iter()
                .map(|(n, d)| (n.to_string(), d.iter().map(|x| x.to_string()).collect()))
                .collect()
        };
        let o = topo_order(&g(&[
            ("app", &["lib", "tool"]),
            ("lib", &["base"]),
            ("tool", &[]),
            ("base", &[]),
        ]))
        .unwrap();
        let pos = |n: &str| o.iter().position(|x| x == n).unwrap();
        assert!(pos("base") < pos("lib") && pos("lib") < pos("app") && pos("tool") < pos("app"));
        let e = topo_order(&g(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])])).unwrap_err();
        assert_eq!(e.to_string(), "AUR dependency cycle: a -> b -> c -> a");
    }
}
