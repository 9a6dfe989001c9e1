//! Any datagram on a QUIC socket: STUN, broker messages, relay frames, punches.
//! The checks live in `nano_connect::fuzzing::broker_datagram`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::broker_datagram(data));
