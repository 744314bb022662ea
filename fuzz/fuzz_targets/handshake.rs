//! Handshake messages as the starter receives them (Hello) and as the client
//! receives them (Challenge, Ready, Error): never a panic, never a session.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stj_proto::handshake::{decode_message, ClientHandshake, StarterHandshake};

fuzz_target!(|data: &[u8]| {
    let _ = decode_message(data);
    if let Ok(mut s) = StarterHandshake::on_hello(data, &[5; 32]) {
        let _ = s.challenge([1; 32], [2; 32]);
    }
    if let Ok(m) = decode_message(data) {
        let (mut c, _) = ClientHandshake::start(vec![0; 80], &[9; 32], [3; 32]);
        // Random bytes must never pass as the starter's proof.
        assert!(c.on_challenge(m).is_err());
    }
});
