//! The trainer: phases (head only, then everything; or fine-tuning chosen groups), optional
//! PGD adversarial training, validation, schedules, early stopping, and a run folder that
//! survives crashes:
//!
//! - `model.safetensors` (best), `last.safetensors` (torchvision names), `config.json`,
//!   `split.csv`, `metrics.jsonl`, `summary.json`, and the training curves
//!   (`training_curves.svg` and `.png`, rewritten after every epoch);
//! - `resume.safetensors`: weights, optimiser moments and the trainer state (in the file's
//!   metadata) in one atomic write, so weights and state can never disagree. It is written
//!   after every epoch and when Ctrl-C stops a run; `--resume` continues from it and, on the
//!   CPU, ends with the same weights as an uninterrupted run.

use crate::config::{Init, Recipe, TrainConfig};
use crate::data::cache::ImageCache;
use crate::data::loader::{batches, LoaderConfig};
use crate::data::split::Part;
use crate::eval::classification::{evaluate_model, Evaluation};
use crate::fsutil::{write_atomic, write_json_atomic};
use crate::interrupt::Interrupt;
use crate::model::checkpoint::{model_to_bytes, save_weights};
use crate::model::{load_model_source, GroupSet, Mode, ModelConfig, Network};
use crate::rng::SeededRng;
use crate::run::{open_data, RunConfig};
use crate::train::optim::Adam;
use crate::train::schedule::ScheduleState;
use crate::{Error, Result};
use candle_core::{Device, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// Where a run stands; saved in `resume.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainState {
    pub command: Recipe,
    pub phase: usize,
    /// Completed epochs of the current phase.
    pub epoch: usize,
    /// Completed steps of the epoch in progress (Ctrl-C checkpoints).
    pub step: usize,
    pub schedule: ScheduleState,
    pub optimizer_step: u64,
    pub best_val_loss: f64,
    pub best: Option<String>,
    pub bad_epochs: usize,
    pub partial: EpochSums,
    pub finished: bool,
}

/// Running sums of an epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EpochSums {
    pub images: usize,
    pub loss: f64,
    pub correct: usize,
    pub clean_correct: usize,
    pub seconds: f64,
}

/// What a finished run reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub command: Recipe,
    pub test: Option<Evaluation>,
    pub best_checkpoint: String,
    pub best_reason: String,
    pub seconds: f64,
    pub eps_rms: Option<f64>,
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum Stop {
    Finished(Summary),
    Interrupted,
}

pub use crate::config::{eps_from_224, eps_rms};

fn append_metrics(dir: &Path, line: &serde_json::Value) -> Result<()> {
    let p = dir.join("metrics.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    writeln!(f, "{line}").map_err(|e| Error::io(&p, e))?;
    Ok(())
}

fn save_resume(dir: &Path, model: &dyn Network, opt: &Adam, state: &TrainState) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = model
        .state_dict()?
        .into_iter()
        .map(|(n, t)| (format!("model.{n}"), t))
        .collect();
    tensors.extend(
        opt.state_tensors()?
            .into_iter()
            .map(|(n, t)| (format!("optim.{n}"), t)),
    );
    let tensors: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(n, t)| t.to_device(&Device::Cpu).map(|t| (n, t)))
        .collect::<candle_core::Result<_>>()?;
    let mut meta = HashMap::new();
    meta.insert(
        "robustlens_state".to_string(),
        serde_json::to_string(state).map_err(|e| Error::training(e.to_string()))?,
    );
    let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
        .map_err(|e| Error::training(format!("serialising resume checkpoint: {e}")))?;
    write_atomic(&dir.join("resume.safetensors"), &bytes)
}

/// Model tensors, optimiser tensors and trainer state of a resume checkpoint.
type ResumeParts = (HashMap<String, Tensor>, HashMap<String, Tensor>, TrainState);

fn load_resume(dir: &Path, device: &Device) -> Result<ResumeParts> {
    let p = dir.join("resume.safetensors");
    let bytes = std::fs::read(&p).map_err(|e| {
        Error::config(
            "resume",
            dir.display(),
            format!("no resume checkpoint ({e}); is it a run folder of a training command?"),
        )
    })?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::weights(&p, format!("not a valid checkpoint: {e}")))?;
    let state: TrainState = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("robustlens_state"))
        .ok_or_else(|| Error::weights(&p, "has no trainer state"))
        .and_then(|s| {
            serde_json::from_str(s)
                .map_err(|e| Error::weights(&p, format!("trainer state unreadable: {e}")))
        })?;
    let all = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::weights(&p, e.to_string()))?;
    let mut model = HashMap::new();
    let mut optim = HashMap::new();
    for (n, t) in all {
        if let Some(r) = n.strip_prefix("model.") {
            model.insert(r.to_string(), t);
        } else if let Some(r) = n.strip_prefix("optim.") {
            optim.insert(r.to_string(), t);
        }
    }
    Ok((model, optim, state))
}

/// Trains according to `cfg` into `dir`; with `resume` continues the run saved there.
pub fn train(cfg: &TrainConfig, dir: &Path, resume: bool, interrupt: &Interrupt) -> Result<Stop> {
    cfg.validate()?;
    let device = cfg.device.open()?;
    let t_start = std::time::Instant::now();
    // Everything is checked (data, split, starting model) before the folder is created.
    let (ds, split) = open_data(cfg)?;
    let class_names = ds.class_names.clone();
    let labels: Vec<usize> = ds.items.iter().map(|i| i.label).collect();
    let train_idx = split.indices(&ds, Part::Train, None);
    let val_idx = split.indices(&ds, Part::Val, None);
    let test_idx = split.indices(&ds, Part::Test, None);
    if train_idx.len() < 2 {
        return Err(Error::training(
            "the split has fewer than 2 training images",
        ));
    }
    // The model.
    let model = match &cfg.init {
        Init::From(from) => {
            crate::run::check_trained(from)?;
            let (m, mc) = crate::model::load_checkpoint(from, &device)?;
            if m.kind() != cfg.arch && cfg.arch != crate::model::Arch::default() {
                return Err(Error::config(
                    "arch",
                    cfg.arch,
                    format!(
                        "the run {} holds a {} model; fine-tuning keeps its architecture",
                        from.display(),
                        m.kind()
                    ),
                ));
            }
            if mc.num_classes != class_names.len() {
                return Err(Error::config(
                    "from",
                    from.display(),
                    format!(
                        "the model has {} classes, the data {}",
                        mc.num_classes,
                        class_names.len()
                    ),
                ));
            }
            m
        }
        Init::Weights(w) => {
            load_model_source(
                Some(cfg.arch),
                w,
                Some(class_names.len()),
                cfg.seed,
                &device,
            )?
            .0
        }
    };
    model.kind().check_image_size(cfg.image_size)?;
    crate::fsutil::ensure_output_dir(dir)?;
    crate::fsutil::remove_stale_temp_files(dir);
    let mut cfg = cfg.clone();
    cfg.arch = model.kind();
    let cfg = &cfg;
    let model_cfg = ModelConfig {
        arch: model.kind(),
        num_classes: class_names.len(),
        class_names: class_names.clone(),
        image_size: cfg.image_size,
        ..Default::default()
    };
    let run_cfg = RunConfig {
        model: model_cfg.clone(),
        train: cfg.clone(),
    };
    let phases = cfg.phases();
    let mut state = TrainState {
        command: cfg.recipe,
        phase: 0,
        epoch: 0,
        step: 0,
        schedule: ScheduleState::new(phases[0].1.lr),
        optimizer_step: 0,
        best_val_loss: f64::MAX,
        best: None,
        bad_epochs: 0,
        partial: EpochSums::default(),
        finished: false,
    };
    let mut resume_optim: Option<HashMap<String, Tensor>> = None;
    if resume {
        let (mt, ot, st) = load_resume(dir, &device)?;
        if st.command != cfg.recipe {
            return Err(Error::config(
                "resume",
                dir.display(),
                format!("the run was made by `{}`, not `{}`", st.command, cfg.recipe),
            ));
        }
        model.load_tensors(&mt, &dir.join("resume.safetensors"))?;
        state = st;
        resume_optim = Some(ot);
        if state.finished {
            tracing::info!("run {} had already finished", dir.display());
        }
        tracing::info!(
            "resuming {} at phase {} epoch {} step {}",
            dir.display(),
            phases.get(state.phase).map(|p| p.0).unwrap_or("-"),
            state.epoch + 1,
            state.step
        );
    } else {
        write_json_atomic(&dir.join("config.json"), &run_cfg)?;
        split.write(&dir.join("split.csv"))?;
        for f in [
            "metrics.jsonl",
            "training_curves.svg",
            "training_curves.png",
        ] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    let cache = Arc::new(ImageCache::build(
        &ds,
        cfg.image_size,
        Some(&crate::data::cache::default_cache_dir()),
        cfg.data.skip_bad_images,
    )?);
    let bad: std::collections::HashSet<usize> = cache.bad.iter().copied().collect();
    let keep =
        |v: &[usize]| -> Vec<usize> { v.iter().copied().filter(|i| !bad.contains(i)).collect() };
    let (train_idx, val_idx, test_idx) = (keep(&train_idx), keep(&val_idx), keep(&test_idx));
    let labels = Arc::new(labels);
    let pgd = cfg.adversarial.as_ref().map(|a| a.pgd());
    if let Some(p) = &pgd {
        tracing::info!(
            "adversarial training: {:?} eps {} ({:.2e} per-pixel RMS at {} px), {} steps of {}",
            p.norm,
            p.eps,
            eps_rms(p.eps, cfg.image_size),
            cfg.image_size,
            p.steps,
            p.step_size
        );
    }
    while state.phase < phases.len() && !state.finished {
        let (name, ph, groups) = phases[state.phase].clone();
        // The head phase trains fc alone: the frozen backbone's BatchNorm statistics stay too.
        model.freeze_bn_stats(groups, cfg.freeze_bn_stats || name == "head");
        model.set_trainable_groups(groups);
        let mut opt = Adam::new(
            cfg.optim.kind,
            model.trainable_vars(groups),
            state.schedule.lr,
            cfg.optim.weight_decay,
        )?;
        if let Some(ot) = resume_optim.take() {
            if state.optimizer_step > 0 {
                opt.load_state(&ot, state.optimizer_step)?;
            }
        }
        let mut stop_phase = false;
        while state.epoch < ph.epochs && !stop_phase {
            let epoch = state.epoch;
            opt.lr = state.schedule.lr;
            let lcfg = LoaderConfig {
                batch_size: ph.batch_size,
                shuffle: true,
                augment: cfg.data.augment.then(Default::default),
                seed: cfg.seed ^ ((state.phase as u64 + 1) << 32),
                epoch: epoch as u64,
                min_batch: 2,
                skip: state.step,
            };
            let n_batches =
                train_idx.len() / ph.batch_size + usize::from(train_idx.len() % ph.batch_size >= 2);
            let pb = crate::progress::bar(
                n_batches as u64,
                format!("{name} {}/{}", epoch + 1, ph.epochs),
            );
            pb.set_position(state.step as u64);
            let t0 = std::time::Instant::now();
            let mut sums = state.partial.clone();
            for hb in batches(cache.clone(), labels.clone(), &train_idx, lcfg) {
                let step = state.step;
                let x = hb.images(&device)?;
                let y = hb.label_tensor(&device)?;
                let x_train = match &pgd {
                    Some(p) => {
                        let mut rng = SeededRng::new(
                            cfg.seed
                                ^ 0xad7e_55ed
                                ^ ((state.phase as u64) << 48)
                                ^ ((epoch as u64) << 24)
                                ^ step as u64,
                        );
                        let clean = model.forward_mode(&x, Mode::InputGrad)?.detach();
                        let cp: Vec<u32> = clean.argmax(D::Minus1)?.to_vec1()?;
                        sums.clean_correct += cp
                            .iter()
                            .zip(&hb.labels)
                            .filter(|(p, l)| **p as usize == **l)
                            .count();
                        p.attack_images(&model, &x, &hb.labels, None, &mut rng)?
                    }
                    None => x,
                };
                let logits = model.forward_mode(&x_train, Mode::Train)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &y)?;
                let lv = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if !lv.is_finite() {
                    return Err(crate::error::TrainingError::LossNotFinite {
                        value: lv,
                        phase: name.to_string(),
                        epoch: epoch + 1,
                        step: step + 1,
                        dir: dir.to_path_buf(),
                    }
                    .into());
                }
                let grads = loss.backward()?;
                opt.step(&grads)?;
                let pred: Vec<u32> = logits.detach().argmax(D::Minus1)?.to_vec1()?;
                sums.correct += pred
                    .iter()
                    .zip(&hb.labels)
                    .filter(|(p, l)| **p as usize == **l)
                    .count();
                sums.loss += lv * hb.len() as f64;
                sums.images += hb.len();
                state.step += 1;
                pb.inc(1);
                pb.set_message(format!(
                    "{name} {}/{} loss {:.3} acc {:.1}%",
                    epoch + 1,
                    ph.epochs,
                    sums.loss / sums.images as f64,
                    100.0 * sums.correct as f64 / sums.images as f64
                ));
                if interrupt.is_set() {
                    sums.seconds += t0.elapsed().as_secs_f64();
                    state.partial = sums;
                    state.optimizer_step = opt.step;
                    save_resume(dir, model.as_ref(), &opt, &state)?;
                    pb.finish_and_clear();
                    tracing::info!("interrupted: checkpoint written to {}", dir.display());
                    return Ok(Stop::Interrupted);
                }
            }
            pb.finish_and_clear();
            sums.seconds += t0.elapsed().as_secs_f64();
            // Validation.
            let val = if val_idx.is_empty() {
                None
            } else {
                Some(evaluate_model(
                    &model,
                    &cache,
                    &labels,
                    &val_idx,
                    &class_names,
                    cfg.eval_batch_size,
                    None,
                    &device,
                )?)
            };
            let monitored = val
                .as_ref()
                .map(|v| v.loss)
                .unwrap_or(sums.loss / sums.images.max(1) as f64);
            let lr_used = state.schedule.lr;
            state
                .schedule
                .after_epoch(&ph.schedule, epoch + 1, monitored);
            state.epoch += 1;
            state.step = 0;
            state.optimizer_step = opt.step;
            let train_loss = sums.loss / sums.images.max(1) as f64;
            let train_acc = sums.correct as f64 / sums.images.max(1) as f64;
            let mut line = serde_json::json!({
                "phase": name, "epoch": epoch + 1, "lr": lr_used,
                "train_loss": train_loss, "train_acc": train_acc,
                "images_per_s": sums.images as f64 / sums.seconds.max(1e-9), "seconds": sums.seconds,
            });
            if pgd.is_some() {
                line["train_clean_acc"] =
                    serde_json::json!(sums.clean_correct as f64 / sums.images.max(1) as f64);
                line["train_adv_acc"] = serde_json::json!(train_acc);
            }
            if let Some(v) = &val {
                line["val_loss"] = serde_json::json!(v.loss);
                line["val_acc"] = serde_json::json!(v.accuracy);
            }
            tracing::info!("{}", line);
            append_metrics(dir, &line)?;
            let title = dir
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
            crate::report::curves::write_run_curves(dir, &title)?;
            // Best checkpoint: lowest validation loss (without validation: the latest).
            let improved = monitored < state.best_val_loss;
            save_weights(model.as_ref(), &dir.join("last.safetensors"))?;
            if improved || val.is_none() {
                if improved {
                    state.best_val_loss = monitored;
                    state.bad_epochs = 0;
                }
                write_atomic(
                    &dir.join("model.safetensors"),
                    &model_to_bytes(model.as_ref())?,
                )?;
                state.best = Some(format!("{name} epoch {}", epoch + 1));
            } else {
                state.bad_epochs += 1;
            }
            if let Some(pat) = ph.early_stop {
                if val.is_some() && state.bad_epochs >= pat {
                    tracing::info!("early stop: validation loss has not improved for {pat} epochs");
                    stop_phase = true;
                }
            }
            state.partial = EpochSums::default();
            save_resume(dir, model.as_ref(), &opt, &state)?;
        }
        state.phase += 1;
        state.epoch = 0;
        state.step = 0;
        state.bad_epochs = 0;
        state.optimizer_step = 0;
        if let Some(next) = phases.get(state.phase) {
            state.schedule = ScheduleState::new(next.1.lr);
        } else {
            state.finished = true;
        }
        save_resume(dir, model.as_ref(), &opt, &state)?;
    }
    model.set_trainable_groups(GroupSet::all());
    // Test the best checkpoint.
    let (best_model, _) = crate::model::load_checkpoint(dir, &device)?;
    let test = if test_idx.is_empty() {
        None
    } else {
        Some(evaluate_model(
            &best_model,
            &cache,
            &labels,
            &test_idx,
            &class_names,
            cfg.eval_batch_size,
            None,
            &device,
        )?)
    };
    let summary = Summary {
        command: cfg.recipe,
        test,
        best_checkpoint: state.best.clone().unwrap_or_default(),
        best_reason: if val_idx.is_empty() {
            "no validation set: the last epoch".into()
        } else {
            "lowest validation loss".into()
        },
        seconds: t_start.elapsed().as_secs_f64(),
        eps_rms: pgd.as_ref().map(|p| eps_rms(p.eps, cfg.image_size)),
    };
    write_json_atomic(&dir.join("summary.json"), &summary)?;
    Ok(Stop::Finished(summary))
}
