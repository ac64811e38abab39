//! Models: the [`Classifier`] trait every method and attack works through, the ResNet-18,
//! its layer groups, weight loading and checkpoints.

pub mod checkpoint;
pub mod classifier;
pub mod groups;
pub mod load;
pub mod resnet;
pub mod weights;

pub use checkpoint::{load_checkpoint, save_checkpoint, ModelConfig};
pub use classifier::{Classifier, LayeredClassifier};
pub use groups::{group_of, GroupSet};
pub use load::{load_model_source, load_model_spec};
pub use resnet::{Mode, ResNet18, Stage, IMAGENET_MEAN, IMAGENET_STD};
pub use weights::{load_weights, read_tensors, resolve_weights, WeightsSource};
