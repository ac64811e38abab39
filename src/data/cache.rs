//! Images decoded and resized once at the working size, kept in memory and (for file-based
//! data) in a cache file per data set and size, rebuilt when the source changes (its key
//! hashes every image's path, size and modification time).

use crate::data::dataset::{DataKind, Dataset, ItemSource};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Decoded images (`u8` RGB, HWC) and masks at one size.
pub struct ImageCache {
    pub size: usize,
    pub images: Vec<u8>,
    /// Per item: mask present?
    pub has_mask: Vec<bool>,
    pub masks: Vec<u8>,
    /// Items that could not be read (skipped with `--skip-bad-images`).
    pub bad: Vec<usize>,
}

const MAGIC: &[u8; 8] = b"RLCACHE1";

/// One decoded image (RGB bytes) and its mask, if any.
type Decoded = (Vec<u8>, Option<Vec<u8>>);

fn fnv(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= *b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

/// Where file-based data sets are cached: `$ROBUSTLENS_CACHE/images`, else `models/cache`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("ROBUSTLENS_CACHE")
        .map(|p| PathBuf::from(p).join("images"))
        .unwrap_or_else(|| PathBuf::from("models").join("cache"))
}

/// The cache key of a data set at a size.
pub fn cache_key(ds: &Dataset, size: usize) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    fnv(&mut h, format!("{:?}|{size}|", ds.kind).as_bytes());
    for it in &ds.items {
        fnv(&mut h, it.image_id.as_bytes());
        if let ItemSource::File(p) = &it.source {
            fnv(&mut h, p.to_string_lossy().as_bytes());
            if let Ok(m) = std::fs::metadata(p) {
                fnv(&mut h, &m.len().to_le_bytes());
                if let Ok(t) = m.modified().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_err(std::io::Error::other)
                }) {
                    fnv(&mut h, &t.as_nanos().to_le_bytes());
                }
            }
        }
        if let Some(mp) = &it.mask {
            fnv(&mut h, mp.to_string_lossy().as_bytes());
        }
    }
    h
}

impl ImageCache {
    pub fn len(&self) -> usize {
        self.has_mask.len()
    }
    pub fn is_empty(&self) -> bool {
        self.has_mask.is_empty()
    }

    /// RGB bytes of item `i` (HWC).
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.size * self.size * 3;
        &self.images[i * n..(i + 1) * n]
    }

    /// Mask of item `i` (255 = lesion), if any.
    pub fn mask(&self, i: usize) -> Option<&[u8]> {
        let n = self.size * self.size;
        self.has_mask[i].then(|| &self.masks[i * n..(i + 1) * n])
    }

    /// Builds (or loads) the cache of `ds` at `size`. File-based data sets are cached under
    /// `cache_dir` when given; the synthetic set is rendered in memory.
    pub fn build(
        ds: &Dataset,
        size: usize,
        cache_dir: Option<&Path>,
        skip_bad: bool,
    ) -> Result<ImageCache> {
        let file = match (&ds.kind, cache_dir) {
            (DataKind::Synthetic(_) | DataKind::Blocks(_), _) | (_, None) => None,
            (_, Some(d)) => Some(d.join(format!("{:016x}-{size}.rlcache", cache_key(ds, size)))),
        };
        if let Some(f) = &file {
            if let Some(c) = Self::read(f, ds.items.len(), size) {
                tracing::info!(
                    "image cache {} ({} images at {size} px)",
                    f.display(),
                    ds.items.len()
                );
                return Ok(c);
            }
        }
        let pb = crate::progress::bar(ds.items.len() as u64, "decoding");
        let loaded: Vec<Result<Decoded>> = (0..ds.items.len())
            .into_par_iter()
            .map(|i| {
                let r = ds
                    .load(i, size)
                    .map(|(img, m)| (img.into_raw(), m.map(|m| m.into_raw())));
                pb.inc(1);
                r
            })
            .collect();
        pb.finish_and_clear();
        let n = size * size;
        let mut c = ImageCache {
            size,
            images: vec![0; ds.items.len() * n * 3],
            has_mask: vec![false; ds.items.len()],
            masks: vec![0; ds.items.len() * n],
            bad: Vec::new(),
        };
        for (i, r) in loaded.into_iter().enumerate() {
            match r {
                Ok((img, m)) => {
                    c.images[i * n * 3..(i + 1) * n * 3].copy_from_slice(&img);
                    if let Some(m) = m {
                        c.masks[i * n..(i + 1) * n].copy_from_slice(&m);
                        c.has_mask[i] = true;
                    }
                }
                Err(e) if skip_bad => {
                    tracing::warn!("skipping {}: {e}", ds.items[i].image_id);
                    c.bad.push(i);
                }
                Err(e) => {
                    return Err(Error::data(format!(
                        "{e} (use --skip-bad-images to skip unreadable images)"
                    )))
                }
            }
        }
        if let Some(f) = &file {
            if let Err(e) = c.write(f) {
                tracing::warn!("could not write the image cache: {e}");
            }
        }
        Ok(c)
    }

    fn write(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let mut b = Vec::with_capacity(self.images.len() + self.masks.len() + 64);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&(self.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.size as u64).to_le_bytes());
        b.extend_from_slice(&(self.bad.len() as u64).to_le_bytes());
        for &i in &self.bad {
            b.extend_from_slice(&(i as u64).to_le_bytes());
        }
        b.extend(self.has_mask.iter().map(|&m| m as u8));
        b.extend_from_slice(&self.images);
        b.extend_from_slice(&self.masks);
        crate::fsutil::write_atomic(path, &b)
    }

    fn read(path: &PathBuf, n_items: usize, size: usize) -> Option<ImageCache> {
        let b = std::fs::read(path).ok()?;
        let u = |o: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
        };
        if b.get(..8)? != MAGIC || u(8)? as usize != n_items || u(16)? as usize != size {
            return None;
        }
        let nbad = u(24)? as usize;
        if nbad > n_items {
            return None;
        }
        let mut o = 32;
        let mut bad = Vec::with_capacity(nbad);
        for _ in 0..nbad {
            bad.push(u(o)? as usize);
            o += 8;
        }
        let n = size * size;
        let need = o + n_items + n_items * n * 3 + n_items * n;
        if b.len() != need {
            return None;
        }
        let has_mask = b[o..o + n_items].iter().map(|&v| v != 0).collect();
        o += n_items;
        let images = b[o..o + n_items * n * 3].to_vec();
        o += n_items * n * 3;
        let masks = b[o..].to_vec();
        Some(ImageCache {
            size,
            images,
            has_mask,
            masks,
            bad,
        })
    }
}
