//! Loading a model from anything a user names: a run folder, a weights file, the hub or
//! `none`. Apart from [`crate::model::weights`] (files and names) and
//! [`crate::model::checkpoint`] (run folders), so neither of those imports the other.

use crate::model::arch::Arch;
use crate::model::checkpoint::load_checkpoint;
use crate::model::network::Network;
use crate::model::weights::{default_cache_dir, load_weights, resolve_weights, WeightsSource};
use crate::{Error, Result};
use candle_core::Device;
use std::path::Path;

/// Loads a model from anything `--weights`/`--run` accepts: a run folder, a weights file
/// (`.safetensors` or `.pth`), `hf:owner/repo[/file]`, or `none` (random init, needs
/// `num_classes`). Returns the model and its class names. `arch`: the architecture asked
/// for (`None`: the run's or the file's; ResNet-18 for `none`); a model of another
/// architecture is an error naming both.
pub fn load_model_spec(
    arch: Option<Arch>,
    spec: &str,
    num_classes: Option<usize>,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn Network>, Vec<String>)> {
    let p = Path::new(spec);
    if p.is_dir() {
        let (m, cfg) = load_checkpoint(p, device)?;
        if let Some(a) = arch.filter(|a| *a != m.kind()) {
            return Err(Error::config(
                "arch",
                a,
                format!(
                    "the run {} holds a {} model; drop --arch or give --arch {}",
                    p.display(),
                    m.kind(),
                    m.kind()
                ),
            ));
        }
        return Ok((m, cfg.class_names));
    }
    load_model_source(
        arch,
        &WeightsSource::parse(spec)?,
        num_classes,
        seed,
        device,
    )
}

/// Loads a model from a parsed weights source (the head replaced when `num_classes` differs).
pub fn load_model_source(
    arch: Option<Arch>,
    src: &WeightsSource,
    num_classes: Option<usize>,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn Network>, Vec<String>)> {
    match resolve_weights(src, &default_cache_dir())? {
        None => {
            let k = num_classes.ok_or_else(|| {
                Error::model_setting("weights", "none", "needs num-classes K (a new head)")
            })?;
            let m = crate::model::zoo::build(arch.unwrap_or_default(), k, seed, device)?;
            let names = (0..k).map(|i| format!("class{i}")).collect();
            Ok((m, names))
        }
        Some(path) => {
            let cfg_path = path.parent().map(|d| d.join("config.json"));
            let (m, report) = load_weights(arch, &path, num_classes, seed, device)?;
            if let Some(k) = report.head_replaced_from {
                tracing::info!(
                    "{}: head with {k} classes replaced by a new {}-class head",
                    path.display(),
                    m.num_classes()
                );
            }
            let mut names: Vec<String> =
                (0..m.num_classes()).map(|i| format!("class{i}")).collect();
            if let Some(cp) = cfg_path
                .filter(|c| c.exists() && path.extension().is_some_and(|e| e == "safetensors"))
            {
                if let Ok(cfg) = crate::fsutil::read_json::<crate::model::ModelConfig>(&cp) {
                    if cfg.class_names.len() == m.num_classes() {
                        names = cfg.class_names;
                    }
                }
            }
            Ok((m, names))
        }
    }
}
