//! Saliency metrics and statistics against Quantus, scipy and scikit-image
//! (fixtures from `tests/fixtures/make_metric_fixtures.py`).

mod common;

use robustlens::eval::saliency::*;
use robustlens::eval::stats::*;

fn fixture() -> serde_json::Value {
    let text = std::fs::read_to_string(common::fixture("metrics.json")).expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * (1.0 + want.abs()),
        "{name}: got {got}, reference {want}"
    );
}

#[test]
fn map_metrics_match_quantus() {
    let f = fixture();
    for (k, c) in f["maps"].as_array().unwrap().iter().enumerate() {
        let map = f32s(&c["map"]);
        let mask: Vec<bool> = c["mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64() == Some(1))
            .collect();
        let tag = |m: &str| format!("case {k} {m}");
        close(
            &tag("rma"),
            relevance_mass_accuracy(&map, &mask).unwrap(),
            c["relevance_mass_accuracy"].as_f64().unwrap(),
            1e-5,
        );
        if let Some(want) = c["relevance_rank_accuracy"].as_f64() {
            close(
                &tag("rra"),
                relevance_rank_accuracy(&map, &mask).unwrap(),
                want,
                1e-9,
            );
        }
        close(
            &tag("pointing"),
            pointing_game(&map, &mask).unwrap(),
            c["pointing_game"].as_f64().unwrap(),
            0.0,
        );
        close(
            &tag("auc"),
            roc_auc(&map, &mask).unwrap(),
            c["roc_auc"].as_f64().unwrap(),
            1e-9,
        );
        close(&tag("gini"), gini(&map), c["gini"].as_f64().unwrap(), 1e-5);
        close(
            &tag("entropy"),
            entropy(&map),
            c["entropy"].as_f64().unwrap(),
            1e-5,
        );
        let other = f32s(&c["other"]);
        let (h, w) = (
            c["h"].as_u64().unwrap() as usize,
            c["w"].as_u64().unwrap() as usize,
        );
        close(
            &tag("spearman"),
            spearman(&map, &other),
            c["spearman"].as_f64().unwrap(),
            1e-9,
        );
        let a: Vec<f64> = map.iter().map(|&v| v as f64).collect();
        let b: Vec<f64> = other.iter().map(|&v| v as f64).collect();
        close(
            &tag("pearson"),
            pearson(&a, &b),
            c["pearson"].as_f64().unwrap(),
            1e-9,
        );
        let (sp, ss) = robustlens::eval::sanity::map_similarity(&map, &other, h, w);
        close(&tag("spearman"), sp, c["spearman"].as_f64().unwrap(), 1e-9);
        close(&tag("ssim"), ss, c["ssim"].as_f64().unwrap(), 1e-5);
    }
}

#[test]
fn wilcoxon_matches_scipy() {
    let f = fixture();
    for t in f["wilcoxon"].as_array().unwrap() {
        let w = wilcoxon(&f64s(&t["x"]), &f64s(&t["y"])).expect("a test result");
        assert_eq!(w.exact, t["exact"].as_bool().unwrap());
        close(
            "statistic",
            w.statistic,
            t["statistic"].as_f64().unwrap(),
            1e-9,
        );
        close("p", w.p_value, t["p_value"].as_f64().unwrap(), 1e-5);
    }
}

#[test]
fn empty_masks_are_errors_not_hits() {
    let map = [0.0, 1.0, 0.5];
    let none = [false; 3];
    assert!(pointing_game(&map, &none).is_err());
    assert!(relevance_mass_accuracy(&map, &none).is_err());
    assert!(relevance_rank_accuracy(&map, &none).is_err());
    assert!(roc_auc(&map, &none).is_err());
    assert!(
        pointing_game(&map, &[true, false]).is_err(),
        "length mismatch"
    );
}
