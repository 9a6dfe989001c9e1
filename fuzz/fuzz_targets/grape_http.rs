//! Raw HTTP/1.1 bytes to the grape's API (hyper, axum, the grape's handlers).
//! The checks live in `nano_connect::fuzzing::grape_http`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::grape_http(data));
