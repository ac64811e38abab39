//! Training: the optimiser, learning-rate schedules, the trainer that fills a run folder, and
//! cross-validation. The configuration lives in [`crate::config`], the run folder in
//! [`crate::run`].

pub mod cv;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use crate::config::{AdvConfig, TrainConfig};
pub use trainer::{train, Stop, Summary};
