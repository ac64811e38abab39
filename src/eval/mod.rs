//! Evaluation: classification metrics (and, with the saliency issue, saliency metrics).

pub mod classification;
pub mod compare;
pub mod faithfulness;
pub mod saliency;
pub mod sanity;
pub mod stats;

pub use classification::{evaluate_model, ClassMetrics, Evaluation};
