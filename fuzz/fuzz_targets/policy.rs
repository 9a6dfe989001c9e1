//! A Nano RPC body through the relay policy, read-only or with opt-ins.
//! The checks live in `nano_connect::fuzzing::policy`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::policy(data));
