//! Blob requests and responses from peers (`/pacmesh/blobs/1`), and outboard checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{BlobAnswer, BlobRequest, BlobResponse, Hash, Limits, Message, outboard_matches};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(r) = BlobRequest::decode(data, &limits) {
        assert_eq!(BlobRequest::decode(&r.encode().unwrap(), &limits).unwrap(), r);
    }
    if let Ok(r) = BlobResponse::decode(data, &limits) {
        if let BlobAnswer::Outboard { size, segments } = &r.answer {
            let _ = outboard_matches(&Hash::new(data), *size, segments);
        }
        assert_eq!(BlobResponse::decode(&r.encode().unwrap(), &limits).unwrap(), r);
    }
});
