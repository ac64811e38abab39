//! Evaluation: classification metrics (and, with the saliency issue, saliency metrics).

pub mod classification;
pub mod saliency;

pub use classification::{evaluate_model, ClassMetrics, Evaluation};
