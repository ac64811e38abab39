//! timm's VisionTransformer (`vit_tiny_patch16_224`, `vit_small_patch16_224`) in timm's names:
//! 16 px patches, a class token, learned position embeddings, pre-norm blocks and the class
//! token's head. At image sizes other than the position embedding's grid the embedding is
//! resampled as timm's `dynamic_img_size=True` does (`resample_abs_pos_embed`: bicubic,
//! antialiased), by a fixed matrix, so gradients flow through it.
//!
//! Grad-CAM's layers are the blocks' token grids, class token dropped and the patch tokens
//! reshaped to `[N, D, h, w]` (pytorch-grad-cam's `reshape_transform`, built in). Its default
//! is `blocks.{L-1}.norm1`, the last block's normalised input, as pytorch-grad-cam advises:
//! after the last block only the class token reaches the head, so the patch tokens there
//! have no gradient.

use crate::model::arch::Arch;
use crate::model::classifier::LayeredClassifier;
use crate::model::network::Params;
use crate::model::resnet::Mode;
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var, D};

const EPS: f64 = 1e-6;
const PATCH: usize = 16;

/// A ViT.
pub struct Vit {
    pub(crate) arch: Arch,
    pub(crate) params: Params,
    depth: usize,
    heads: usize,
}

fn dims(arch: Arch) -> (usize, usize, usize) {
    match arch {
        Arch::VitSmall => (384, 12, 6),
        _ => (192, 12, 3),
    }
}

/// Where a token-level forward may stop: after block `i`, or at block `i`'s `norm1`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Point {
    Block(usize),
    Norm1(usize),
}

impl Vit {
    /// timm's initialisation: normal(0.02) weights (truncated in timm), zero biases, class token
    /// normal(1e-6), position embedding normal(0.02) on the 14 x 14 grid of 224 px.
    pub fn new(arch: Arch, num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        let (d, depth, heads) = dims(arch);
        let mut p = Params::new(arch, seed, device)?;
        p.weight("cls_token", &[1, 1, d], Some(1e-6))?;
        p.weight("pos_embed", &[1, 1 + 14 * 14, d], Some(0.02))?;
        p.weight("patch_embed.proj.weight", &[d, 3, PATCH, PATCH], Some(0.02))?;
        p.fill("patch_embed.proj.bias", &[d], 0.0)?;
        for b in 0..depth {
            let q = format!("blocks.{b}");
            p.norm(&format!("{q}.norm1"), d)?;
            p.linear(&format!("{q}.attn.qkv"), d, 3 * d, 0.02)?;
            p.linear(&format!("{q}.attn.proj"), d, d, 0.02)?;
            p.norm(&format!("{q}.norm2"), d)?;
            p.linear(&format!("{q}.mlp.fc1"), d, 4 * d, 0.02)?;
            p.linear(&format!("{q}.mlp.fc2"), 4 * d, d, 0.02)?;
        }
        p.norm("norm", d)?;
        p.linear("head", d, num_classes, 0.02)?;
        Ok(Vit {
            arch,
            params: p,
            depth,
            heads,
        })
    }

    /// Tokens `[N, 1 + h*w, D]` after the patch embedding, class token and position embedding.
    fn embed(&self, x: &Tensor, mode: Mode) -> Result<(Tensor, (usize, usize))> {
        let p = &self.params;
        let (n, _, hh, ww) = x.dims4()?;
        if hh % PATCH != 0 || ww % PATCH != 0 {
            self.arch
                .check_image_size(if hh % PATCH != 0 { hh } else { ww })?;
        }
        let e = p.conv(&p.normalise(x)?, "patch_embed.proj", PATCH, 0, mode)?;
        let (_, d, gh, gw) = e.dims4()?;
        let tokens = e.flatten_from(2)?.transpose(1, 2)?; // [N, L, D]
        let cls = p.t("cls_token", mode)?.broadcast_as((n, 1, d))?;
        let pos = self.pos_embed(gh, gw, mode)?;
        let t = Tensor::cat(&[&cls, &tokens], 1)?.broadcast_add(&pos)?;
        Ok((t, (gh, gw)))
    }

    /// The position embedding for a `gh` x `gw` grid.
    fn pos_embed(&self, gh: usize, gw: usize, mode: Mode) -> Result<Tensor> {
        let pos = self.params.t("pos_embed", mode)?;
        let (_, l, _) = pos.dims3()?;
        let old = ((l - 1) as f64).sqrt().round() as usize;
        if old * old != l - 1 {
            return Err(Error::model(format!(
                "{}: pos_embed has {} patch positions, not a square grid",
                self.arch,
                l - 1
            )));
        }
        if (gh, gw) == (old, old) {
            return Ok(pos);
        }
        let m = resample_matrix(old, gh, old, gw, pos.device())?; // [gh*gw, old*old]
        let grid = pos.narrow(1, 1, l - 1)?.squeeze(0)?; // [old*old, D]
        let new = m.matmul(&grid)?.unsqueeze(0)?;
        Ok(Tensor::cat(&[&pos.narrow(1, 0, 1)?, &new], 1)?)
    }

    fn attention(&self, x: &Tensor, q: &str, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let (n, l, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = p.linear_fwd(x, &format!("{q}.attn.qkv"), mode)?;
        let qkv = qkv
            .reshape((n, l, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let take = |i: usize| -> Result<Tensor> { Ok(qkv.get(i)?.contiguous()?) };
        let (qq, kk, vv) = (take(0)?, take(1)?, take(2)?);
        let scale = 1.0 / (hd as f64).sqrt();
        let att = (qq * scale)?.matmul(&kk.transpose(2, 3)?.contiguous()?)?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = att.matmul(&vv)?.transpose(1, 2)?.reshape((n, l, d))?;
        p.linear_fwd(&o, &format!("{q}.attn.proj"), mode)
    }

    fn mlp(&self, x: &Tensor, q: &str, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let h = p.layer_norm(x, &format!("{q}.norm2"), EPS, mode)?;
        let h = p
            .linear_fwd(&h, &format!("{q}.mlp.fc1"), mode)?
            .gelu_erf()?;
        p.linear_fwd(&h, &format!("{q}.mlp.fc2"), mode)
    }

    fn block(&self, x: &Tensor, b: usize, mode: Mode) -> Result<Tensor> {
        let q = format!("blocks.{b}");
        let h = self
            .params
            .layer_norm(x, &format!("{q}.norm1"), EPS, mode)?;
        let x = (x + self.attention(&h, &q, mode)?)?;
        Ok((&x + self.mlp(&x, &q, mode)?)?)
    }

    fn head(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let p = &self.params;
        let x = p.layer_norm(x, "norm", EPS, mode)?;
        let cls = x.narrow(1, 0, 1)?.squeeze(1)?;
        p.linear_fwd(&cls, "head", mode)
    }

    pub(crate) fn run(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let (mut t, _) = self.embed(x, mode)?;
        for b in 0..self.depth {
            t = self.block(&t, b, mode)?;
        }
        self.head(&t, mode)
    }

    fn point(&self, layer: &str) -> Result<Point> {
        let bad = || {
            Error::config(
                "layer",
                layer,
                format!(
                    "{} has the layers blocks.0 .. blocks.{} and blocks.<i>.norm1 (default {})",
                    self.arch,
                    self.depth - 1,
                    self.default_cam_layer()
                ),
            )
        };
        let rest = layer.strip_prefix("blocks.").ok_or_else(bad)?;
        let (i, norm1) = match rest.split_once('.') {
            Some((i, "norm1")) => (i, true),
            Some(_) => return Err(bad()),
            None => (rest, false),
        };
        let i: usize = i.parse().map_err(|_| bad())?;
        if i >= self.depth {
            return Err(bad());
        }
        Ok(if norm1 {
            Point::Norm1(i)
        } else {
            Point::Block(i)
        })
    }
}

crate::params_network!(Vit);

/// Patch tokens `[N, 1 + h*w, D]` as a grid `[N, D, h, w]`, class token dropped.
fn to_grid(tokens: &Tensor, gh: usize, gw: usize) -> Result<Tensor> {
    let (n, l, d) = tokens.dims3()?;
    let patches = tokens.narrow(1, 1, l - 1)?;
    Ok(patches
        .transpose(1, 2)?
        .reshape((n, d, gh, gw))?
        .contiguous()?)
}

/// A grid `[N, D, h, w]` back to tokens, after the class token `cls` `[N, 1, D]`.
fn from_grid(grid: &Tensor, cls: &Tensor) -> Result<Tensor> {
    let patches = grid.flatten_from(2)?.transpose(1, 2)?;
    Ok(Tensor::cat(&[cls, &patches], 1)?)
}

impl LayeredClassifier for Vit {
    fn layer_names(&self) -> Vec<String> {
        let mut v: Vec<String> = (0..self.depth).map(|b| format!("blocks.{b}")).collect();
        v.push(self.default_cam_layer());
        v
    }
    fn default_cam_layer(&self) -> String {
        format!("blocks.{}.norm1", self.depth - 1)
    }
    fn forward_split(&self, x: &Tensor, layer: &str) -> Result<(Var, Tensor)> {
        let point = self.point(layer)?;
        let mode = Mode::InputGrad;
        let (mut t, (gh, gw)) = self.embed(x, mode)?;
        let last = match point {
            Point::Block(i) => i + 1,
            Point::Norm1(i) => i,
        };
        for b in 0..last {
            t = self.block(&t, b, mode)?;
        }
        let t = t.detach();
        let (av, logits) = match point {
            Point::Block(i) => {
                let av = Var::from_tensor(&to_grid(&t, gh, gw)?)?;
                let mut t = from_grid(av.as_tensor(), &t.narrow(1, 0, 1)?)?;
                for b in i + 1..self.depth {
                    t = self.block(&t, b, mode)?;
                }
                (av, self.head(&t, mode)?)
            }
            Point::Norm1(i) => {
                // The block's input stays a constant on the residual path; the hooked tensor is
                // the normalised copy that feeds attention.
                let q = format!("blocks.{i}");
                let h = self
                    .params
                    .layer_norm(&t, &format!("{q}.norm1"), EPS, mode)?
                    .detach();
                let av = Var::from_tensor(&to_grid(&h, gh, gw)?)?;
                let h = from_grid(av.as_tensor(), &h.narrow(1, 0, 1)?)?;
                let y = (&t + self.attention(&h, &q, mode)?)?;
                let mut y = (&y + self.mlp(&y, &q, mode)?)?;
                for b in i + 1..self.depth {
                    y = self.block(&y, b, mode)?;
                }
                (av, self.head(&y, mode)?)
            }
        };
        Ok((av, logits))
    }
}

/// torch's antialiased bicubic weights for one axis (`F.interpolate(mode="bicubic",
/// antialias=True, align_corners=False)`, PIL's filter with a = -0.5): `[out, in]`.
pub fn aa_bicubic_weights(input: usize, output: usize) -> Vec<Vec<f64>> {
    let filter = |x: f64| -> f64 {
        let a = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = input as f64 / output as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..output)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(input);
            let mut row = vec![0.0; input];
            let mut total = 0.0;
            for (j, r) in row.iter_mut().enumerate().take(hi).skip(lo) {
                *r = filter((j as f64 - center + 0.5) * inv);
                total += *r;
            }
            if total != 0.0 {
                row.iter_mut().for_each(|r| *r /= total);
            }
            row
        })
        .collect()
}

/// The matrix `[gh*gw, oh*ow]` that resamples a row-major `oh` x `ow` grid to `gh` x `gw`.
fn resample_matrix(oh: usize, gh: usize, ow: usize, gw: usize, dev: &Device) -> Result<Tensor> {
    let (wy, wx) = (aa_bicubic_weights(oh, gh), aa_bicubic_weights(ow, gw));
    let mut m = Vec::with_capacity(gh * gw * oh * ow);
    for ry in &wy {
        for rx in &wx {
            for &a in ry {
                for &b in rx {
                    m.push((a * b) as f32);
                }
            }
        }
    }
    Ok(Tensor::from_vec(m, (gh * gw, oh * ow), dev)?)
}
