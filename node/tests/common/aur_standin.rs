//! A local stand-in for the AUR speaking its real protocols on 127.0.0.1: the RPC v5 `info`
//! endpoint (`/rpc/v5/info?arg[]=…`, JSON like aurweb's) and git smart HTTP for
//! `/<pkgbase>.git` (through `git http-backend`, the CGI program git itself ships). Requests
//! to the RPC are counted; the RPC can be told to answer an error, malformed JSON or HTTP 500.
//!
//! Also: [`write`], which writes a folder of files, and [`commit_dir`], which commits a folder into a bare repository with git2 (used for AUR
//! package repositories and packages trees).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// How the RPC answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RpcMode {
    Normal,
    /// `{"type":"error","error":MSG}` with HTTP 200 (as aurweb does for bad requests).
    Error(String),
    /// Not JSON.
    Malformed,
    /// HTTP 500 with an HTML body.
    ServerError,
}

#[derive(Default)]
struct Inner {
    packages: BTreeMap<String, Value>,
    mode: Option<RpcMode>,
    /// GitLab project id → repository name under the root (`NAME.git`).
    gitlab: BTreeMap<u64, String>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    requests: Arc<AtomicUsize>,
    root: PathBuf,
}

/// The running stand-in; stops when dropped.
pub struct AurStandin {
    pub url: String,
    pub root: PathBuf,
    shared: Shared,
    _rt: tokio::runtime::Runtime,
}

/// An RPC record as aurweb writes it.
pub fn info(
    name: &str,
    base: &str,
    version: &str,
    last_modified: u64,
    depends: &[&str],
    makedepends: &[&str],
) -> Value {
    json!({
        "ID": 1, "Name": name, "PackageBaseID": 1, "PackageBase": base, "Version": version,
        "Description": "test", "URL": null, "NumVotes": 0, "Popularity": 0.0, "OutOfDate": null,
        "Maintainer": "t", "FirstSubmitted": 1_700_000_000u64, "LastModified": last_modified,
        "URLPath": format!("/cgit/aur.git/snapshot/{base}.tar.gz"),
        "Depends": depends, "MakeDepends": makedepends, "License": ["MIT"], "Keywords": [],
    })
}

impl AurStandin {
    /// Starts on 127.0.0.1 (a free port); git repositories live under `root/<pkgbase>.git`.
    pub fn start(root: &Path) -> AurStandin {
        std::fs::create_dir_all(root).unwrap();
        let shared = Shared {
            inner: Arc::default(),
            requests: Arc::default(),
            root: root.to_path_buf(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/rpc/v5/info", axum::routing::get(rpc))
            .route("/api/v4/projects/{id}", axum::routing::get(gitlab_project))
            .fallback(git)
            .with_state(shared.clone());
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AurStandin {
            url: format!("http://{addr}"),
            root: root.to_path_buf(),
            shared,
            _rt: rt,
        }
    }

    /// Adds or replaces a package's RPC record.
    pub fn set_info(&self, record: Value) {
        let name = record["Name"].as_str().unwrap().to_string();
        self.shared
            .inner
            .lock()
            .unwrap()
            .packages
            .insert(name, record);
    }

    /// Makes the stand-in answer GitLab's `GET /api/v4/projects/ID` for `id`, with
    /// `http_url_to_repo` = `URL/NAME.git` (a repository under the root, see [`Self::push`]).
    pub fn set_gitlab_project(&self, id: u64, name: &str) {
        self.shared
            .inner
            .lock()
            .unwrap()
            .gitlab
            .insert(id, name.to_string());
    }

    pub fn set_mode(&self, mode: RpcMode) {
        self.shared.inner.lock().unwrap().mode = Some(mode);
    }

    /// RPC requests answered so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Commits `dir`'s files as the next commit of `<pkgbase>.git` (created bare if needed).
    pub fn push(&self, pkgbase: &str, dir: &Path, msg: &str) -> String {
        let bare = self.root.join(format!("{pkgbase}.git"));
        let repo = git2::Repository::open_bare(&bare)
            .unwrap_or_else(|_| git2::Repository::init_bare(&bare).unwrap());
        commit_dir(&repo, dir, msg, 1_700_000_000).to_string()
    }
}

async fn rpc(State(s): State<Shared>, RawQuery(q): RawQuery) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    let inner = s.inner.lock().unwrap();
    match inner.mode.clone().unwrap_or(RpcMode::Normal) {
        RpcMode::Normal => {}
        RpcMode::Error(msg) => {
            return axum::Json(
                json!({"version":5,"type":"error","resultcount":0,"results":[],"error":msg}),
            )
            .into_response();
        }
        RpcMode::Malformed => {
            return (StatusCode::OK, "{\"version\":5,\"type\":\"multi").into_response();
        }
        RpcMode::ServerError => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                "<html>502 Bad Gateway</html>",
            )
                .into_response();
        }
    }
    let q = q.unwrap_or_default();
    let mut results = Vec::new();
    for part in q.split('&') {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        if k != "arg[]" && k != "arg%5B%5D" {
            continue;
        }
        let v = percent_decode(v);
        if let Some(p) = inner.packages.get(&v) {
            results.push(p.clone());
        }
    }
    axum::Json(
        json!({"version":5,"type":"multiinfo","resultcount":results.len(),"results":results}),
    )
    .into_response()
}

/// GitLab's project API (the fields pacmesh reads), 404 for unknown ids.
async fn gitlab_project(
    State(s): State<Shared>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    headers: HeaderMap,
) -> Response {
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    match s.inner.lock().unwrap().gitlab.get(&id) {
        Some(name) => axum::Json(json!({
            "id": id, "name": name, "path_with_namespace": format!("test/{name}"),
            "default_branch": "main",
            "http_url_to_repo": format!("http://{host}/{name}.git"),
            "ssh_url_to_repo": format!("git@{host}:test/{name}.git"),
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": "404 Project Not Found"})),
        )
            .into_response(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(x) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(x);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Git smart HTTP through `git http-backend` (CGI).
async fn git(
    State(s): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let root = s.root.clone();
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let encoding = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("git")
            .arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_PROJECT_ROOT", &root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("PATH_INFO", &path)
            .env("QUERY_STRING", &query)
            .env("REQUEST_METHOD", method.as_str())
            .env("CONTENT_TYPE", &ctype)
            .env("CONTENT_LENGTH", body.len().to_string())
            .env("HTTP_CONTENT_ENCODING", &encoding)
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        std::io::Result::Ok(out.stdout)
    })
    .await;
    let Ok(Ok(out)) = out else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "git http-backend failed").into_response();
    };
    // CGI: headers, a blank line, the body.
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((i, n)) = split else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "bad CGI answer").into_response();
    };
    let head = String::from_utf8_lossy(&out[..i]).into_owned();
    let mut resp = Response::builder();
    let mut status = 200u16;
    for line in head.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            status = v
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
        } else {
            resp = resp.header(k.trim(), v);
        }
    }
    resp.status(status)
        .body(Body::from(out[i + n..].to_vec()))
        .unwrap()
}

/// Writes `files` (path relative to `dir`, text) under `dir`, creating folders.
pub fn write(dir: &Path, files: &[(&str, &str)]) {
    for (p, text) in files {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, text).unwrap();
    }
}

/// Commits the files of `dir` (recursively; `.git` left out; executables keep their bit) as a
/// new commit on `refs/heads/main` of `repo`, whose HEAD is pointed at it. Returns the commit.
pub fn commit_dir(repo: &git2::Repository, dir: &Path, msg: &str, time: i64) -> git2::Oid {
    fn tree(repo: &git2::Repository, dir: &Path) -> git2::Oid {
        use std::os::unix::fs::PermissionsExt;
        let mut tb = repo.treebuilder(None).unwrap();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == ".git" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                let t = tree(repo, &e.path());
                tb.insert(&name, t, 0o040000).unwrap();
            } else if ft.is_symlink() {
                let target = std::fs::read_link(e.path()).unwrap();
                let b = repo.blob(target.to_str().unwrap().as_bytes()).unwrap();
                tb.insert(&name, b, 0o120000).unwrap();
            } else {
                let data = std::fs::read(e.path()).unwrap();
                let b = repo.blob(&data).unwrap();
                let exec = e.metadata().unwrap().permissions().mode() & 0o111 != 0;
                tb.insert(&name, b, if exec { 0o100755 } else { 0o100644 })
                    .unwrap();
            }
        }
        tb.write().unwrap()
    }
    let t = repo.find_tree(tree(repo, dir)).unwrap();
    let sig = git2::Signature::new("t", "t@example.invalid", &git2::Time::new(time, 0)).unwrap();
    let parent = repo
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit> = parent.iter().collect();
    let id = repo
        .commit(Some("refs/heads/main"), &sig, &sig, msg, &t, &parents)
        .unwrap();
    repo.set_head("refs/heads/main").unwrap();
    id
}
