//! Weight gradients handed to the caller beside candle's gradient bookkeeping.
//!
//! candle's backward pass keeps, for every tensor it reaches, a running sum of the gradients
//! that arrive, and starts each sum as a zero tensor: a parameter's gradient `g` is stored as
//! `zeros + g`, a zero-filled buffer and an add over memory for a value that is `g` itself.
//! For ResNet-18 that is 45 MB of weight gradients written as zeros, read twice and written
//! once more on every training step (at 64 px, batch 16, 2 threads: without it the backward
//! pass measured 6-7 ms, about 8%, faster; a training step 1.08-1.12x).
//!
//! [`backward`] runs candle's backward with a sink open on this thread. The convolution's
//! backward ([`offer`]) gives the gradient of a weight that is a variable to the sink instead
//! of to candle; afterwards each one goes into the returned store, added to the gradient that
//! candle holds for the same variable where it has one. The gradients are the same values: a
//! weight used once gets `g` instead of `0 + g` (a zero gradient's sign is the only bit that
//! can differ); a variable reached by several paths gets the same sum, possibly added in
//! another order. A plain `loss.backward()` keeps candle's bookkeeping.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, TensorId};
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static SINK: RefCell<Option<HashMap<TensorId, (Tensor, Tensor)>>> =
        const { RefCell::new(None) };
}

/// `root.backward()`, with the convolutions' weight gradients kept apart from candle's
/// running sums (see the module documentation). The gradients are candle's, for every
/// tensor candle reports, with the same values.
pub fn backward(root: &Tensor) -> Result<GradStore> {
    /// Closes the sink (and restores an enclosing one) on return and on unwind.
    struct Restore(Option<HashMap<TensorId, (Tensor, Tensor)>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SINK.with(|s| *s.borrow_mut() = outer);
        }
    }
    let outer = SINK.with(|s| s.borrow_mut().replace(HashMap::new()));
    let restore = Restore(outer);
    let grads = root.backward();
    let sunk = SINK.with(|s| s.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    let mut grads = grads?;
    for (_, (var, g)) in sunk {
        let g = match grads.remove(&var) {
            Some(other) => (other + g)?,
            None => g,
        };
        grads.insert(&var, g);
    }
    Ok(grads)
}

/// The weight gradient `g` of `w`, from a custom op's backward: kept by the open sink when
/// `w` is a variable (`None` is then handed back to candle), else returned for candle. A
/// tracked tensor that is not a variable (a weight computed by ops) must get its gradient
/// from candle, which carries it on to the variables (and expects it: it fails without).
pub(crate) fn offer(w: &Tensor, g: Tensor) -> Result<Option<Tensor>> {
    if !w.is_variable() {
        return Ok(Some(g));
    }
    SINK.with(|s| {
        let mut s = s.borrow_mut();
        let Some(sink) = s.as_mut() else {
            return Ok(Some(g));
        };
        match sink.remove(&w.id()) {
            Some((var, prev)) => {
                let sum = (prev + g)?;
                sink.insert(w.id(), (var, sum));
            }
            None => {
                sink.insert(w.id(), (w.clone(), g));
            }
        }
        Ok(None)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn a_weight_reached_by_several_paths_gets_candles_sum() {
        let dev = Device::Cpu;
        let v = |n: usize, seed: u64| crate::ops::testing::values(n, seed);
        let x = Tensor::from_vec(v(2 * 4 * 6 * 6, 1), (2, 4, 6, 6), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(v(5 * 4 * 9, 2), (5, 4, 3, 3), &dev).unwrap())
            .unwrap();
        let xv = Var::from_tensor(&x).unwrap();
        // the weight in two convolutions (stride 1 and 2) and in a candle op
        let loss = || {
            let a = crate::ops::conv2d(xv.as_tensor(), w.as_tensor(), 1, 1).unwrap();
            let b = crate::ops::conv2d(xv.as_tensor(), w.as_tensor(), 2, 1).unwrap();
            let r = w.as_tensor().sqr().unwrap().sum_all().unwrap();
            ((a.sqr().unwrap().sum_all().unwrap() + b.sum_all().unwrap()).unwrap() + r).unwrap()
        };
        let plain = loss().backward().unwrap();
        let sunk = backward(&loss()).unwrap();
        for (what, t) in [("weight", w.as_tensor()), ("input", xv.as_tensor())] {
            let values = |g: &GradStore| -> Vec<f32> {
                g.get(t).unwrap().flatten_all().unwrap().to_vec1().unwrap()
            };
            let (p, s) = (values(&plain), values(&sunk));
            let scale = p.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (p, s)) in p.iter().zip(&s).enumerate() {
                // the same terms, possibly summed in another order
                assert!(
                    (p - s).abs() <= 1e-6 * scale,
                    "{what} gradient [{i}]: {p} vs {s}"
                );
            }
        }
        // the sink only takes variables' gradients: through a weight computed by an op, candle
        // carries the gradient on to the variable
        let y = |w: &Tensor| crate::ops::conv2d(&x, w, 1, 1).unwrap().sum_all().unwrap();
        let g = backward(&y(&(w.as_tensor() * 2.0).unwrap())).unwrap();
        let want = (backward(&y(w.as_tensor()))
            .unwrap()
            .get(w.as_tensor())
            .unwrap()
            * 2.0)
            .unwrap();
        let got = g.get(w.as_tensor()).expect("the variable's gradient");
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }
}
