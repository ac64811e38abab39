//! The ResNet-18, its layer groups, weight loading and checkpoints.

pub mod checkpoint;
pub mod groups;
pub mod resnet;
pub mod weights;

pub use checkpoint::{load_checkpoint, save_checkpoint, ModelConfig};
pub use groups::{group_of, GroupSet};
pub use resnet::{Mode, ResNet18, Stage, IMAGENET_MEAN, IMAGENET_STD};
pub use weights::{load_model_spec, load_weights, read_tensors, resolve_weights, WeightsSource};
