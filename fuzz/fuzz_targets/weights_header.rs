//! Fuzz target: robustlens::fuzzing::weights_header (any bytes give a value or a named error, never a
//! panic). Run: cargo +nightly fuzz run weights_header -- -max_total_time=600
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| robustlens::fuzzing::weights_header(data));
