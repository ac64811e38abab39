//! The state dict of a network kept as named variables: written in order with each
//! BatchNorm's `num_batches_tracked` after its running variance (as torch orders it), and
//! read back with every tensor checked against the model's shape. ResNet-18 and the
//! [`crate::model::network::Params`] store both use it.

use crate::{Error, Result};
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

/// What a tensor of the state dict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A trainable parameter (weights, biases).
    Parameter,
    /// A BatchNorm running statistic (not trained by the optimiser).
    Buffer,
}

/// The tensors of `names` (copied, detached), each `<bn>.running_var` followed by
/// `<bn>.num_batches_tracked` from `batches` (0 when absent).
pub fn write(
    names: &[(String, TensorKind)],
    var: impl Fn(&str) -> Option<Var>,
    batches: &HashMap<String, i64>,
    device: &Device,
) -> Result<Vec<(String, Tensor)>> {
    let mut out = Vec::with_capacity(names.len() + batches.len());
    for (name, _) in names {
        let v = var(name).ok_or_else(|| Error::model(format!("internal: missing {name}")))?;
        out.push((name.clone(), v.as_tensor().detach().copy()?));
        if let Some(prefix) = name.strip_suffix(".running_var") {
            let n = batches.get(prefix).copied().unwrap_or(0);
            out.push((
                format!("{prefix}.num_batches_tracked"),
                Tensor::new(n, device)?,
            ));
        }
    }
    Ok(out)
}

/// Sets every variable of `names` from `tensors`: each must be present with the model's
/// shape (named errors otherwise), converted to f32 on `device`.
pub fn read(
    names: &[(String, TensorKind)],
    var: impl Fn(&str) -> Option<Var>,
    tensors: &HashMap<String, Tensor>,
    origin: &Path,
    device: &Device,
) -> Result<()> {
    for (name, _) in names {
        let t = tensors
            .get(name)
            .ok_or_else(|| Error::weights(origin, format!("tensor `{name}` is missing")))?;
        let v = var(name).ok_or_else(|| Error::model(format!("internal: missing {name}")))?;
        if t.dims() != v.dims() {
            return Err(Error::weights(
                origin,
                format!(
                    "tensor `{name}` has shape {:?}, the model needs {:?}",
                    t.dims(),
                    v.dims()
                ),
            ));
        }
        v.set(&t.to_dtype(DType::F32)?.to_device(device)?)?;
    }
    Ok(())
}

/// `<prefix>.num_batches_tracked` of `tensors`, when present and readable.
pub fn batches_tracked(tensors: &HashMap<String, Tensor>, prefix: &str) -> Option<i64> {
    let t = tensors.get(&format!("{prefix}.num_batches_tracked"))?;
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::I64))
        .and_then(|t| t.to_vec1::<i64>())
        .ok()?
        .first()
        .copied()
}
