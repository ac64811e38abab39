//! Charts drawn with `plotters` (its SVG backend): series with 95% intervals as error bars or
//! bands, histograms, a confusion matrix and an accuracy bar chart. Every chart has a title,
//! axes with round ticks, labels and a light grid, and its legend in a strip of its own under
//! the plot, never over the data. Text is laid out with the crate's own font (DejaVu Sans,
//! through `ab_glyph`), the same font the PNG copies are rendered with, so a label that fits
//! in the layout fits on the page. The SVG is inline-ready (`role="img"`, `aria-label` = the
//! title); [`crate::report::html::svg_file`] turns it into a file of its own.

use crate::report::font::FONT_FILE;
use crate::report::html::esc;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::ops::Range;
use std::sync::OnceLock;

/// One series: a name and its points `(x, y, low, high)`; `low`/`high` NaN where there is no
/// interval.
pub type IntervalSeries = (String, Vec<(f64, f64, f64, f64)>);

/// matplotlib's `tab10`, the colours a reader of this field knows.
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x8c, 0x56, 0x4b),
    RGBColor(0xe3, 0x77, 0xc2),
    RGBColor(0x17, 0xbe, 0xcf),
];
const INK: RGBColor = RGBColor(0x33, 0x33, 0x33);
const GRID: RGBColor = RGBColor(0xe4, 0xe4, 0xe4);
const MUTED: RGBColor = RGBColor(0x55, 0x55, 0x55);
const FAMILY: &str = "sans-serif";
/// Font sizes in plotters' units (the SVG font size is 1/1.24 of them).
const TITLE_PT: u32 = 19;
const LABEL_PT: u32 = 16;
const TICK_PT: u32 = 15;
const LEGEND_PT: u32 = 15;

const WIDTH: u32 = 500;
const PLOT_HEIGHT: u32 = 320;
const LEGEND_ROW: u32 = 18;
const LEGEND_LEFT: i32 = 70;

/// The shipped font under the family name the charts use (once per process).
fn font_ready() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        if plotters::style::register_font(FAMILY, FontStyle::Normal, FONT_FILE).is_err() {
            panic!("the shipped font does not parse");
        }
    });
}

fn font(size: u32) -> TextStyle<'static> {
    font_ready();
    (FAMILY, size).into_font().color(&INK)
}

/// The width of `text` in the charts' font at `size`, in pixels.
fn text_width(text: &str, size: u32) -> u32 {
    font(size).font.box_size(text).map(|b| b.0).unwrap_or(0)
}

/// A linear axis over `lo..hi` with its ticks (and grid lines) exactly at `ticks`: plotters'
/// `with_key_points` has no value formatter for `f64`, this one does.
#[derive(Clone, Debug)]
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

fn axis(range: Range<f64>, ticks: Vec<f64>) -> Axis {
    Axis {
        lo: range.start,
        hi: range.end,
        ticks,
    }
}

impl Ranged for Axis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + ((limit.1 - limit.0) as f64 * t).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.lo..self.hi
    }
}

/// How a [`Chart`] draws its series.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Markers joined by lines, a vertical error bar where a point has an interval.
    Points,
    /// Lines with their intervals as shaded bands (markers when a series has at most 12
    /// points): dense curves such as deletion and insertion.
    Bands,
    /// A histogram: one bar per x value and series, grouped, with error bars; the x values
    /// are categories.
    Bars,
}

/// A chart of series against x, described before it is drawn so that charts can be drawn
/// alone ([`Chart::svg`]) or side by side in one file ([`side_by_side`]).
#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub series: Vec<IntervalSeries>,
    pub xlabel: String,
    pub ylabel: String,
    pub style: Style,
    /// Labelled vertical dashed lines at these x values (a phase boundary, say).
    pub marks: Vec<(f64, String)>,
    /// The range the values can take (`[0, 1]` for accuracies and shares): the y axis does
    /// not reach beyond it, and an interval that does is cut at the axis. `None`: the axis
    /// spans the data and every interval.
    pub bounds: Bounds,
}

/// The range a chart's values can take; see [`Chart::bounds`].
pub type Bounds = Option<(f64, f64)>;
/// Accuracies, shares, probabilities and the mask metrics.
pub const UNIT: Bounds = Some((0.0, 1.0));
/// Correlations and SSIM.
pub const SIGNED_UNIT: Bounds = Some((-1.0, 1.0));

fn finite_points(series: &[IntervalSeries]) -> Vec<(f64, f64, f64, f64)> {
    series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|p| p.0.is_finite() && p.1.is_finite())
        .collect()
}

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

/// `v` with at most three decimals and no trailing zeros (`0.5`, `2`, `0.125`).
pub fn trim_number(v: f64) -> String {
    let t = format!("{v:.3}");
    let t = t.trim_end_matches('0').trim_end_matches('.');
    if t == "-0" {
        "0".into()
    } else {
        t.to_string()
    }
}

/// The series of a legend, wrapped into rows that fit `width`.
fn legend_rows(names: &[&str], width: u32) -> Vec<Vec<usize>> {
    let mut rows: Vec<Vec<usize>> = vec![Vec::new()];
    let mut x = LEGEND_LEFT as u32;
    for (i, name) in names.iter().enumerate() {
        let w = 26 + text_width(name, LEGEND_PT) + 18;
        let row = rows.last_mut().expect("one row at least");
        if !row.is_empty() && x + w > width {
            rows.push(vec![i]);
            x = LEGEND_LEFT as u32 + w;
        } else {
            row.push(i);
            x += w;
        }
    }
    rows
}

/// Draws a legend (`(name, colour)`; a swatch when `boxes`, else a line with a marker when
/// `markers`) into `area`, row by row as [`legend_rows`] wraps it.
fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    entries: &[(&str, RGBColor)],
    boxes: bool,
    markers: bool,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let names: Vec<&str> = entries.iter().map(|e| e.0).collect();
    let rows = legend_rows(&names, area.dim_in_pixel().0);
    let style = font(LEGEND_PT).pos(Pos::new(HPos::Left, VPos::Center));
    for (r, row) in rows.iter().enumerate() {
        let y = 4 + LEGEND_ROW as i32 * r as i32 + LEGEND_ROW as i32 / 2;
        let mut x = LEGEND_LEFT;
        for &i in row {
            let (name, c) = entries[i];
            if boxes {
                area.draw(&Rectangle::new(
                    [(x + 4, y - 6), (x + 16, y + 6)],
                    c.filled(),
                ))?;
            } else {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 20, y)],
                    c.stroke_width(2),
                ))?;
                if markers {
                    area.draw(&Circle::new((x + 10, y), 3, c.filled()))?;
                }
            }
            area.draw(&Text::new(name.to_string(), (x + 26, y), style.clone()))?;
            x += 26 + text_width(name, LEGEND_PT) as i32 + 18;
        }
    }
    Ok(())
}

/// A vertical error bar at `x` from `lo` to `hi`, cut to `[y0, y1]`: caps `cap` pixels each
/// side at the ends that are not cut (a cut end runs to the limit without a cap).
fn error_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<DB, Cartesian2d<Axis, Axis>>,
    x: f64,
    (lo, hi): (f64, f64),
    (y0, y1): (f64, f64),
    cap: i32,
    style: ShapeStyle,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (a, b) = (lo.max(y0), hi.min(y1));
    if b - a <= 0.0 || (b - a).is_nan() {
        // an interval of no width (every image or seed alike) has nothing to draw
        return Ok(());
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(x, a), (x, b)],
        style,
    )))?;
    for y in [(lo >= y0).then_some(lo), (hi <= y1).then_some(hi)]
        .into_iter()
        .flatten()
    {
        chart.draw_series(std::iter::once(
            EmptyElement::at((x, y)) + PathElement::new(vec![(-cap, 0), (cap, 0)], style),
        ))?;
    }
    Ok(())
}

impl Chart {
    fn new(title: &str, series: &[IntervalSeries], xlabel: &str, ylabel: &str, s: Style) -> Self {
        Chart {
            title: title.to_string(),
            series: series.to_vec(),
            xlabel: xlabel.to_string(),
            ylabel: ylabel.to_string(),
            style: s,
            marks: Vec::new(),
            bounds: None,
        }
    }

    /// Markers and lines with error bars ([`Style::Points`]).
    pub fn points(title: &str, series: &[IntervalSeries], xlabel: &str, ylabel: &str) -> Self {
        Chart::new(title, series, xlabel, ylabel, Style::Points)
    }

    /// Lines with shaded interval bands ([`Style::Bands`]).
    pub fn bands(title: &str, series: &[IntervalSeries], xlabel: &str, ylabel: &str) -> Self {
        Chart::new(title, series, xlabel, ylabel, Style::Bands)
    }

    /// A grouped histogram over the x values ([`Style::Bars`]).
    pub fn bars(title: &str, series: &[IntervalSeries], xlabel: &str, ylabel: &str) -> Self {
        Chart::new(title, series, xlabel, ylabel, Style::Bars)
    }

    /// The chart with its values' range (see [`Chart::bounds`]).
    pub fn bounded(mut self, bounds: Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// The chart with labelled dashed lines at `marks`.
    pub fn marked(mut self, marks: &[(f64, String)]) -> Self {
        self.marks = marks.to_vec();
        self
    }

    fn is_empty(&self) -> bool {
        finite_points(&self.series).is_empty()
    }

    fn legend_height(&self) -> u32 {
        let names: Vec<&str> = self.series.iter().map(|s| s.0.as_str()).collect();
        8 + LEGEND_ROW * legend_rows(&names, WIDTH).len() as u32
    }

    /// The chart's size in pixels (it grows with its legend's rows).
    pub fn size(&self) -> (u32, u32) {
        (WIDTH, PLOT_HEIGHT + self.legend_height())
    }

    /// The chart as inline SVG; empty when no series has a finite point.
    pub fn svg(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        render(self.size(), &self.title, |root| self.draw(root))
    }

    fn draw<DB: DrawingBackend>(
        &self,
        root: &DrawingArea<DB, Shift>,
    ) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
        root.fill(&WHITE)?;
        let pts = finite_points(&self.series);
        if pts.is_empty() {
            return Ok(());
        }
        let h = root.dim_in_pixel().1;
        let (plot, legend) = root.split_vertically(h - self.legend_height());
        let mut xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        let (b0, b1) = self.bounds.unwrap_or((f64::MIN, f64::MAX));
        let values = pts
            .iter()
            .flat_map(|p| [p.1, p.2, p.3])
            .filter(|v| v.is_finite())
            .map(|v| v.clamp(b0, b1));
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        let bars = self.style == Style::Bars;
        let (y0, y1) = if bars {
            (lo.min(0.0), if hi > 0.0 { hi * 1.1 } else { 1.0 })
        } else {
            let pad = ((hi - lo) * 0.08).max(1e-3);
            (lo - pad, hi + pad)
        };
        // x: the points' own values as ticks when they are few (eps 0, 0.5, 1, 2 ...), round
        // ones beyond 12; a histogram's x values are categories at 0, 1, ...
        let (x0, x1, xticks) = if bars {
            let n = xs.len() as f64;
            (-0.5, n - 0.5, (0..xs.len()).map(|i| i as f64).collect())
        } else {
            let (a, b) = if xs[xs.len() - 1] > xs[0] {
                (xs[0], xs[xs.len() - 1])
            } else {
                (xs[0] - 1.0, xs[0] + 1.0)
            };
            let m = (b - a) * 0.06;
            let t = if xs.len() <= 12 {
                xs.clone()
            } else {
                ticks(a, b)
            };
            (a - m, b + m, t)
        };
        let xname = |v: &f64| -> String {
            if bars {
                xs.get(v.round().max(0.0) as usize)
                    .map(|x| trim_number(*x))
                    .unwrap_or_default()
            } else {
                trim_number(*v)
            }
        };
        let mut chart = ChartBuilder::on(&plot)
            .caption(&self.title, font(TITLE_PT))
            .margin_top(8)
            .margin_left(6)
            .margin_right(20)
            .x_label_area_size(46)
            .y_label_area_size(64)
            .build_cartesian_2d(axis(x0..x1, xticks), axis(y0..y1, ticks(y0, y1)))?;
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(self.xlabel.as_str())
            .y_desc(self.ylabel.as_str())
            .x_label_formatter(&xname)
            .y_label_formatter(&|v| trim_number(*v))
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(INK)
            .label_style(font(TICK_PT))
            .axis_desc_style(font(LABEL_PT));
        if bars {
            mesh.disable_x_mesh();
        }
        mesh.draw()?;
        for (x, label) in self.marks.iter().filter(|m| m.0 >= x0 && m.0 <= x1) {
            chart.draw_series(std::iter::once(DashedPathElement::new(
                vec![(*x, y0), (*x, y1)],
                5,
                4,
                MUTED.stroke_width(1),
            )))?;
            chart.draw_series(std::iter::once(
                EmptyElement::at((*x, y1))
                    + Text::new(label.clone(), (4, 4), font(TICK_PT - 1).color(&MUTED)),
            ))?;
        }
        // intervals end at the axis, or at the values' bounds inside it
        let limits = (y0.max(b0), y1.min(b1));
        let n = self.series.len().max(1) as f64;
        let with_bars = self
            .series
            .iter()
            .filter(|s| s.1.iter().any(|p| p.2.is_finite() && p.3.is_finite()))
            .count();
        let dodge = if self.style == Style::Points && with_bars > 1 {
            (x1 - x0) * 0.008
        } else {
            0.0
        };
        for (i, (_, v)) in self.series.iter().enumerate() {
            let c = PALETTE[i % PALETTE.len()];
            let ok: Vec<(f64, f64, f64, f64)> = v
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            let interval = |p: &(f64, f64, f64, f64)| p.2.is_finite() && p.3.is_finite();
            // series with error bars side by side at a shared x, a little apart
            let ok: Vec<(f64, f64, f64, f64)> = ok
                .into_iter()
                .map(|p| (p.0 + dodge * (i as f64 - (n - 1.0) / 2.0), p.1, p.2, p.3))
                .collect();
            if bars {
                let width = 0.8 / n;
                for p in &ok {
                    let k = xs.iter().position(|x| *x == p.0).unwrap_or(0) as f64;
                    let left = k - 0.4 + width * i as f64;
                    chart.draw_series(std::iter::once(Rectangle::new(
                        [(left, 0.0), (left + width * 0.92, p.1)],
                        c.mix(0.85).filled(),
                    )))?;
                    if interval(p) {
                        let x = left + width * 0.46;
                        error_bar(&mut chart, x, (p.2, p.3), limits, 3, INK.into())?;
                    }
                }
                continue;
            }
            if self.style == Style::Bands {
                let band: Vec<_> = ok.iter().filter(|p| interval(p)).collect();
                let upper = band.iter().map(|p| (p.0, p.3.min(y1)));
                let lower = band.iter().rev().map(|p| (p.0, p.2.max(y0)));
                let poly: Vec<(f64, f64)> = upper.chain(lower).collect();
                if !poly.is_empty() {
                    chart.draw_series(std::iter::once(Polygon::new(poly, c.mix(0.18).filled())))?;
                }
            }
            if ok.len() > 1 {
                chart.draw_series(LineSeries::new(
                    ok.iter().map(|p| (p.0, p.1)),
                    c.stroke_width(2),
                ))?;
            }
            let markers = self.style == Style::Points || ok.len() <= 12;
            if self.style == Style::Points {
                for p in ok.iter().filter(|p| interval(p)) {
                    error_bar(&mut chart, p.0, (p.2, p.3), limits, 4, c.stroke_width(1))?;
                }
            }
            if markers {
                chart.draw_series(ok.iter().map(|p| Circle::new((p.0, p.1), 3, c.filled())))?;
            }
        }
        let entries: Vec<(&str, RGBColor)> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, s)| (s.0.as_str(), PALETTE[i % PALETTE.len()]))
            .collect();
        let markers = self.style == Style::Points || self.series.iter().all(|s| s.1.len() <= 12);
        draw_legend(&legend, &entries, bars, markers)
    }
}

/// Draws with `draw` into an SVG of `size` and returns it inline-ready: labelled with `title`
/// for screen readers and tests, one line per text element.
fn render<F>(size: (u32, u32), title: &str, draw: F) -> String
where
    F: FnOnce(&DrawingArea<SVGBackend, Shift>) -> Result<(), DrawingAreaErrorKind<std::io::Error>>,
{
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, size).into_drawing_area();
        // Drawing into a string with the shipped font has no failure of its own to report.
        draw(&root).expect("drawing a chart into memory");
        root.present().expect("finishing a chart in memory");
    }
    // plotters writes a text element over three lines; one line each keeps the text exact
    let mut out = String::with_capacity(s.len());
    let mut lines = s.lines();
    while let Some(line) = lines.next() {
        out.push_str(line);
        if line.starts_with("<text") {
            for next in lines.by_ref() {
                out.push_str(next);
                if next.ends_with("</text>") {
                    break;
                }
            }
        }
        out.push('\n');
    }
    // inline SVG in HTML needs no namespace (html::svg_file adds it for a file of its own)
    out.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1)
        .replacen(
            "<svg ",
            &format!(
                "<svg role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\" ",
                esc(title)
            ),
            1,
        )
}

/// A chart of series with 95% intervals as inline SVG: each point `(x, y, low, high)` a marker
/// with an error bar from low to high (none where they are NaN), a series' points joined; x
/// ticks at the points' x values (round ones beyond 12). Empty without finite points.
pub fn interval_chart(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
    bounds: Bounds,
) -> String {
    Chart::points(title, series, xlabel, ylabel)
        .bounded(bounds)
        .svg()
}

/// [`interval_chart`] for dense curves: each series a line with its interval as a shaded band.
pub fn band_chart(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
    bounds: Bounds,
) -> String {
    Chart::bands(title, series, xlabel, ylabel)
        .bounded(bounds)
        .svg()
}

/// A grouped histogram as inline SVG: for each x value (a category), one bar per series with
/// its error bar. Empty without finite points.
pub fn histogram_chart(
    title: &str,
    series: &[IntervalSeries],
    xlabel: &str,
    ylabel: &str,
    bounds: Bounds,
) -> String {
    Chart::bars(title, series, xlabel, ylabel)
        .bounded(bounds)
        .svg()
}

/// Charts side by side in one SVG (each at its own size, top-aligned), for one file; their
/// titles joined label it. Empty charts are left out; empty when all are.
pub fn side_by_side(charts: &[Chart]) -> String {
    let charts: Vec<&Chart> = charts.iter().filter(|c| !c.is_empty()).collect();
    if charts.is_empty() {
        return String::new();
    }
    let w: u32 = charts.iter().map(|c| c.size().0).sum();
    let h = charts.iter().map(|c| c.size().1).max().unwrap_or(0);
    let title = charts
        .iter()
        .map(|c| c.title.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    render((w, h), &title, |root| {
        root.fill(&WHITE)?;
        let mut rest = root.clone();
        for c in &charts {
            let (cw, ch) = c.size();
            let (left, right) = rest.split_horizontally(cw);
            c.draw(&left.split_vertically(ch).0)?;
            rest = right;
        }
        Ok(())
    })
}

/// A confusion matrix as inline SVG: rows the true classes, columns the predicted ones; each
/// cell its count and its share of the row, shaded by that share (matplotlib's Blues).
pub fn confusion_chart(title: &str, names: &[String], counts: &[Vec<usize>]) -> String {
    let k = names.len();
    if k == 0 {
        return String::new();
    }
    let name_w = names
        .iter()
        .map(|n| text_width(n, TICK_PT))
        .max()
        .unwrap_or(0);
    // cells wide enough for the column names under them
    let cell = (name_w + 14).max(62);
    let left = name_w + 44;
    let bottom = 56;
    let top = 40;
    let size = (left + cell * k as u32 + 20, top + cell * k as u32 + bottom);
    let centres: Vec<f64> = (0..k).map(|i| i as f64 + 0.5).collect();
    let kf = k as f64;
    render(size, title, |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_PT))
            .margin_top(8)
            .margin_right(20)
            .x_label_area_size(bottom)
            .y_label_area_size(left)
            .build_cartesian_2d(
                axis(0.0..kf, centres.clone()),
                axis(0.0..kf, centres.clone()),
            )?;
        let name = |v: f64| names.get(v.floor().max(0.0) as usize).cloned();
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted")
            .y_desc("true")
            .x_label_formatter(&|v| name(*v).unwrap_or_default())
            .y_label_formatter(&|v| name(kf - 1.0 - v.floor()).unwrap_or_default())
            .axis_style(INK)
            .label_style(font(TICK_PT))
            .axis_desc_style(font(LABEL_PT))
            .draw()?;
        for (i, row) in counts.iter().enumerate().take(k) {
            let total: usize = row.iter().sum();
            for (j, &c) in row.iter().enumerate().take(k) {
                let share = if total > 0 {
                    c as f64 / total as f64
                } else {
                    0.0
                };
                let col = colorous::BLUES.eval_continuous(share);
                let ink = if share > 0.55 { WHITE } else { INK };
                let (x, y) = (j as f64, kf - 1.0 - i as f64);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x, y), (x + 1.0, y + 1.0)],
                    RGBColor(col.r, col.g, col.b).filled(),
                )))?;
                let centre = Pos::new(HPos::Center, VPos::Center);
                chart.draw_series(std::iter::once(
                    EmptyElement::at((x + 0.5, y + 0.5))
                        + Text::new(
                            c.to_string(),
                            (0, -8),
                            font(LABEL_PT + 2).color(&ink).pos(centre),
                        )
                        + Text::new(
                            format!("{:.0}%", 100.0 * share),
                            (0, 11),
                            font(TICK_PT - 1).color(&ink).pos(centre),
                        ),
                ))?;
            }
        }
        Ok(())
    })
}

/// A horizontal bar chart of values in `[0, 1]` as inline SVG, drawn as percentages: per
/// entry `(name, first, second)` a bar for `first` and, where there is one, a bar for
/// `second` under it; `legend` names the two.
pub fn bar_chart(title: &str, legend: [&str; 2], bars: &[(String, f64, Option<f64>)]) -> String {
    if bars.is_empty() {
        return String::new();
    }
    let n = bars.len();
    let name_w = bars
        .iter()
        .map(|b| text_width(&b.0, TICK_PT))
        .max()
        .unwrap_or(0);
    let left = name_w + 16;
    let entries = [(legend[0], PALETTE[0]), (legend[1], PALETTE[1])];
    let two = bars.iter().any(|b| b.2.is_some());
    let entries = &entries[..if two { 2 } else { 1 }];
    let legend_h = 8 + LEGEND_ROW;
    let plot_h = 70 + 40 * n as u32;
    let size = (left + 480, plot_h + legend_h);
    let centres: Vec<f64> = (0..n).map(|i| i as f64 + 0.5).collect();
    let nf = n as f64;
    render(size, title, |root| {
        root.fill(&WHITE)?;
        let (plot, strip) = root.split_vertically(plot_h);
        let mut chart = ChartBuilder::on(&plot)
            .caption(title, font(TITLE_PT))
            .margin_top(8)
            .margin_right(64)
            .x_label_area_size(30)
            .y_label_area_size(left)
            .build_cartesian_2d(
                axis(0.0..1.0, ticks(0.0, 1.0)),
                axis(0.0..nf, centres.clone()),
            )?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .x_label_formatter(&|v| format!("{:.0}%", 100.0 * v))
            .y_label_formatter(&|v| {
                bars.get((nf - 1.0 - v.floor()).max(0.0) as usize)
                    .map(|b| b.0.clone())
                    .unwrap_or_default()
            })
            .axis_style(INK)
            .label_style(font(TICK_PT))
            .draw()?;
        let label = font(TICK_PT - 1).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, (_, a, b)) in bars.iter().enumerate() {
            let y = nf - 1.0 - i as f64;
            let mut draw = |v: f64, lo: f64, hi: f64, c: RGBColor| {
                let v = v.clamp(0.0, 1.0);
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y + lo), (v, y + hi)],
                    c.filled(),
                )))?;
                chart.draw_series(std::iter::once(
                    EmptyElement::at((v, y + (lo + hi) / 2.0))
                        + Text::new(format!("{:.1}%", 100.0 * v), (4, 0), label.clone()),
                ))?;
                Ok::<_, DrawingAreaErrorKind<std::io::Error>>(())
            };
            if let Some(r) = b {
                draw(*a, 0.52, 0.86, PALETTE[0])?;
                draw(*r, 0.14, 0.48, PALETTE[1])?;
            } else {
                draw(*a, 0.3, 0.7, PALETTE[0])?;
            }
        }
        draw_legend(&strip, entries, true, false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series() -> Vec<IntervalSeries> {
        vec![
            (
                "clean & robust ε".into(),
                vec![(0.0, 0.9, 0.85, 0.95), (0.5, 0.8, f64::NAN, f64::NAN)],
            ),
            (
                "under attack".into(),
                vec![(0.0, 0.3, 0.2, 0.4), (0.5, 0.6, 0.5, 0.7)],
            ),
        ]
    }

    #[test]
    fn a_chart_has_its_title_axes_ticks_legend_and_error_bars() {
        let svg = interval_chart("Accuracy against eps", &series(), "eps", "accuracy", None);
        for needle in [
            "aria-label=\"Accuracy against eps\"",
            ">Accuracy against eps</text>",
            ">eps</text>",
            ">accuracy</text>",
            ">0.5</text>",
            ">clean &amp; robust ε</text>",
            ">under attack</text>",
            "<polyline",
            "<circle",
        ] {
            assert!(svg.contains(needle), "{needle} missing in {svg}");
        }
        // the y label is rotated, and the legend lies below the plot area
        assert!(svg.contains("rotate(270"), "rotated y label");
        let y_of = |needle: &str| -> f64 {
            let i = svg.find(needle).unwrap();
            let tag = &svg[svg[..i].rfind("<text").unwrap()..i];
            let y = tag
                .split(" y=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            y.parse().unwrap()
        };
        assert!(
            y_of(">under attack</text>") > y_of(">eps</text>"),
            "legend under the x label"
        );
        assert!(interval_chart("t", &[("a".into(), vec![])], "x", "y", None).is_empty());
    }

    #[test]
    fn bounds_keep_the_axis_in_range_and_cut_intervals_without_a_cap() {
        // two seeds: a t interval far wider than [0, 1]
        let wide = vec![(
            "clean".to_string(),
            vec![(0.0, 0.4, -0.9, 1.9), (4.0, 0.3, 0.2, 0.4)],
        )];
        let svg = interval_chart("acc", &wide, "eps", "accuracy", UNIT);
        let ticks: Vec<f64> = svg
            .lines()
            .filter(|l| l.contains("text-anchor=\"end\""))
            .filter_map(|l| {
                l.rsplit_once('>')?
                    .0
                    .rsplit_once('>')?
                    .1
                    .strip_suffix("</text")
            })
            .filter_map(|t| t.parse().ok())
            .collect();
        assert!(!ticks.is_empty(), "{svg}");
        assert!(ticks.iter().all(|t| (0.0..=1.0).contains(t)), "{ticks:?}");
        let free = interval_chart("acc", &wide, "eps", "accuracy", None);
        assert!(
            free.contains(">-1</text>") && free.contains(">2</text>"),
            "without bounds the axis spans the interval"
        );
        // caps: two at the second point, none at the cut ends of the first
        let caps = |s: &str| {
            s.split("points=\"")
                .skip(1)
                .filter_map(|r| {
                    let p: Vec<(i32, i32)> = r
                        .split('"')
                        .next()?
                        .split_whitespace()
                        .filter_map(|xy| {
                            let (x, y) = xy.split_once(',')?;
                            Some((x.parse().ok()?, y.parse().ok()?))
                        })
                        .collect();
                    // a cap: horizontal, 8 px (4 each side)
                    (p.len() == 2 && p[0].1 == p[1].1 && p[1].0 - p[0].0 == 8).then_some(())
                })
                .count()
        };
        assert_eq!(caps(&free) - caps(&svg), 2, "the cut ends have no cap");
    }

    #[test]
    fn a_histogram_has_one_bar_per_value_and_series() {
        let svg = histogram_chart("Best eps", &series(), "eps", "share", UNIT);
        // 2 series x 2 values; the background and the legend swatches are rects too
        let rects = svg.matches("<rect").count();
        assert!(rects >= 4 + 2, "{rects}");
        assert!(svg.contains(">0.5</text>") && svg.contains(">0</text>"));
    }

    #[test]
    fn side_by_side_is_one_svg_as_wide_as_its_charts() {
        let a = Chart::points("loss", &series(), "epoch", "loss")
            .marked(&[(0.25, "full phase".into())]);
        let b = Chart::points("accuracy", &series(), "epoch", "accuracy");
        let svg = side_by_side(&[a.clone(), b]);
        assert_eq!(svg.matches("<svg").count(), 1);
        assert!(svg.contains(&format!("width=\"{}\"", 2 * a.size().0)));
        assert!(svg.contains("aria-label=\"loss; accuracy\""));
        assert!(svg.contains(">full phase</text>"));
    }

    #[test]
    fn confusion_and_bar_charts_show_counts_shares_and_names() {
        let names = vec!["benign".to_string(), "malignant".to_string()];
        let cm = confusion_chart("test split", &names, &[vec![8, 2], vec![1, 9]]);
        for needle in [
            ">8</text>",
            ">80%</text>",
            ">malignant</text>",
            ">predicted</text>",
        ] {
            assert!(cm.contains(needle), "{needle}");
        }
        let bars = bar_chart(
            "accuracy",
            ["balanced", "robust"],
            &[("standard".into(), 0.858, Some(0.3))],
        );
        for needle in [
            ">85.8%</text>",
            ">30.0%</text>",
            ">standard</text>",
            ">robust</text>",
        ] {
            assert!(bars.contains(needle), "{needle}");
        }
    }
}
