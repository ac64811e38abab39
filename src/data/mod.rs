//! Images in and out: decoding, centre crop and resize as torchvision does.

pub mod transforms;

pub use transforms::{load_image, preprocess, resize_bilinear_aa, to_tensor};
