//! Models: the [`Classifier`] trait every method and attack works through, the [`Network`]
//! trait the trainer and checkpoints work through, the architectures ([`Arch`]: ResNet-18,
//! ConvNeXt, EfficientNet-B0, ViT), their layer groups, weight loading and checkpoints.

pub mod arch;
pub mod checkpoint;
pub mod classifier;
pub mod convnext;
pub mod efficientnet;
pub mod groups;
pub mod load;
pub mod network;
pub mod resnet;
pub mod state;
pub mod vit;
pub mod weights;
pub mod zoo;

pub use arch::Arch;
pub use checkpoint::{load_checkpoint, save_checkpoint, ModelConfig};
pub use classifier::{Classifier, LayeredClassifier};
pub use groups::{group_of, GroupSet};
pub use load::{load_model_source, load_model_spec};
pub use network::Network;
pub use resnet::{Mode, ResNet18, Stage, IMAGENET_MEAN, IMAGENET_STD};
pub use weights::{load_weights, read_tensors, resolve_weights, WeightsSource};
pub use zoo::{build, detect};
