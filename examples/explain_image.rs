//! Load a checkpoint, explain one image with every method, save a labelled grid.
//!
//! `cargo run --release --example explain_image -- RUN_DIR IMAGE [SIZE] [OUT.png]`

use robustlens::attribution::{by_name, predict_classes, MethodOptions};
use robustlens::report::display::{heatmap, tensor_to_image, DisplayOptions};
use robustlens::report::grid::Grid;

fn main() -> robustlens::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: explain_image RUN_DIR IMAGE [SIZE] [OUT.png]");
        std::process::exit(2);
    }
    let size: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(224);
    let out = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "explained.png".into());
    let device = candle_core::Device::Cpu;
    let (model, cfg) = robustlens::model::load_checkpoint(args[1].as_ref(), &device)?;
    let x = robustlens::data::preprocess(args[2].as_ref(), size, &device)?.unsqueeze(0)?;
    let target = predict_classes(&model, &x, 1)?;
    let opts = MethodOptions {
        window: (size / 4).max(2),
        stride: (size / 8).max(1),
        ig_steps: 32,
        samples: 16,
        ..Default::default()
    };
    let pixels: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let mut grid = Grid {
        title: format!(
            "predicted {}",
            cfg.class_names.get(target[0]).cloned().unwrap_or_default()
        ),
        col_labels: vec!["image".into()],
        row_labels: Vec::new(),
        cells: vec![vec![tensor_to_image(&pixels, size, size)]],
    };
    for m in [
        "gradient",
        "input-x-gradient",
        "ig",
        "smoothgrad",
        "occlusion",
        "gradcam",
    ] {
        let a = by_name(m, &opts)?.attribute(&model, &x, &target)?;
        let c = a.dim(1)?;
        grid.col_labels.push(m.into());
        grid.cells[0].push(heatmap(
            &a.flatten_all()?.to_vec1()?,
            c,
            size,
            size,
            &DisplayOptions::default(),
        ));
    }
    robustlens::report::png::save_png(&grid.render(112)?, out.as_ref())?;
    println!("wrote {out}");
    Ok(())
}
