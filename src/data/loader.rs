//! Batches from the image cache: shuffled (seeded per epoch), augmented in parallel (rayon),
//! and prefetched on a background thread while the model computes.

use crate::data::augment::{augment_u8, AugmentConfig};
use crate::data::cache::ImageCache;
use crate::rng::SeededRng;
use crate::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

/// A batch on the CPU, ready to become tensors.
pub struct HostBatch {
    /// `[B, 3, S, S]` values in `[0, 1]`.
    pub pixels: Vec<f32>,
    pub labels: Vec<usize>,
    /// `[B, S, S]` masks (255 = lesion; zeros where an item has none).
    pub masks: Vec<u8>,
    pub has_mask: Vec<bool>,
    /// Dataset indices of the batch.
    pub indices: Vec<usize>,
    pub size: usize,
}

impl HostBatch {
    /// Images as a `[B, 3, S, S]` tensor.
    pub fn images(&self, device: &Device) -> Result<Tensor> {
        let b = self.labels.len();
        Ok(Tensor::from_slice(
            &self.pixels,
            (b, 3, self.size, self.size),
            device,
        )?)
    }
    /// Labels as a `[B]` u32 tensor.
    pub fn label_tensor(&self, device: &Device) -> Result<Tensor> {
        let l: Vec<u32> = self.labels.iter().map(|&v| v as u32).collect();
        Ok(Tensor::from_vec(l, self.labels.len(), device)?)
    }
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// How to iterate.
#[derive(Debug, Clone)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub augment: Option<AugmentConfig>,
    /// Seed; the epoch is mixed in, so each epoch differs but is reproducible.
    pub seed: u64,
    pub epoch: u64,
    /// Drop a last batch smaller than this (BatchNorm in train mode needs 2+ images).
    pub min_batch: usize,
    /// Skip this many batches at the start of the epoch (resuming mid-epoch); their
    /// augmentation seeds are still drawn, so later batches are identical.
    pub skip: usize,
}

/// Makes one batch from `idx` (cache indices) with per-item augmentation seeds.
pub fn make_batch(
    cache: &ImageCache,
    labels: &[usize],
    idx: &[usize],
    aug: Option<&AugmentConfig>,
    seeds: &[u64],
) -> HostBatch {
    let s = cache.size;
    let plane = s * s;
    let items: Vec<(Vec<f32>, Vec<u8>)> = idx
        .par_iter()
        .zip(seeds.par_iter())
        .map(|(&i, &seed)| {
            let raw = cache.image(i);
            let mut px = vec![0f32; 3 * plane];
            let mut m = vec![0u8; plane];
            match aug {
                Some(cfg) => {
                    let mut rng = SeededRng::new(seed);
                    augment_u8(raw, cache.mask(i), s, cfg, &mut rng, &mut px, &mut m);
                }
                None => {
                    for p in 0..plane {
                        for c in 0..3 {
                            px[c * plane + p] = raw[p * 3 + c] as f32 / 255.0;
                        }
                    }
                    if let Some(mk) = cache.mask(i) {
                        m.copy_from_slice(mk);
                    }
                }
            }
            (px, m)
        })
        .collect();
    let mut pixels = Vec::with_capacity(idx.len() * 3 * plane);
    let mut masks = Vec::with_capacity(idx.len() * plane);
    for (p, m) in items {
        pixels.extend(p);
        masks.extend(m);
    }
    HostBatch {
        pixels,
        labels: idx.iter().map(|&i| labels[i]).collect(),
        masks,
        has_mask: idx.iter().map(|&i| cache.has_mask[i]).collect(),
        indices: idx.to_vec(),
        size: s,
    }
}

/// The order of one epoch.
pub fn epoch_order(indices: &[usize], cfg: &LoaderConfig) -> Vec<usize> {
    let mut order = indices.to_vec();
    if cfg.shuffle {
        let mut rng = SeededRng::new(cfg.seed ^ cfg.epoch.wrapping_mul(0xA24B_AED4_963E_E407));
        for i in (1..order.len()).rev() {
            let j = rng.below(i + 1);
            order.swap(i, j);
        }
    }
    order
}

/// The batches of one epoch, from [`batches`]'s background producer, in order.
///
/// The producer augments each batch in parallel on rayon's pool; waiting for the next batch
/// on one of the pool's threads (as the `robustlens` binary trains) runs pending pool work
/// instead of blocking the thread ([`crate::ops::recv_cooperatively`]), so even a pool of
/// one thread keeps the producer going.
pub struct Batches {
    rx: Receiver<HostBatch>,
}

impl Iterator for Batches {
    type Item = HostBatch;

    fn next(&mut self) -> Option<HostBatch> {
        crate::ops::recv_cooperatively(&self.rx)
    }
}

/// Starts a background producer of the epoch's batches; at most two wait ready at a time.
pub fn batches(
    cache: Arc<ImageCache>,
    labels: Arc<Vec<usize>>,
    indices: &[usize],
    cfg: LoaderConfig,
) -> Batches {
    let order = epoch_order(indices, &cfg);
    let (tx, rx) = sync_channel(2);
    std::thread::spawn(move || {
        let mut seed_rng = SeededRng::new(cfg.seed ^ 0xA5A5 ^ cfg.epoch.wrapping_mul(0x9E37_79B9));
        for (k, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
            let seeds: Vec<u64> = chunk.iter().map(|_| seed_rng.next_u64()).collect();
            if k < cfg.skip {
                continue;
            }
            if chunk.len() < cfg.min_batch {
                break;
            }
            let b = make_batch(&cache, &labels, chunk, cfg.augment.as_ref(), &seeds);
            if tx.send(b).is_err() {
                break;
            }
        }
    });
    Batches { rx }
}
