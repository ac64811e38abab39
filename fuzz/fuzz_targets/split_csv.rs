//! Fuzz target: robustlens::fuzzing::split_csv (any bytes give a value or a named error, never a
//! panic). Run: cargo +nightly fuzz run split_csv -- -max_total_time=600
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| robustlens::fuzzing::split_csv(data));
