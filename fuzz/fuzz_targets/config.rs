//! Fuzz target `config`: raw bytes into `posd::fuzz_entry::config` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::config(data));
