//! Kernels that candle lacks or gets wrong, as candle custom ops with their own backward.

pub mod maxpool;

pub use maxpool::max_pool2d;
