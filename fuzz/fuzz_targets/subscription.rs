//! Subscription frames both ways, and a wallet's websocket message to the gateway.
//! The checks live in `nano_connect::fuzzing::subscription`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::subscription(data));
