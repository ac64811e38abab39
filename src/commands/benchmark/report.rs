//! The benchmark's figures (`figures/`: the eps frontiers, best eps per image, seed
//! brittleness) and its page (`report.html`): what each question
//! found, in one sentence with its numbers, then the tables and the eps frontier. Everything
//! is computed from the [`Benchmark`] that was just summarised from the run folders.

use super::{interval, num, Benchmark, Cell, CellMetric};
use crate::config::Recipe;
use crate::eval::compare::Metric;
use crate::report::html::{esc, page};
use crate::report::plot::{histogram_chart, interval_chart, IntervalSeries, SIGNED_UNIT, UNIT};

/// The metrics drawn against eps, when measured: the lesion-mask ones and artifact mass.
const FRONTIER_METRICS: [Metric; 4] = [
    Metric::RelevanceMassAccuracy,
    Metric::RelevanceRankAccuracy,
    Metric::PointingGame,
    Metric::ArtifactMass,
];

fn with_interval(v: [f64; 3]) -> String {
    format!("{} {}", num(v[0]), interval([v[1], v[2]]))
}

/// `+0.042 [-0.184, 0.268]`, and whether the interval excludes 0.
fn signed(m: &CellMetric) -> (String, Option<bool>) {
    let [lo, hi] = m.diff_ci95_seeds;
    let text = format!("{:+.3} {}", m.diff_vs_standard, interval(m.diff_ci95_seeds));
    let clear = (!lo.is_nan()).then_some(lo > 0.0 || hi < 0.0);
    (text, clear)
}

impl Benchmark {
    /// The methods, in the order measured.
    pub fn methods(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for m in &self.metrics {
            if !out.contains(&m.method.as_str()) {
                out.push(&m.method);
            }
        }
        out
    }

    fn metric(&self, cell: &str, method: &str, metric: Metric) -> Option<&CellMetric> {
        self.metrics
            .iter()
            .find(|m| m.cell == cell && m.method == method && m.metric == metric)
    }

    /// The cells on the eps axis (standard at 0, then the robust ones), ascending.
    fn frontier_cells(&self) -> Vec<(&str, f32)> {
        let mut v: Vec<(&str, f32)> = self
            .cells
            .iter()
            .filter(|c| matches!(c.recipe, Recipe::TrainStandard | Recipe::TrainRobust))
            .map(|c| (c.name.as_str(), c.eps_at_224))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v
    }

    /// Clean and robust accuracy against eps, with across-seed intervals.
    pub fn accuracy_frontier(&self) -> String {
        let cells = self.frontier_cells();
        let point = |cell: &str, e: f32, robust: bool| {
            let a = self.accuracy.iter().find(|a| a.cell == cell)?;
            let v = if robust { a.robust? } else { a.clean };
            Some((e as f64, v[0], v[1], v[2]))
        };
        let series: Vec<IntervalSeries> = [("clean", false), ("robust (PGD)", true)]
            .iter()
            .map(|(name, robust)| {
                (
                    name.to_string(),
                    cells
                        .iter()
                        .filter_map(|(c, e)| point(c, *e, *robust))
                        .collect(),
                )
            })
            .filter(|(_, v): &IntervalSeries| !v.is_empty())
            .collect();
        interval_chart(
            &format!("Accuracy against eps ({} seeds)", self.seeds.len()),
            &series,
            "training eps (paper eps at 224 px; 0 = standard)",
            "test accuracy",
            UNIT,
        )
    }

    /// For one method, the mask and artifact metrics against eps, with across-seed intervals.
    pub fn metric_frontier(&self, method: &str) -> String {
        let cells = self.frontier_cells();
        let series: Vec<IntervalSeries> = FRONTIER_METRICS
            .iter()
            .map(|&k| {
                let pts = cells
                    .iter()
                    .filter_map(|(c, e)| {
                        let m = self.metric(c, method, k)?;
                        Some((*e as f64, m.mean, m.ci95_seeds[0], m.ci95_seeds[1]))
                    })
                    .collect();
                (
                    format!(
                        "{} {}",
                        k.short(),
                        if k.higher_is_better() { "↑" } else { "↓" }
                    ),
                    pts,
                )
            })
            .filter(|(_, v): &IntervalSeries| !v.is_empty())
            .collect();
        interval_chart(
            &format!("{method} maps against eps"),
            &series,
            "training eps (paper eps at 224 px; 0 = standard)",
            "mean over images",
            UNIT,
        )
    }

    /// The share of images whose best map comes from each eps, per method, with across-seed
    /// intervals (empty without robust cells).
    pub fn best_eps_chart(&self) -> String {
        let series: Vec<IntervalSeries> = self
            .best_eps
            .iter()
            .map(|b| {
                let pts = b
                    .eps_at_224
                    .iter()
                    .zip(&b.share)
                    .map(|(&e, s)| (e as f64, s[0], s[1], s[2]))
                    .collect();
                (format!("{} (by {})", b.method, b.metric.short()), pts)
            })
            .collect();
        if series.is_empty() {
            return String::new();
        }
        histogram_chart(
            "Best eps per image",
            &series,
            "training eps (paper eps at 224 px; 0 = standard)",
            "share of images",
            UNIT,
        )
    }

    /// For one method, how alike the maps of the same images are across seeds (mean Spearman
    /// and SSIM over seed pairs and images) in the standard and robust cells, against eps.
    pub fn brittleness_chart(&self, method: &str) -> String {
        let cells = self.frontier_cells();
        let pts = |ssim: bool| -> Vec<(f64, f64, f64, f64)> {
            cells
                .iter()
                .filter_map(|(c, e)| {
                    let b = self
                        .brittleness
                        .iter()
                        .find(|b| b.cell == *c && b.method == method)?;
                    let v = if ssim { b.ssim } else { b.spearman };
                    Some((*e as f64, v, f64::NAN, f64::NAN))
                })
                .collect()
        };
        let series: Vec<IntervalSeries> = vec![
            ("Spearman".to_string(), pts(false)),
            ("SSIM".to_string(), pts(true)),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .collect();
        if series.is_empty() {
            return String::new();
        }
        interval_chart(
            &format!("Seed brittleness of the {method} maps"),
            &series,
            "training eps (paper eps at 224 px; 0 = standard)",
            "similarity across seeds",
            SIGNED_UNIT,
        )
    }

    /// For the cells `keep` selects that measured `metric` with `method`: `line(cell, metric,
    /// change)`, where the change reads `+0.024 [0.012, 0.036]: more` (the verdict from
    /// whether the across-seed interval of Δ excludes 0).
    fn changes(
        &self,
        method: &str,
        metric: Metric,
        keep: impl Fn(&Cell) -> bool,
        line: impl Fn(&Cell, &CellMetric, String) -> String,
    ) -> Vec<String> {
        self.cells
            .iter()
            .filter(|c| keep(c))
            .filter_map(|c| {
                let m = self.metric(&c.name, method, metric)?;
                let (d, clear) = signed(m);
                let verdict = match clear {
                    Some(true) if m.diff_vs_standard > 0.0 => "more",
                    Some(true) => "less",
                    Some(false) => "no clear difference, the interval holds 0",
                    None => "no interval (one seed)",
                };
                Some(line(c, m, format!("{d}: {verdict}")))
            })
            .collect()
    }

    /// One sentence per question, with its numbers (the first method, RMA and artifact mass).
    pub fn findings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(method) = self.methods().first().copied() else {
            return out;
        };
        let rma = Metric::RelevanceMassAccuracy;
        if let Some(std) = self.metric("standard", method, rma) {
            let robust = self.changes(
                method,
                rma,
                |c| c.recipe == Recipe::TrainRobust,
                |c, m, d| format!("eps {}: RMA {} (Δ {d})", c.eps_at_224, num(m.mean)),
            );
            if !robust.is_empty() {
                out.push(format!(
                    "Does robust training put the {method} maps on the mask? Standard RMA {}; {}. \
                     Δ is robust minus standard of the same seed, 95% interval across {} seeds.",
                    with_interval([std.mean, std.ci95_seeds[0], std.ci95_seeds[1]]),
                    robust.join("; "),
                    self.seeds.len()
                ));
            }
        }
        let ft = self.changes(
            method,
            rma,
            |c| c.recipe == Recipe::Finetune,
            |c, _, d| {
                let groups = c.groups.map(|g| g.to_string()).unwrap_or_default();
                format!("groups {groups}: Δ RMA {d}")
            },
        );
        if !ft.is_empty() {
            out.push(format!(
                "Which layers must be robust (fine-tuned from the robust model, the rest frozen)? {}.",
                ft.join("; ")
            ));
        }
        let art = self.changes(
            method,
            Metric::ArtifactMass,
            |c| c.recipe != Recipe::TrainStandard,
            |c, m, d| format!("{}: {} (Δ {d})", c.name, num(m.mean)),
        );
        if let (false, Some(std)) = (
            art.is_empty(),
            self.metric("standard", method, Metric::ArtifactMass),
        ) {
            out.push(format!(
                "Do the maps sit on the artifacts (hair, ruler, ink, corners)? Standard {}; {}.",
                num(std.mean),
                art.join("; ")
            ));
        }
        if let Some(b) = self.best_eps.iter().find(|b| b.method == method) {
            let best = b
                .eps_at_224
                .iter()
                .zip(&b.share)
                .map(|(e, s)| format!("eps {e}: {}", with_interval(*s)))
                .collect::<Vec<_>>()
                .join(", ");
            out.push(format!(
                "Which eps gives each image its best {method} map (by RMA)? Share of images: {best}."
            ));
        }
        let brittle: Vec<String> = self
            .brittleness
            .iter()
            .filter(|b| b.method == method)
            .map(|b| format!("{} {}", b.cell, num(b.spearman)))
            .collect();
        if !brittle.is_empty() {
            out.push(format!(
                "How alike are the maps across seeds (mean Spearman)? {}.",
                brittle.join(", ")
            ));
        }
        out
    }

    /// The benchmark's page: findings, accuracy, per method the tables and the frontier, best
    /// eps and brittleness, then `files` (the figure files' index). Self-contained (inline
    /// SVG), opens from disk.
    pub fn html(&self, files: &str) -> String {
        let mut b = format!(
            "<p>{} at {} px, seeds {:?}, {} test images per seed. Each value is the mean over seeds \
             of each seed's mean over the images, with its 95% Student-t interval across seeds; Δ \
             is the difference to the standard model of the same seed.</p>\n<h2>Findings</h2>\n<ul>\n",
            esc(&self.data),
            self.image_size,
            self.seeds,
            self.images
        );
        for f in self.findings() {
            b.push_str(&format!("<li>{}</li>\n", esc(&f)));
        }
        b.push_str("</ul>\n<h2>Accuracy</h2>\n<table><tr><th>cell</th><th>eps at 224</th><th>clean</th><th>robust</th></tr>\n");
        for a in &self.accuracy {
            b.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&a.cell),
                a.eps_at_224,
                with_interval(a.clean),
                a.robust.map(with_interval).unwrap_or_else(|| "-".into())
            ));
        }
        b.push_str("</table>\n");
        b.push_str(&self.accuracy_frontier());
        for method in self.methods() {
            b.push_str(&format!("<h2>{}</h2>\n", esc(method)));
            b.push_str(&self.metric_frontier(method));
            let shown: Vec<Metric> = self
                .metrics
                .iter()
                .filter(|m| m.method == method && m.cell == "standard")
                .map(|m| m.metric)
                .collect();
            b.push_str("<table><tr><th>cell</th>");
            for k in &shown {
                b.push_str(&format!(
                    "<th>{} {}</th>",
                    esc(k.short()),
                    if k.higher_is_better() { "↑" } else { "↓" }
                ));
            }
            b.push_str("</tr>\n");
            for c in &self.cells {
                b.push_str(&format!("<tr><td>{}</td>", esc(&c.name)));
                for k in &shown {
                    let cell = match self.metric(&c.name, method, *k) {
                        Some(m) if c.recipe == Recipe::TrainStandard => {
                            with_interval([m.mean, m.ci95_seeds[0], m.ci95_seeds[1]])
                        }
                        Some(m) => {
                            let (d, clear) = signed(m);
                            let d = if clear == Some(true) {
                                format!("<b>{}</b>", esc(&d))
                            } else {
                                esc(&d)
                            };
                            format!("{}<br><small>Δ {d}</small>", num(m.mean))
                        }
                        None => "-".into(),
                    };
                    b.push_str(&format!("<td>{cell}</td>"));
                }
                b.push_str("</tr>\n");
            }
            b.push_str(
                "</table>\n<p><small>Bold: the across-seed interval of Δ excludes 0.</small></p>\n",
            );
        }
        if !self.best_eps.is_empty() {
            b.push_str("<h2>Best eps per image</h2>\n<table><tr><th>method</th>");
            for e in &self.best_eps[0].eps_at_224 {
                b.push_str(&format!("<th>eps {e}</th>"));
            }
            b.push_str("</tr>\n");
            for be in &self.best_eps {
                b.push_str(&format!(
                    "<tr><td>{} (by {})</td>",
                    esc(&be.method),
                    be.metric.short()
                ));
                for s in &be.share {
                    b.push_str(&format!("<td>{}</td>", with_interval(*s)));
                }
                b.push_str("</tr>\n");
            }
            b.push_str("</table>\n");
            b.push_str(&self.best_eps_chart());
        }
        if !self.brittleness.is_empty() {
            b.push_str("<h2>Seed brittleness</h2>\n<table><tr><th>cell</th><th>method</th><th>seed pairs</th><th>Spearman</th><th>SSIM</th></tr>\n");
            for x in &self.brittleness {
                b.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    esc(&x.cell),
                    esc(&x.method),
                    x.pairs,
                    num(x.spearman),
                    num(x.ssim)
                ));
            }
            b.push_str("</table>\n");
            for method in self.methods() {
                b.push_str(&self.brittleness_chart(method));
            }
        }
        if let Some(first) = self.ig_convergence.first() {
            b.push_str(&format!("<h2>IG convergence</h2>\n<p>Integrated Gradients with {} steps: per seed the median over the images of |sum(attributions) − Δlogit| / |Δlogit| (0 for an exact integral), the mean over seeds with its 95% interval, and the largest of any image.</p>\n<table><tr><th>cell</th><th>median</th><th>largest</th></tr>\n", first.steps));
            for c in &self.ig_convergence {
                b.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                    esc(&c.cell),
                    with_interval(c.median_relative_delta),
                    num(c.largest_relative_delta)
                ));
            }
            b.push_str("</table>\n");
        }
        b.push_str(files);
        page(&format!("robustlens benchmark: {}", self.data), &b)
    }
}
