//! Capability decoding: strict, and every accepted encoding round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stj_proto::capability::Capability;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Capability::decode(data) {
        assert_eq!(c.encode().unwrap(), data, "one encoding per capability");
    }
});
