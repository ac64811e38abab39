//! Labelled figure grids like the paper's Figures 1, 5 and 11: rows of images, columns of
//! models or methods, each cell one picture, labels drawn above columns and left of rows.

use super::font::{draw_text, fit_text, line_height, text_width};
use super::png::upscale;
use crate::{Error, Result};
use image::{Rgb, RgbImage};

/// Label size in pixels, and the smallest a long label shrinks to.
const LABEL_PX: f32 = 16.0;
const MIN_PX: f32 = 11.0;

/// A grid of equally sized tiles with labels.
#[derive(Debug, Clone, Default)]
pub struct Grid {
    pub title: String,
    pub col_labels: Vec<String>,
    pub row_labels: Vec<String>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<RgbImage>>,
}

impl Grid {
    /// Renders the grid; tiles smaller than `min_tile` pixels are enlarged by an integer factor.
    pub fn render(&self, min_tile: u32) -> Result<RgbImage> {
        let rows = self.cells.len();
        let cols = self.cells.first().map(|r| r.len()).unwrap_or(0);
        if rows == 0 || cols == 0 {
            return Err(Error::internal("grid: no cells"));
        }
        if self.cells.iter().any(|r| r.len() != cols) {
            return Err(Error::internal(
                "grid: rows have different numbers of cells",
            ));
        }
        let (tw0, th0) = self.cells[0][0].dimensions();
        let k = min_tile.div_ceil(tw0.max(1)).max(1);
        let (tw, th) = (tw0 * k, th0 * k);
        let pad = 6;
        let label_h = line_height(LABEL_PX) + 2 * pad;
        // Row labels get at most twice a tile's width; longer ones shrink, then shorten.
        let row_labels: Vec<(String, f32)> = self
            .row_labels
            .iter()
            .map(|l| fit_text(l, LABEL_PX, MIN_PX, 2 * tw))
            .collect();
        let left = row_labels
            .iter()
            .map(|(l, px)| text_width(l, *px))
            .max()
            .unwrap_or(0)
            + if self.row_labels.is_empty() {
                pad
            } else {
                2 * pad
            };
        let title_h = if self.title.is_empty() { 0 } else { label_h };
        let top = title_h
            + if self.col_labels.is_empty() {
                pad
            } else {
                label_h
            };
        let width = left + cols as u32 * (tw + pad) + pad;
        let height = top + rows as u32 * (th + pad) + pad;
        let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        let ink = [20, 20, 20];
        if !self.title.is_empty() {
            let (t, px) = fit_text(&self.title, LABEL_PX, MIN_PX, width - 2 * pad);
            draw_text(&mut img, pad, pad, &t, px, ink);
        }
        for (c, label) in self.col_labels.iter().enumerate().take(cols) {
            let x = left + c as u32 * (tw + pad);
            // A label wider than its column shrinks (then shortens) rather than overlapping.
            let (t, px) = fit_text(label, LABEL_PX, MIN_PX, tw + pad - 2);
            let lw = text_width(&t, px);
            let x = if lw < tw { x + (tw - lw) / 2 } else { x };
            let dy = line_height(LABEL_PX) - line_height(px);
            draw_text(&mut img, x, title_h + pad + dy, &t, px, ink);
        }
        for (r, row) in self.cells.iter().enumerate() {
            let y = top + r as u32 * (th + pad);
            if let Some((label, px)) = row_labels.get(r) {
                let ly = (y + th / 2).saturating_sub(line_height(*px) / 2);
                draw_text(&mut img, pad, ly, label, *px, ink);
            }
            for (c, cell) in row.iter().enumerate() {
                if cell.dimensions() != (tw0, th0) {
                    return Err(Error::internal(format!(
                        "grid: cell ({r}, {c}) is {:?}, expected {:?}",
                        cell.dimensions(),
                        (tw0, th0)
                    )));
                }
                let tile = upscale(cell, k);
                image::imageops::replace(
                    &mut img,
                    &tile,
                    (left + c as u32 * (tw + pad)) as i64,
                    y as i64,
                );
            }
        }
        Ok(img)
    }
}

/// Caption size in pixels, and the smallest a long caption shrinks to.
const CAPTION_PX: f32 = 13.0;

/// `tile` with `text` on a white strip below it (shrunk, then shortened, to the tile's
/// width), for tiles whose own facts (a prediction, a norm) do not fit a row or column label.
pub fn captioned(tile: &RgbImage, text: &str) -> RgbImage {
    let (w, h) = tile.dimensions();
    let strip = line_height(CAPTION_PX) + 6;
    let mut out = RgbImage::from_pixel(w, h + strip, Rgb([255, 255, 255]));
    image::imageops::replace(&mut out, tile, 0, 0);
    let (t, px) = fit_text(text, CAPTION_PX, 9.0, w.saturating_sub(2));
    let tw = text_width(&t, px);
    draw_text(
        &mut out,
        (w.saturating_sub(tw)) / 2,
        h + 3,
        &t,
        px,
        [20, 20, 20],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captions_sit_below_the_tile() {
        let tile = RgbImage::from_pixel(64, 32, Rgb([0, 0, 255]));
        let c = captioned(&tile, "nevus 0.98");
        assert_eq!(c.width(), 64);
        assert!(c.height() > 32);
        // the tile is untouched, the ink is in the strip
        assert!((0..32).all(|y| (0..64).all(|x| c.get_pixel(x, y).0 == [0, 0, 255])));
        let ink = (32..c.height())
            .flat_map(|y| (0..64).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get_pixel(x, y).0[0] < 128)
            .count();
        assert!(ink > 20, "caption drawn ({ink} dark pixels)");
    }
    #[test]
    fn grid_places_tiles_and_labels() {
        let red = RgbImage::from_pixel(8, 8, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(8, 8, Rgb([0, 0, 255]));
        let g = Grid {
            title: "TITLE".into(),
            col_labels: vec!["A".into(), "B".into()],
            row_labels: vec!["ROW1".into()],
            cells: vec![vec![red, blue]],
        };
        let img = g.render(32).unwrap();
        // Count tile pixels: each 8x8 tile scaled by 4.
        let reds = img.pixels().filter(|p| p.0 == [255, 0, 0]).count();
        let blues = img.pixels().filter(|p| p.0 == [0, 0, 255]).count();
        assert_eq!((reds, blues), (32 * 32, 32 * 32));
        let ink = img
            .pixels()
            .filter(|p| p.0[0] < 100 && p.0[0] == p.0[2])
            .count();
        assert!(ink > 50, "labels drawn");
        let bad = Grid {
            cells: vec![vec![RgbImage::new(8, 8)], vec![]],
            ..Default::default()
        };
        assert!(bad.render(8).is_err());
    }
}
