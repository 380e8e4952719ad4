//! `RepoManifest`, bare (blobs, mirror HTTP) and signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{Limits, Message, RepoManifest, Signed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(signed) = Signed::<RepoManifest>::from_bytes(data, &limits) {
        let _ = signed.verify_and_decode(&limits);
    }
    if let Ok(m) = RepoManifest::decode(data, &limits) {
        let bytes = m.encode().unwrap();
        assert_eq!(RepoManifest::decode(&bytes, &limits).unwrap(), m);
    }
});
