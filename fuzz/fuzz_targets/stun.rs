//! STUN: transaction ids, Binding responses, and the broker's responder.
//! The checks live in `nano_connect::fuzzing::stun`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::stun(data));
