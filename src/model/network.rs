//! The model trait every command trains, saves and loads through ([`Network`]), and the
//! parameter store and layers the timm/torchvision architectures beside ResNet-18 are built
//! from ([`Params`]).
//!
//! A [`Network`] is a [`LayeredClassifier`] (so every attribution method and attack runs on
//! it) that also trains: a forward in a [`Mode`], its tensors by their ecosystem's names in
//! state-dict order, five layer groups as data ([`crate::model::Arch::group_of`]), freezing
//! and a replaceable head.

use crate::model::arch::Arch;
use crate::model::classifier::LayeredClassifier;
use crate::model::groups::GroupSet;
use crate::model::resnet::{Mode, ResNet18, TensorKind};
use crate::rng::SeededRng;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

/// A trainable image classifier: what the trainer, the checkpoints and the run folders hold.
pub trait Network: LayeredClassifier + Send + Sync {
    /// The architecture.
    fn kind(&self) -> Arch;
    /// Logits of `[0, 1]` images in a mode (train: batch statistics, parameters tracked).
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;
    /// Tensor names in the ecosystem's state-dict order (without `num_batches_tracked`).
    fn tensor_names(&self) -> Vec<(String, TensorKind)>;
    /// The variable behind a name.
    fn var(&self, name: &str) -> Option<Var>;
    /// The state dict, loadable by timm / torchvision with `strict=True`.
    fn state_dict(&self) -> Result<Vec<(String, Tensor)>>;
    /// Copies every tensor of the model from `tensors` (named errors for missing or mis-shaped).
    fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<()>;
    /// Trainable parameters of `groups`, in state-dict order.
    fn trainable_vars(&self, groups: GroupSet) -> Vec<(String, Var)>;
    /// Freezes the BatchNorm running statistics of the groups outside `trainable`.
    fn freeze_bn_stats(&self, trainable: GroupSet, freeze: bool);
    /// Detaches the parameters of the groups outside `trainable` in later forwards.
    fn set_trainable_groups(&self, trainable: GroupSet);
    /// A fresh head with `num_classes` outputs.
    fn reset_head(&mut self, num_classes: usize, seed: u64) -> Result<()>;
    /// Number of trainable parameters.
    fn num_parameters(&self) -> usize {
        self.trainable_vars(GroupSet::all())
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum()
    }
}

impl Network for ResNet18 {
    fn kind(&self) -> Arch {
        Arch::Resnet18
    }
    fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.forward(x, mode)
    }
    fn tensor_names(&self) -> Vec<(String, TensorKind)> {
        ResNet18::tensor_names(self).to_vec()
    }
    fn var(&self, name: &str) -> Option<Var> {
        ResNet18::var(self, name)
    }
    fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        ResNet18::state_dict(self)
    }
    fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<()> {
        ResNet18::load_tensors(self, tensors, origin)
    }
    fn trainable_vars(&self, groups: GroupSet) -> Vec<(String, Var)> {
        ResNet18::trainable_vars(self, groups)
    }
    fn freeze_bn_stats(&self, trainable: GroupSet, freeze: bool) {
        ResNet18::freeze_bn_stats(self, trainable, freeze)
    }
    fn set_trainable_groups(&self, trainable: GroupSet) {
        ResNet18::set_trainable_groups(self, trainable)
    }
    fn reset_head(&mut self, num_classes: usize, seed: u64) -> Result<()> {
        ResNet18::reset_head(self, num_classes, seed)
    }
}

/// The tensors of a network by name, in state-dict order, with the groups that train, the
/// BatchNorm counters and the input normalisation.
pub struct Params {
    arch: Arch,
    names: Vec<(String, TensorKind)>,
    vars: Mutex<HashMap<String, Var>>,
    /// Bit g-1 set: group g is frozen (detached).
    frozen: AtomicU8,
    /// BatchNorm prefixes whose running statistics are frozen.
    frozen_stats: Mutex<Vec<String>>,
    batches: Mutex<HashMap<String, i64>>,
    mean: Tensor,
    std: Tensor,
    device: Device,
    rng: Mutex<SeededRng>,
}

impl Params {
    /// An empty store; `mean`/`std` are the input normalisation of the arch's weights.
    pub fn new(arch: Arch, seed: u64, device: &Device) -> Result<Self> {
        let (mean, std) = arch.normalisation();
        Ok(Params {
            arch,
            names: Vec::new(),
            vars: Mutex::new(HashMap::new()),
            frozen: AtomicU8::new(0),
            frozen_stats: Mutex::new(Vec::new()),
            batches: Mutex::new(HashMap::new()),
            mean: Tensor::from_slice(&mean, (1, 3, 1, 1), device)?,
            std: Tensor::from_slice(&std, (1, 3, 1, 1), device)?,
            device: device.clone(),
            rng: Mutex::new(SeededRng::new(seed)),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    fn insert(&mut self, name: &str, t: Tensor, kind: TensorKind) -> Result<()> {
        let v = Var::from_tensor(&t)?;
        self.vars
            .get_mut()
            .expect("fresh store")
            .insert(name.into(), v);
        self.names.push((name.into(), kind));
        Ok(())
    }

    /// A weight of `shape` drawn as timm/torchvision initialise it: truncated-normal-like
    /// (normal, std `std`), or Kaiming-normal fan-out for convolutions when `std` is `None`.
    pub fn weight(&mut self, name: &str, shape: &[usize], std: Option<f32>) -> Result<()> {
        let n: usize = shape.iter().product();
        let std = std.unwrap_or_else(|| {
            let fan_out = shape[0] * shape[2..].iter().product::<usize>();
            (2.0 / fan_out as f32).sqrt()
        });
        let v = self.rng.get_mut().expect("fresh store").normal_vec(n, std);
        let t = Tensor::from_vec(v, shape, &self.device)?;
        self.insert(name, t, TensorKind::Parameter)
    }

    /// A parameter filled with `value`.
    pub fn fill(&mut self, name: &str, shape: &[usize], value: f32) -> Result<()> {
        let t = (Tensor::ones(shape, DType::F32, &self.device)? * value as f64)?;
        self.insert(name, t, TensorKind::Parameter)
    }

    /// LayerNorm / BatchNorm affine parameters (weight 1, bias 0).
    pub fn norm(&mut self, prefix: &str, c: usize) -> Result<()> {
        self.fill(&format!("{prefix}.weight"), &[c], 1.0)?;
        self.fill(&format!("{prefix}.bias"), &[c], 0.0)
    }

    /// A linear layer `[out, in]` (+ bias), normal with `std`.
    pub fn linear(&mut self, prefix: &str, cin: usize, cout: usize, std: f32) -> Result<()> {
        self.weight(&format!("{prefix}.weight"), &[cout, cin], Some(std))?;
        self.fill(&format!("{prefix}.bias"), &[cout], 0.0)
    }

    /// A BatchNorm: weight, bias, running mean and variance.
    pub fn batch_norm(&mut self, prefix: &str, c: usize) -> Result<()> {
        self.norm(prefix, c)?;
        let z = Tensor::zeros(c, DType::F32, &self.device)?;
        let o = Tensor::ones(c, DType::F32, &self.device)?;
        self.insert(&format!("{prefix}.running_mean"), z, TensorKind::Buffer)?;
        self.insert(&format!("{prefix}.running_var"), o, TensorKind::Buffer)?;
        self.batches
            .get_mut()
            .expect("fresh store")
            .insert(prefix.into(), 0);
        Ok(())
    }

    fn var(&self, name: &str) -> Result<Var> {
        self.vars
            .lock()
            .map_err(|_| Error::model("internal: parameter store poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| Error::internal(format!("{}: no tensor `{name}`", self.arch)))
    }

    /// The tensor `name` for a forward in `mode`: detached when the mode or its group's
    /// freezing keeps parameters constant.
    pub fn t(&self, name: &str, mode: Mode) -> Result<Tensor> {
        let v = self.var(name)?;
        let g = self.arch.group_of(name);
        let frozen = self.frozen.load(Ordering::Relaxed) & (1 << (g - 1)) != 0;
        Ok(if mode == Mode::InputGrad || frozen {
            v.as_tensor().detach()
        } else {
            v.as_tensor().clone()
        })
    }

    /// `(x - mean) / std` with the arch's normalisation; checks the shape.
    pub fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        match x.dims() {
            [_, 3, _, _] => Ok(x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?),
            d => Err(Error::model(format!(
                "{}: model input must be [N, 3, H, W] images, got shape {d:?}",
                self.arch
            ))),
        }
    }

    /// `x @ W^T + b` over the last dimension (a 1x1 convolution's `[O, I, 1, 1]` weight is
    /// read as `[O, I]`: the same layer on channels-last data).
    pub fn linear_fwd(&self, x: &Tensor, prefix: &str, mode: Mode) -> Result<Tensor> {
        let w = self.t(&format!("{prefix}.weight"), mode)?;
        let w = match w.dims() {
            &[o, i, 1, 1] => w.reshape((o, i))?,
            _ => w,
        };
        let b = self.t(&format!("{prefix}.bias"), mode)?;
        let dims = x.dims().to_vec();
        let k = dims[dims.len() - 1];
        let rows = x.elem_count() / k;
        let y = x.reshape((rows, k))?.matmul(&w.t()?)?.broadcast_add(&b)?;
        let mut out = dims;
        *out.last_mut().expect("non-empty") = w.dims()[0];
        Ok(y.reshape(out)?)
    }

    /// LayerNorm over the last dimension (biased variance, as torch): robustlens's one-pass
    /// op on the CPU ([`crate::ops::layernorm`]), tensor ops elsewhere.
    pub fn layer_norm(&self, x: &Tensor, prefix: &str, eps: f64, mode: Mode) -> Result<Tensor> {
        let w = self.t(&format!("{prefix}.weight"), mode)?;
        let b = self.t(&format!("{prefix}.bias"), mode)?;
        if let Some(y) = crate::ops::layernorm::layer_norm(x, &w, &b, eps)? {
            return Ok(y);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(xn.broadcast_mul(&w)?.broadcast_add(&b)?)
    }

    /// LayerNorm over the channels of `[N, C, H, W]` (timm's `LayerNorm2d`).
    pub fn layer_norm_2d(&self, x: &Tensor, prefix: &str, eps: f64, mode: Mode) -> Result<Tensor> {
        let y = self.layer_norm(&x.permute((0, 2, 3, 1))?, prefix, eps, mode)?;
        Ok(y.permute((0, 3, 1, 2))?.contiguous()?)
    }

    /// A dense convolution (`groups` 1) with robustlens's kernels, with the bias when the
    /// store has one.
    pub fn conv(
        &self,
        x: &Tensor,
        prefix: &str,
        stride: usize,
        padding: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let w = self.t(&format!("{prefix}.weight"), mode)?;
        let (_, _, h, wd) = x.dims4()?;
        let k = w.dims()[2];
        if k > 1 && k == stride && padding == 0 && h % k == 0 && wd % k == 0 {
            return self.conv_bias(patchify(x, &w)?, prefix, mode);
        }
        // robustlens's convolution (its backward computes only the gradients autograd needs;
        // candle's runs a naive transposed convolution for the input gradient).
        let y = crate::ops::conv2d(&x.contiguous()?, &w, stride, padding)?;
        self.conv_bias(y, prefix, mode)
    }

    fn conv_bias(&self, y: Tensor, prefix: &str, mode: Mode) -> Result<Tensor> {
        let name = format!("{prefix}.bias");
        if self.get(&name).is_some() {
            let b = self.t(&name, mode)?;
            let c = b.dims()[0];
            Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
        } else {
            Ok(y)
        }
    }

    /// A depthwise convolution (weight `[C, 1, k, k]`): robustlens's kernel on the CPU
    /// ([`crate::ops::depthwise`]), elsewhere a sum of `k * k` shifted, scaled copies of the
    /// padded input (candle's grouped convolution splits into `C` convolutions, and its
    /// backward is quadratic in `C`).
    pub fn depthwise(
        &self,
        x: &Tensor,
        prefix: &str,
        stride: usize,
        padding: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let w = self.t(&format!("{prefix}.weight"), mode)?;
        if crate::ops::depthwise::depthwise_supported(x, &w) {
            let y = crate::ops::depthwise_conv2d(x, &w, stride, padding)?;
            return self.conv_bias(y, prefix, mode);
        }
        let (n, c, h, wd) = x.dims4()?;
        let k = w.dims()[2];
        let xp = x.pad_with_zeros(2, padding, padding)?;
        let xp = xp.pad_with_zeros(3, padding, padding)?;
        let ho = (h + 2 * padding - k) / stride + 1;
        let wo = (wd + 2 * padding - k) / stride + 1;
        // Enough rows/columns that every tap's strided window can be reshaped.
        let (hp, wp) = (h + 2 * padding, wd + 2 * padding);
        let need_h = k - 1 + stride * ho;
        let need_w = k - 1 + stride * wo;
        let xp = xp.pad_with_zeros(2, 0, need_h.saturating_sub(hp))?;
        let xp = xp.pad_with_zeros(3, 0, need_w.saturating_sub(wp))?;
        let wf = w.reshape((c, k * k))?;
        let mut acc: Option<Tensor> = None;
        for dy in 0..k {
            for dx in 0..k {
                let win = xp.narrow(2, dy, stride * ho)?.narrow(3, dx, stride * wo)?;
                let win = if stride == 1 {
                    win
                } else {
                    win.reshape((n, c, ho, stride, wo, stride))?
                        .narrow(3, 0, 1)?
                        .narrow(5, 0, 1)?
                        .reshape((n, c, ho, wo))?
                };
                let tap = wf.narrow(1, dy * k + dx, 1)?.reshape((1, c, 1, 1))?;
                let term = win.broadcast_mul(&tap)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
        }
        let y = acc.ok_or_else(|| Error::internal("depthwise: empty kernel"))?;
        self.conv_bias(y, prefix, mode)
    }

    /// BatchNorm2d: batch statistics in train mode (running statistics updated with momentum
    /// 0.1 and the unbiased variance, as torch; through cuDNN on CUDA with the `cudnn`
    /// feature), running statistics otherwise or when frozen.
    pub fn batch_norm_fwd(&self, x: &Tensor, prefix: &str, eps: f64, mode: Mode) -> Result<Tensor> {
        let c = x.dims()[1];
        let shape = (1, c, 1, 1);
        let w = self.t(&format!("{prefix}.weight"), mode)?;
        let b = self.t(&format!("{prefix}.bias"), mode)?;
        let rm = self.var(&format!("{prefix}.running_mean"))?;
        let rv = self.var(&format!("{prefix}.running_var"))?;
        let frozen = self
            .frozen_stats
            .lock()
            .map(|f| f.iter().any(|p| p == prefix))
            .unwrap_or(false);
        let (mean, var) = if mode == Mode::Train && !frozen {
            let running = (rm.as_tensor(), rv.as_tensor());
            if let Some((y, new_mean, new_var)) =
                crate::ops::batchnorm::batch_norm_train_cudnn(x, (&w, &b), running, eps, 0.1)?
            {
                rm.set(&new_mean)?;
                rv.set(&new_var)?;
                if let Ok(mut b) = self.batches.lock() {
                    *b.entry(prefix.into()).or_insert(0) += 1;
                }
                return Ok(y);
            }
            let (n, _, h, wd) = x.dims4()?;
            let m = (n * h * wd) as f64;
            let xt = x.transpose(0, 1)?.reshape((c, n * h * wd))?;
            let mean = xt.mean_keepdim(1)?;
            let var = xt.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
            let unbiased = (var.detach() * (m / (m - 1.0).max(1.0)))?;
            rm.set(&((rm.as_tensor() * 0.9)? + (mean.detach().flatten_all()? * 0.1)?)?)?;
            rv.set(&((rv.as_tensor() * 0.9)? + (unbiased.flatten_all()? * 0.1)?)?)?;
            if let Ok(mut b) = self.batches.lock() {
                *b.entry(prefix.into()).or_insert(0) += 1;
            }
            (mean.reshape(shape)?, var.reshape(shape)?)
        } else {
            (
                rm.as_tensor().detach().reshape(shape)?,
                rv.as_tensor().detach().reshape(shape)?,
            )
        };
        let xn = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + eps)?.sqrt()?)?;
        Ok(xn
            .broadcast_mul(&w.reshape(shape)?)?
            .broadcast_add(&b.reshape(shape)?)?)
    }

    /// Names in state-dict order.
    pub fn names(&self) -> &[(String, TensorKind)] {
        &self.names
    }

    /// The state dict, with `num_batches_tracked` after each BatchNorm's running variance.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>> {
        let batches = self
            .batches
            .lock()
            .map_err(|_| Error::model("internal: parameter store poisoned"))?
            .clone();
        crate::model::state::write(&self.names, |n| self.get(n), &batches, &self.device)
    }

    /// Copies every tensor in; each must be present with the model's shape.
    pub fn load_tensors(
        &self,
        tensors: &HashMap<String, Tensor>,
        origin: &std::path::Path,
    ) -> Result<()> {
        crate::model::state::read(&self.names, |n| self.get(n), tensors, origin, &self.device)?;
        if let Ok(mut b) = self.batches.lock() {
            for (prefix, n) in b.iter_mut() {
                if let Some(v) = crate::model::state::batches_tracked(tensors, prefix) {
                    *n = v;
                }
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Var> {
        self.var(name).ok()
    }

    pub fn trainable_vars(&self, groups: GroupSet) -> Vec<(String, Var)> {
        self.names
            .iter()
            .filter(|(n, k)| *k == TensorKind::Parameter && groups.contains(self.arch.group_of(n)))
            .filter_map(|(n, _)| self.get(n).map(|v| (n.clone(), v)))
            .collect()
    }

    pub fn freeze_bn_stats(&self, trainable: GroupSet, freeze: bool) {
        let frozen: Vec<String> = self
            .batches
            .lock()
            .map(|b| {
                b.keys()
                    .filter(|p| freeze && !trainable.contains(self.arch.group_of(p)))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut f) = self.frozen_stats.lock() {
            *f = frozen;
        }
    }

    pub fn set_trainable_groups(&self, trainable: GroupSet) {
        let mut bits = 0u8;
        for g in trainable.complement().groups() {
            bits |= 1 << (g - 1);
        }
        self.frozen.store(bits, Ordering::Relaxed);
    }

    /// Replaces a linear head `prefix` by a fresh `[k, in]` one (normal, std 0.01 as timm's
    /// `reset_classifier` heads start; zero bias).
    pub fn reset_linear(&mut self, prefix: &str, k: usize, seed: u64) -> Result<()> {
        if k == 0 {
            return Err(Error::model("num_classes must be at least 1"));
        }
        let wname = format!("{prefix}.weight");
        let cin = self.var(&wname)?.dims()[1];
        let mut rng = SeededRng::new(seed ^ 0x5eed_f00d);
        let w = Tensor::from_vec(rng.normal_vec(k * cin, 0.01), (k, cin), &self.device)?;
        let b = Tensor::zeros(k, DType::F32, &self.device)?;
        let mut vars = self
            .vars
            .lock()
            .map_err(|_| Error::model("internal: parameter store poisoned"))?;
        vars.insert(wname, Var::from_tensor(&w)?);
        vars.insert(format!("{prefix}.bias"), Var::from_tensor(&b)?);
        Ok(())
    }

    /// The number of rows of a 2-D tensor (a head's classes).
    pub fn rows(&self, name: &str) -> usize {
        self.get(name).map(|v| v.dims()[0]).unwrap_or(0)
    }
}

/// A convolution whose kernel equals its stride (non-overlapping patches: ConvNeXt's stem and
/// downsampling, the ViT's patch embedding) as one matrix product over the patches.
fn patchify(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let (o, k) = (w.dims()[0], w.dims()[2]);
    let (ho, wo) = (h / k, wd / k);
    let patches = x
        .reshape((n, c, ho, k, wo, k))?
        .permute((0, 2, 4, 1, 3, 5))?
        .contiguous()?
        .reshape((n * ho * wo, c * k * k))?;
    let y = patches.matmul(&w.reshape((o, c * k * k))?.t()?)?;
    Ok(y.reshape((n, ho, wo, o))?
        .permute((0, 3, 1, 2))?
        .contiguous()?)
}

/// Implements [`Network`] for a struct with a `params: Params` field, a `head: &'static str`
/// prefix and a `forward_mode`-style method `run`.
#[macro_export]
#[doc(hidden)]
macro_rules! params_network {
    ($ty:ty) => {
        impl $crate::model::network::Network for $ty {
            fn kind(&self) -> $crate::model::Arch {
                self.arch
            }
            fn forward_mode(
                &self,
                x: &candle_core::Tensor,
                mode: $crate::model::Mode,
            ) -> $crate::Result<candle_core::Tensor> {
                self.run(x, mode)
            }
            fn tensor_names(&self) -> Vec<(String, $crate::model::resnet::TensorKind)> {
                self.params.names().to_vec()
            }
            fn var(&self, name: &str) -> Option<candle_core::Var> {
                self.params.get(name)
            }
            fn state_dict(&self) -> $crate::Result<Vec<(String, candle_core::Tensor)>> {
                self.params.state_dict()
            }
            fn load_tensors(
                &self,
                tensors: &std::collections::HashMap<String, candle_core::Tensor>,
                origin: &std::path::Path,
            ) -> $crate::Result<()> {
                self.params.load_tensors(tensors, origin)
            }
            fn trainable_vars(
                &self,
                groups: $crate::model::GroupSet,
            ) -> Vec<(String, candle_core::Var)> {
                self.params.trainable_vars(groups)
            }
            fn freeze_bn_stats(&self, trainable: $crate::model::GroupSet, freeze: bool) {
                self.params.freeze_bn_stats(trainable, freeze)
            }
            fn set_trainable_groups(&self, trainable: $crate::model::GroupSet) {
                self.params.set_trainable_groups(trainable)
            }
            fn reset_head(&mut self, num_classes: usize, seed: u64) -> $crate::Result<()> {
                let head = self.arch.head_prefix();
                self.params.reset_linear(head, num_classes, seed)
            }
        }
        impl $crate::model::Classifier for $ty {
            fn logits(&self, x: &candle_core::Tensor) -> $crate::Result<candle_core::Tensor> {
                self.run(x, $crate::model::Mode::InputGrad)
            }
            fn num_classes(&self) -> usize {
                self.params
                    .rows(&format!("{}.weight", self.arch.head_prefix()))
            }
            fn device(&self) -> &candle_core::Device {
                self.params.device()
            }
            fn arch(&self) -> &str {
                self.arch.name()
            }
            fn layers(&self) -> Option<&dyn $crate::model::LayeredClassifier> {
                Some(self)
            }
        }
    };
}
