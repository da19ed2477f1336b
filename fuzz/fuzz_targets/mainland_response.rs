//! Fuzz target `mainland_response`: raw bytes into `posd::fuzz_entry::mainland_response` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::mainland_response(data));
