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

/// A line chart as inline SVG: several named series of (x, y).
pub fn line_chart(title: &str, series: &[(String, Vec<(f64, f64)>)], ylabel: &str) -> String {
    let (w, h, pad) = (520.0, 260.0, 40.0);
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.is_empty() {
        return String::new();
    }
    let (x0, x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let (x1, y1) = (
        if x1 > x0 { x1 } else { x0 + 1.0 },
        if y1 > y0 { y1 } else { y0 + 1.0 },
    );
    let sx = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let sy = |y: f64| h - pad - (y - y0) / (y1 - y0) * (h - 2.0 * pad);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut s = format!(
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"{}\">",
        esc(title)
    );
    s.push_str(&format!(
        "<rect width=\"{w}\" height=\"{h}\" fill=\"white\" stroke=\"#ccc\"/>"
    ));
    s.push_str(&format!(
        "<text x=\"{pad}\" y=\"18\" font-size=\"13\">{}</text>",
        esc(title)
    ));
    s.push_str(&format!("<text x=\"4\" y=\"{}\" font-size=\"11\">{:.3}</text><text x=\"4\" y=\"{}\" font-size=\"11\">{:.3}</text>", sy(y1) + 4.0, y1, sy(y0), y0));
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
        w - pad - 60.0,
        h - 8.0,
        esc(ylabel)
    ));
    for (i, (name, v)) in series.iter().enumerate() {
        let c = colors[i % colors.len()];
        let path: Vec<String> = v
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        ));
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" font-size=\"11\" fill=\"{c}\">{}</text>",
            pad + 8.0 + 130.0 * (i % 3) as f64,
            34.0 + 13.0 * (i / 3) as f64,
            esc(name)
        ));
    }
    s.push_str("</svg>\n");
    s
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
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}figure{{margin:1em 0}}img{{max-width:100%;image-rendering:pixelated}}figcaption{{color:#555;font-size:0.9em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}td:first-child{{text-align:left}}</style></head><body>\n<h1>{}</h1>\n{}</body></html>\n",
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
}
