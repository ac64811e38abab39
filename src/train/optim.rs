//! Adam as PyTorch's `torch.optim.Adam` (weight decay added to the gradient, L2) and AdamW
//! (decoupled weight decay). Moments and the step count can be saved and restored, so a
//! resumed run continues exactly.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// One fused Adam update on the CPU, in place: reads p and g once and writes p and the
/// moments where they are (no new parameter buffer, no copy back into the `Var`, no dozen
/// full-size temporaries per parameter).
struct AdamCpuStep {
    m: Arc<Mutex<Vec<f32>>>,
    v: Arc<Mutex<Vec<f32>>>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    step_size: f32,
    bc2_sqrt: f32,
    /// L2 decay added to the gradient (Adam).
    l2: f32,
    /// Decoupled decay factor applied to p first (AdamW): p *= 1 - lr * wd.
    decay: f32,
}

impl InplaceOp2 for AdamCpuStep {
    fn name(&self) -> &'static str {
        "robustlens-adam-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let g = crate::ops::cpu_f32(s2, l2, "adam", "a gradient")?;
        let p = match (s1, l1.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &mut v[a..b],
            _ => candle_core::bail!("adam: a parameter must be contiguous f32"),
        };
        let (mut m, mut v) = (lock(&self.m)?, lock(&self.v)?);
        if m.len() != p.len() || v.len() != p.len() || g.len() != p.len() {
            candle_core::bail!("adam: parameter, gradient and moments differ in size");
        }
        let (b1, b2, eps, ss, bc2s, l2, decay) = (
            self.beta1,
            self.beta2,
            self.eps,
            self.step_size,
            self.bc2_sqrt,
            self.l2,
            self.decay,
        );
        const CHUNK: usize = 1 << 14;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                    let gi = g + l2 * *p;
                    let mi = b1 * *m + (1.0 - b1) * gi;
                    let vi = b2 * *v + (1.0 - b2) * gi * gi;
                    *m = mi;
                    *v = vi;
                    *p = *p * decay - ss * mi / (vi.sqrt() / bc2s + eps);
                }
            });
        Ok(())
    }
}

/// One moment vector of the fused CPU step, locked.
fn lock(m: &Mutex<Vec<f32>>) -> candle_core::Result<MutexGuard<'_, Vec<f32>>> {
    m.lock()
        .map_err(|_| candle_core::Error::Msg("adam state poisoned".into()))
}

/// First and second moments of one parameter, shared with the fused CPU step.
type Moments = (Arc<Mutex<Vec<f32>>>, Arc<Mutex<Vec<f32>>>);

/// The moments of every parameter: host vectors for the fused CPU step (parameters all f32 on
/// the CPU), else tensors on the parameters' devices. Never both (for ResNet-18 each copy is
/// 90 MB).
enum State {
    Cpu(Vec<Moments>),
    Tensors { m: Vec<Tensor>, v: Vec<Tensor> },
}

pub use crate::config::OptimKind;

/// Adam with named parameters.
pub struct Adam {
    pub kind: OptimKind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
    params: Vec<(String, Var)>,
    state: State,
}

impl Adam {
    pub fn new(
        kind: OptimKind,
        params: Vec<(String, Var)>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<Adam> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::training(format!("learning rate {lr}: must be > 0")));
        }
        let on_cpu = params
            .iter()
            .all(|(_, p)| p.device().is_cpu() && p.dtype() == candle_core::DType::F32);
        let state = if on_cpu {
            let zeros = |p: &Var| Arc::new(Mutex::new(vec![0f32; p.elem_count()]));
            State::Cpu(params.iter().map(|(_, p)| (zeros(p), zeros(p))).collect())
        } else {
            let zeros = || -> candle_core::Result<Vec<Tensor>> {
                params.iter().map(|(_, p)| p.zeros_like()).collect()
            };
            State::Tensors {
                m: zeros()?,
                v: zeros()?,
            }
        };
        Ok(Adam {
            kind,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            params,
            state,
        })
    }

    /// The parameters this optimiser updates.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update from the gradients in `grads` (parameters without a gradient are skipped).
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let step_size = self.lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        let (ms, vs) = match &mut self.state {
            State::Tensors { m, v } => (m, v),
            State::Cpu(cpu) => {
                let (l2, decay) = match self.kind {
                    OptimKind::Adam => (self.weight_decay as f32, 1.0),
                    OptimKind::AdamW => (0.0, (1.0 - self.lr * self.weight_decay) as f32),
                };
                for (i, (_, p)) in self.params.iter().enumerate() {
                    let Some(g) = grads.get(p.as_tensor()) else {
                        continue;
                    };
                    let op = AdamCpuStep {
                        m: cpu[i].0.clone(),
                        v: cpu[i].1.clone(),
                        beta1: self.beta1 as f32,
                        beta2: self.beta2 as f32,
                        eps: self.eps as f32,
                        step_size: step_size as f32,
                        bc2_sqrt: bc2_sqrt as f32,
                        l2,
                        decay,
                    };
                    p.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
                }
                return Ok(());
            }
        };
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(p.as_tensor()) else {
                continue;
            };
            let mut g = g.clone();
            match self.kind {
                OptimKind::Adam if self.weight_decay != 0.0 => {
                    g = (g + (p.as_tensor() * self.weight_decay)?)?;
                }
                OptimKind::AdamW if self.weight_decay != 0.0 => {
                    p.set(&(p.as_tensor() * (1.0 - self.lr * self.weight_decay))?)?;
                }
                _ => {}
            }
            let m = ((&ms[i] * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            let v = ((&vs[i] * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((v.sqrt()? / bc2_sqrt)? + self.eps)?;
            let upd = ((&m / denom)? * step_size)?;
            p.set(&(p.as_tensor() - upd)?)?;
            ms[i] = m;
            vs[i] = v;
        }
        Ok(())
    }

    /// Moments by name (`m.<param>`, `v.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, (n, p)) in self.params.iter().enumerate() {
            let (m, v) = match &self.state {
                State::Cpu(cpu) => {
                    let host = |slot: &Mutex<Vec<f32>>| -> Result<Tensor> {
                        let values = lock(slot)?.clone();
                        Ok(Tensor::from_vec(values, p.shape(), p.device())?)
                    };
                    (host(&cpu[i].0)?, host(&cpu[i].1)?)
                }
                State::Tensors { m, v } => (m[i].clone(), v[i].clone()),
            };
            out.push((format!("m.{n}"), m));
            out.push((format!("v.{n}"), v));
        }
        Ok(out)
    }

    /// Restores moments saved by [`Adam::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, step: u64) -> Result<()> {
        for (i, (n, p)) in self.params.iter().enumerate() {
            let get = |prefix: &str| -> Result<&Tensor> {
                let t = tensors.get(&format!("{prefix}.{n}")).ok_or_else(|| {
                    Error::training(format!(
                        "optimizer state has no `{prefix}.{n}`; was it saved by another command?"
                    ))
                })?;
                if t.dims() != p.dims() {
                    return Err(Error::training(format!(
                        "optimizer state `{prefix}.{n}` has shape {:?}, expected {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                Ok(t)
            };
            let (tm, tv) = (get("m")?, get("v")?);
            match &mut self.state {
                State::Cpu(cpu) => {
                    for (t, slot) in [(tm, &cpu[i].0), (tv, &cpu[i].1)] {
                        let values: Vec<f32> = t
                            .flatten_all()?
                            .to_dtype(candle_core::DType::F32)?
                            .to_vec1()?;
                        *lock(slot)? = values;
                    }
                }
                State::Tensors { m, v } => {
                    m[i] = tm.to_device(p.device())?;
                    v[i] = tv.to_device(p.device())?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}
