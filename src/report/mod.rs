//! Pictures and files for people: display of attribution maps (separate from their maths),
//! PNG writing, labelled figure grids, charts (plotters, SVG with PNG copies) and NPY export.

pub mod curves;
pub mod display;
pub mod font;
pub mod grid;
pub mod html;
pub mod npy;
pub mod plot;
pub mod png;
pub mod raster;

pub use display::{Cap, Colormap, DisplayOptions, DisplayPreset, Reduce};
pub use grid::Grid;
