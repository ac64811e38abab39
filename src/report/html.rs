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

/// `svg` (a chart from [`crate::report::plot`]) as a file of its own: with the XML
/// declaration, and the SVG namespace where the inline SVG does without it.
pub fn svg_file(svg: &str) -> String {
    let svg = svg.trim_start();
    let head = svg.split('>').next().unwrap_or("");
    let body = if head.contains("xmlns=") {
        svg.to_string()
    } else {
        let rest = svg.strip_prefix("<svg ").unwrap_or(svg);
        format!("<svg xmlns=\"http://www.w3.org/2000/svg\" {rest}")
    };
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}")
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
}
