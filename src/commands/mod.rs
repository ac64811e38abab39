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
//! | `device-check` | [`device_check`] |
//! | `benchmark` | [`benchmark`] |
//! | `data synth / split / inspect / bench` | [`data`] |

pub mod bench;
pub mod benchmark;
pub mod benchmark_archs;
pub mod compare;
pub mod cv;
pub mod data;
pub mod demo;
pub mod device_check;
pub mod evaluate;
pub mod frontier;
pub mod predict;
pub mod report;
pub mod saliency;
pub mod sweep;
pub mod train;

use crate::run::default_out;
use crate::{Error, Result};
use std::path::PathBuf;

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

/// A grid's cells for a scheduler: (name, run folder, the cell it needs first) in order.
pub type GridCells = Vec<(String, PathBuf, Option<String>)>;

/// The folder of a grid command (`sweep-eps`, `benchmark`, `cv`): `--out`, or a new default
/// one when the whole grid runs here (`whole`). One cell, a gather and a submission to a
/// scheduler all work on the one folder that every cell shares, so they need `--out`.
pub fn grid_out(out: Option<&std::path::Path>, command: &str, whole: bool) -> Result<PathBuf> {
    match (out, whole) {
        (Some(o), _) => Ok(o.to_path_buf()),
        (None, true) => Ok(default_out(command)),
        (None, false) => Err(Error::conflict(format!(
            "{command}: --cell, --gather and --scheduler slurm work on the folder that every \
             cell shares: give it with --out"
        ))),
    }
}

/// The first `n` entries of a batch `[n, ...]`, each flattened: per image its values.
pub(crate) fn per_image(t: &candle_core::Tensor, n: usize) -> Result<Vec<Vec<f32>>> {
    Ok((0..n)
        .map(|i| t.get(i)?.flatten_all()?.to_vec1())
        .collect::<candle_core::Result<_>>()?)
}

/// The index of a row's largest value (the first of equal ones).
pub(crate) fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, &x)| if x > b.1 { (i, x) } else { b },
        )
        .0
}

/// The file stem of a path, or `fallback`.
pub(crate) fn stem(p: &std::path::Path, fallback: &str) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| fallback.to_string())
}
