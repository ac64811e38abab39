//! A trainable ResNet-18 in torchvision's exact layout and parameter names.
//!
//! Images enter in `[0, 1]`; ImageNet mean/std normalisation happens inside the model, so attacks
//! and saliency work in pixel space. Every stage is reachable ([`Stage`]), BatchNorm runs in
//! train mode (batch statistics, running statistics updated as PyTorch does) or eval mode, and
//! max pooling has an exact backward ([`crate::ops::max_pool2d`]).

use crate::model::groups::{group_of, GroupSet};
use crate::ops::max_pool2d;
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};

/// ImageNet channel means, applied inside the model.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations, applied inside the model.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// How a forward pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// BatchNorm uses batch statistics and updates its running statistics; parameters are
    /// tracked for gradients.
    Train,
    /// BatchNorm uses running statistics; parameters are tracked for gradients.
    Eval,
    /// Eval mode with the parameters detached: a backward pass computes only gradients with
    /// respect to the input (attacks, saliency), never weight gradients. Also the fastest
    /// mode for plain inference: every BatchNorm folds into its convolution, with the
    /// residual add and the ReLU.
    InputGrad,
}

impl Mode {
    fn train(self) -> bool {
        self == Mode::Train
    }
    fn track_params(self) -> bool {
        self != Mode::InputGrad
    }
}

/// A point in the network whose activation can be read or from which the forward can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// The `[0, 1]` image.
    Input,
    /// After conv1, bn1, relu and max-pool (64 channels, 1/4 resolution).
    Stem,
    Layer1,
    Layer2,
    Layer3,
    Layer4,
    /// Global-average-pooled features, [N, 512].
    Pooled,
    /// Class scores, [N, num_classes].
    Logits,
}

impl Stage {
    /// Parses `stem`, `layer1`..`layer4`, `pooled`, `logits`.
    pub fn parse(s: &str) -> Result<Stage> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "input" => Stage::Input,
            "stem" => Stage::Stem,
            "layer1" => Stage::Layer1,
            "layer2" => Stage::Layer2,
            "layer3" => Stage::Layer3,
            "layer4" => Stage::Layer4,
            "pooled" => Stage::Pooled,
            "logits" => Stage::Logits,
            other => {
                return Err(Error::model(format!(
                    "unknown layer `{other}`: use stem, layer1, layer2, layer3 or layer4"
                )))
            }
        })
    }
    fn next(self) -> Option<Stage> {
        use Stage::*;
        Some(match self {
            Input => Stem,
            Stem => Layer1,
            Layer1 => Layer2,
            Layer2 => Layer3,
            Layer3 => Layer4,
            Layer4 => Pooled,
            Pooled => Logits,
            Logits => return None,
        })
    }
}

fn param(v: &Var, track: bool) -> Tensor {
    if track {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

#[derive(Debug)]
struct Conv {
    weight: Var,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor, track: bool) -> Result<Tensor> {
        Ok(crate::ops::conv2d(
            x,
            &param(&self.weight, track),
            self.stride,
            self.padding,
        )?)
    }

    /// This convolution with `bn` folded into it (running statistics, constant parameters).
    fn folded(&self, bn: &BatchNorm) -> Result<crate::ops::block::FoldedConv> {
        let (scale, shift) = bn.folded()?;
        Ok(crate::ops::block::FoldedConv {
            weight: self.weight.as_tensor().detach(),
            stride: self.stride,
            padding: self.padding,
            scale,
            shift,
        })
    }
}

/// Values per channel of a training-mode BatchNorm over `x` `[N, C, H, W]` (N*H*W), at least
/// two.
fn batch_count(x: &Tensor) -> Result<usize> {
    let (n, _, h, wd) = x.dims4()?;
    let count = n * h * wd;
    if count < 2 {
        return Err(Error::model(format!(
            "BatchNorm in train mode needs more than one value per channel, got input {:?}; \
             use a batch size of at least 2",
            x.dims()
        )));
    }
    Ok(count)
}

#[derive(Debug)]
struct BatchNorm {
    weight: Var,
    bias: Var,
    running_mean: Var,
    running_var: Var,
    num_batches_tracked: AtomicI64,
    /// When set, train mode uses (and does not update) the running statistics.
    frozen_stats: AtomicBool,
}

impl BatchNorm {
    /// Whether this layer normalises with its running statistics in `mode`.
    fn uses_running_stats(&self, mode: Mode) -> bool {
        !mode.train() || self.frozen_stats.load(Ordering::Relaxed)
    }

    /// The running-statistics BatchNorm as one affine map per channel, `x * scale + shift`
    /// (`scale = weight / sqrt(running_var + eps)`, `shift = bias - running_mean * scale`),
    /// computed in f64 and rounded to f32: `[C]` tensors on the layer's device. On the CPU
    /// on the host; elsewhere with device ops (no copy to the host, no synchronisation), in
    /// f64 too where the device has it (CUDA: the same correctly rounded operations, so the
    /// same values), in f32 on Metal. Inside [`crate::ops::with_frozen_weights`] (an attack,
    /// an attribution, an evaluation: constant parameters) computed once per scope.
    fn folded(&self) -> Result<(Tensor, Tensor)> {
        crate::ops::kept_pair(self.running_var.as_tensor().id(), || self.fold())
    }

    /// [`Self::folded`], computed.
    fn fold(&self) -> Result<(Tensor, Tensor)> {
        let dev = self.weight.device();
        if dev.is_cpu() {
            let get = |v: &Var| -> Result<Vec<f64>> {
                Ok(v.as_tensor().to_dtype(DType::F64)?.to_vec1::<f64>()?)
            };
            let (w, b) = (get(&self.weight)?, get(&self.bias)?);
            let (rm, rv) = (get(&self.running_mean)?, get(&self.running_var)?);
            let scale: Vec<f64> = w
                .iter()
                .zip(&rv)
                .map(|(w, v)| w / (v + BN_EPS).sqrt())
                .collect();
            let shift: Vec<f32> = b
                .iter()
                .zip(&rm)
                .zip(&scale)
                .map(|((b, m), s)| (b - m * s) as f32)
                .collect();
            let scale: Vec<f32> = scale.into_iter().map(|s| s as f32).collect();
            let c = scale.len();
            return Ok((
                Tensor::from_vec(scale, c, dev)?,
                Tensor::from_vec(shift, c, dev)?,
            ));
        }
        let dt = if dev.is_metal() {
            DType::F32
        } else {
            DType::F64
        };
        let get = |v: &Var| v.as_tensor().detach().to_dtype(dt);
        let scale = (get(&self.weight)? / (get(&self.running_var)? + BN_EPS)?.sqrt()?)?;
        let shift = (get(&self.bias)? - (get(&self.running_mean)? * &scale)?)?;
        Ok((scale.to_dtype(DType::F32)?, shift.to_dtype(DType::F32)?))
    }

    fn forward(&self, x: &Tensor, mode: Mode, track: bool) -> Result<Tensor> {
        self.forward_act(x, mode, track, None, false)
    }

    /// `act(bn(x) + residual)`, `act` ReLU when `relu`: fused into the BatchNorm's pass in
    /// training mode on the CPU, a separate fused add-and-ReLU otherwise.
    fn forward_act(
        &self,
        x: &Tensor,
        mode: Mode,
        track: bool,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        if mode.train() && !self.frozen_stats.load(Ordering::Relaxed) {
            if let Some(y) = self.forward_train_fused(x, track, residual, relu)? {
                return Ok(y);
            }
        }
        let y = self.forward_plain(x, mode, track)?;
        Ok(crate::ops::act::add_act(y, residual, relu)?)
    }

    /// Training-mode BatchNorm (batch statistics, running statistics updated) with the
    /// residual and ReLU in the same CPU kernel; `None` where that kernel does not apply.
    fn forward_train_fused(
        &self,
        x: &Tensor,
        track: bool,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Option<Tensor>> {
        let c = self.weight.dim(0)?;
        let count = batch_count(x)?;
        let Some((y, st)) = crate::ops::batchnorm::batch_norm_train(
            x,
            &param(&self.weight, track),
            &param(&self.bias, track),
            BN_EPS,
            residual,
            relu,
        )?
        else {
            return Ok(None);
        };
        let dev = x.device();
        self.update_running(
            Tensor::from_vec(st.mean, c, dev)?,
            Tensor::from_vec(st.var, c, dev)?,
            count,
        )?;
        Ok(Some(y))
    }

    /// Running statistics, as torch: momentum 0.1, unbiased variance from the batch's
    /// biased variance `var` over `count` values.
    fn update_running(&self, mean: Tensor, var: Tensor, count: usize) -> Result<()> {
        let var_unbiased = (var * (count as f64 / (count - 1) as f64))?;
        let rm = ((self.running_mean.as_tensor() * (1.0 - BN_MOMENTUM))? + (mean * BN_MOMENTUM)?)?;
        let rv = ((self.running_var.as_tensor() * (1.0 - BN_MOMENTUM))?
            + (var_unbiased * BN_MOMENTUM)?)?;
        self.store_running(&rm, &rv)
    }

    /// Stores updated running statistics and counts the batch.
    fn store_running(&self, mean: &Tensor, var: &Tensor) -> Result<()> {
        self.running_mean.set(mean)?;
        self.running_var.set(var)?;
        self.num_batches_tracked.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// BatchNorm alone: training mode through cuDNN on CUDA (the `cudnn` feature), else from
    /// candle ops; with running statistics as one affine map per channel.
    fn forward_plain(&self, x: &Tensor, mode: Mode, track: bool) -> Result<Tensor> {
        let c = self.weight.dim(0)?;
        let (gamma, beta) = (param(&self.weight, track), param(&self.bias, track));
        let w = gamma.reshape((1, c, 1, 1))?;
        let b = beta.reshape((1, c, 1, 1))?;
        if mode.train() && !self.frozen_stats.load(Ordering::Relaxed) {
            let count = batch_count(x)?;
            let running = (self.running_mean.as_tensor(), self.running_var.as_tensor());
            if let Some((y, rm, rv)) = crate::ops::batchnorm::batch_norm_train_cudnn(
                x,
                (&gamma, &beta),
                running,
                BN_EPS,
                BN_MOMENTUM,
            )? {
                self.store_running(&rm, &rv)?;
                return Ok(y);
            }
            let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?; // [1,C,1,1]
            let centered = x.broadcast_sub(&mean)?;
            let var = centered
                .sqr()?
                .mean_keepdim(0)?
                .mean_keepdim(2)?
                .mean_keepdim(3)?;
            let inv = (var.affine(1.0, BN_EPS)?).sqrt()?.recip()?;
            let y = centered
                .broadcast_mul(&inv.broadcast_mul(&w)?)?
                .broadcast_add(&b)?;
            self.update_running(
                mean.detach().flatten_all()?,
                var.detach().flatten_all()?,
                count,
            )?;
            Ok(y)
        } else {
            let rm = self
                .running_mean
                .as_tensor()
                .detach()
                .reshape((1, c, 1, 1))?;
            let rv = self
                .running_var
                .as_tensor()
                .detach()
                .reshape((1, c, 1, 1))?;
            let scale = rv.affine(1.0, BN_EPS)?.sqrt()?.recip()?.broadcast_mul(&w)?;
            let shift = b.broadcast_sub(&rm.broadcast_mul(&scale)?)?;
            if !track {
                // Constants per channel: one fused pass, input gradient only.
                return Ok(crate::ops::batchnorm::channel_affine(x, &scale, &shift)?);
            }
            Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
        }
    }
}

#[derive(Debug)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl BasicBlock {
    fn forward(&self, x: &Tensor, mode: Mode, track: bool) -> Result<Tensor> {
        let fold = !track
            && self.bn1.uses_running_stats(mode)
            && self.bn2.uses_running_stats(mode)
            && self
                .downsample
                .as_ref()
                .is_none_or(|(_, b)| b.uses_running_stats(mode));
        if fold {
            // Constant parameters and running statistics: every BatchNorm folds into its
            // convolution's output pass, with the residual add and the ReLU.
            let down = match &self.downsample {
                Some((c, b)) => Some(c.folded(b)?),
                None => None,
            };
            return Ok(crate::ops::block::basic_block_folded(
                x,
                &self.conv1.folded(&self.bn1)?,
                &self.conv2.folded(&self.bn2)?,
                down.as_ref(),
            )?);
        }
        let y = self
            .bn1
            .forward_act(&self.conv1.forward(x, track)?, mode, track, None, true)?;
        let shortcut = match &self.downsample {
            Some((c, b)) => b.forward(&c.forward(x, track)?, mode, track)?,
            None => x.clone(),
        };
        self.bn2.forward_act(
            &self.conv2.forward(&y, track)?,
            mode,
            track,
            Some(&shortcut),
            true,
        )
    }
}

pub use crate::model::state::TensorKind;

/// torchvision's ResNet-18 (BasicBlock, [2, 2, 2, 2]).
pub struct ResNet18 {
    varmap: VarMap,
    /// Names in torchvision's state-dict order, with their kind.
    names: Vec<(String, TensorKind)>,
    conv1: Conv,
    bn1: BatchNorm,
    layers: [Vec<BasicBlock>; 4],
    fc_weight: Var,
    fc_bias: Var,
    mean: Tensor,
    std: Tensor,
    device: Device,
    /// Bit g-1 set: group g's parameters are detached in every forward (frozen groups get no
    /// weight gradients at all, so training only the head costs a head's backward).
    frozen: AtomicU8,
}

struct Builder<'a> {
    varmap: &'a VarMap,
    names: Vec<(String, TensorKind)>,
    rng: SeededRng,
    device: Device,
}

impl Builder<'_> {
    fn var(&mut self, name: &str, t: Tensor, kind: TensorKind) -> Result<Var> {
        let v = Var::from_tensor(&t)?;
        self.varmap
            .data()
            .lock()
            .map_err(|_| Error::model("internal: variable map poisoned"))?
            .insert(name.to_string(), v.clone());
        self.names.push((name.to_string(), kind));
        Ok(v)
    }

    /// Kaiming-normal, fan_out, relu: std = sqrt(2 / (out_channels * k * k)), as torchvision.
    fn conv(
        &mut self,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Conv> {
        let std = (2.0 / (cout * k * k) as f32).sqrt();
        let data = self.rng.normal_vec(cout * cin * k * k, std);
        let t = Tensor::from_vec(data, (cout, cin, k, k), &self.device)?;
        let weight = self.var(&format!("{name}.weight"), t, TensorKind::Parameter)?;
        Ok(Conv {
            weight,
            stride,
            padding,
        })
    }

    fn bn(&mut self, name: &str, c: usize) -> Result<BatchNorm> {
        let d = &self.device.clone();
        Ok(BatchNorm {
            weight: self.var(
                &format!("{name}.weight"),
                Tensor::ones(c, DType::F32, d)?,
                TensorKind::Parameter,
            )?,
            bias: self.var(
                &format!("{name}.bias"),
                Tensor::zeros(c, DType::F32, d)?,
                TensorKind::Parameter,
            )?,
            running_mean: self.var(
                &format!("{name}.running_mean"),
                Tensor::zeros(c, DType::F32, d)?,
                TensorKind::Buffer,
            )?,
            running_var: self.var(
                &format!("{name}.running_var"),
                Tensor::ones(c, DType::F32, d)?,
                TensorKind::Buffer,
            )?,
            num_batches_tracked: AtomicI64::new(0),
            frozen_stats: AtomicBool::new(false),
        })
    }
}

/// Kaiming-normal (fan_out, relu) weights and zero bias for a new `fc` head, as the paper's
/// code initialises its 3-class head.
pub fn new_head(
    num_classes: usize,
    in_features: usize,
    seed: u64,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut rng = SeededRng::new(seed ^ 0x5eed_f00d);
    let std = (2.0 / num_classes as f32).sqrt();
    let w = Tensor::from_vec(
        rng.normal_vec(num_classes * in_features, std),
        (num_classes, in_features),
        device,
    )?;
    let b = Tensor::zeros(num_classes, DType::F32, device)?;
    Ok((w, b))
}

impl ResNet18 {
    /// A ResNet-18 with torchvision's random initialisation (Kaiming-normal convolutions,
    /// BatchNorm weight 1 / bias 0) and a Kaiming-normal (fan_out) head with zero bias, drawn
    /// from `seed`.
    pub fn new_random(num_classes: usize, seed: u64, device: &Device) -> Result<Self> {
        if num_classes == 0 {
            return Err(Error::model("num_classes must be at least 1"));
        }
        let varmap = VarMap::new();
        let mut b = Builder {
            varmap: &varmap,
            names: Vec::new(),
            rng: SeededRng::new(seed),
            device: device.clone(),
        };
        let conv1 = b.conv("conv1", 3, 64, 7, 2, 3)?;
        let bn1 = b.bn("bn1", 64)?;
        let widths = [64usize, 128, 256, 512];
        let mut cin = 64;
        let mut layers: [Vec<BasicBlock>; 4] = Default::default();
        for (li, &w) in widths.iter().enumerate() {
            for bi in 0..2 {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{}", li + 1, bi);
                let conv1 = b.conv(&format!("{p}.conv1"), cin, w, 3, stride, 1)?;
                let bn1 = b.bn(&format!("{p}.bn1"), w)?;
                let conv2 = b.conv(&format!("{p}.conv2"), w, w, 3, 1, 1)?;
                let bn2 = b.bn(&format!("{p}.bn2"), w)?;
                let downsample = if stride != 1 || cin != w {
                    let c = b.conv(&format!("{p}.downsample.0"), cin, w, 1, stride, 0)?;
                    let n = b.bn(&format!("{p}.downsample.1"), w)?;
                    Some((c, n))
                } else {
                    None
                };
                layers[li].push(BasicBlock {
                    conv1,
                    bn1,
                    conv2,
                    bn2,
                    downsample,
                });
                cin = w;
            }
        }
        let (fw, fb) = new_head(num_classes, 512, seed, device)?;
        let fc_weight = b.var("fc.weight", fw, TensorKind::Parameter)?;
        let fc_bias = b.var("fc.bias", fb, TensorKind::Parameter)?;
        let names = b.names;
        let mean = Tensor::from_slice(&IMAGENET_MEAN, (1, 3, 1, 1), device)?;
        let std = Tensor::from_slice(&IMAGENET_STD, (1, 3, 1, 1), device)?;
        Ok(ResNet18 {
            frozen: AtomicU8::new(0),
            varmap,
            names,
            conv1,
            bn1,
            layers,
            fc_weight,
            fc_bias,
            mean,
            std,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Number of classes, read from the head.
    pub fn num_classes(&self) -> usize {
        self.fc_weight.dims()[0]
    }

    /// The candle variable map holding every parameter and running statistic by its
    /// torchvision name.
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Tensor names in torchvision's state-dict order (without `num_batches_tracked`).
    pub fn tensor_names(&self) -> &[(String, TensorKind)] {
        &self.names
    }

    /// The variable behind a name (a parameter or a running statistic).
    pub fn var(&self, name: &str) -> Option<Var> {
        self.varmap.data().lock().ok()?.get(name).cloned()
    }

    fn all_bns(&self) -> Vec<(String, &BatchNorm)> {
        let mut v = vec![("bn1".to_string(), &self.bn1)];
        for (li, layer) in self.layers.iter().enumerate() {
            for (bi, blk) in layer.iter().enumerate() {
                let p = format!("layer{}.{}", li + 1, bi);
                v.push((format!("{p}.bn1"), &blk.bn1));
                v.push((format!("{p}.bn2"), &blk.bn2));
                if let Some((_, bn)) = &blk.downsample {
                    v.push((format!("{p}.downsample.1"), bn));
                }
            }
        }
        v
    }

    /// Trainable parameters (not running statistics) of the groups in `groups`, in state-dict
    /// order. Give these to the optimiser to freeze every other group.
    pub fn trainable_vars(&self, groups: GroupSet) -> Vec<(String, Var)> {
        self.names
            .iter()
            .filter(|(n, k)| *k == TensorKind::Parameter && groups.contains(group_of(n)))
            .filter_map(|(n, _)| self.var(n).map(|v| (n.clone(), v)))
            .collect()
    }

    /// Freezes (or unfreezes) the BatchNorm running statistics of every group outside
    /// `trainable`: in train mode those layers then normalise with their running statistics
    /// and never update them (timm's `freeze(..., bn)` behaviour).
    pub fn freeze_bn_stats(&self, trainable: GroupSet, freeze: bool) {
        for (name, bn) in self.all_bns() {
            let frozen = freeze && !trainable.contains(group_of(&name));
            bn.frozen_stats.store(frozen, Ordering::Relaxed);
        }
    }

    /// Replaces the head with a fresh Kaiming-normal (fan_out, relu) layer with zero bias.
    pub fn reset_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        if num_classes == 0 {
            return Err(Error::model("num_classes must be at least 1"));
        }
        let (w, b) = new_head(num_classes, 512, seed, &self.device)?;
        self.fc_weight = Var::from_tensor(&w)?;
        self.fc_bias = Var::from_tensor(&b)?;
        let mut data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::model("internal: variable map poisoned"))?;
        data.insert("fc.weight".into(), self.fc_weight.clone());
        data.insert("fc.bias".into(), self.fc_bias.clone());
        Ok(())
    }

    fn normalize(&self, x: &Tensor) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4().map_err(|_| {
            Error::model(format!(
                "model input must be [N, 3, H, W] images, got shape {:?}",
                x.dims()
            ))
        })?;
        if c != 3 {
            return Err(Error::model(format!(
                "model input must have 3 channels, got shape {:?}",
                x.dims()
            )));
        }
        Ok(x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?)
    }

    /// Detaches the parameters of every group outside `trainable` in all later forward passes
    /// (no weight gradients for frozen groups); `GroupSet::all()` undoes it.
    pub fn set_trainable_groups(&self, trainable: GroupSet) {
        let mut bits = 0u8;
        for g in trainable.complement().groups() {
            bits |= 1 << (g - 1);
        }
        self.frozen.store(bits, Ordering::Relaxed);
    }

    fn track(&self, group: u8, mode: Mode) -> bool {
        mode.track_params() && self.frozen.load(Ordering::Relaxed) & (1 << (group - 1)) == 0
    }

    fn step(&self, stage: Stage, x: &Tensor, mode: Mode) -> Result<Tensor> {
        Ok(match stage {
            Stage::Input => x.clone(),
            Stage::Stem => {
                let t = self.track(1, mode);
                let x = self.normalize(x)?;
                if !t && self.bn1.uses_running_stats(mode) {
                    crate::ops::block::stem_folded(&x, &self.conv1.folded(&self.bn1)?, (3, 2, 1))?
                } else {
                    let x =
                        self.bn1
                            .forward_act(&self.conv1.forward(&x, t)?, mode, t, None, true)?;
                    max_pool2d(&x, 3, 2, 1)?
                }
            }
            Stage::Layer1 | Stage::Layer2 | Stage::Layer3 | Stage::Layer4 => {
                let li = stage as usize - Stage::Layer1 as usize;
                let t = self.track(li as u8 + 1, mode);
                let mut x = x.clone();
                for blk in &self.layers[li] {
                    x = blk.forward(&x, mode, t)?;
                }
                x
            }
            Stage::Pooled => x.mean(D::Minus1)?.mean(D::Minus1)?,
            Stage::Logits => {
                let t = self.track(5, mode);
                let w = param(&self.fc_weight, t);
                let b = param(&self.fc_bias, t);
                x.matmul(&w.t()?)?.broadcast_add(&b)?
            }
        })
    }

    /// Runs the network from the activation `x` at stage `from` up to stage `to`.
    /// `forward_range(x, Stage::Input, Stage::Logits, mode)` is the whole model.
    pub fn forward_range(&self, x: &Tensor, from: Stage, to: Stage, mode: Mode) -> Result<Tensor> {
        if to < from {
            return Err(Error::model(format!(
                "cannot run the model backwards from {from:?} to {to:?}"
            )));
        }
        let mut x = x.clone();
        let mut s = from;
        while s != to {
            let n = s.next().expect("stage before Logits has a successor");
            x = self.step(n, &x, mode)?;
            s = n;
        }
        Ok(x)
    }

    /// Logits for `[0, 1]` images `[N, 3, H, W]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward_range(x, Stage::Input, Stage::Logits, mode)
    }

    /// Every stage's activation, in order from `Stem` to `Logits`.
    pub fn forward_stages(&self, x: &Tensor, mode: Mode) -> Result<Vec<(Stage, Tensor)>> {
        let mut out = Vec::new();
        let mut cur = x.clone();
        let mut s = Stage::Input;
        while let Some(n) = s.next() {
            cur = self.step(n, &cur, mode)?;
            out.push((n, cur.clone()));
            s = n;
        }
        Ok(out)
    }

    /// The state dict in torchvision's order and names, including
    /// `*.num_batches_tracked` (I64 scalars), so `torchvision.models.resnet18(num_classes=K)
    /// .load_state_dict(...)` accepts it with `strict=True`.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let bns: HashMap<String, i64> = self
            .all_bns()
            .into_iter()
            .map(|(n, b)| (n, b.num_batches_tracked.load(Ordering::Relaxed)))
            .collect();
        crate::model::state::write(&self.names, |n| self.var(n), &bns, &self.device)
    }

    /// Copies tensors into the model. Every tensor of the model must be present with the
    /// model's shape (heads are handled by [`crate::model::weights`]); `num_batches_tracked`
    /// is restored when present.
    pub fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<()> {
        crate::model::state::read(&self.names, |n| self.var(n), tensors, origin, &self.device)?;
        for (name, bn) in self.all_bns() {
            if let Some(n) = crate::model::state::batches_tracked(tensors, &name) {
                bn.num_batches_tracked.store(n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Number of trainable parameters.
    pub fn num_parameters(&self) -> usize {
        self.trainable_vars(GroupSet::all())
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names() {
        let m = ResNet18::new_random(3, 1, &Device::Cpu).unwrap();
        let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
        let st = m.forward_stages(&x, Mode::Eval).unwrap();
        let dims: Vec<Vec<usize>> = st.iter().map(|(_, t)| t.dims().to_vec()).collect();
        assert_eq!(dims[0], vec![2, 64, 8, 8]);
        assert_eq!(dims[4], vec![2, 512, 1, 1]);
        assert_eq!(dims[6], vec![2, 3]);
        assert_eq!(m.num_parameters(), 11_178_051);
        let sd = m.state_dict().unwrap();
        assert_eq!(sd.len(), 122);
        assert_eq!(sd[0].0, "conv1.weight");
        assert!(sd.iter().any(|(n, _)| n == "layer2.0.downsample.0.weight"));
        assert_eq!(sd.last().unwrap().0, "fc.bias");
    }

    #[test]
    fn batchnorm_folds_are_kept_for_a_frozen_scope_only() {
        let m = ResNet18::new_random(3, 1, &Device::Cpu).unwrap();
        let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let logits = |m: &ResNet18| -> Vec<f32> {
            m.forward(&x, Mode::InputGrad)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        let before = logits(&m);
        // the running variance of one BatchNorm in every block kind: the stem, a plain and a
        // downsampling block
        let rv = |name: &str| m.varmap.data().lock().unwrap()[name].clone();
        let names = [
            "bn1.running_var",
            "layer1.0.bn2.running_var",
            "layer2.0.downsample.1.running_var",
        ];
        let double = || {
            for n in names {
                let v = rv(n);
                v.set(&(v.as_tensor() * 2.0).unwrap()).unwrap();
            }
        };
        crate::ops::with_frozen_weights(|| {
            assert_eq!(bits(&logits(&m)), bits(&before), "a scope changed the bits");
            // against the scope's promise, the statistics change: the folds made at the
            // first pass are used again
            double();
            assert_eq!(bits(&logits(&m)), bits(&before), "the fold was made again");
        });
        // outside a scope every pass folds afresh
        let after = logits(&m);
        assert_ne!(bits(&after), bits(&before));
        crate::ops::with_frozen_weights(|| assert_eq!(bits(&logits(&m)), bits(&after)));
    }

    #[test]
    fn trainable_vars_follow_groups() {
        let m = ResNet18::new_random(3, 1, &Device::Cpu).unwrap();
        let v = m.trainable_vars(GroupSet::parse("5").unwrap());
        let names: Vec<_> = v.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["fc.weight", "fc.bias"]);
        let v = m.trainable_vars(GroupSet::parse("3-5").unwrap());
        assert!(v.iter().all(|(n, _)| n.starts_with("layer3")
            || n.starts_with("layer4")
            || n.starts_with("fc")));
        assert!(v.iter().all(|(n, _)| !n.contains("running")));
    }

    #[test]
    fn frozen_bn_stats_do_not_move() {
        let m = ResNet18::new_random(3, 1, &Device::Cpu).unwrap();
        m.freeze_bn_stats(GroupSet::parse("3-5").unwrap(), true);
        let x = Tensor::rand(0f32, 1f32, (2, 3, 32, 32), &Device::Cpu).unwrap();
        let before = m
            .var("layer1.0.bn1.running_mean")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let before3 = m
            .var("layer3.0.bn1.running_mean")
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        m.forward(&x, Mode::Train).unwrap();
        assert_eq!(
            before,
            m.var("layer1.0.bn1.running_mean")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        assert_ne!(
            before3,
            m.var("layer3.0.bn1.running_mean")
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }

    #[test]
    fn input_grad_mode_has_no_weight_grads() {
        let m = ResNet18::new_random(3, 1, &Device::Cpu).unwrap();
        let x = Var::from_tensor(&Tensor::rand(0f32, 1f32, (1, 3, 32, 32), &Device::Cpu).unwrap())
            .unwrap();
        let y = m.forward(x.as_tensor(), Mode::InputGrad).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(x.as_tensor()).is_some());
        assert!(g.get(m.var("conv1.weight").unwrap().as_tensor()).is_none());
        assert!(g.get(m.var("fc.weight").unwrap().as_tensor()).is_none());
    }
}
