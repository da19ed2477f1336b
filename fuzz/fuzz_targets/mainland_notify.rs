//! Fuzz target `mainland_notify`: raw bytes into `posd::fuzz_entry::mainland_notify` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::mainland_notify(data));
