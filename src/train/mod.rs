//! Training: the optimiser, learning-rate schedules, the trainer with its run folder, metrics.

pub mod config;
pub mod cv;
pub mod optim;
pub mod schedule;
pub mod trainer;

pub use config::{AdvConfig, TrainConfig};
pub use trainer::{train, Stop, Summary};
