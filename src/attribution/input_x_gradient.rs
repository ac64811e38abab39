//! Input x Gradient (captum `InputXGradient`): x * d logit_target / d x.

use super::{input_gradients, Attribution};
use crate::model::Classifier;
use crate::Result;
use candle_core::Tensor;

/// Input times gradient.
#[derive(Debug, Clone)]
pub struct InputXGradient {
    pub batch: usize,
}

impl Attribution for InputXGradient {
    fn name(&self) -> String {
        "input-x-gradient".into()
    }
    fn describe(&self) -> String {
        "Input × Gradient".into()
    }
    fn attribute(&self, model: &dyn Classifier, x: &Tensor, targets: &[usize]) -> Result<Tensor> {
        Ok((input_gradients(model, x, targets, self.batch)? * x)?)
    }
}
