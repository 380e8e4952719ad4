//! `Signed<Announcement>` (capability gossip).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{Announcement, Limits, Message, Signed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(signed) = Signed::<Announcement>::from_bytes(data, &limits) {
        let _ = signed.verify_and_decode(&limits);
    }
    if let Ok(a) = Announcement::decode(data, &limits) {
        let bytes = a.encode().unwrap();
        assert_eq!(Announcement::decode(&bytes, &limits).unwrap(), a);
    }
});
