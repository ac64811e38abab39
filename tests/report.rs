//! `report` end to end: two tiny runs, the report's files and numbers, and the page itself
//! loaded in headless Chromium (Debian's `chromium`): no script or load errors, no network
//! requests, and every image decoded.

mod common;
use common::run_cli as run;
use std::path::{Path, PathBuf};
use std::process::Command;

const TINY: &[&str] = &[
    "--image-size",
    "32",
    "--train-per-class",
    "6",
    "--val-per-class",
    "2",
    "--test-per-class",
    "3",
    "--batch-size",
    "6",
    "--head-batch-size",
    "6",
    "--head-epochs",
    "1",
    "--epochs",
    "1",
    "--seed",
    "2",
    "--weights",
    "none",
];

/// Chromium, if installed. CI (`.ci/run`) installs Debian's package and sets
/// `ROBUSTLENS_REQUIRE_BROWSER=1`, which turns a missing browser into a failure; elsewhere the
/// browser checks are skipped with a message.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROBUSTLENS_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if let Ok(o) = Command::new("which").arg(c).output() {
            if o.status.success() {
                return Some(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
            }
        }
    }
    let msg = "headless Chromium is needed for the report's browser check: apt-get install chromium (or set ROBUSTLENS_CHROMIUM=/path/to/chrome)";
    if std::env::var_os("ROBUSTLENS_REQUIRE_BROWSER").is_some() {
        panic!("{msg}");
    }
    eprintln!("SKIPPED browser check: {msg}");
    None
}

/// What the page reported about itself after loading.
#[derive(Debug, serde::Deserialize)]
struct PageCheck {
    images: usize,
    broken: Vec<String>,
    errors: Vec<String>,
    resources: Vec<String>,
}

/// Headless Chromium with no network of its own and a fresh profile in `dir`.
fn headless(browser: &Path, dir: &Path) -> Command {
    let mut c = Command::new(browser);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ])
    .arg(format!("--user-data-dir={}", dir.join("profile").display()));
    c
}

/// Loads `html` in headless Chromium with a probe script added, returning what it saw
/// (`None` without a browser, see [`chromium`]).
fn load_in_chromium(html: &Path) -> Option<PageCheck> {
    let browser = chromium()?;
    let text = std::fs::read_to_string(html).unwrap();
    let probe_head = "<script>window.__errs=[];addEventListener('error',function(e){__errs.push(String(e.message||(e.target&&(e.target.src||'').slice(0,60))||'error'))},true);</script>";
    let probe_tail = r#"<pre id="__result"></pre><script>
function __check(){var imgs=Array.from(document.images);var broken=imgs.filter(function(i){return !(i.complete&&i.naturalWidth>0)}).map(function(i){return i.alt||i.src.slice(0,40)});
document.getElementById('__result').textContent=JSON.stringify({images:imgs.length,broken:broken,errors:__errs,resources:performance.getEntriesByType('resource').map(function(r){return r.name})});}
if(document.readyState==='complete'){__check()}else{addEventListener('load',__check)}</script>"#;
    let with_head = text.replacen("<head>", &format!("<head>{probe_head}"), 1);
    assert_ne!(with_head, text, "the page has no <head>");
    let probed = with_head.replacen("</body>", &format!("{probe_tail}</body>"), 1);
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.html");
    std::fs::write(&page, probed).unwrap();
    let o = headless(&browser, dir.path())
        .arg("--virtual-time-budget=10000")
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&o.stdout);
    let start = dom.find("<pre id=\"__result\">").unwrap_or_else(|| {
        panic!(
            "no probe result; chromium said: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    }) + "<pre id=\"__result\">".len();
    let end = dom[start..].find("</pre>").unwrap() + start;
    let json = dom[start..end]
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    Some(serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}")))
}

/// A headless Chromium screenshot of `html`, `width` x `height` pixels (`None` without a
/// browser).
fn screenshot(html: &Path, width: u32, height: u32) -> Option<image::RgbImage> {
    let browser = chromium()?;
    let dir = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    let o = headless(&browser, dir.path())
        .arg("--hide-scrollbars")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("chromium runs");
    let img = image::open(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}); chromium said: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    Some(img.to_rgb8())
}

#[test]
fn the_page_check_catches_a_broken_image() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.html");
    std::fs::write(
        &p,
        "<!doctype html><html><head><title>t</title></head><body><img alt=\"bad\" src=\"data:image/png;base64,iVBORw0KGgoAAAA\"><img alt=\"missing\" src=\"nothere.png\"></body></html>",
    )
    .unwrap();
    let Some(c) = load_in_chromium(&p) else {
        return;
    };
    assert_eq!(c.images, 2);
    assert_eq!(c.broken.len(), 2, "{c:?}");
    assert!(!c.errors.is_empty(), "{c:?}");
}

#[test]
fn report_writes_every_figure_and_renders_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("standard"), dir.path().join("robust"));
    let mut args = vec!["train-standard", "--out", a.to_str().unwrap()];
    args.extend_from_slice(TINY);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let mut args = vec![
        "train-robust",
        "--out",
        b.to_str().unwrap(),
        "--eps",
        "0.3",
        "--attack-steps",
        "2",
    ];
    args.extend_from_slice(TINY);
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("report");
    let (code, stdout, err) = run(&[
        "report",
        "--run",
        &format!("standard={}", a.display()),
        "--run",
        &format!("robust={}", b.display()),
        "--out",
        out.to_str().unwrap(),
        "--robust-images",
        "3",
        "--method",
        "gradient,gradcam",
        "--shared-scale",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("report.html"), "{stdout}");
    for f in [
        "report.html",
        "summary.json",
        "comparison.json",
        "comparison.csv",
        "comparison.md",
        "figures/data_sample.png",
        "figures/saliency_gradient.png",
        "figures/saliency_gradcam.png",
        "figures/adversarial.png",
        "figures/training_loss.png",
        "figures/sanity_ssim.png",
        "figures/confusion_robust.png",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // The plots are files of their own that parse as SVG, and the page shows each.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    for (f, title) in [
        ("figures/confusion_standard.svg", "standard: test split"),
        ("figures/confusion_robust.svg", "robust: test split"),
        ("figures/training_loss.svg", "training loss"),
        ("figures/validation_accuracy.svg", "validation accuracy"),
        ("figures/sanity_spearman.svg", "Spearman rank correlation"),
        ("figures/sanity_ssim.svg", "structural similarity"),
    ] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(
            svg.starts_with("<?xml") && svg.contains("xmlns=\"http://www.w3.org/2000/svg\""),
            "{f}"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{f}");
        assert!(
            svg.matches("<svg").count() == 1 && svg.contains(&format!("aria-label=\"{title}\"")),
            "{f}"
        );
        assert!(
            html.contains(&format!("aria-label=\"{title}\"")),
            "{title} not in the page"
        );
    }
    let grid = image::open(out.join("figures/saliency_gradient.png"))
        .unwrap()
        .to_rgb8();
    // viridis tiles, the red mask outline and the colour bar.
    assert!(grid.pixels().any(|p| p.0 == [255, 40, 40]), "mask outline");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let runs = s["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    // at 32 px ResNet-18's last stage is 1x1: Grad-CAM's maps are constant, and the page says so
    assert_eq!(
        s["constant_maps"]["gradcam"], true,
        "{}",
        s["constant_maps"]
    );
    assert!(s["constant_maps"].get("gradient").is_none());
    assert!(
        html.contains("maps are constant over every image") && html.contains("1x1"),
        "the constant Grad-CAM maps are not flagged"
    );
    for r in runs {
        let acc = r["test"]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(
            r["robust"]["evaluation"]["accuracy"].as_f64().is_some(),
            "{r}"
        );
        // every shown method is measured, not only Gradient
        for method in ["gradient", "gradcam"] {
            let rma = r["metrics"][method]["relevance_mass_accuracy"]["mean"]
                .as_f64()
                .unwrap_or_else(|| panic!("{method}: {r}"));
            assert!((0.0..=1.0).contains(&rma));
        }
    }
    assert!(
        runs[1]["metrics"]["gradient"]["gini"]["wilcoxon_vs_first"].is_object()
            || runs[1]["metrics"]["gradient"]["gini"]["n"]
                .as_u64()
                .is_some()
    );
    // the galleries: three attacked images per model with their norms, and the
    // randomisation check's five steps per model
    let adv = s["adversarial_examples"].as_array().unwrap();
    let eps = runs[0]["robust"]["eps"].as_f64().unwrap();
    assert_eq!(adv.len(), 2);
    for m in adv {
        let imgs = m["images"].as_array().unwrap();
        assert_eq!(imgs.len(), 3, "{m}");
        for i in imgs {
            let l2 = i["l2"].as_f64().unwrap();
            assert!(
                l2 > 0.0 && l2 <= eps * 1.0001,
                "{i}: outside the eps ball {eps}"
            );
        }
    }
    let sanity = s["sanity"].as_array().unwrap();
    assert!(sanity
        .iter()
        .all(|m| m["steps"].as_array().unwrap().len() == 5));
    // each model's failures: a figure per model that gets any test image wrong
    for (k, name) in ["standard", "robust"].iter().enumerate() {
        let wrong = runs[k]["test"]["accuracy"].as_f64().unwrap() < 1.0;
        assert_eq!(
            out.join(format!("figures/failures_{name}.png")).exists(),
            wrong,
            "{name}"
        );
    }
    assert!(html.contains("<h2>Failures</h2>") && html.contains("Sanity check"));
    assert!(
        html.contains("on one scale per method"),
        "--shared-scale is stated"
    );
    // every figure file parses and the page names it
    let n = common::check_figure_files(&out, &html);
    assert!(n >= 20, "{n} figure files");
    // One finding per model after the first and measured method, with its numbers.
    let found = s["findings"].as_array().unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    for (f, method) in found.iter().zip(["Gradient", "Grad-CAM"]) {
        let f = f.as_str().unwrap();
        assert!(
            f.contains("robust model")
                && f.contains(&format!("{method} maps"))
                && f.contains("RMA")
                && f.contains("p = "),
            "{f}"
        );
    }
    assert!(found[0].as_str().unwrap().contains("test accuracy"));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("What this run found"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "the report must not reach the network"
    );
    let imgs = html.matches("<img").count();
    assert!(imgs >= 3, "{imgs} images");
    let Some(c) = load_in_chromium(&out.join("report.html")) else {
        return;
    };
    assert_eq!(c.images, imgs, "{c:?}");
    assert!(c.broken.is_empty(), "broken images: {:?}", c.broken);
    assert!(c.errors.is_empty(), "page errors: {:?}", c.errors);
    assert!(
        c.resources
            .iter()
            .all(|r| r.starts_with("data:") || r.starts_with("file:")),
        "requests: {:?}",
        c.resources
    );
    // What a reader sees is not blank: the rendered page has text, figures and colour.
    let Some(shot) = screenshot(&out.join("report.html"), 1100, 2400) else {
        return;
    };
    let inked = shot
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 230))
        .count();
    let share = inked as f64 / (shot.width() * shot.height()) as f64;
    let colours: std::collections::HashSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        share > 0.05,
        "only {:.1}% of the screenshot is not white",
        100.0 * share
    );
    assert!(colours.len() > 200, "{} colours", colours.len());
}
