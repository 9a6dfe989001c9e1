//! A worker record's JSON body, signed so that verify reads it.
//! The checks live in `nano_connect::fuzzing::record_body`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::record_body(data));
