//! Data sources, splits and their errors, on a small fake HAM10000 folder built here.

mod common;
use robustlens::data::cache::ImageCache;
use robustlens::data::split::{make_split, Part, Split, SplitSpec};
use robustlens::data::{DataOptions, Dataset};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// Writes a HAM10000-shaped folder: `per_class` lesions per class for nv, mel, bkl, bcc, some
/// with 2 or 3 images (shared lesion_id), 600x450 JPEGs split over part_1/part_2, masks for
/// some images.
fn fake_ham(root: &Path, lesions_per_class: usize) -> usize {
    let p1 = root.join("HAM10000_images_part_1");
    let p2 = root.join("HAM10000_images_part_2");
    let seg = root.join("HAM10000_segmentations_lesion_tschandl");
    for d in [&p1, &p2, &seg] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut csv = String::from("lesion_id,image_id,dx,dx_type,age,sex,localization,dataset\n");
    let mut n = 0usize;
    let mut img_no = 24306;
    for dx in ["nv", "mel", "bkl", "bcc"] {
        for l in 0..lesions_per_class {
            let lesion = format!("HAM_{dx}{l:04}");
            let k = [1, 1, 2, 1, 3, 1][l % 6];
            for _ in 0..k {
                let id = format!("ISIC_{img_no:07}");
                img_no += 1;
                csv.push_str(&format!(
                    "{lesion},{id},{dx},histo,50.0,male,\"back, upper\",vidir_modern\n"
                ));
                let img = image::RgbImage::from_fn(600, 450, |x, y| {
                    image::Rgb([(x % 256) as u8, (y % 256) as u8, (n % 256) as u8])
                });
                let dir = if n.is_multiple_of(2) { &p1 } else { &p2 };
                img.save(dir.join(format!("{id}.jpg"))).unwrap();
                if n.is_multiple_of(3) {
                    let m = image::GrayImage::from_fn(600, 450, |x, y| {
                        image::Luma([
                            if (x as i32 - 300).pow(2) + (y as i32 - 225).pow(2) < 100 * 100 {
                                255
                            } else {
                                0
                            },
                        ])
                    });
                    m.save(seg.join(format!("{id}_segmentation.png"))).unwrap();
                }
                n += 1;
            }
        }
    }
    std::fs::write(root.join("HAM10000_metadata.csv"), csv).unwrap();
    n
}

use common::run_cli as run;

#[test]
fn ham10000_split_is_balanced_grouped_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    fake_ham(dir.path(), 12);
    let ds = Dataset::open(dir.path().to_str().unwrap(), &DataOptions::default()).unwrap();
    assert_eq!(ds.class_names, vec!["nv", "mel", "bkl"]);
    // 12 lesions per class: 1+1+2+1+3+1 = 9 images per 6 lesions -> 18 images per class.
    assert_eq!(ds.items.len(), 54);
    assert!(ds.masks_found() > 10);
    let spec = SplitSpec {
        train_per_class: 10,
        test_per_class: 5,
        val_per_class: 2,
        folds: 3,
        seed: 7,
    };
    let split = make_split(&ds, &spec).unwrap();
    for label in 0..3 {
        let count = |p: Part| {
            split
                .rows
                .iter()
                .filter(|r| r.label == label && r.part == p)
                .count()
        };
        assert_eq!(
            (count(Part::Train), count(Part::Test), count(Part::Val)),
            (10, 5, 2)
        );
    }
    let mut where_: HashMap<&str, (Part, Option<usize>)> = HashMap::new();
    for r in &split.rows {
        if let Some(prev) = where_.insert(&r.lesion_id, (r.part, r.fold)) {
            assert_eq!(
                prev,
                (r.part, r.fold),
                "lesion {} crosses splits or folds",
                r.lesion_id
            );
        }
        if r.part == Part::Train {
            assert!((1..=3).contains(&r.fold.unwrap()));
        } else {
            assert!(r.fold.is_none());
        }
    }
    assert_eq!(split, make_split(&ds, &spec).unwrap());
    assert_ne!(
        split,
        make_split(&ds, &SplitSpec { seed: 8, ..spec }).unwrap()
    );
    // CSV round trip through the CLI.
    let out = dir.path().join("split.csv");
    let (code, _, err) = run(&[
        "data",
        "split",
        "--data",
        dir.path().to_str().unwrap(),
        "--train-per-class",
        "10",
        "--test-per-class",
        "5",
        "--val-per-class",
        "2",
        "--folds",
        "3",
        "--seed",
        "7",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let back = Split::read(&out, &ds).unwrap();
    assert_eq!(back, split);
    assert!(std::fs::read_to_string(&out)
        .unwrap()
        .starts_with("image_id,lesion_id,label,split,fold\n"));
    assert_eq!(
        back.indices(&ds, Part::Train, Some(2)).len(),
        split.rows.iter().filter(|r| r.fold == Some(2)).count()
    );
    // Images load at the working size with masks where present.
    let c = ImageCache::build(&ds, 32, None, false).unwrap();
    assert_eq!(c.len(), 54);
    assert_eq!(
        c.has_mask.iter().filter(|&&m| m).count(),
        ds.items.iter().filter(|i| i.mask.is_some()).count()
    );
}

#[test]
fn too_few_lesions_is_named() {
    let dir = tempfile::tempdir().unwrap();
    fake_ham(dir.path(), 6);
    let (code, _, err) = run(&[
        "data",
        "split",
        "--data",
        dir.path().to_str().unwrap(),
        "--train-per-class",
        "8",
        "--test-per-class",
        "3",
        "--out",
        dir.path().join("s.csv").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("class nv has 6 lesions (9 images); 8 train + 3 test + 0 val needs 11 images"),
        "{err}"
    );
}

#[test]
fn bad_ham_inputs_give_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    fake_ham(dir.path(), 3);
    let root = dir.path();
    let csv_path = root.join("HAM10000_metadata.csv");
    let good = std::fs::read_to_string(&csv_path).unwrap();
    let open = || {
        Dataset::open(root.to_str().unwrap(), &DataOptions::default())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    std::fs::write(
        &csv_path,
        good.replace("lesion_id,image_id,dx", "lesion,image_id,diagnosis"),
    )
    .unwrap();
    let e = open();
    assert!(
        e.contains("missing column `lesion_id`") && e.contains("HAM10000_metadata.csv"),
        "{e}"
    );

    std::fs::write(&csv_path, good.replacen(",mel,", ",melanoma,", 1)).unwrap();
    let e = open();
    assert!(
        e.contains("unknown dx code `melanoma`") && e.contains("line "),
        "{e}"
    );

    let first_row = good.lines().nth(1).unwrap();
    std::fs::write(&csv_path, format!("{good}{first_row}\n")).unwrap();
    let e = open();
    assert!(e.contains("appears twice"), "{e}");

    let mut bytes = good.clone().into_bytes();
    bytes.extend_from_slice(b"HAM_x,ISIC_9\xff,nv,histo,1,male,back\n");
    std::fs::write(&csv_path, bytes).unwrap();
    let e = open();
    assert!(e.contains("not valid UTF-8"), "{e}");

    std::fs::write(
        &csv_path,
        format!("{good}HAM_zz,ISIC_0099999,nv,histo,1,male,back\n"),
    )
    .unwrap();
    let e = open();
    assert!(
        e.contains("ISIC_0099999") && e.contains("not found") && e.contains("--skip-bad-images"),
        "{e}"
    );
    let ds = Dataset::open(
        root.to_str().unwrap(),
        &DataOptions {
            skip_bad_images: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ds.warnings.len(), 1);

    std::fs::write(&csv_path, &good).unwrap();
    let e = Dataset::open(
        root.to_str().unwrap(),
        &DataOptions {
            classes: vec!["nv".into(), "cancer".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown HAM10000 class `cancer`"), "{e}");

    // A corrupt and a zero-byte JPEG: named at load time; skipped with --skip-bad-images.
    let ds = Dataset::open(root.to_str().unwrap(), &DataOptions::default()).unwrap();
    let victims: Vec<_> = ds
        .items
        .iter()
        .take(2)
        .map(|i| match &i.source {
            robustlens::data::dataset::ItemSource::File(p) => p.clone(),
            _ => unreachable!(),
        })
        .collect();
    std::fs::write(&victims[0], b"\xff\xd8\xff garbage").unwrap();
    std::fs::write(&victims[1], b"").unwrap();
    let e = ImageCache::build(&ds, 32, None, false)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(victims[0].file_name().unwrap().to_str().unwrap())
            || e.contains(victims[1].file_name().unwrap().to_str().unwrap()),
        "{e}"
    );
    let c = ImageCache::build(&ds, 32, None, true).unwrap();
    assert_eq!(c.bad.len(), 2);

    std::fs::remove_file(&csv_path).unwrap();
    let e = open();
    assert!(e.contains("HAM10000_metadata.csv is missing"), "{e}");
    let e = Dataset::open(root.join("nope").to_str().unwrap(), &DataOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("folder not found"), "{e}");
}

#[test]
fn synthetic_set_is_deterministic_and_written_with_masks() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    for d in [&a, &b] {
        let (code, _, err) = run(&[
            "data",
            "synth",
            "--out",
            d.to_str().unwrap(),
            "--per-class",
            "3",
            "--size",
            "40",
            "--seed",
            "5",
        ]);
        assert_eq!(code, 0, "{err}");
    }
    let files = |d: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v = Vec::new();
        for class in ["nevus", "melanoma", "keratosis"] {
            for sub in [d.join(class), d.join("masks").join(class)] {
                let mut names: Vec<_> = std::fs::read_dir(&sub)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                names.sort();
                assert_eq!(names.len(), 3, "{}", sub.display());
                for p in names {
                    v.push((
                        p.strip_prefix(d).unwrap().display().to_string(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        v
    };
    assert_eq!(files(&a), files(&b));
    // Written as an ImageFolder with masks, it reads back.
    let ds = Dataset::open(a.to_str().unwrap(), &DataOptions::default()).unwrap();
    assert_eq!(ds.items.len(), 9);
    assert_eq!(ds.items.iter().filter(|i| i.mask.is_some()).count(), 9);
    let (code, out, _) = run(&["data", "inspect", "--data", a.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("melanoma") && out.contains("no problems found"),
        "{out}"
    );
    let labels: HashSet<usize> = ds.items.iter().map(|i| i.label).collect();
    assert_eq!(labels.len(), 3);
}

/// `data synth` writes the lesion set's artifact masks; opened again as an ImageFolder, every
/// image gives back exactly the masks the generator drew, and a missing one is named.
#[test]
fn artifact_masks_read_back_from_an_image_folder() {
    use robustlens::commands::data::{synth, BuiltIn};
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("lesions");
    synth(BuiltIn::Lesions, &root, 8, 40, 3).unwrap();
    let generated = robustlens::data::open::synthetic(
        &robustlens::data::synthetic::SyntheticConfig::default(),
        8,
        3,
    );
    let folder = Dataset::open(root.to_str().unwrap(), &DataOptions::default()).unwrap();
    assert_eq!(folder.items.len(), generated.items.len());
    let mut drawn = 0;
    for (i, it) in folder.items.iter().enumerate() {
        let j = generated
            .items
            .iter()
            .position(|g| {
                format!("{}/{}", generated.class_names[g.label], g.image_id) == it.image_id
            })
            .unwrap_or_else(|| panic!("{} not generated", it.image_id));
        let want = generated.artifact_masks(j, 40).unwrap().unwrap();
        let got = folder.artifact_masks(i, 40).unwrap().unwrap();
        assert_eq!(got.len(), 4);
        for ((a, m), (b, n)) in want.iter().zip(&got) {
            assert_eq!(a, b);
            assert_eq!(m.as_raw(), n.as_raw(), "{} {}", it.image_id, a.name());
            drawn += m.as_raw().iter().filter(|&&v| v > 127).count();
        }
    }
    assert!(drawn > 0, "no artifact drawn in 24 images");
    // A folder without masks/artifacts has none; one with a mask missing names the file.
    let blocks = tmp.path().join("blocks");
    synth(BuiltIn::Blocks, &blocks, 2, 32, 0).unwrap();
    let b = Dataset::open(blocks.to_str().unwrap(), &DataOptions::default()).unwrap();
    assert!(b.artifact_masks(0, 32).unwrap().is_none());
    let it = &folder.items[0];
    let gone = root
        .join("masks/artifacts/ink")
        .join(format!("{}.png", it.image_id));
    std::fs::remove_file(&gone).unwrap();
    let e = folder.artifact_masks(0, 40).unwrap_err().to_string();
    assert!(
        e.contains(&gone.display().to_string()) && e.contains("one mask per kind"),
        "{e}"
    );
}
