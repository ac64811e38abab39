//! Grad-CAM (captum `LayerGradCam` + `LayerAttribution.interpolate(..., "bilinear")`):
//! weights alpha_c = mean over space of d logit / d A_c at a layer (the model's default:
//! layer4 of a ResNet), reached through [`LayeredClassifier`],
//! map = ReLU(sum_c alpha_c A_c), upsampled to the input size like
//! `F.interpolate(mode="bilinear", align_corners=False)`.

use super::{select_targets, Attribution};
use crate::model::{Classifier, LayeredClassifier};
use crate::{Error, Result};
use candle_core::{Device, Tensor};

/// Grad-CAM on a layer.
#[derive(Debug, Clone, Default)]
pub struct GradCam {
    /// The layer's name (`layer4`); `None`: the model's default Grad-CAM layer.
    pub layer: Option<String>,
}

impl GradCam {
    /// The map at the stage's resolution, `[N, 1, h, w]`, before upsampling.
    pub fn layer_map(
        &self,
        model: &dyn Classifier,
        x: &Tensor,
        targets: &[usize],
    ) -> Result<Tensor> {
        let net: &dyn LayeredClassifier = model.layers().ok_or_else(|| {
            Error::model(format!(
                "Grad-CAM needs a model with named layers; {} has none",
                model.arch()
            ))
        })?;
        let layer = self
            .layer
            .clone()
            .unwrap_or_else(|| net.default_cam_layer());
        let (av, logits) = net.forward_split(x, &layer)?;
        let acts = av.as_tensor().detach();
        let g = select_targets(&logits, targets)?.sum_all()?.backward()?;
        let grad = g
            .get(av.as_tensor())
            .ok_or_else(|| Error::internal(format!("no gradient at layer {layer}")))?;
        let alpha = grad.mean_keepdim(3)?.mean_keepdim(2)?; // [N,C,1,1]
        let cam = alpha.broadcast_mul(&acts)?.sum_keepdim(1)?.relu()?;
        Ok(cam)
    }
}

impl Attribution for GradCam {
    fn name(&self) -> String {
        "gradcam".into()
    }
    fn describe(&self) -> String {
        match &self.layer {
            Some(l) => format!("Grad-CAM, {l}"),
            None => "Grad-CAM, last stage".into(),
        }
    }
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let cam = self.layer_map(model, x, targets)?;
        upsample_bilinear(&cam, h, w)
    }
}

/// `torch.nn.functional.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)`.
pub fn upsample_bilinear(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let src: Vec<f32> = x.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
    let axis = |o: usize, i: usize| -> Vec<(usize, usize, f32)> {
        let scale = i as f32 / o as f32;
        (0..o)
            .map(|d| {
                let s = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(i - 1);
                let i1 = if i0 < i - 1 { i0 + 1 } else { i0 };
                let l1 = s - i0 as f32;
                (i0, i1, l1)
            })
            .collect()
    };
    let ay = axis(oh, h);
    let ax = axis(ow, w);
    let mut out = vec![0f32; n * c * oh * ow];
    for p in 0..n * c {
        let pl = &src[p * h * w..(p + 1) * h * w];
        for (oy, &(y0, y1, ly)) in ay.iter().enumerate() {
            for (ox, &(x0, x1, lx)) in ax.iter().enumerate() {
                let v = (1.0 - ly) * ((1.0 - lx) * pl[y0 * w + x0] + lx * pl[y0 * w + x1])
                    + ly * ((1.0 - lx) * pl[y1 * w + x0] + lx * pl[y1 * w + x1]);
                out[p * oh * ow + oy * ow + ox] = v;
            }
        }
    }
    Ok(Tensor::from_vec(out, (n, c, oh, ow), x.device())?)
}
