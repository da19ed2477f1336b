//! Fuzz target `statement`: raw bytes into `posd::fuzz_entry::statement` (the corpus replay
//! test runs the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::statement(data));
