//! Seeded random numbers that do not depend on candle's (unseedable on CPU) generator, so
//! runs are bit-reproducible from a seed.

use candle_core::{Device, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A seeded generator with the few draws robustlens needs.
#[derive(Debug, Clone)]
pub struct SeededRng(ChaCha8Rng);

impl SeededRng {
    pub fn new(seed: u64) -> Self {
        SeededRng(ChaCha8Rng::seed_from_u64(seed))
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.0.random::<f32>()
    }

    /// Standard normal draw (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        loop {
            let u1: f64 = self.0.random::<f64>();
            let u2: f64 = self.0.random::<f64>();
            if u1 > 1e-300 {
                return ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32;
            }
        }
    }

    pub fn normal_vec(&mut self, n: usize, std: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * std).collect()
    }

    pub fn uniform_vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform draws in [lo, hi) as a tensor of `shape` on `device`: on the CPU the values
    /// of [`Self::uniform_vec`]; elsewhere from the device's own generator, seeded with one
    /// draw from this one (reproducible on one device, nothing copied from the host).
    pub fn uniform_tensor(
        &mut self,
        shape: &Shape,
        lo: f32,
        hi: f32,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if device.is_cpu() {
            return Tensor::from_vec(self.uniform_vec(shape.elem_count(), lo, hi), shape, device);
        }
        device.set_seed(self.next_u64())?;
        Tensor::rand(lo, hi, shape, device)
    }

    /// Normal draws with standard deviation `std` as a tensor of `shape` on `device`: on the
    /// CPU the values of [`Self::normal_vec`]; elsewhere as [`Self::uniform_tensor`].
    pub fn normal_tensor(
        &mut self,
        shape: &Shape,
        std: f32,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        if device.is_cpu() {
            return Tensor::from_vec(self.normal_vec(shape.elem_count(), std), shape, device);
        }
        device.set_seed(self.next_u64())?;
        Tensor::randn(0f32, std, shape, device)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0.random()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.random_range(0..n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_on_the_cpu_hold_the_host_draws() {
        // the CPU keeps the values it always had (PGD's random start, SmoothGrad's noise)
        let shape = Shape::from((2, 3, 4));
        let (mut a, mut b) = (SeededRng::new(9), SeededRng::new(9));
        let t = a.uniform_tensor(&shape, -0.5, 0.5, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [2, 3, 4]);
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.uniform_vec(24, -0.5, 0.5)
        );
        let t = a.normal_tensor(&shape, 0.3, &Device::Cpu).unwrap();
        assert_eq!(
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.normal_vec(24, 0.3)
        );
    }
}
