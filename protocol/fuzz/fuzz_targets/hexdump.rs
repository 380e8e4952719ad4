//! The annotated hexdump (used by `inspect`-style tooling on untrusted bytes):
//! never panics, and for well-formed input its hex reads back to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pacmesh_protocol::hexdump::{annotate, parse_hex};

fuzz_target!(|data: &[u8]| {
    let dump = annotate(data);
    if !dump.contains("malformed") {
        assert_eq!(parse_hex(&dump).unwrap(), data);
    }
});
