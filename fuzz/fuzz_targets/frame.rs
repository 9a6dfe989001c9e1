//! RPC frames as a worker reads a request and a client reads a response.
//! The checks live in `nano_connect::fuzzing::frame`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::frame(data));
