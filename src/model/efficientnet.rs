//! torchvision's EfficientNet-B0 in torchvision's names: a 3x3 stem, seven stages of MBConv
//! blocks (expansion, depthwise convolution, squeeze-excitation, projection), a 1x1 head
//! convolution and a linear classifier. BatchNorm trains as torch's does (batch statistics,
//! running statistics with momentum 0.1 and the unbiased variance). torchvision's dropout
//! (0.2, before the classifier) and stochastic depth (0.2) are not applied in training.

use crate::model::arch::Arch;
use crate::model::classifier::LayeredClassifier;
use crate::model::network::Params;
use crate::model::resnet::Mode;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};

const EPS: f64 = 1e-5;

/// (expand ratio, kernel, stride, in, out, layers) of B0's seven stages.
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
];

#[derive(Debug, Clone)]
struct Block {
    prefix: String,
    expand: bool,
    kernel: usize,
    stride: usize,
    residual: bool,
}

/// An EfficientNet-B0.
pub struct EfficientNet {
    pub(crate) arch: Arch,
    pub(crate) params: Params,
    /// Blocks per stage (`features.1` .. `features.7`).
    stages: Vec<Vec<Block>>,
}

impl EfficientNet {
    /// torchvision's initialisation: Kaiming-normal (fan-out) convolutions, BatchNorm 1/0,
    /// zero biases; the classifier normal with the variance of torchvision's
    /// uniform(+-1/sqrt(K)).
    pub fn new(num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let mut p = Params::new(Arch::EfficientnetB0, seed, device)?;
        p.weight("features.0.0.weight", &[32, 3, 3, 3], None)?;
        p.batch_norm("features.0.1", 32)?;
        let mut stages = Vec::new();
        for (si, &(e, k, s, cin, cout, n)) in STAGES.iter().enumerate() {
            let mut blocks = Vec::new();
            for j in 0..n {
                let (ci, st) = if j == 0 { (cin, s) } else { (cout, 1) };
                let q = format!("features.{}.{j}.block", si + 1);
                let ce = ci * e;
                let mut idx = 0;
                if e != 1 {
                    p.weight(&format!("{q}.0.0.weight"), &[ce, ci, 1, 1], None)?;
                    p.batch_norm(&format!("{q}.0.1"), ce)?;
                    idx = 1;
                }
                p.weight(&format!("{q}.{idx}.0.weight"), &[ce, 1, k, k], None)?;
                p.batch_norm(&format!("{q}.{idx}.1"), ce)?;
                let sq = (ci / 4).max(1);
                let se = format!("{q}.{}", idx + 1);
                p.weight(&format!("{se}.fc1.weight"), &[sq, ce, 1, 1], None)?;
                p.fill(&format!("{se}.fc1.bias"), &[sq], 0.0)?;
                p.weight(&format!("{se}.fc2.weight"), &[ce, sq, 1, 1], None)?;
                p.fill(&format!("{se}.fc2.bias"), &[ce], 0.0)?;
                p.weight(
                    &format!("{q}.{}.0.weight", idx + 2),
                    &[cout, ce, 1, 1],
                    None,
                )?;
                p.batch_norm(&format!("{q}.{}.1", idx + 2), cout)?;
                blocks.push(Block {
                    prefix: q,
                    expand: e != 1,
                    kernel: k,
                    stride: st,
                    residual: st == 1 && ci == cout,
                });
            }
            stages.push(blocks);
        }
        p.weight("features.8.0.weight", &[1280, 320, 1, 1], None)?;
        p.batch_norm("features.8.1", 1280)?;
        p.linear(
            "classifier.1",
            1280,
            num_classes,
            1.0 / (3.0 * num_classes as f32).sqrt(),
        )?;
        Ok(EfficientNet {
            arch: Arch::EfficientnetB0,
            params: p,
            stages,
        })
    }

    fn conv_bn(
        &self,
        x: &Tensor,
        q: &str,
        stride: usize,
        pad: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let y = self.params.conv(x, &format!("{q}.0"), stride, pad, mode)?;
        self.params.batch_norm_fwd(&y, &format!("{q}.1"), EPS, mode)
    }

    fn block(&self, x: &Tensor, b: &Block, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let q = &b.prefix;
        let mut idx = 0;
        let mut h = x.clone();
        if b.expand {
            h = candle_nn::ops::silu(&self.conv_bn(&h, &format!("{q}.0"), 1, 0, mode)?)?;
            idx = 1;
        }
        let dw = format!("{q}.{idx}");
        let h = p.depthwise(&h, &format!("{dw}.0"), b.stride, (b.kernel - 1) / 2, mode)?;
        let h = candle_nn::ops::silu(&p.batch_norm_fwd(&h, &format!("{dw}.1"), EPS, mode)?)?;
        // Squeeze-excitation.
        let se = format!("{q}.{}", idx + 1);
        let s = h.mean_keepdim(3)?.mean_keepdim(2)?;
        let s = candle_nn::ops::silu(&p.conv(&s, &format!("{se}.fc1"), 1, 0, mode)?)?;
        let s = p.conv(&s, &format!("{se}.fc2"), 1, 0, mode)?;
        let s = (s.neg()?.exp()? + 1.0)?.recip()?;
        let h = h.broadcast_mul(&s)?;
        let h = self.conv_bn(&h, &format!("{q}.{}", idx + 2), 1, 0, mode)?;
        Ok(if b.residual { (h + x)? } else { h })
    }

    /// Runs `features.{from}` .. `features.{to - 1}` (9 = the classifier).
    fn range(&self, x: &Tensor, from: usize, to: usize, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for i in from..to {
            x = match i {
                0 => {
                    let x = self.params.normalise(&x)?;
                    candle_nn::ops::silu(&self.conv_bn(&x, "features.0", 2, 1, mode)?)?
                }
                1..=7 => {
                    let mut h = x;
                    for b in &self.stages[i - 1] {
                        h = self.block(&h, b, mode)?;
                    }
                    h
                }
                8 => candle_nn::ops::silu(&self.conv_bn(&x, "features.8", 1, 0, mode)?)?,
                _ => {
                    let pooled = x.mean_keepdim(3)?.mean_keepdim(2)?.flatten_from(1)?;
                    self.params.linear_fwd(&pooled, "classifier.1", mode)?
                }
            };
        }
        Ok(x)
    }

    pub(crate) fn run(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.range(x, 0, 10, mode)
    }
}

crate::params_network!(EfficientNet);

impl LayeredClassifier for EfficientNet {
    fn layer_names(&self) -> Vec<String> {
        (0..9).map(|i| format!("features.{i}")).collect()
    }
    fn default_cam_layer(&self) -> String {
        "features.8".into()
    }
    fn forward_split(&self, x: &Tensor, layer: &str) -> Result<(Var, Tensor)> {
        let i = self
            .layer_names()
            .iter()
            .position(|l| l == layer)
            .ok_or_else(|| {
                Error::config(
                    "layer",
                    layer,
                    "efficientnet_b0 has the layers features.0 .. features.8",
                )
            })?;
        let acts = self.range(x, 0, i + 1, Mode::InputGrad)?.detach();
        let av = Var::from_tensor(&acts)?;
        let logits = self.range(av.as_tensor(), i + 1, 10, Mode::InputGrad)?;
        Ok((av, logits))
    }
}
