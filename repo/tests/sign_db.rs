//! `OpenPgpKey` as the `DetachedSigner` of pacmesh's database writer: the written `.sig` files
//! verify with the exported public key, and a fixed-time signer makes the whole repository
//! directory byte-identical when written twice.

use pacmesh_repo::db::{AddOptions, DetachedSigner, repo_add};
use pacmesh_repo::package::testutil::SyntheticPackage;
use pacmesh_repo::sign::{self, KEY_CREATION_TIME, OpenPgpKey};
use std::path::Path;

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with(".lck"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let content = if meta.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
                    .into_bytes()
            } else {
                std::fs::read(&p).unwrap()
            };
            (name, content)
        })
        .collect();
    v.sort();
    v
}

fn write_repo(dir: &Path, signer: &dyn DetachedSigner) -> Vec<(String, Vec<u8>)> {
    let pkg = SyntheticPackage::rich("demo", "1:2.0-3")
        .write_to(dir)
        .unwrap();
    let mut opts = AddOptions::default();
    opts.sign_packages = true;
    repo_add(&dir.join("mesh.db.tar.zst"), &[&pkg], &opts, Some(signer)).unwrap();
    snapshot(dir)
}

#[test]
fn database_signatures_verify_and_fixed_time_is_reproducible() {
    let key = OpenPgpKey::from_ed25519_secret(&[0x33; 32], &sign::default_uid("db-test")).unwrap();
    let public = key.public_key_bytes();

    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let t = KEY_CREATION_TIME + 123_456;
    let s1 = write_repo(d1.path(), &key.signer_at(t));
    let s2 = write_repo(d2.path(), &key.signer_at(t));
    assert_eq!(
        s1, s2,
        "fixed-time signing must make identical repositories"
    );

    let names: Vec<&str> = s1.iter().map(|(n, _)| n.as_str()).collect();
    for sig_name in names.iter().filter(|n| n.ends_with(".sig")) {
        let data_name = sig_name.trim_end_matches(".sig");
        let data = std::fs::read(d1.path().join(data_name)).unwrap();
        let sig = std::fs::read(d1.path().join(sig_name)).unwrap();
        sign::verify_detached(&public, &data, &sig)
            .unwrap_or_else(|e| panic!("{sig_name} does not verify: {e}"));
    }
    for expected in [
        "mesh.db.sig",
        "mesh.db.tar.zst.sig",
        "mesh.files.sig",
        "mesh.files.tar.zst.sig",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
    assert!(
        names.iter().any(|n| n.ends_with(".pkg.tar.zst.sig")),
        "{names:?}"
    );

    // The "now" signer (the trait impl on the key itself) verifies too.
    let d3 = tempfile::tempdir().unwrap();
    write_repo(d3.path(), &key);
    let db = std::fs::read(d3.path().join("mesh.db")).unwrap();
    let sig = std::fs::read(d3.path().join("mesh.db.sig")).unwrap();
    sign::verify_detached(key.public_key_armored().as_bytes(), &db, &sig).unwrap();
}
