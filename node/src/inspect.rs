//! `pacmesh inspect PATH`: what a file is and what it says.
//!
//! Recognises `.SRCINFO`, `.PKGINFO`, `.BUILDINFO`, package files and repository databases by
//! name first and by content second, and reports every parsed field plus the file's hashes and
//! the state of its detached signature (`PATH.sig`).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use pacmesh_repo::{
    buildinfo::BuildInfo, db::Database, package, pkginfo::PkgInfo, srcinfo::SrcInfo,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Text metadata files are small; larger ones are refused before parsing.
const MAX_TEXT: u64 = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    SrcInfo,
    PkgInfo,
    BuildInfo,
    Package,
    Database,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SrcInfo => "srcinfo",
            Kind::PkgInfo => "pkginfo",
            Kind::BuildInfo => "buildinfo",
            Kind::Package => "package",
            Kind::Database => "database",
        }
    }
}

fn kind_by_name(name: &str) -> Option<Kind> {
    if name.ends_with(".SRCINFO") {
        Some(Kind::SrcInfo)
    } else if name.ends_with(".PKGINFO") {
        Some(Kind::PkgInfo)
    } else if name.ends_with(".BUILDINFO") {
        Some(Kind::BuildInfo)
    } else if name.contains(".pkg.tar") {
        Some(Kind::Package)
    } else if [".db", ".files"].iter().any(|ext| {
        name.ends_with(ext)
            || [".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2"]
                .iter()
                .any(|c| name.ends_with(&format!("{ext}{c}")))
    }) {
        Some(Kind::Database)
    } else {
        None
    }
}

fn kind_by_content(head: &[u8]) -> Option<Kind> {
    if package::Compression::detect(head).is_some() {
        // An archive: a package has .PKGINFO, a database does not; try package first.
        return Some(Kind::Package);
    }
    let text = std::str::from_utf8(head).ok()?;
    let keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    match keys.first() {
        Some(&"pkgbase") => Some(Kind::SrcInfo),
        Some(&"format") => Some(Kind::BuildInfo),
        _ if keys.contains(&"pkgname") && keys.contains(&"pkgver") => Some(Kind::PkgInfo),
        _ => None,
    }
}

/// Inspects `path`; `pubkey` (an OpenPGP public key, armored or binary) verifies `PATH.sig`.
pub fn inspect(path: &Path, pubkey: Option<&[u8]>) -> Result<Value> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        bail!(
            "{} is a directory; give a file (.SRCINFO, .PKGINFO, .BUILDINFO, package or database)",
            path.display()
        );
    }
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(4096).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let by_name = kind_by_name(&name);
    let kind = by_name
        .or_else(|| kind_by_content(&head))
        .with_context(|| {
            format!(
                "{}: not a .SRCINFO, .PKGINFO, .BUILDINFO, package or repository database",
                path.display()
            )
        })?;

    let parsed = match kind {
        Kind::SrcInfo => {
            let text = read_text(path)?;
            let s = SrcInfo::parse(&text).with_context(|| format!("{}", path.display()))?;
            json!({
                "pkgbase": s.pkgbase(),
                "version": s.version(),
                "pkgnames": s.pkgnames(),
                "packages": s.packages(),
                "sections": s,
            })
        }
        Kind::PkgInfo => {
            let text = read_text(path)?;
            serde_json::to_value(
                PkgInfo::parse(text.as_bytes()).with_context(|| format!("{}", path.display()))?,
            )?
        }
        Kind::BuildInfo => {
            let text = read_text(path)?;
            serde_json::to_value(
                BuildInfo::parse(&text).with_context(|| format!("{}", path.display()))?,
            )?
        }
        Kind::Package => match package::read_package(path) {
            Ok(info) => serde_json::to_value(info)?,
            // An archive of unknown name without .PKGINFO may be a database.
            Err(e @ package::PackageError::MissingPkgInfo { .. }) if by_name.is_none() => {
                let bytes = std::fs::read(path)?;
                match Database::from_archives(&name, &bytes, None) {
                    Ok(db) => json!({ "name": db.name, "count": db.len(), "entries": db.entries }),
                    Err(_) => return Err(e).with_context(|| format!("{}", path.display())),
                }
            }
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        },
        Kind::Database => {
            let db = Database::load(path).with_context(|| format!("{}", path.display()))?;
            json!({ "name": db.name, "count": db.len(), "entries": db.entries })
        }
    };

    let (blake3, sha256) = hash_file(path)?;
    Ok(json!({
        "path": path.display().to_string(),
        "kind": kind.name(),
        "size": meta.len(),
        "blake3": blake3,
        "sha256": sha256,
        "signature": signature_status(path, pubkey)?,
        "parsed": parsed,
    }))
}

fn read_text(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_TEXT {
        bail!(
            "{}: {len} bytes is too large for a metadata file (limit {MAX_TEXT})",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))
}

fn hash_file(path: &Path) -> Result<(String, String)> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut b3 = blake3::Hasher::new();
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        sha.update(&buf[..n]);
    }
    Ok((
        b3.finalize().to_hex().to_string(),
        hex::encode(sha.finalize()),
    ))
}

fn signature_status(path: &Path, pubkey: Option<&[u8]>) -> Result<Value> {
    let sig_path = package::signature_path(path);
    let Ok(sig) = std::fs::read(&sig_path) else {
        return Ok(json!({ "state": "absent" }));
    };
    let Some(key) = pubkey else {
        return Ok(json!({ "state": "present", "path": sig_path.display().to_string() }));
    };
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(
        match pacmesh_repo::sign::verify_detached(key, &data, &sig) {
            Ok(()) => json!({
                "state": "valid",
                "path": sig_path.display().to_string(),
                "key": pacmesh_repo::sign::fingerprint_of(key).unwrap_or_default(),
            }),
            Err(e) => {
                json!({ "state": "invalid", "path": sig_path.display().to_string(), "reason": e.to_string() })
            }
        },
    )
}

/// Human-readable rendering of the JSON report: nested keys indented, arrays one item a line.
pub fn render(value: &Value) -> String {
    let mut out = String::new();
    render_into(&mut out, value, 0);
    out
}

fn render_into(out: &mut String, value: &Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Null => {}
                    Value::Array(a) if a.is_empty() => {}
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        render_into(out, v, indent + 1);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for v in items {
                match v {
                    Value::Object(_) | Value::Array(_) => {
                        out.push_str(&format!("{pad}-\n"));
                        render_into(out, v, indent + 1);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", scalar(v))),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_name() {
        assert_eq!(kind_by_name(".SRCINFO"), Some(Kind::SrcInfo));
        assert_eq!(kind_by_name("foo-1-1-any.pkg.tar.zst"), Some(Kind::Package));
        assert_eq!(kind_by_name("core.db"), Some(Kind::Database));
        assert_eq!(kind_by_name("core.files.tar.gz"), Some(Kind::Database));
        assert_eq!(kind_by_name("notes.txt"), None);
    }

    #[test]
    fn kinds_by_content() {
        assert_eq!(
            kind_by_content(b"# gen\npkgbase = x\n\tpkgver = 1\n"),
            Some(Kind::SrcInfo)
        );
        assert_eq!(
            kind_by_content(b"format = 2\npkgname = x\n"),
            Some(Kind::BuildInfo)
        );
        assert_eq!(
            kind_by_content(b"# generated\npkgname = x\npkgver = 1-1\n"),
            Some(Kind::PkgInfo)
        );
        assert_eq!(kind_by_content(b"hello world"), None);
        assert_eq!(
            kind_by_content(&[0x28, 0xb5, 0x2f, 0xfd, 0, 0]),
            Some(Kind::Package)
        );
    }
}
