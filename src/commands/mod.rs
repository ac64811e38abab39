//! The commands of the `robustlens` binary, as library functions with typed options: one
//! module per command, each with an options struct and a `run` function that does the work
//! and prints its result to standard output as the binary does. The binary only parses its
//! flags into these options (see `src/main.rs`).
//!
//! | command | module |
//! |---|---|
//! | `predict`, `info` | [`predict`] |
//! | `saliency` | [`saliency`] |
//! | `train-standard`, `train-robust`, `finetune` | [`train`] |
//! | `cv` | [`cv`] |
//! | `evaluate`, `attack`, `sanity` | [`evaluate`] |
//! | `compare`, `sweep-eps` | [`compare`], [`sweep`] |
//! | `report`, `demo` | [`report`], [`demo`] |
//! | `bench` | [`bench`](mod@bench) |
//! | `benchmark` | [`benchmark`] |
//! | `data synth / split / inspect / bench` | [`data`] |

pub mod bench;
pub mod benchmark;
pub mod compare;
pub mod cv;
pub mod data;
pub mod demo;
pub mod evaluate;
pub mod frontier;
pub mod predict;
pub mod report;
pub mod saliency;
pub mod sweep;
pub mod train;

use crate::{Error, Result};

/// Checks a working resolution before any work.
pub fn check_image_size(n: usize) -> Result<()> {
    if n < 32 {
        return Err(Error::config(
            "image-size",
            n,
            "a ResNet-18 needs at least 32 x 32 pixels (its five stride-2 stages reduce 32 to 1); use e.g. 64 or 224",
        ));
    }
    if n > 4096 {
        return Err(Error::config(
            "image-size",
            n,
            "larger than 4096 is not supported",
        ));
    }
    Ok(())
}

/// Splits a comma-separated list, trimming and dropping empty items.
pub fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect()
}

/// The file stem of a path, or `fallback`.
pub(crate) fn stem(p: &std::path::Path, fallback: &str) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| fallback.to_string())
}
