//! Adversarial examples: PGD with the semantics of MadryLab's `robustness` library, the code
//! the paper ran.

pub mod pgd;

pub use pgd::{Classifier, Norm, Pgd, PgdResult};
