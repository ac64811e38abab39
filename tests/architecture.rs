//! The house's shape: no import cycles between the library's modules (top-level modules, and
//! the files inside each), evaluation never imports training, and the binary stays thin.
//! Imports are read from the sources (`crate::a::b` and `super::x` paths outside comments
//! and test modules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `a::b` for `src/a/b.rs` and `src/a/b/mod.rs`; `""` for `src/lib.rs`.
fn module_of(src: &Path, f: &Path) -> String {
    let rel = f.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.last().is_some_and(|l| l == "mod" || l == "lib") {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests`.
fn code(text: &str) -> String {
    let body = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    body.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifier paths following `prefix` in `text` (`crate::` gives `a::b::c` for
/// `crate::a::b::c`).
fn paths_after<'a>(text: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        out.push(rest[..end].split("::").filter(|s| !s.is_empty()).collect());
    }
    out
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.retain(|f| !f.starts_with(src.join("bin")));
    let mods: BTreeMap<String, PathBuf> = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let mut g = BTreeMap::new();
    for (m, f) in &mods {
        let text = code(&std::fs::read_to_string(f).unwrap());
        let mut deps = BTreeSet::new();
        let mut add = |parts: Vec<&str>| {
            for k in (1..=parts.len()).rev() {
                let c = parts[..k].join("::");
                if mods.contains_key(&c) {
                    deps.insert(c);
                    return;
                }
            }
        };
        for p in paths_after(&text, "crate::") {
            add(p);
        }
        // `super::x` from a file `a/b.rs` (module a::b) is `a::x`; from `a/mod.rs`, the
        // parent's `x`.
        let mut base: Vec<&str> = m.split("::").filter(|s| !s.is_empty()).collect();
        base.pop();
        for p in paths_after(&text, "super::") {
            if p.first() == Some(&"super") {
                continue;
            }
            add(base.iter().copied().chain(p).collect());
        }
        deps.remove(m);
        g.insert(m.clone(), deps);
    }
    g
}

/// The strongly connected components with more than one node.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Nodes on a cycle: reachable from themselves. Small graphs; a DFS per node is plenty.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = g
            .get(from)
            .into_iter()
            .flatten()
            .map(|s| s.as_str())
            .collect();
        while let Some(n) = stack.pop() {
            if seen.insert(n.to_string()) {
                stack.extend(g.get(n).into_iter().flatten().map(|s| s.as_str()));
            }
        }
        seen
    };
    let mut out: Vec<Vec<String>> = Vec::new();
    for n in g.keys() {
        let r = reach(n);
        if r.contains(n) && !out.iter().any(|c| c.contains(n)) {
            out.push(r.into_iter().filter(|m| reach(m).contains(n)).collect());
        }
    }
    out
}

#[test]
fn no_import_cycles_between_files() {
    let g = graph();
    assert!(g.len() > 40, "the module scan found only {} files", g.len());
    let c = cycles(&g);
    assert!(c.is_empty(), "import cycles between files: {c:?}");
}

#[test]
fn no_import_cycles_between_top_level_modules_and_eval_never_imports_train() {
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in graph() {
        let a = m.split("::").next().unwrap_or("").to_string();
        for d in deps {
            let b = d.split("::").next().unwrap_or("").to_string();
            if !a.is_empty() && !b.is_empty() && a != b {
                top.entry(a.clone()).or_default().insert(b);
            }
        }
    }
    let c = cycles(&top);
    assert!(c.is_empty(), "import cycles between modules: {c:?}");
    for (from, forbidden) in [
        ("eval", "train"),
        ("eval", "commands"),
        ("model", "attribution"),
        ("run", "train"),
        ("run", "eval"),
        ("config", "train"),
    ] {
        assert!(
            !top.get(from).is_some_and(|d| d.contains(forbidden)),
            "{from} imports {forbidden}: {:?}",
            top.get(from)
        );
    }
}

#[test]
fn the_binary_stays_thin() {
    let main = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/robustlens/main.rs"),
    )
    .unwrap();
    let lines = main.lines().count();
    assert!(lines < 300, "src/bin/robustlens/main.rs has {lines} lines");
    // No handler longer than about 30 lines.
    let mut start = None;
    for (i, l) in main.lines().enumerate() {
        if l.starts_with("fn ") || l.starts_with("pub fn ") {
            start = Some((i, l.to_string()));
        } else if l == "}" {
            if let Some((s, name)) = start.take() {
                assert!(i - s <= 32, "{name} is {} lines long", i - s + 1);
            }
        }
    }
}
