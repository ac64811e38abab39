//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`, minimised after each campaign,
//! crash reproducers included) through the fuzz targets' entry points: a regression test on
//! stable Rust, without libFuzzer.

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("metadata_csv", robustlens::fuzzing::metadata_csv),
    ("split_csv", robustlens::fuzzing::split_csv),
    ("config_json", robustlens::fuzzing::config_json),
    ("group_spec", robustlens::fuzzing::group_spec),
    ("weights_header", robustlens::fuzzing::weights_header),
];

#[test]
fn corpus_replays_without_panics() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus");
    for (name, f) in TARGETS {
        let dir = root.join(name);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| f(&bytes));
            assert!(r.is_ok(), "{name}: {} panics", p.display());
            n += 1;
        }
        assert!(n >= 3, "{name}: corpus has {n} inputs");
    }
}
