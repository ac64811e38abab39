//! Gradient (captum `Saliency(abs=False)`): d logit_target / d input, signed.
//! Taking the absolute value is a display choice ([`crate::report::display`]).

use super::{input_gradients, Attribution};
use crate::model::Classifier;
use crate::Result;
use candle_core::Tensor;

/// Vanilla gradient.
#[derive(Debug, Clone)]
pub struct Gradient {
    /// Images per forward/backward pass.
    pub batch: usize,
}

impl Attribution for Gradient {
    fn name(&self) -> String {
        "gradient".into()
    }
    fn describe(&self) -> String {
        "Gradient".into()
    }
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        input_gradients(model, x, targets, self.batch)
    }
}
