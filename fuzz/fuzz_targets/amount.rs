//! Fuzz target `amount`: raw bytes into `posd::fuzz_entry::amount` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::amount(data));
