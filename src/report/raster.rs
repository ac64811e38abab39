//! PNG copies of the SVG charts, for image viewers and slides: rendered by `resvg` with the
//! crate's own font (DejaVu Sans, as in the PNG figures), so that a copy looks the same on
//! every machine and needs no system fonts.

use crate::fsutil::write_atomic;
use crate::report::html::svg_file;
use crate::{Error, Result};
use resvg::usvg;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Device pixels per SVG pixel of the PNG copies (sharp on a high-density screen and in print).
pub const PNG_SCALE: f32 = 2.0;

fn options() -> &'static usvg::Options<'static> {
    static OPTIONS: OnceLock<usvg::Options<'static>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let mut db = usvg::fontdb::Database::new();
        db.load_font_data(crate::report::font::FONT_FILE.to_vec());
        db.set_sans_serif_family("DejaVu Sans");
        let mut o = usvg::Options {
            font_family: "DejaVu Sans".into(),
            ..Default::default()
        };
        o.fontdb = Arc::new(db);
        o
    })
}

/// A standalone SVG document (from [`svg_file`]) as PNG bytes at `scale`, on white.
pub fn svg_to_png(svg: &str, scale: f32) -> Result<Vec<u8>> {
    let tree = usvg::Tree::from_str(svg, options())
        .map_err(|e| Error::internal(format!("chart SVG does not parse: {e}")))?;
    let size = tree.size().to_int_size().scale_by(scale).ok_or_else(|| {
        Error::internal(format!("chart SVG has an empty size: {:?}", tree.size()))
    })?;
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| Error::internal("chart PNG: no pixels"))?;
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(
        &tree,
        resvg::tiny_skia::Transform::from_scale(scale, scale),
        &mut pixmap.as_mut(),
    );
    pixmap
        .encode_png()
        .map_err(|e| Error::internal(format!("chart PNG: {e}")))
}

/// Writes the inline chart `svg` as `dir/<stem>.svg` and its PNG copy `dir/<stem>.png`.
pub fn write_chart(dir: &Path, stem: &str, svg: &str) -> Result<()> {
    let doc = svg_file(svg);
    write_atomic(&dir.join(format!("{stem}.svg")), doc.as_bytes())?;
    write_atomic(
        &dir.join(format!("{stem}.png")),
        &svg_to_png(&doc, PNG_SCALE)?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::plot::interval_chart;

    #[test]
    fn a_chart_renders_with_its_text() {
        let svg = svg_file(&interval_chart(
            "ε frontier & µ",
            &[(
                "robust".into(),
                vec![(0.0, 0.5, 0.4, 0.6), (2.0, 0.7, 0.6, 0.8)],
            )],
            "eps",
            "RMA",
            None,
        ));
        let png = svg_to_png(&svg, 2.0).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        // twice the SVG's size
        let w: u32 = svg
            .split("width=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(img.width(), 2 * w);
        // the title's text has ink: dark pixels in the top band, where no data is drawn
        let dark = (0..img.width())
            .flat_map(|x| (0..40).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
            .count();
        assert!(dark > 50, "title text drawn ({dark} dark pixels)");
        // and the series' colour is there
        assert!(img
            .pixels()
            .any(|p| p.0[0] < 60 && p.0[2] > 150 || p.0[0] > 150 && p.0[2] < 60));
    }
}
