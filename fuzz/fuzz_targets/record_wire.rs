//! A MessagePack worker record through WireRecord::verify.
//! The checks live in `nano_connect::fuzzing::record_wire`, shared with the corpus replay test.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| nano_connect::fuzzing::record_wire(data));
