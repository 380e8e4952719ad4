//! Sync requests and responses from peers (`/pacmesh/sync/1`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{Limits, Message, SyncRequest, SyncResponse};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(r) = SyncRequest::decode(data, &limits) {
        assert_eq!(SyncRequest::decode(&r.encode().unwrap(), &limits).unwrap(), r);
    }
    if let Ok(r) = SyncResponse::decode(data, &limits) {
        for e in &r.events {
            let _ = e.verify_and_decode(&limits);
        }
        assert_eq!(SyncResponse::decode(&r.encode().unwrap(), &limits).unwrap(), r);
    }
});
