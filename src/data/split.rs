//! Lesion-grouped, class-balanced splits with folds, as CSV
//! `image_id,lesion_id,label,split,fold`.
//!
//! Every class gets exactly the requested number of images in train, val and test; all the
//! images of one lesion land in the same split and the same fold (HAM10000 has up to six
//! images per lesion; an image-level split leaks lesions from train to test).

use crate::data::csv::{quote, read_csv};
use crate::data::dataset::Dataset;
use crate::rng::SeededRng;
use crate::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Which part of the split an image is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Part {
    Train,
    #[value(alias = "valid", alias = "validation")]
    Val,
    Test,
}

impl Part {
    pub fn as_str(&self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Result<Part> {
        match s.trim() {
            "train" => Ok(Part::Train),
            "val" | "valid" | "validation" => Ok(Part::Val),
            "test" => Ok(Part::Test),
            other => Err(Error::data(format!(
                "split `{other}`: use train, val or test"
            ))),
        }
    }
}

/// What to split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSpec {
    pub train_per_class: usize,
    pub test_per_class: usize,
    pub val_per_class: usize,
    /// Folds of the training part (1 = no cross-validation folds).
    pub folds: usize,
    pub seed: u64,
}

/// One row of a split.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitRow {
    pub image_id: String,
    pub lesion_id: String,
    pub label: usize,
    pub part: Part,
    /// 1..=K for train rows when folds were asked for.
    pub fold: Option<usize>,
}

/// A split of a data set.
#[derive(Debug, Clone, PartialEq)]
pub struct Split {
    pub rows: Vec<SplitRow>,
}

/// Makes a split of `ds`.
pub fn make_split(ds: &Dataset, spec: &SplitSpec) -> Result<Split> {
    if spec.train_per_class == 0 && spec.test_per_class == 0 && spec.val_per_class == 0 {
        return Err(Error::data(
            "split: ask for some images (train-per-class, test-per-class, val-per-class)",
        ));
    }
    if spec.folds == 0 {
        return Err(Error::data_setting(
            "folds",
            0,
            "use 1 for no folds, or K >= 2",
        ));
    }
    // lesion -> (label, item indices); a lesion with two labels is an error.
    let mut lesions: BTreeMap<&str, (usize, Vec<usize>)> = BTreeMap::new();
    for (i, it) in ds.items.iter().enumerate() {
        let e = lesions
            .entry(it.lesion_id.as_str())
            .or_insert((it.label, Vec::new()));
        if e.0 != it.label {
            return Err(Error::data(format!(
                "lesion {} has images of classes {} and {}; a lesion must have one class",
                it.lesion_id, ds.class_names[e.0], ds.class_names[it.label]
            )));
        }
        e.1.push(i);
    }
    let mut rows = Vec::new();
    for (label, class) in ds.class_names.iter().enumerate() {
        let mut groups: Vec<(&str, &Vec<usize>)> = lesions
            .iter()
            .filter(|(_, (l, _))| *l == label)
            .map(|(k, (_, v))| (*k, v))
            .collect();
        let n_images: usize = groups.iter().map(|g| g.1.len()).sum();
        let need = spec.train_per_class + spec.test_per_class + spec.val_per_class;
        if n_images < need {
            return Err(Error::data(format!(
                "class {class} has {} lesions ({n_images} images); {} train + {} test + {} val needs {need} images: ask for fewer per class",
                groups.len(),
                spec.train_per_class,
                spec.test_per_class,
                spec.val_per_class
            )));
        }
        let mut rng =
            SeededRng::new(spec.seed ^ (label as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for i in (1..groups.len()).rev() {
            let j = rng.below(i + 1);
            groups.swap(i, j);
        }
        let quotas = [
            (Part::Test, spec.test_per_class),
            (Part::Val, spec.val_per_class),
            (Part::Train, spec.train_per_class),
        ];
        // Each part takes an exact subset of the remaining lesions (0/1 subset sum, first
        // reach in shuffled order, so the choice is random but reproducible).
        let mut assigned: Vec<Option<usize>> = vec![None; groups.len()];
        for (b, (part, quota)) in quotas.iter().enumerate() {
            let free: Vec<usize> = (0..groups.len())
                .filter(|&g| assigned[g].is_none())
                .collect();
            let mut from: Vec<Option<usize>> = vec![None; quota + 1];
            let mut reach = vec![false; quota + 1];
            reach[0] = true;
            for (j, &g) in free.iter().enumerate() {
                let size = groups[g].1.len();
                if size > *quota {
                    continue;
                }
                for t in (size..=*quota).rev() {
                    if !reach[t] && reach[t - size] {
                        reach[t] = true;
                        from[t] = Some(j);
                    }
                }
                if reach[*quota] {
                    break;
                }
            }
            if !reach[*quota] {
                return Err(Error::data(format!(
                    "class {class}: cannot make exactly {quota} {} images from whole lesions ({} lesions, {n_images} images); ask for a different count",
                    part.as_str(),
                    groups.len()
                )));
            }
            let mut t = *quota;
            while t > 0 {
                let j = from[t].expect("reachable sums have a last item");
                let g = free[j];
                assigned[g] = Some(b);
                t -= groups[g].1.len();
            }
        }
        // Folds: train lesions, largest first, each to the fold with the fewest images.
        let mut train: Vec<usize> = (0..groups.len())
            .filter(|&g| assigned[g] == Some(2))
            .collect();
        train.sort_by_key(|&g| std::cmp::Reverse(groups[g].1.len()));
        let mut fold_of: HashMap<usize, usize> = HashMap::new();
        let mut fold_sizes = vec![0usize; spec.folds];
        for g in train {
            let f = (0..spec.folds)
                .min_by_key(|&f| (fold_sizes[f], f))
                .expect("folds >= 1");
            fold_sizes[f] += groups[g].1.len();
            fold_of.insert(g, f + 1);
        }
        for (g, (lesion, items)) in groups.iter().enumerate() {
            let Some(b) = assigned[g] else { continue };
            for &i in items.iter() {
                rows.push(SplitRow {
                    image_id: ds.items[i].image_id.clone(),
                    lesion_id: lesion.to_string(),
                    label,
                    part: quotas[b].0,
                    fold: if b == 2 && spec.folds > 1 {
                        fold_of.get(&g).copied()
                    } else {
                        None
                    },
                });
            }
        }
    }
    rows.sort_by(|a, b| {
        (a.label, a.part.as_str(), &a.image_id).cmp(&(b.label, b.part.as_str(), &b.image_id))
    });
    Ok(Split { rows })
}

impl Split {
    /// CSV text `image_id,lesion_id,label,split,fold`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("image_id,lesion_id,label,split,fold\n");
        for r in &self.rows {
            s.push_str(&format!(
                "{},{},{},{},{}\n",
                quote(&r.image_id),
                quote(&r.lesion_id),
                r.label,
                r.part.as_str(),
                r.fold.map(|f| f.to_string()).unwrap_or_default()
            ));
        }
        s
    }

    /// Writes the CSV atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, self.to_csv().as_bytes())
    }

    /// Reads a split CSV, checking it against `ds` (ids exist, labels agree).
    pub fn read(path: &Path, ds: &Dataset) -> Result<Split> {
        Self::from_csv(&read_csv(path)?, path, ds)
    }

    /// Builds a split from a parsed CSV (read from `path`, named in errors), checked against
    /// `ds`.
    pub fn from_csv(csv: &crate::data::csv::Csv, path: &Path, ds: &Dataset) -> Result<Split> {
        let cols: Vec<usize> = ["image_id", "lesion_id", "label", "split", "fold"]
            .iter()
            .map(|c| {
                csv.header.iter().position(|h| h == c).ok_or_else(|| {
                    Error::data(format!("{}: missing column `{c}`; a split file has image_id,lesion_id,label,split,fold", path.display()))
                })
            })
            .collect::<Result<_>>()?;
        let by_id: HashMap<&str, usize> = ds
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.image_id.as_str(), i))
            .collect();
        let mut rows = Vec::new();
        let mut seen = HashMap::new();
        for (line, r) in &csv.rows {
            let f = |k: usize| r.get(cols[k]).map(|s| s.trim()).unwrap_or("");
            let id = f(0);
            let Some(&i) = by_id.get(id) else {
                return Err(Error::data(format!(
                    "{}: line {line}: image {id} is not in the data set",
                    path.display()
                )));
            };
            if let Some(prev) = seen.insert(id.to_string(), *line) {
                return Err(Error::data(format!(
                    "{}: line {line}: image {id} listed twice (first on line {prev})",
                    path.display()
                )));
            }
            let label: usize = f(2).parse().map_err(|_| {
                Error::data(format!(
                    "{}: line {line}: label `{}` is not a number",
                    path.display(),
                    f(2)
                ))
            })?;
            if label != ds.items[i].label {
                return Err(Error::data(format!(
                    "{}: line {line}: image {id} has label {label} but the data set says {} ({}); was the split made with other classes?",
                    path.display(),
                    ds.items[i].label,
                    ds.class_names[ds.items[i].label]
                )));
            }
            let part = Part::parse(f(3))
                .map_err(|e| Error::data(format!("{}: line {line}: {e}", path.display())))?;
            let fold = if f(4).is_empty() {
                None
            } else {
                Some(f(4).parse::<usize>().map_err(|_| {
                    Error::data(format!(
                        "{}: line {line}: fold `{}` is not a number",
                        path.display(),
                        f(4)
                    ))
                })?)
            };
            rows.push(SplitRow {
                image_id: id.to_string(),
                lesion_id: f(1).to_string(),
                label,
                part,
                fold,
            });
        }
        Ok(Split { rows })
    }

    /// Dataset indices of a part (and fold), in file order.
    pub fn indices(&self, ds: &Dataset, part: Part, fold: Option<usize>) -> Vec<usize> {
        let by_id: HashMap<&str, usize> = ds
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.image_id.as_str(), i))
            .collect();
        self.rows
            .iter()
            .filter(|r| r.part == part && (fold.is_none() || r.fold == fold))
            .filter_map(|r| by_id.get(r.image_id.as_str()).copied())
            .collect()
    }
}
