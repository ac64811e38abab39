//! Text in PNG figures: DejaVu Sans, shipped with the crate (`assets/fonts/`, its licence
//! beside it), rasterised and anti-aliased by `ab_glyph`. It covers Latin, Greek and the
//! usual symbols, so labels such as `ε = 2`, `µ`, `[0.52, 0.61]` or `IG & SmoothGrad` come out
//! as written. Sizes are in pixels: `px` is the height of one line (ascent to descent).

use ab_glyph::{point, Font, FontRef, GlyphId, PxScale, ScaleFont};
use image::RgbImage;
use std::sync::OnceLock;

pub(crate) static FONT_FILE: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn font() -> &'static FontRef<'static> {
    static FONT: OnceLock<FontRef<'static>> = OnceLock::new();
    FONT.get_or_init(|| FontRef::try_from_slice(FONT_FILE).expect("the shipped font parses"))
}

/// The glyphs of `text` with their x offsets from the start of the line, at `px`.
fn layout(text: &str, px: f32) -> (Vec<(GlyphId, f32)>, f32) {
    let f = font().as_scaled(PxScale::from(px));
    let mut caret = 0f32;
    let mut prev: Option<GlyphId> = None;
    let mut out = Vec::with_capacity(text.len());
    for ch in text.chars() {
        let id = f.glyph_id(ch);
        if let Some(p) = prev {
            caret += f.kern(p, id);
        }
        out.push((id, caret));
        caret += f.h_advance(id);
        prev = Some(id);
    }
    (out, caret)
}

/// Width in pixels of `text` at `px`.
pub fn text_width(text: &str, px: f32) -> u32 {
    layout(text, px).1.ceil() as u32
}

/// Height in pixels of one line at `px`.
pub fn line_height(px: f32) -> u32 {
    px.ceil() as u32
}

/// The largest size from `px` down to `min_px` at which `text` fits in `width` pixels; below
/// that, `text` shortened with an ellipsis at `min_px`.
pub fn fit_text(text: &str, px: f32, min_px: f32, width: u32) -> (String, f32) {
    let w = text_width(text, px);
    if w <= width {
        return (text.to_string(), px);
    }
    let shrunk = (px * width as f32 / w as f32).floor();
    if shrunk >= min_px {
        return (text.to_string(), shrunk);
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let t: String = chars.iter().collect::<String>() + "…";
        if text_width(&t, min_px) <= width {
            return (t, min_px);
        }
    }
    (String::new(), min_px)
}

/// Draws `text` with the top-left corner of its line at (x, y), blended over the pixels there.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, px: f32, color: [u8; 3]) {
    let scale = PxScale::from(px);
    let ascent = font().as_scaled(scale).ascent();
    let (w, h) = img.dimensions();
    let (glyphs, _) = layout(text, px);
    for (id, dx) in glyphs {
        let g = id.with_scale_and_position(scale, point(x as f32 + dx, y as f32 + ascent));
        let Some(outline) = font().outline_glyph(g) else {
            continue; // a space
        };
        let b = outline.px_bounds();
        outline.draw(|gx, gy, cover| {
            let px = b.min.x as i64 + gx as i64;
            let py = b.min.y as i64 + gy as i64;
            if px < 0 || py < 0 || px >= w as i64 || py >= h as i64 {
                return;
            }
            let k = cover.clamp(0.0, 1.0);
            let p = img.get_pixel_mut(px as u32, py as u32);
            for (c, ink) in p.0.iter_mut().zip(color) {
                *c = ((1.0 - k) * *c as f32 + k * ink as f32).round() as u8;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn ink(text: &str) -> usize {
        let mut img = RgbImage::from_pixel(80, 40, Rgb([255, 255, 255]));
        draw_text(&mut img, 4, 4, text, 24.0, [0, 0, 0]);
        img.pixels().filter(|p| p.0[0] < 128).count()
    }

    #[test]
    fn glyphs_beyond_ascii_have_ink() {
        for g in ["é", "µ", "ε", "[", "]", "&", "+"] {
            assert!(ink(g) > 8, "{g:?} drew {} dark pixels", ink(g));
        }
        assert!(ink("é") > ink("e"), "the accent adds ink");
        assert_eq!(ink(" "), 0);
    }

    #[test]
    fn widths_and_fitting() {
        assert!(text_width("WW", 20.0) > text_width("W", 20.0));
        assert!(text_width("abc", 30.0) > text_width("abc", 15.0));
        assert_eq!(
            fit_text("short", 16.0, 10.0, 500),
            ("short".to_string(), 16.0)
        );
        let long = "robust-eps8 fine-tuned groups 2-5";
        let (t, px) = fit_text(long, 16.0, 10.0, 120);
        assert!(text_width(&t, px) <= 120);
        assert!(px >= 10.0);
        let (t, px) = fit_text(long, 16.0, 10.0, 60);
        assert!(t.ends_with('…') && px == 10.0 && text_width(&t, px) <= 60);
    }
}
