//! `benchmark --arch A,B`: the evidence benchmark once per architecture, each in its own
//! folder `OUT/<arch>/` (a complete benchmark: runs, tables, figures, report), and a page
//! `OUT/architectures.md` / `.html` that answers the paper's question per architecture: does
//! robust training change where the maps sit? With one architecture (or none given) this is
//! [`crate::commands::benchmark`] itself.
//!
//! On a scheduler the cells are those of every architecture, named `<arch>/seed-<S>/<cell>`.

use crate::commands::benchmark::{self, Benchmark, BenchmarkOptions};
use crate::commands::{grid_out, GridCells};
use crate::eval::compare::Metric;
use crate::interrupt::Interrupt;
use crate::model::Arch;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// One architecture's options: its `--arch`, its folder, and its part of `--cell`.
fn for_arch(opts: &BenchmarkOptions, arch: Arch, out: &Path) -> BenchmarkOptions {
    let mut o = opts.clone();
    o.archs = vec![arch];
    o.train.overrides.arch = Some(arch);
    o.train.out = Some(out.join(arch.name()));
    o.cell = opts.cell.as_ref().and_then(|c| {
        c.strip_prefix(&format!("{}/", arch.name()))
            .map(str::to_string)
    });
    o
}

fn several(opts: &BenchmarkOptions) -> bool {
    opts.archs.len() > 1
}

/// The grid of every architecture (see [`benchmark::grid`]).
pub fn grid(opts: &BenchmarkOptions) -> Result<(PathBuf, GridCells)> {
    if !several(opts) {
        return benchmark::grid(opts);
    }
    let out = grid_out(opts.train.out.as_deref(), "benchmark", false)?;
    let mut cells = Vec::new();
    for &a in &opts.archs {
        let (_, v) = benchmark::grid(&for_arch(opts, a, &out))?;
        let name = |n: String| format!("{}/{n}", a.name());
        cells.extend(
            v.into_iter()
                .map(|(n, dir, after)| (name(n), dir, after.map(name))),
        );
    }
    Ok((out, cells))
}

/// Runs (or, with `--cell` / `--gather`, trains one cell of / gathers) the benchmark of every
/// architecture, then writes the page across them.
pub fn run(opts: &BenchmarkOptions, interrupt: &Interrupt) -> Result<Vec<(Arch, Benchmark)>> {
    if !several(opts) {
        return Ok(benchmark::run(opts, interrupt)?
            .map(|b| vec![(opts.archs.first().copied().unwrap_or_default(), b)])
            .unwrap_or_default());
    }
    let whole = opts.cell.is_none() && !opts.gather;
    let out = grid_out(opts.train.out.as_deref(), "benchmark", whole)?;
    if let Some(c) = &opts.cell {
        let arch = opts
            .archs
            .iter()
            .find(|a| c.starts_with(&format!("{}/", a.name())))
            .ok_or_else(|| {
                let names: Vec<&str> = opts.archs.iter().map(|a| a.name()).collect();
                Error::config(
                    "cell",
                    c,
                    format!(
                        "give <arch>/seed-<S>/<cell> with an arch of {}",
                        names.join(", ")
                    ),
                )
            })?;
        benchmark::run(&for_arch(opts, *arch, &out), interrupt)?;
        return Ok(Vec::new());
    }
    // Every architecture's configuration is checked before any of them trains.
    for &a in &opts.archs {
        benchmark::grid(&for_arch(opts, a, &out))?;
    }
    let mut done = Vec::new();
    for &a in &opts.archs {
        eprintln!("benchmark: architecture {a}");
        if let Some(b) = benchmark::run(&for_arch(opts, a, &out), interrupt)? {
            done.push((a, b));
        }
    }
    write_page(&out, &done)?;
    Ok(done)
}

/// The clean accuracy of the standard and the largest-eps robust model, and the first
/// method's RMA of both with the difference and its interval, for the table across
/// architectures.
fn rma_row(b: &Benchmark) -> Option<[String; 5]> {
    let method = b.metrics.first()?.method.clone();
    let find = |cell: &str| {
        b.metrics.iter().find(|m| {
            m.cell == cell && m.method == method && m.metric == Metric::RelevanceMassAccuracy
        })
    };
    let std = find("standard")?;
    let robust = b
        .cells
        .iter()
        .filter(|c| c.recipe == crate::config::Recipe::TrainRobust)
        .max_by(|x, y| x.eps_at_224.total_cmp(&y.eps_at_224))?;
    let r = find(&robust.name)?;
    let f = |v: f64| format!("{v:.3}");
    let clean = |cell: &str| {
        b.accuracy
            .iter()
            .find(|a| a.cell == cell)
            .map_or("-".to_string(), |a| f(a.clean[0]))
    };
    Some([
        format!("{} / {}", clean("standard"), clean(&robust.name)),
        method,
        f(std.mean),
        format!("{} (eps {})", f(r.mean), robust.eps_at_224),
        format!(
            "{} [{}, {}]",
            f(r.diff_vs_standard),
            f(r.diff_ci95_seeds[0]),
            f(r.diff_ci95_seeds[1])
        ),
    ])
}

/// `architectures.md` and `architectures.html`: per architecture its findings and a link to
/// its own report; every number comes from the benchmarks just written.
fn write_page(out: &Path, done: &[(Arch, Benchmark)]) -> Result<()> {
    let mut md = String::from(
        "# Does robust training change where the maps sit? One benchmark per architecture\n\n\
         RMA: the share of a map's mass on the lesion mask; Δ: robust minus standard of the \
         same seed, with its 95% interval across seeds. A model near chance accuracy answers \
         nothing.\n\n\
         | architecture | clean accuracy, standard / robust | method | standard RMA | robust RMA \
         | Δ RMA |\n|---|---|---|---|---|---|\n",
    );
    let mut html = String::from(
        "<!doctype html><meta charset=\"utf-8\"><title>robustlens: architectures</title>\
         <style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em}</style>\
         <h1>Does robust training change where the maps sit?</h1><p>One benchmark per \
         architecture. RMA: the share of a map's mass on the lesion mask; Δ: robust minus \
         standard of the same seed, with its 95% interval across seeds.</p><table><tr>\
         <th>architecture</th><th>clean accuracy, standard / robust</th><th>method</th>\
         <th>standard RMA</th><th>robust RMA</th><th>Δ RMA</th></tr>",
    );
    for (a, b) in done {
        if let Some(row) = rma_row(b) {
            md.push_str(&format!("| {a} | {} |\n", row.join(" | ")));
            html.push_str(&format!(
                "<tr><td>{a}</td><td>{}</td></tr>",
                row.join("</td><td>")
            ));
        }
    }
    html.push_str("</table>");
    for (a, b) in done {
        md.push_str(&format!(
            "\n## {a} ({} layout)\n\n{} at {} px, seeds {:?}; [report]({a}/report.html), \
             [tables]({a}/benchmark.md)\n\n",
            a.ecosystem(),
            b.data,
            b.image_size,
            b.seeds
        ));
        html.push_str(&format!(
            "<h2>{a} ({} layout)</h2><p>{} at {} px, seeds {:?}: <a href=\"{a}/report.html\">\
             its report</a>, <a href=\"{a}/benchmark.md\">its tables</a>.</p><ul>",
            a.ecosystem(),
            crate::report::html::esc(&b.data),
            b.image_size,
            b.seeds
        ));
        for f in b.findings() {
            md.push_str(&format!("- {f}\n"));
            html.push_str(&format!("<li>{}</li>", crate::report::html::esc(&f)));
        }
        html.push_str("</ul>");
    }
    crate::fsutil::write_atomic(&out.join("architectures.md"), md.as_bytes())?;
    crate::fsutil::write_atomic(&out.join("architectures.html"), html.as_bytes())?;
    print!("{md}");
    println!("wrote {}", out.join("architectures.html").display());
    Ok(())
}
