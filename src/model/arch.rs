//! The architectures robustlens builds, as data: names, input normalisation, the five layer
//! groups, the head, the default weights and the image sizes each takes. Building one and
//! recognising one from a weights file's tensors: [`crate::model::zoo`].

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A network architecture (`--arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    /// torchvision's ResNet-18 (the paper's model).
    #[default]
    Resnet18,
    /// timm's ConvNeXt-atto (3.7 M parameters, convolutional MLP).
    ConvnextAtto,
    /// timm's ConvNeXt-tiny (28 M parameters).
    ConvnextTiny,
    /// torchvision's EfficientNet-B0 (BatchNorm, squeeze-excitation).
    EfficientnetB0,
    /// timm's ViT-tiny/16 (DeiT-tiny layout, 5.7 M parameters).
    #[serde(rename = "vit_tiny_patch16_224")]
    VitTiny,
    /// timm's ViT-small/16 (22 M parameters): the ViT of most interpretability studies.
    #[serde(rename = "vit_small_patch16_224")]
    VitSmall,
}

/// The architecture family, for the code that builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    ResNet,
    ConvNext,
    EfficientNet,
    Vit,
}

impl Arch {
    pub const ALL: [Arch; 6] = [
        Arch::Resnet18,
        Arch::ConvnextAtto,
        Arch::ConvnextTiny,
        Arch::EfficientnetB0,
        Arch::VitTiny,
        Arch::VitSmall,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::ConvnextAtto => "convnext_atto",
            Arch::ConvnextTiny => "convnext_tiny",
            Arch::EfficientnetB0 => "efficientnet_b0",
            Arch::VitTiny => "vit_tiny_patch16_224",
            Arch::VitSmall => "vit_small_patch16_224",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Arch::Resnet18 => Family::ResNet,
            Arch::ConvnextAtto | Arch::ConvnextTiny => Family::ConvNext,
            Arch::EfficientnetB0 => Family::EfficientNet,
            Arch::VitTiny | Arch::VitSmall => Family::Vit,
        }
    }

    /// Whose names and layout the weights use.
    pub fn ecosystem(self) -> &'static str {
        match self.family() {
            Family::ResNet | Family::EfficientNet => "torchvision",
            Family::ConvNext | Family::Vit => "timm",
        }
    }

    /// Whether train mode differs from eval mode (BatchNorm).
    pub fn has_batch_norm(self) -> bool {
        matches!(self.family(), Family::ResNet | Family::EfficientNet)
    }

    /// Input normalisation (mean, std) of the architecture's default weights.
    pub fn normalisation(self) -> ([f32; 3], [f32; 3]) {
        match self.family() {
            Family::Vit => ([0.5; 3], [0.5; 3]),
            _ => (
                crate::model::resnet::IMAGENET_MEAN,
                crate::model::resnet::IMAGENET_STD,
            ),
        }
    }

    /// The head's name prefix (`fc`, `head.fc`, `head`, `classifier.1`).
    pub fn head_prefix(self) -> &'static str {
        match self.family() {
            Family::ResNet => "fc",
            Family::ConvNext => "head.fc",
            Family::EfficientNet => "classifier.1",
            Family::Vit => "head",
        }
    }

    /// The Hugging Face hub repository of the ImageNet weights, when the ecosystem publishes
    /// them there.
    pub fn default_hub_repo(self) -> Option<&'static str> {
        Some(match self {
            Arch::Resnet18 => "timm/resnet18.tv_in1k",
            Arch::ConvnextAtto => "timm/convnext_atto.d2_in1k",
            Arch::ConvnextTiny => "timm/convnext_tiny.fb_in1k",
            Arch::VitTiny => "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k",
            Arch::VitSmall => "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
            Arch::EfficientnetB0 => return None,
        })
    }

    /// What the five layer groups hold, for help texts and errors.
    pub fn groups_text(self) -> &'static str {
        match self {
            Arch::Resnet18 => "1 = conv1+bn1+layer1, 2 = layer2, 3 = layer3, 4 = layer4, 5 = fc",
            Arch::ConvnextAtto | Arch::ConvnextTiny => {
                "1 = stem+stages.0, 2 = stages.1, 3 = stages.2, 4 = stages.3, 5 = head"
            }
            Arch::EfficientnetB0 => {
                "1 = features.0-2, 2 = features.3, 3 = features.4-5, 4 = features.6-8, 5 = classifier"
            }
            Arch::VitTiny | Arch::VitSmall => {
                "1 = patch_embed+cls_token+pos_embed+blocks.0-2, 2 = blocks.3-5, 3 = blocks.6-8, \
                 4 = blocks.9-11, 5 = norm+head"
            }
        }
    }

    /// The layer group (1..=5) of a tensor name: timm's `group_matcher`, coarsened to the
    /// five groups of the paper's ResNet-18 (input side 1, head 5).
    pub fn group_of(self, name: &str) -> u8 {
        let mut parts = name.split('.');
        let head = parts.next().unwrap_or("");
        let index = parts.next().and_then(|s| s.parse::<usize>().ok());
        match self.family() {
            Family::ResNet => crate::model::groups::group_of(name),
            Family::ConvNext => match (head, index) {
                ("stem", _) => 1,
                ("stages", Some(i)) => (i.min(3) + 1) as u8,
                _ => 5,
            },
            Family::EfficientNet => match (head, index) {
                ("features", Some(0..=2)) => 1,
                ("features", Some(3)) => 2,
                ("features", Some(4 | 5)) => 3,
                ("features", Some(_)) => 4,
                _ => 5,
            },
            Family::Vit => match (head, index) {
                ("patch_embed" | "cls_token" | "pos_embed", _) => 1,
                ("blocks", Some(i)) => (i / 3).min(3) as u8 + 1,
                _ => 5,
            },
        }
    }

    /// Checks that the architecture can take `size` x `size` images.
    pub fn check_image_size(self, size: usize) -> Result<()> {
        let why = match self.family() {
            Family::Vit if !size.is_multiple_of(16) || size < 16 => Some(format!(
                "its 16 px patches need a multiple of 16 (e.g. {} or {})",
                (size / 16).max(1) * 16,
                (size / 16 + 1) * 16
            )),
            Family::ConvNext if !size.is_multiple_of(32) => Some(format!(
                "its stem (stride 4) and three 2x2 downsamplings need a multiple of 32 (e.g. {} or {})",
                (size / 32).max(1) * 32,
                (size / 32 + 1) * 32
            )),
            _ if size < 32 => Some("it needs at least 32 px".into()),
            _ => None,
        };
        match why {
            Some(w) => Err(Error::config(
                "image-size",
                size,
                format!("{} cannot take {size} px images: {w}", self.name()),
            )),
            None => Ok(()),
        }
    }

    /// Parses a name; the error lists every architecture.
    pub fn parse(s: &str) -> Result<Arch> {
        let t = s.trim().to_ascii_lowercase();
        let t = match t.as_str() {
            "vit_tiny" => "vit_tiny_patch16_224",
            "vit_small" => "vit_small_patch16_224",
            other => other,
        };
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == t)
            .ok_or_else(|| {
                Error::config(
                    "arch",
                    s,
                    format!(
                        "unknown architecture; use one of {}",
                        Arch::ALL.map(|a| a.name()).join(", ")
                    ),
                )
            })
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Arch::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.name()).unwrap(), a);
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{}\"", a.name()));
        }
        assert_eq!(Arch::parse("vit_tiny").unwrap(), Arch::VitTiny);
        let e = Arch::parse("resnet50").unwrap_err().to_string();
        assert!(e.contains("convnext_atto") && e.contains("resnet50"), "{e}");
    }

    #[test]
    fn groups_follow_names() {
        let c = Arch::ConvnextAtto;
        assert_eq!(c.group_of("stem.0.weight"), 1);
        assert_eq!(c.group_of("stages.0.blocks.1.gamma"), 1);
        assert_eq!(c.group_of("stages.3.downsample.1.weight"), 4);
        assert_eq!(c.group_of("head.fc.bias"), 5);
        let v = Arch::VitTiny;
        assert_eq!(v.group_of("cls_token"), 1);
        assert_eq!(v.group_of("blocks.2.attn.qkv.weight"), 1);
        assert_eq!(v.group_of("blocks.3.norm1.weight"), 2);
        assert_eq!(v.group_of("blocks.11.mlp.fc2.bias"), 4);
        assert_eq!(v.group_of("norm.weight"), 5);
        let e = Arch::EfficientnetB0;
        assert_eq!(e.group_of("features.2.1.block.0.0.weight"), 1);
        assert_eq!(e.group_of("features.3.0.block.0.1.running_mean"), 2);
        assert_eq!(e.group_of("features.5.2.block.3.1.bias"), 3);
        assert_eq!(e.group_of("features.8.0.weight"), 4);
        assert_eq!(e.group_of("classifier.1.weight"), 5);
    }

    #[test]
    fn image_sizes() {
        assert!(Arch::VitTiny.check_image_size(224).is_ok());
        assert!(Arch::VitTiny.check_image_size(64).is_ok());
        let e = Arch::VitTiny.check_image_size(100).unwrap_err().to_string();
        assert!(
            e.contains("multiple of 16") && e.contains("96 or 112"),
            "{e}"
        );
        assert!(Arch::ConvnextAtto.check_image_size(48).is_err());
        assert!(Arch::EfficientnetB0.check_image_size(40).is_ok());
    }
}
