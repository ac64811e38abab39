//! Data: sources (synthetic, HAM10000, ImageFolder), pre-processing, lesion-grouped splits,
//! augmentation and a caching, prefetching loader.

pub mod augment;
pub mod blocks;
pub mod cache;
pub mod csv;
pub mod dataset;
pub mod ham10000;
pub mod imagefolder;
pub mod loader;
pub mod open;
pub mod split;
pub mod synthetic;
pub mod transforms;

pub use dataset::{DataOptions, Dataset, Item};
pub use transforms::{load_image, preprocess, resize_bilinear_aa, to_tensor};
