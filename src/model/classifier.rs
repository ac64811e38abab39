//! The one abstraction of "a model" that attribution, attacks, evaluation and the saliency
//! metrics use: a [`Classifier`] maps `[0, 1]` images to logits and gives input gradients;
//! a [`LayeredClassifier`] also lets a method stop at a named layer and go on from there
//! (Grad-CAM), the way captum's layer methods hook a module.
//!
//! Any network can implement it: a CNN with stages, a ConvNeXt, or a ViT whose token grid is
//! reshaped to `[N, C, h, w]` by its [`LayeredClassifier::forward_to`].
//!
//! ```
//! use robustlens::model::{Classifier, ResNet18};
//! use candle_core::{DType, Device, Tensor};
//! # fn main() -> robustlens::Result<()> {
//! let model = ResNet18::new_random(3, 0, &Device::Cpu)?;
//! let x = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu)?;
//! let explain: &dyn Classifier = &model;
//! let g = explain.input_gradient(&x, &[1])?; // d logit_1 / d x
//! assert_eq!(g.dims(), &[1, 3, 32, 32]);
//! assert!(explain.layers().is_some()); // Grad-CAM can run on it
//! # Ok(()) }
//! ```

use crate::model::{Mode, ResNet18, Stage};
use crate::{Error, Result};
use candle_core::{Device, Tensor, Var};

/// The target logit per row: `logits[i, targets[i]]`, shape `[N]`.
pub fn select_targets(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let idx: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
    let idx = Tensor::new(idx.as_slice(), logits.device())?.unsqueeze(1)?;
    Ok(logits.gather(&idx, 1)?.squeeze(1)?)
}

/// An image classifier as the explanation and attack code sees it.
pub trait Classifier {
    /// Logits `[N, K]` of `[0, 1]` images `[N, 3, H, W]` in eval mode, differentiable with
    /// respect to `x` only (weights are constants: no weight gradient is ever computed).
    fn logits(&self, x: &Tensor) -> Result<Tensor>;

    /// Number of classes `K`.
    fn num_classes(&self) -> usize;

    /// The device its weights live on.
    fn device(&self) -> &Device;

    /// The architecture's name (`resnet18`, ...), for labels and error messages.
    fn arch(&self) -> &str;

    /// `d (sum_i logits[i, targets[i]]) / d x`, `[N, 3, H, W]`: the entry point of every
    /// gradient method and of PGD. The default runs [`Classifier::logits`] on a variable and
    /// differentiates; a network may override it with a cheaper path.
    fn input_gradient(&self, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let xv = Var::from_tensor(&x.contiguous()?)?;
        let logits = self.logits(xv.as_tensor())?;
        let sel = select_targets(&logits, targets)?.sum_all()?;
        let grads = sel.backward()?;
        Ok(grads
            .get(xv.as_tensor())
            .ok_or_else(|| {
                Error::internal(format!(
                    "{}: the logits do not depend on the input",
                    self.arch()
                ))
            })?
            .clone())
    }

    /// Named layers, when the network exposes them (Grad-CAM needs them); `None` otherwise.
    fn layers(&self) -> Option<&dyn LayeredClassifier> {
        None
    }
}

/// A classifier whose intermediate layers can be reached by name.
pub trait LayeredClassifier: Classifier {
    /// The layers a layer method may use, input side first (ResNet: `stem`, `layer1`..`layer4`).
    fn layer_names(&self) -> Vec<String>;

    /// The layer Grad-CAM uses by default (the last spatial one).
    fn default_cam_layer(&self) -> String;

    /// The activation `[N, C, h, w]` at `layer` as a differentiation leaf, and the logits
    /// computed from it: `logits.backward()` gives `d logits / d activation` (captum's layer
    /// hook). A ViT returns its patch tokens reshaped to the patch grid, class token dropped.
    /// Eval mode, weights constant.
    fn forward_split(&self, x: &Tensor, layer: &str) -> Result<(Var, Tensor)>;
}

impl Classifier for ResNet18 {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.forward(x, Mode::InputGrad)
    }
    fn num_classes(&self) -> usize {
        ResNet18::num_classes(self)
    }
    fn device(&self) -> &Device {
        ResNet18::device(self)
    }
    fn arch(&self) -> &str {
        "resnet18"
    }
    fn layers(&self) -> Option<&dyn LayeredClassifier> {
        Some(self)
    }
}

impl ResNet18 {
    fn cam_stage(layer: &str) -> Result<Stage> {
        match Stage::parse(layer)? {
            s @ (Stage::Stem | Stage::Layer1 | Stage::Layer2 | Stage::Layer3 | Stage::Layer4) => {
                Ok(s)
            }
            other => Err(Error::config(
                "layer",
                format!("{other:?}").to_lowercase(),
                "a layer method needs a spatial layer of resnet18: stem, layer1, layer2, layer3 or layer4",
            )),
        }
    }
}

impl LayeredClassifier for ResNet18 {
    fn layer_names(&self) -> Vec<String> {
        ["stem", "layer1", "layer2", "layer3", "layer4"]
            .map(String::from)
            .to_vec()
    }
    fn default_cam_layer(&self) -> String {
        "layer4".into()
    }
    fn forward_split(&self, x: &Tensor, layer: &str) -> Result<(Var, Tensor)> {
        let stage = Self::cam_stage(layer)?;
        let acts = self
            .forward_range(x, Stage::Input, stage, Mode::InputGrad)?
            .detach();
        let av = Var::from_tensor(&acts)?;
        let logits = self.forward_range(av.as_tensor(), stage, Stage::Logits, Mode::InputGrad)?;
        Ok((av, logits))
    }
}

/// A boxed network is a classifier (so `&model` works wherever `&dyn Classifier` is taken).
impl<T: Classifier + ?Sized> Classifier for Box<T> {
    fn logits(&self, x: &Tensor) -> Result<Tensor> {
        (**self).logits(x)
    }
    fn num_classes(&self) -> usize {
        (**self).num_classes()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn arch(&self) -> &str {
        (**self).arch()
    }
    fn input_gradient(&self, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        (**self).input_gradient(x, targets)
    }
    fn layers(&self) -> Option<&dyn LayeredClassifier> {
        (**self).layers()
    }
}
