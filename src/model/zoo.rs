//! Building an architecture ([`build`]) and recognising one from a weights file's tensors
//! ([`detect`]).

use crate::model::arch::{Arch, Family};
use crate::model::network::Network;
use crate::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// A randomly initialised network (the ecosystem's initialisation) with `num_classes`.
pub fn build(
    arch: Arch,
    num_classes: usize,
    seed: u64,
    device: &Device,
) -> Result<Box<dyn Network>> {
    if num_classes == 0 {
        return Err(Error::model("num_classes must be at least 1"));
    }
    Ok(match arch.family() {
        Family::ResNet => Box::new(crate::model::resnet::ResNet18::new_random(
            num_classes,
            seed,
            device,
        )?),
        Family::ConvNext => Box::new(crate::model::convnext::ConvNext::new(
            arch,
            num_classes,
            seed,
            device,
        )?),
        Family::EfficientNet => Box::new(crate::model::efficientnet::EfficientNet::new(
            num_classes,
            seed,
            device,
        )?),
        Family::Vit => Box::new(crate::model::vit::Vit::new(
            arch,
            num_classes,
            seed,
            device,
        )?),
    })
}

/// The architecture a set of tensors belongs to, with the tensor that tells, when it is one
/// of these.
pub fn detect(tensors: &HashMap<String, Tensor>) -> Option<(Arch, String)> {
    let dims = |n: &str| tensors.get(n).map(|t| t.dims().to_vec());
    let tell = |a: Arch, n: &str| Some((a, format!("`{n}` {:?}", dims(n).unwrap_or_default())));
    if let Some(d) = dims("stem.0.weight") {
        return match d.first() {
            Some(40) => tell(Arch::ConvnextAtto, "stem.0.weight"),
            Some(96) if tensors.contains_key("stages.2.blocks.8.gamma") => {
                tell(Arch::ConvnextTiny, "stem.0.weight")
            }
            _ => None,
        };
    }
    if let Some(d) = dims("patch_embed.proj.weight") {
        return match (d.first(), tensors.contains_key("blocks.11.norm1.weight")) {
            (Some(192), true) => tell(Arch::VitTiny, "patch_embed.proj.weight"),
            (Some(384), true) => tell(Arch::VitSmall, "patch_embed.proj.weight"),
            _ => None,
        };
    }
    if tensors.contains_key("features.8.0.weight") && tensors.contains_key("features.0.0.weight") {
        return tell(Arch::EfficientnetB0, "features.8.0.weight");
    }
    if tensors.contains_key("layer1.0.conv1.weight") && tensors.contains_key("conv1.weight") {
        return tell(Arch::Resnet18, "layer1.0.conv1.weight");
    }
    None
}
