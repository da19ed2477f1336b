//! Fuzz target `scanner_framing`: raw bytes into `posd::fuzz_entry::scanner_framing` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::scanner_framing(data));
