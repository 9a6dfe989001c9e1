//! A sequence of broker messages through the broker's rendezvous state machine.
//! The checks live in `nano_connect::fuzzing::rendezvous`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::rendezvous(data));
