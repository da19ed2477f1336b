//! Fuzz target `payment_code`: raw bytes into `posd::fuzz_entry::payment_code` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::payment_code(data));
