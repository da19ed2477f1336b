//! Fuzz target `hub_config`: raw bytes into `posd::fuzz_entry::hub_config` (the corpus
//! replay test runs the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::hub_config(data));
