//! Fuzz target `signature_header`: raw bytes into `posd::fuzz_entry::signature_header` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::signature_header(data));
