//! Punch and punch-echo datagrams (tags 0x32 and 0x33).
//! The checks live in `nano_connect::fuzzing::punch`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::punch(data));
