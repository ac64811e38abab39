//! A self-contained HTML report: images embedded as base64 PNG, charts as inline SVG, no
//! network, opens from disk.

use crate::report::png::png_bytes;
use crate::Result;
use image::RgbImage;

/// Standard base64 (RFC 4648) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A figure: the image embedded, with a caption.
pub fn figure(img: &RgbImage, alt: &str, caption: &str) -> Result<String> {
    Ok(format!(
        "<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\"><figcaption>{}</figcaption></figure>\n",
        esc(alt),
        base64(&png_bytes(img)?),
        esc(caption)
    ))
}

/// One series of [`interval_chart`]: a name and its points `(x, y, low, high)`.
pub type IntervalSeries = (String, Vec<(f64, f64, f64, f64)>);

/// Round tick values covering `[lo, hi]` (about five).
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-12);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() * step;
    (0..)
        .map(|k| first + k as f64 * step)
        .take_while(|t| *t <= hi + step * 1e-9)
        .collect()
}

/// A chart of series with 95% intervals as inline SVG: each point `(x, y, low, high)` is a
/// marker with a vertical bar from low to high (none where they are NaN), the points of a
/// series joined; labelled axes with round ticks, the x ticks at the points' x values (round
/// ones beyond 12), and a legend.
pub fn interval_chart(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
) -> String {
    chart(title, series, xlabel, ylabel, false, &[])
}

/// [`interval_chart`] with labelled vertical dashed lines at the x values of `marks` (a
/// phase boundary, say).
pub fn interval_chart_marked(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
    marks: &[(f64, String)],
) -> String {
    chart(title, series, xlabel, ylabel, false, marks)
}

/// Inline SVG charts side by side in one SVG (each keeps its own size), for one file.
pub fn side_by_side(charts: &[&str]) -> String {
    let size = |s: &str, key: &str| -> f64 {
        s.split(&format!("{key}=\""))
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let charts: Vec<&str> = charts.iter().copied().filter(|c| !c.is_empty()).collect();
    let w: f64 = charts.iter().map(|c| size(c, "width")).sum();
    let h = charts.iter().map(|c| size(c, "height")).fold(0.0, f64::max);
    let label = charts
        .iter()
        .filter_map(|c| c.split("aria-label=\"").nth(1)?.split('"').next())
        .collect::<Vec<_>>()
        .join("; ");
    let mut s = format!("<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{label}\" font-family=\"sans-serif\">");
    let mut x = 0.0;
    for c in charts {
        let body = c.strip_prefix("<svg ").unwrap_or(c);
        s.push_str(&format!("<svg x=\"{x}\" y=\"0\" {body}"));
        x += size(c, "width");
    }
    s.push_str("</svg>\n");
    s
}

/// [`interval_chart`] for dense curves: each series a line with its interval as a shaded band
/// (markers only when a series has at most 12 points).
pub fn band_chart(title: &str, series: &[IntervalSeries], xlabel: &str, ylabel: &str) -> String {
    chart(title, series, xlabel, ylabel, true, &[])
}

fn chart(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
    bands: bool,
    marks: &[(f64, String)],
) -> String {
    // The legend has three entries per row under the x label; the chart grows with its rows.
    let legend_rows = series.len().div_ceil(3).max(1);
    let extra = 14.0 * (legend_rows - 1) as f64;
    let (w, h) = (460.0, 300.0 + extra);
    let (left, right, top, bottom) = (58.0, 16.0, 30.0, 62.0 + extra);
    let finite = |v: f64| v.is_finite();
    let pts: Vec<(f64, f64, f64, f64)> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|p| finite(p.0) && finite(p.1))
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let (x0, x1) = (xs[0], *xs.last().unwrap_or(&xs[0]));
    let (x0, x1) = if x1 > x0 {
        (x0, x1)
    } else {
        (x0 - 1.0, x0 + 1.0)
    };
    let ys = pts
        .iter()
        .flat_map(|p| [p.1, p.2, p.3])
        .filter(|v| finite(*v));
    let (mut y0, mut y1) = ys.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    let pad = ((y1 - y0) * 0.08).max(1e-3);
    y0 -= pad;
    y1 += pad;
    let pw = w - left - right;
    let ph = h - top - bottom;
    let xm = (x1 - x0) * 0.06;
    let sx = |x: f64| left + (x - x0 + xm) / (x1 - x0 + 2.0 * xm) * pw;
    let sy = |y: f64| top + (y1 - y) / (y1 - y0) * ph;
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut s = format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <text x=\"{cx}\" y=\"18\" font-size=\"13\" text-anchor=\"middle\">{t}</text>",
        t = esc(title),
        cx = left + pw / 2.0
    );
    for t in ticks(y0, y1) {
        let y = sy(t);
        s.push_str(&format!(
            "<line x1=\"{left}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#e6e6e6\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left + pw,
            left - 5.0,
            y + 4.0,
            trim_number(t)
        ));
    }
    // Ticks at the points' x values, or at round values when there are too many to read.
    let xticks = if xs.len() <= 12 {
        xs.clone()
    } else {
        ticks(x0, x1)
    };
    for &x in &xticks {
        let px = sx(x);
        s.push_str(&format!(
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#333\"/>\
             <text x=\"{px:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            top + ph,
            top + ph + 4.0,
            top + ph + 16.0,
            trim_number(x)
        ));
    }
    s.push_str(&format!(
        "<rect x=\"{left}\" y=\"{top}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#333\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\
         <text transform=\"translate(14 {:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
        left + pw / 2.0,
        top + ph + 32.0,
        esc(xlabel),
        top + ph / 2.0,
        esc(ylabel)
    ));
    for (x, label) in marks.iter().filter(|m| m.0 >= x0 && m.0 <= x1) {
        let px = sx(*x);
        s.push_str(&format!(
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{top}\" y2=\"{:.1}\" stroke=\"#777\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{}</text>",
            top + ph,
            px + 3.0,
            top + 11.0,
            esc(label)
        ));
    }
    for (i, (name, v)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let ok: Vec<_> = v.iter().filter(|p| finite(p.0) && finite(p.1)).collect();
        let path: Vec<String> = ok
            .iter()
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        if bands {
            let band: Vec<_> = ok.iter().filter(|p| finite(p.2) && finite(p.3)).collect();
            let upper = band
                .iter()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.3.min(y1))));
            let lower = band
                .iter()
                .rev()
                .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.2.max(y0))));
            let poly: Vec<String> = upper.chain(lower).collect();
            if !poly.is_empty() {
                s.push_str(&format!(
                    "<polygon fill=\"{c}\" fill-opacity=\"0.18\" stroke=\"none\" points=\"{}\"/>",
                    poly.join(" ")
                ));
            }
        }
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.8\" points=\"{}\"/>",
            path.join(" ")
        ));
        let markers = !bands || ok.len() <= 12;
        for p in ok.iter().filter(|_| markers) {
            let (px, py) = (sx(p.0), sy(p.1));
            if !bands && finite(p.2) && finite(p.3) {
                let (a, b) = (sy(p.2.max(y0)), sy(p.3.min(y1)));
                s.push_str(&format!(
                    "<path d=\"M{px:.1},{a:.1}V{b:.1}M{:.1},{a:.1}h8M{:.1},{b:.1}h8\" stroke=\"{c}\" stroke-width=\"1.3\" fill=\"none\"/>",
                    px - 4.0,
                    px - 4.0
                ));
            }
            s.push_str(&format!(
                "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"3.2\" fill=\"{c}\"/>"
            ));
        }
        let lx = left + 150.0 * (i % 3) as f64;
        let ly = h - 12.0 - extra + 14.0 * (i / 3) as f64;
        s.push_str(&format!(
            "<line x1=\"{lx:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"2\"/>\
             <text x=\"{:.1}\" y=\"{ly:.1}\" font-size=\"11\">{}</text>",
            lx + 16.0,
            ly - 4.0,
            ly - 4.0,
            lx + 20.0,
            esc(name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

/// A confusion matrix as inline SVG: rows the true classes, columns the predicted ones; each
/// cell shows its count and its share of the row, shaded by that share (matplotlib's Blues).
pub fn confusion_chart(title: &str, names: &[String], counts: &[Vec<usize>]) -> String {
    let k = names.len();
    let cell = 58.0;
    let left = 26.0 + names.iter().map(|n| n.chars().count()).max().unwrap_or(4) as f64 * 7.0;
    let top = 58.0;
    let (w, h) = (left + cell * k as f64 + 12.0, top + cell * k as f64 + 40.0);
    let mut s = format!(
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{t}\" font-family=\"sans-serif\">\
         <rect width=\"{w}\" height=\"{h}\" fill=\"white\"/>\
         <text x=\"{cx:.1}\" y=\"16\" font-size=\"13\" text-anchor=\"middle\">{t}</text>\
         <text x=\"{cx:.1}\" y=\"{py:.1}\" font-size=\"12\" text-anchor=\"middle\">predicted</text>\
         <text transform=\"translate(12 {ty:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">true</text>",
        t = esc(title),
        cx = left + cell * k as f64 / 2.0,
        py = top + cell * k as f64 + 30.0,
        ty = top + cell * k as f64 / 2.0,
    );
    for (j, n) in names.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{}</text>",
            left + cell * (j as f64 + 0.5),
            top - 8.0,
            esc(n),
            left - 6.0,
            top + cell * (j as f64 + 0.5) + 4.0,
            esc(n)
        ));
    }
    for (i, row) in counts.iter().enumerate().take(k) {
        let total: usize = row.iter().sum();
        for (j, &c) in row.iter().enumerate().take(k) {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let col = colorous::BLUES.eval_continuous(share);
            let ink = if share > 0.55 { "white" } else { "#222" };
            let (x, y) = (left + cell * j as f64, top + cell * i as f64);
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cell}\" height=\"{cell}\" fill=\"#{:02x}{:02x}{:02x}\" stroke=\"#fff\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"13\" text-anchor=\"middle\" fill=\"{ink}\">{c}</text>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"{ink}\">{:.0}%</text>",
                col.r,
                col.g,
                col.b,
                x + cell / 2.0,
                y + cell / 2.0,
                x + cell / 2.0,
                y + cell / 2.0 + 14.0,
                100.0 * share
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// `svg` (from [`interval_chart`]) as a file of its own: with the SVG namespace, which inline
/// SVG in HTML does without.
pub fn svg_file(svg: &str) -> String {
    let body = svg.strip_prefix("<svg ").unwrap_or(svg);
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" {body}")
}

/// Every file in `root/figures/` and in the `figures/` folder of each sub-folder of `root`,
/// as links relative to `root`, sorted: the page names each figure file it wrote. Empty when
/// there is none.
pub fn figure_index(root: &std::path::Path) -> String {
    let mut dirs = vec![std::path::PathBuf::from("figures")];
    if let Ok(entries) = std::fs::read_dir(root) {
        let mut subs: Vec<_> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("figures").is_dir())
            .map(|e| std::path::Path::new(&e.file_name()).join("figures"))
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    let mut files = Vec::new();
    for d in dirs {
        let Ok(entries) = std::fs::read_dir(root.join(&d)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        files.extend(names.into_iter().map(|n| {
            let rel = format!("{}/{n}", d.to_string_lossy().replace('\\', "/"));
            format!("<a href=\"{0}\"><code>{0}</code></a>", esc(&rel))
        }));
    }
    if files.is_empty() {
        return String::new();
    }
    format!(
        "<h2>Figure files</h2>\n<p>Every figure of this page as a file of its own (charts as SVG \
         with a PNG copy at twice the size), beside this page: {}.</p>\n",
        files.join(", ")
    )
}

/// A tick label: up to three decimals, trailing zeros dropped.
fn trim_number(v: f64) -> String {
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" {
        "0".into()
    } else {
        t.to_string()
    }
}

/// A horizontal bar chart (values in `[0, 1]`) as inline SVG.
pub fn bar_chart(title: &str, bars: &[(String, f64, Option<f64>)]) -> String {
    let row = 26.0;
    let (w, h) = (520.0, 40.0 + row * bars.len() as f64);
    let left = 150.0;
    let mut s = format!(
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    s.push_str(&format!("<rect width=\"{w}\" height=\"{h}\" fill=\"white\" stroke=\"#ccc\"/><text x=\"8\" y=\"18\" font-size=\"13\">{}</text>", esc(title)));
    for (i, (name, v, v2)) in bars.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let bw = (w - left - 60.0) * v.clamp(0.0, 1.0);
        s.push_str(&format!(
            "<text x=\"8\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 14.0,
            esc(name)
        ));
        s.push_str(&format!(
            "<rect x=\"{left}\" y=\"{y}\" width=\"{bw:.1}\" height=\"10\" fill=\"#1f77b4\"/>"
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{:.1}%</text>",
            left + bw + 4.0,
            y + 9.0,
            100.0 * v
        ));
        if let Some(r) = v2 {
            let rw = (w - left - 60.0) * r.clamp(0.0, 1.0);
            s.push_str(&format!(
                "<rect x=\"{left}\" y=\"{}\" width=\"{rw:.1}\" height=\"10\" fill=\"#d62728\"/>",
                y + 11.0
            ));
            s.push_str(&format!(
                "<text x=\"{:.1}\" y=\"{}\" font-size=\"11\">{:.1}%</text>",
                left + rw + 4.0,
                y + 20.0,
                100.0 * r
            ));
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Wraps sections into a complete page.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}figure{{margin:1em 0}}img{{max-width:100%;image-rendering:pixelated}}figcaption{{color:#555;font-size:0.9em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}.warn{{background:#fff4e5;border-left:4px solid #e69500;padding:6px 10px}}</style></head><body>\n<h1>{}</h1>\n{}</body></html>\n",
        esc(title),
        esc(title),
        body
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn base64_known_values() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            ticks(0.0, 1.0),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(0.213, 0.287);
        assert!(
            t.len() >= 3 && t[0] >= 0.213 && *t.last().unwrap() <= 0.287,
            "{t:?}"
        );
        assert_eq!(trim_number(0.25), "0.25");
        assert_eq!(trim_number(2.0), "2");
        let svg = interval_chart(
            "RMA",
            &[(
                "gradient".into(),
                vec![(0.0, 0.4, 0.35, 0.45), (2.0, 0.5, f64::NAN, f64::NAN)],
            )],
            "eps",
            "RMA",
        );
        assert!(
            svg.starts_with("<svg")
                && svg.contains("gradient")
                && svg.matches("<circle").count() == 2
        );
        assert!(interval_chart("x", &[], "a", "b").is_empty());
        // Many x values: round ticks instead of one per point.
        let dense: Vec<(f64, f64, f64, f64)> = (0..=64)
            .map(|i| {
                let x = i as f64 / 64.0;
                (x, 1.0 - x, 0.9 - x, 1.1 - x)
            })
            .collect();
        let band = band_chart("deletion", &[("m".into(), dense)], "share", "p");
        assert_eq!(band.matches("<polygon").count(), 1, "one band");
        assert_eq!(
            band.matches("<circle").count(),
            0,
            "no markers on a dense curve"
        );
        assert!(!band.contains("h8"), "no error bars");
        let x_labels = band.matches("text-anchor=\"middle\">").count();
        assert!(x_labels < 20, "{x_labels} labels");
    }

    #[test]
    fn confusion_cells_show_counts_and_row_shares() {
        let names = ["a".to_string(), "b".to_string()];
        let svg = confusion_chart("m", &names, &[vec![3, 1], vec![0, 4]]);
        assert_eq!(svg.matches("<rect x=").count(), 4);
        for t in [
            ">3<",
            ">1<",
            ">75%<",
            ">25%<",
            ">0%<",
            ">100%<",
            ">predicted<",
            ">true<",
        ] {
            assert!(svg.contains(t), "{t}");
        }
        // The darkest cell (100%) has white text.
        assert!(svg.contains("fill=\"white\">4<"));
    }
}
