//! Frames on the starter link, both directions.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stj_proto::framing::decode;
use stj_proto::starter::{ScheddMessage, StarterMessage};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<StarterMessage>(bytes::BytesMut::from(data));
    let _ = decode::<ScheddMessage>(bytes::BytesMut::from(data));
});
