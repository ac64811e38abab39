//! `compare`: saliency maps of several runs measured on the same images
//! ([`crate::eval::compare`]), written as `comparison.json/.csv/.md`.

use crate::data::split::Part;
use crate::device::DeviceSpec;
use crate::eval::compare::{compare, CompareOptions, Comparison, Metric};
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// The comparison's settings as the user gives them.
#[derive(Debug, Clone)]
pub struct CompareSettings {
    pub methods: Vec<String>,
    /// Comma-separated metrics or `all`.
    pub metrics: String,
    pub count: usize,
    pub attack_eps: Option<f32>,
    pub attack_steps: usize,
    pub best_by: String,
    pub bootstrap: usize,
}

impl CompareSettings {
    /// Checks every setting and builds the library options (before any work, so that a sweep
    /// fails on a typo before hours of training).
    pub fn options(&self, data: Option<String>, part: Part, seed: u64) -> Result<CompareOptions> {
        for m in &self.methods {
            crate::attribution::by_name(m, &Default::default())?;
        }
        if self.methods.is_empty() {
            return Err(Error::config("method", "", "name at least one method"));
        }
        let metrics = Metric::parse_list(&self.metrics)?;
        let best_by = Metric::parse_list(&self.best_by)?[0];
        if let Some(e) = self.attack_eps {
            if !(e.is_finite() && e > 0.0) {
                return Err(Error::config("attack-eps", e, "must be a number > 0"));
            }
        }
        if self.count == 0 {
            return Err(Error::config("count", 0, "compare at least one image"));
        }
        Ok(CompareOptions {
            methods: self.methods.clone(),
            metrics,
            data,
            part,
            count: Some(self.count),
            attack_eps: self.attack_eps,
            attack_steps: self.attack_steps,
            best_by,
            bootstrap: self.bootstrap.max(1),
            seed,
            method_options: None,
        })
    }
}

/// Compares `runs` (`name`, folder) into `out`, printing the Markdown table. The output
/// folder is made only once the runs have loaded.
pub fn run(
    runs: &[(String, PathBuf)],
    opts: &CompareOptions,
    device: DeviceSpec,
    out: &Path,
) -> Result<Comparison> {
    crate::fsutil::check_output_dir(out)?;
    let device = device.open()?;
    let models = crate::run::load_runs(runs, &device)?;
    let bar = crate::progress::spinner("compare");
    let c = compare(&models, opts, &device, &|m| bar.set_message(m.to_string()))?;
    bar.finish_and_clear();
    crate::fsutil::ensure_output_dir(out)?;
    c.write(out)?;
    print!("{}", c.markdown());
    println!(
        "wrote {}, comparison.csv and comparison.md",
        out.join("comparison.json").display()
    );
    Ok(c)
}
