//! `evaluate` (accuracy and robust accuracy of a run), `attack` (adversarial examples of
//! images) and `sanity` (the model-randomisation check of a run's maps).

use crate::adversarial::{Norm, Pgd};
use crate::attribution::predict_classes;
use crate::data::preprocess;
use crate::data::split::Part;
use crate::device::DeviceSpec;
use crate::eval::classification::{evaluate_model, Evaluation};
use crate::eval::sanity::SanityStep;
use crate::model::{load_checkpoint, load_model_spec};
use crate::run::{load_runs, EvalImages, RunConfig};
use crate::{Error, Result};
use candle_core::Tensor;
use std::path::PathBuf;

/// Options of `evaluate`.
#[derive(Debug, Clone)]
pub struct EvaluateOptions {
    pub run: PathBuf,
    /// Other data (default: the run's own data and split).
    pub data: Option<String>,
    pub part: Part,
    /// Robust accuracy under this attack (see [`Pgd::evaluation`]).
    pub attack: Option<Pgd>,
    pub device: DeviceSpec,
}

/// Evaluates a run on a part of its split, prints the table and writes `evaluation.json`
/// into the run folder.
pub fn evaluate(o: &EvaluateOptions) -> Result<Evaluation> {
    if let Some(p) = &o.attack {
        p.validate()?;
    }
    let device = o.device.open()?;
    let rc = RunConfig::read(&o.run)?;
    let (model, mc) = load_checkpoint(&o.run, &device)?;
    let mut tc = rc.train.clone();
    match &o.data {
        Some(d) => tc.data.source = d.clone(),
        None => tc.data.split = Some(o.run.join("split.csv")),
    }
    let (ds, split) = crate::run::open_data(&tc)?;
    let idx = split.indices(&ds, o.part, None);
    if idx.is_empty() {
        return Err(Error::data_setting(
            "split",
            o.part.as_str(),
            format!("that part of the split of {} is empty", o.run.display()),
        ));
    }
    let cache = crate::data::cache::ImageCache::build(
        &ds,
        mc.image_size,
        Some(&crate::data::cache::default_cache_dir()),
        tc.data.skip_bad_images,
    )?;
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let e = evaluate_model(
        &model,
        &cache,
        &labels,
        &idx,
        &ds.class_names,
        32,
        o.attack.as_ref().map(|p| (p, tc.seed)),
        &device,
    )?;
    print!("{}", e.table());
    let mut v = serde_json::to_value(&e).map_err(|e| Error::internal(e.to_string()))?;
    if let Some(p) = &o.attack {
        v["attack"] = serde_json::to_value(p).map_err(|e| Error::internal(e.to_string()))?;
    }
    crate::fsutil::write_json_atomic(&o.run.join("evaluation.json"), &v)?;
    println!("wrote {}", o.run.join("evaluation.json").display());
    Ok(e)
}

/// Options of `attack`.
#[derive(Debug, Clone)]
pub struct AttackOptions {
    /// A weights file, a run folder or `hf:owner/repo`.
    pub model: String,
    /// The architecture (`None`: the run's or the file's).
    pub arch: Option<crate::model::Arch>,
    pub images: Vec<PathBuf>,
    pub image_size: usize,
    pub pgd: Pgd,
    /// Targeted attack towards this class.
    pub target_class: Option<usize>,
    /// True labels, one per image (empty: the model's clean predictions).
    pub labels: Vec<usize>,
    /// Adversarial images as float32 NPY `[N, 3, H, W]`.
    pub raw_out: Option<PathBuf>,
    /// Folder for the adversarial PNG images.
    pub out: Option<PathBuf>,
    pub seed: u64,
    pub device: DeviceSpec,
}

/// The distance of each adversarial image from its original, in the attack's norm.
pub fn distances(adv: &Tensor, x: &Tensor, norm: Norm) -> Result<Vec<f32>> {
    let d = (adv - x)?.flatten_from(1)?;
    Ok(match norm {
        Norm::L2 => d.sqr()?.sum(1)?.sqrt()?.to_vec1()?,
        Norm::Linf => d.abs()?.max(1)?.to_vec1()?,
    })
}

/// Attacks the images and prints, per image, the clean and adversarial class, the distance
/// and the loss; writes PNG and NPY files when asked.
pub fn attack(o: &AttackOptions) -> Result<()> {
    super::check_image_size(o.image_size)?;
    o.pgd.validate()?;
    let device = o.device.open()?;
    let (model, _) = load_model_spec(o.arch, &o.model, None, 0, &device)?;
    model.kind().check_image_size(o.image_size)?;
    let xs = o
        .images
        .iter()
        .map(|p| preprocess(p, o.image_size, &device))
        .collect::<Result<Vec<_>>>()?;
    let x = Tensor::stack(&xs, 0)?;
    let clean = predict_classes(&model, &x, 16)?;
    let k = model.num_classes();
    let labels = if o.labels.is_empty() {
        clean.clone()
    } else {
        if o.labels.len() != o.images.len() {
            return Err(Error::config(
                "label",
                format!("{:?}", o.labels),
                format!("{} labels for {} images", o.labels.len(), o.images.len()),
            ));
        }
        if let Some(l) = o.labels.iter().find(|l| **l >= k) {
            return Err(Error::config(
                "label",
                l,
                format!("the model has {k} classes"),
            ));
        }
        o.labels.clone()
    };
    let targets = match o.target_class {
        Some(t) if t >= k => {
            return Err(Error::config(
                "target-class",
                t,
                format!("the model has {k} classes (0..{})", k - 1),
            ))
        }
        Some(t) => Some(vec![t; o.images.len()]),
        None => None,
    };
    let mut rng = crate::rng::SeededRng::new(o.seed);
    let r = o
        .pgd
        .attack(&model, &x, &labels, targets.as_deref(), &mut rng)?;
    let adv_pred = predict_classes(&model, &r.images, 16)?;
    let dist = distances(&r.images, &x, o.pgd.norm)?;
    if let Some(dir) = &o.out {
        crate::fsutil::ensure_output_dir(dir)?;
    }
    let s = o.image_size;
    for (i, p) in o.images.iter().enumerate() {
        println!(
            "{}\tclean {}\tadversarial {}\tdistance {:.4}\tloss {:.4}",
            p.display(),
            clean[i],
            adv_pred[i],
            dist[i],
            r.losses[i]
        );
        if let Some(dir) = &o.out {
            let v: Vec<f32> = r.images.get(i)?.flatten_all()?.to_vec1()?;
            let img = crate::report::display::tensor_to_image(&v, s, s);
            let stem = super::stem(p, &format!("image{i}"));
            crate::report::png::save_png(&img, &dir.join(format!("{stem}_adv.png")))?;
        }
    }
    if let Some(f) = &o.raw_out {
        crate::report::npy::write_npy(f, &r.images)?;
    }
    Ok(())
}

/// Options of `sanity`.
#[derive(Debug, Clone)]
pub struct SanityOptions {
    pub run: PathBuf,
    pub method: String,
    pub part: Part,
    pub count: usize,
    pub seed: u64,
    /// Also write the result as JSON here.
    pub json: Option<PathBuf>,
    pub device: DeviceSpec,
}

/// The cascading model-randomisation check (Adebayo et al. 2018): prints a table of the
/// similarity of each randomised model's maps to the trained model's.
pub fn sanity(o: &SanityOptions) -> Result<Vec<SanityStep>> {
    if o.count == 0 {
        return Err(Error::config("count", 0, "check at least one image"));
    }
    let device = o.device.open()?;
    let models = load_runs(&[("run".to_string(), o.run.clone())], &device)?;
    let data = EvalImages::open(&models[0], None, o.part)?;
    let idx: Vec<usize> = data.indices.iter().copied().take(o.count).collect();
    let hb = data.batch(&idx);
    let x = hb.images(&device)?;
    let method = crate::attribution::by_name(
        &o.method,
        &crate::eval::compare::method_options_for(data.size, o.seed),
    )?;
    let steps = crate::eval::sanity::cascading_randomisation(
        models[0].model.as_ref(),
        method.as_ref(),
        &x,
        &hb.labels,
        o.seed,
    )?;
    println!("| randomised groups | Spearman | SSIM |\n|---|---|---|");
    for s in &steps {
        let g: Vec<String> = s.randomised.iter().map(|g| g.to_string()).collect();
        println!("| {} | {:.3} | {:.3} |", g.join(","), s.spearman, s.ssim);
    }
    println!(
        "{} maps of {} {} images; similarity to the trained model's maps, groups randomised from the head (5 = fc) down",
        o.method,
        idx.len(),
        o.part.as_str()
    );
    if let Some(p) = &o.json {
        crate::fsutil::write_json_atomic(p, &steps)?;
    }
    Ok(steps)
}
