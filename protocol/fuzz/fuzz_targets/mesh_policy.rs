//! `Signed<MeshPolicy>` (policy files, policy updates from peers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{Limits, MeshPolicy, Message, Signed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(signed) = Signed::<MeshPolicy>::from_bytes(data, &limits) {
        let _ = signed.verify_and_decode(&limits);
    }
    if let Ok(policy) = MeshPolicy::decode(data, &limits) {
        let bytes = policy.encode().unwrap();
        assert_eq!(MeshPolicy::decode(&bytes, &limits).unwrap(), policy);
        let _ = policy.role_of(&policy.root);
    }
});
