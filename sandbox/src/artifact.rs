//! Built packages: hashes and the metadata files read from inside them.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

/// One package file produced by a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Where the file is now (inside the build's work dir until moved).
    pub path: PathBuf,
    /// e.g. `pacmesh-epoch-1:0.9-1-any.pkg.tar.zst`.
    pub file_name: String,
    /// blake3 of the file, lowercase hex.
    pub blake3: String,
    /// sha256 of the file, lowercase hex (what pacman's sync DB records).
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// `pkgname` from the package's `.PKGINFO`.
    pub pkgname: Option<String>,
    /// `pkgver` (full version, with epoch and pkgrel) from `.PKGINFO`.
    pub pkgver: Option<String>,
    /// The package's `.BUILDINFO`, verbatim.
    pub buildinfo: Option<String>,
}

/// Hash a file with blake3 and sha256 in one pass: (blake3, sha256, size).
pub fn hash_file(path: &Path) -> io::Result<(String, String, u64)> {
    let mut f = File::open(path)?;
    let mut b3 = blake3::Hasher::new();
    let mut s2 = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        b3.update(&buf[..n]);
        s2.update(&buf[..n]);
        size += n as u64;
    }
    Ok((
        b3.finalize().to_hex().to_string(),
        hex::encode(s2.finalize()),
        size,
    ))
}

/// Open a package archive, decompressing by magic number (zstd, gzip, none).
fn open_package(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 6];
    let n = f.read(&mut magic)?;
    drop(f);
    let f = BufReader::new(File::open(path)?);
    if n >= 4 && magic[..4] == [0x28, 0xb5, 0x2f, 0xfd] {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(f)?))
    } else if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::bufread::GzDecoder::new(f)))
    } else if n >= 6 && magic[..6] == [0xfd, b'7', b'z', b'X', b'Z', 0] {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "xz-compressed packages are not supported; build with PKGEXT=.pkg.tar.zst",
        ))
    } else {
        Ok(Box::new(f))
    }
}

/// Read the metadata files at the top of a package (`.PKGINFO`, `.BUILDINFO`).
/// makepkg writes them first, so only the head of the archive is decompressed.
pub fn read_package_meta(path: &Path) -> io::Result<(Option<String>, Option<String>)> {
    let mut ar = tar::Archive::new(open_package(path)?);
    let (mut pkginfo, mut buildinfo) = (None, None);
    for entry in ar.entries()? {
        let mut e = entry?;
        let name = e.path()?.to_string_lossy().into_owned();
        let slot = match name.trim_start_matches("./") {
            ".PKGINFO" => &mut pkginfo,
            ".BUILDINFO" => &mut buildinfo,
            n if n.starts_with('.') => continue,
            _ => break, // first payload file: metadata is done
        };
        let mut s = String::new();
        e.by_ref().take(1 << 20).read_to_string(&mut s)?;
        *slot = Some(s);
        if pkginfo.is_some() && buildinfo.is_some() {
            break;
        }
    }
    Ok((pkginfo, buildinfo))
}

fn pkginfo_field(pkginfo: &str, key: &str) -> Option<String> {
    pkginfo.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// True for file names makepkg gives packages (not signatures, not source packages).
pub fn is_package_file(name: &str) -> bool {
    name.contains(".pkg.tar") && !name.ends_with(".sig")
}

/// Describe every package file in `dir` (sorted by file name).
pub fn collect(dir: &Path) -> io::Result<Vec<Artifact>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_package_file(n))
        .collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for file_name in names {
        let path = dir.join(&file_name);
        let (blake3, sha256, size) = hash_file(&path)?;
        let (pkginfo, buildinfo) = read_package_meta(&path).unwrap_or((None, None));
        out.push(Artifact {
            pkgname: pkginfo.as_deref().and_then(|p| pkginfo_field(p, "pkgname")),
            pkgver: pkginfo.as_deref().and_then(|p| pkginfo_field(p, "pkgver")),
            path,
            file_name,
            blake3,
            sha256,
            size,
            buildinfo,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_match_known_values() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        std::fs::write(&p, b"abc").unwrap();
        let (b3, s2, n) = hash_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            s2,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            b3,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }

    #[test]
    fn reads_metadata_from_a_zstd_tar() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a-1-1-any.pkg.tar.zst");
        let f = File::create(&p).unwrap();
        let enc = zstd::stream::write::Encoder::new(f, 3)
            .unwrap()
            .auto_finish();
        let mut t = tar::Builder::new(enc);
        for (name, data) in [
            (".BUILDINFO", "format = 2\npkgname = a\n"),
            (".PKGINFO", "pkgname = a\npkgver = 1:1-1\n"),
            ("usr/x", "x"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, data.as_bytes()).unwrap();
        }
        t.into_inner().unwrap();
        let arts = collect(d.path()).unwrap();
        assert_eq!(arts.len(), 1);
        assert_eq!(arts[0].pkgname.as_deref(), Some("a"));
        assert_eq!(arts[0].pkgver.as_deref(), Some("1:1-1"));
        assert_eq!(
            arts[0].buildinfo.as_deref(),
            Some("format = 2\npkgname = a\n")
        );
    }
}
