//! The eps frontier of a comparison of runs that differ in their training eps (`sweep-eps`):
//! accuracy, clean and under attack, and the mask metrics against eps, and the best eps per
//! image, as charts.

use crate::eval::compare::{Comparison, Metric};
use crate::report::plot::{histogram_chart, interval_chart, IntervalSeries, UNIT};

/// The metrics drawn against eps, when measured.
const METRICS: [Metric; 4] = [
    Metric::RelevanceMassAccuracy,
    Metric::RelevanceRankAccuracy,
    Metric::PointingGame,
    Metric::ArtifactMass,
];

const XLABEL: &str = "training eps (L2 at the working size; 0 = standard)";

/// `(file stem, chart)` for each chart the comparison has data for: `frontier-accuracy`,
/// `frontier-<method>` and `best-eps-<method>`. The runs are ordered by eps.
pub fn frontier_charts(c: &Comparison) -> Vec<(String, String)> {
    let mut order: Vec<usize> = (0..c.models.len()).collect();
    order.sort_by(|&a, &b| c.models[a].train_eps.total_cmp(&c.models[b].train_eps));
    let nan = f64::NAN;
    let mut out = Vec::new();
    let clean: Vec<_> = order
        .iter()
        .map(|&i| {
            let m = &c.models[i];
            (m.train_eps as f64, m.clean_accuracy, nan, nan)
        })
        .collect();
    let robust: Vec<_> = order
        .iter()
        .filter_map(|&i| {
            let m = &c.models[i];
            Some((m.train_eps as f64, m.robust_accuracy?, nan, nan))
        })
        .collect();
    let mut acc: Vec<IntervalSeries> = vec![("clean".into(), clean)];
    if !robust.is_empty() {
        acc.push(("under attack (PGD)".into(), robust));
    }
    out.push((
        "frontier-accuracy".to_string(),
        interval_chart("Accuracy against eps", &acc, XLABEL, "accuracy", UNIT),
    ));
    let methods: Vec<String> = c
        .models
        .first()
        .map(|m| m.methods.iter().map(|r| r.method.clone()).collect())
        .unwrap_or_default();
    for (mi, method) in methods.iter().enumerate() {
        let series: Vec<IntervalSeries> = METRICS
            .iter()
            .map(|&k| {
                let pts = order
                    .iter()
                    .filter_map(|&i| {
                        let m = &c.models[i];
                        let s = m.methods.get(mi)?.metrics.iter().find(|s| s.metric == k)?;
                        Some((m.train_eps as f64, s.mean, s.ci95[0], s.ci95[1]))
                    })
                    .collect();
                let arrow = if k.higher_is_better() { "↑" } else { "↓" };
                (format!("{} {arrow}", k.short()), pts)
            })
            .filter(|(_, p): &IntervalSeries| !p.is_empty())
            .collect();
        if !series.is_empty() {
            out.push((
                format!("frontier-{method}"),
                interval_chart(
                    &format!("{method} maps against eps (95% bootstrap intervals)"),
                    &series,
                    XLABEL,
                    "mean over images",
                    UNIT,
                ),
            ));
        }
    }
    for b in &c.best_eps {
        let total: usize = b.histogram.iter().map(|h| h.1).sum();
        if total == 0 {
            continue;
        }
        let pts = b
            .histogram
            .iter()
            .map(|&(e, n)| (e as f64, n as f64 / total as f64, nan, nan))
            .collect();
        out.push((
            format!("best-eps-{}", b.method),
            histogram_chart(
                &format!(
                    "Best eps per image ({} maps, by {})",
                    b.method,
                    b.metric.short()
                ),
                &[(format!("{total} images"), pts)],
                XLABEL,
                "share of images",
                UNIT,
            ),
        ));
    }
    out.retain(|(_, s)| !s.is_empty());
    out
}
