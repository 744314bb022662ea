//! Routing and relay preambles on the schedd's one port.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stj_proto::preamble::Preamble;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 6 {
        let head: [u8; 6] = data[..6].try_into().unwrap();
        if let Ok(n) = Preamble::total_len(&head) {
            assert!(n <= stj_proto::preamble::MAX_LEN);
        }
    }
    if let Ok(p) = Preamble::decode(data) {
        assert_eq!(p.encode(), data);
    }
});
