//! `Signed<Event>` from the network (gossip, sync): the envelope decoder, the
//! signature check, and the payload decoder on its own (a fuzzer cannot forge
//! signatures, so the payload path is also fed the raw input directly).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::{Event, Limits, Message, Signed};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    if let Ok(signed) = Signed::<Event>::from_bytes(data, &limits) {
        let _ = signed.id();
        let _ = signed.verify_and_decode(&limits);
        // The canonical envelope decodes to the same envelope.
        let again = Signed::<Event>::from_bytes(&signed.to_bytes(), &limits).unwrap();
        assert_eq!(again, signed);
    }
    if let Ok(event) = Event::decode(data, &limits) {
        // A decoded event re-encodes (unless its body is from a newer version)
        // and decodes to the same value.
        if let Ok(bytes) = event.encode() {
            assert_eq!(Event::decode(&bytes, &limits).unwrap(), event);
        }
    }
});
