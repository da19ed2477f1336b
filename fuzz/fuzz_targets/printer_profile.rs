//! Fuzz target `printer_profile`: raw bytes into `posd::fuzz_entry::printer_profile` (the corpus replay test runs
//! the same function on stable).

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| posd::fuzz_entry::printer_profile(data));
