//! timm's ConvNeXt (`convnext_atto`, `convnext_tiny`) in timm's names: a 4x4 patchify stem,
//! four stages of depthwise-7x7 / LayerNorm / MLP blocks with layer scale, and a
//! pool-norm-linear head. LayerNorm only, so train mode equals eval mode (no dropout, no
//! stochastic depth: timm's defaults for these models).

use crate::model::arch::Arch;
use crate::model::classifier::LayeredClassifier;
use crate::model::network::Params;
use crate::model::resnet::Mode;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};

const EPS: f64 = 1e-6;

/// A ConvNeXt.
pub struct ConvNext {
    pub(crate) arch: Arch,
    pub(crate) params: Params,
    blocks: [usize; 4],
}

fn dims(arch: Arch) -> ([usize; 4], [usize; 4], bool) {
    match arch {
        Arch::ConvnextAtto => ([2, 2, 6, 2], [40, 80, 160, 320], true),
        _ => ([3, 3, 9, 3], [96, 192, 384, 768], false),
    }
}

impl ConvNext {
    /// timm's initialisation: truncated-normal (std 0.02) weights, zero biases, layer scale
    /// 1e-6, LayerNorm 1/0.
    pub fn new(arch: Arch, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let (blocks, ch, conv_mlp) = dims(arch);
        let mut p = Params::new(arch, seed, device)?;
        p.weight("stem.0.weight", &[ch[0], 3, 4, 4], Some(0.02))?;
        p.fill("stem.0.bias", &[ch[0]], 0.0)?;
        p.norm("stem.1", ch[0])?;
        for s in 0..4 {
            let c = ch[s];
            if s > 0 {
                p.norm(&format!("stages.{s}.downsample.0"), ch[s - 1])?;
                let d = format!("stages.{s}.downsample.1");
                p.weight(&format!("{d}.weight"), &[c, ch[s - 1], 2, 2], Some(0.02))?;
                p.fill(&format!("{d}.bias"), &[c], 0.0)?;
            }
            for b in 0..blocks[s] {
                let q = format!("stages.{s}.blocks.{b}");
                p.fill(&format!("{q}.gamma"), &[c], 1e-6)?;
                p.weight(&format!("{q}.conv_dw.weight"), &[c, 1, 7, 7], Some(0.02))?;
                p.fill(&format!("{q}.conv_dw.bias"), &[c], 0.0)?;
                p.norm(&format!("{q}.norm"), c)?;
                let (w1, w2): (Vec<usize>, Vec<usize>) = if conv_mlp {
                    (vec![4 * c, c, 1, 1], vec![c, 4 * c, 1, 1])
                } else {
                    (vec![4 * c, c], vec![c, 4 * c])
                };
                p.weight(&format!("{q}.mlp.fc1.weight"), &w1, Some(0.02))?;
                p.fill(&format!("{q}.mlp.fc1.bias"), &[4 * c], 0.0)?;
                p.weight(&format!("{q}.mlp.fc2.weight"), &w2, Some(0.02))?;
                p.fill(&format!("{q}.mlp.fc2.bias"), &[c], 0.0)?;
            }
        }
        p.norm("head.norm", ch[3])?;
        p.linear("head.fc", ch[3], num_classes, 0.02)?;
        Ok(ConvNext {
            arch,
            params: p,
            blocks,
        })
    }

    fn block(&self, x: &Tensor, q: &str, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let h = p.depthwise(x, &format!("{q}.conv_dw"), 1, 3, mode)?;
        let gamma = p.t(&format!("{q}.gamma"), mode)?;
        // Channels-last for the norm and the MLP: LayerNorm2d + 1x1 convolutions (atto's
        // conv_mlp) are the same layers as LayerNorm + linear on [N, H, W, C].
        let h = h.permute((0, 2, 3, 1))?;
        let h = p.layer_norm(&h, &format!("{q}.norm"), EPS, mode)?;
        let h = p
            .linear_fwd(&h, &format!("{q}.mlp.fc1"), mode)?
            .gelu_erf()?;
        let h = p.linear_fwd(&h, &format!("{q}.mlp.fc2"), mode)?;
        let h = h.broadcast_mul(&gamma)?.permute((0, 3, 1, 2))?;
        Ok((h + x)?)
    }

    /// Stage `s` (0..4) of the body, from the previous stage's output (or the stem's).
    fn stage(&self, x: &Tensor, s: usize, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let mut x = x.clone();
        if s > 0 {
            x = p.layer_norm_2d(&x, &format!("stages.{s}.downsample.0"), EPS, mode)?;
            x = p.conv(&x, &format!("stages.{s}.downsample.1"), 2, 0, mode)?;
        }
        for b in 0..self.blocks[s] {
            x = self.block(&x, &format!("stages.{s}.blocks.{b}"), mode)?;
        }
        Ok(x)
    }

    /// Position `i` of the layer list: 0 = stem, 1..=4 = stages.0..stages.3.
    fn layer_index(&self, layer: &str) -> Result<usize> {
        self.layer_names()
            .iter()
            .position(|l| l == layer)
            .ok_or_else(|| {
                Error::config(
                    "layer",
                    layer,
                    format!(
                        "{} has the layers {}",
                        self.arch,
                        self.layer_names().join(", ")
                    ),
                )
            })
    }

    /// Runs layers `from..to` (0 = stem, 5 = the head).
    fn range(&self, x: &Tensor, from: usize, to: usize, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let mut x = x.clone();
        for i in from..to {
            x = match i {
                0 => {
                    let h = p.conv(&p.normalise(&x)?, "stem.0", 4, 0, mode)?;
                    p.layer_norm_2d(&h, "stem.1", EPS, mode)?
                }
                1..=4 => self.stage(&x, i - 1, mode)?,
                _ => {
                    let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
                    let h = p.layer_norm(&pooled, "head.norm", EPS, mode)?;
                    p.linear_fwd(&h, "head.fc", mode)?
                }
            };
        }
        Ok(x)
    }

    pub(crate) fn run(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        if h < 32 || w < 32 {
            self.arch.check_image_size(h.min(w))?;
        }
        self.range(x, 0, 6, mode)
    }
}

crate::params_network!(ConvNext);

impl LayeredClassifier for ConvNext {
    fn layer_names(&self) -> Vec<String> {
        let mut v = vec!["stem".to_string()];
        v.extend((0..4).map(|s| format!("stages.{s}")));
        v
    }
    fn default_cam_layer(&self) -> String {
        "stages.3".into()
    }
    fn forward_split(&self, x: &Tensor, layer: &str) -> Result<(Var, Tensor)> {
        let i = self.layer_index(layer)?;
        let acts = self.range(x, 0, i + 1, Mode::InputGrad)?.detach();
        let av = Var::from_tensor(&acts)?;
        let logits = self.range(av.as_tensor(), i + 1, 6, Mode::InputGrad)?;
        Ok((av, logits))
    }
}
