//! Fuzz target: robustlens::fuzzing::metadata_csv (any bytes give a value or a named error, never a
//! panic). Run: cargo +nightly fuzz run metadata_csv -- -max_total_time=600
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| robustlens::fuzzing::metadata_csv(data));
