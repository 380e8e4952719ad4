//! Requirement strings (CLI `--needs`, and inside queue entries on the wire).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::Requirement;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(r) = s.parse::<Requirement>() {
        // Display is canonical: it parses back to the same requirement.
        assert_eq!(r.to_string().parse::<Requirement>().unwrap(), r);
    }
    if let Ok(r) = Requirement::parse_wire(s) {
        assert_eq!(Requirement::parse_wire(&r.to_string()).unwrap(), r);
    }
});
