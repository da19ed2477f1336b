//! Fuzz target `ams_response`: raw bytes into `posd::fuzz_entry::ams_response` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::ams_response(data));
