//! Loading ImageNet (or any) weights of every architecture: local safetensors in torchvision or timm naming,
//! PyTorch `.pth` state dicts (read by candle's pickle parser, which never executes code), and
//! the Hugging Face hub (`hf:timm/resnet18.tv_in1k`).
//!
//! Files are read whole into memory and validated before any tensor is built: the safetensors
//! header length and every offset are checked against the real file size, so a hostile or
//! truncated file gives a named error, never a panic or an allocation sized by its claims.

use crate::model::arch::Arch;
use crate::model::network::Network;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where weights come from, as given to `--weights`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// `none`: torchvision's random initialisation.
    Random,
    /// A local `.safetensors` or `.pth` file.
    File(PathBuf),
    /// `hf:owner/repo[/file]` on the Hugging Face hub (default file `model.safetensors`).
    Hub { repo: String, file: String },
}

impl WeightsSource {
    pub fn parse(spec: &str) -> Result<Self> {
        let s = spec.trim();
        if s.is_empty() {
            return Err(Error::model_setting(
                "weights",
                "",
                "empty value; give a file, hf:owner/repo or none",
            ));
        }
        if s.eq_ignore_ascii_case("none") || s.eq_ignore_ascii_case("random") {
            return Ok(WeightsSource::Random);
        }
        if let Some(rest) = s.strip_prefix("hf:") {
            let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
            if parts.len() < 2 {
                return Err(Error::model_setting(
                    "weights",
                    s,
                    "a hub reference is hf:owner/repo, e.g. hf:timm/resnet18.tv_in1k",
                ));
            }
            let repo = format!("{}/{}", parts[0], parts[1]);
            let file = if parts.len() > 2 {
                parts[2..].join("/")
            } else {
                "model.safetensors".into()
            };
            return Ok(WeightsSource::Hub { repo, file });
        }
        Ok(WeightsSource::File(PathBuf::from(s)))
    }
}

impl std::fmt::Display for WeightsSource {
    /// The text `parse` reads back: `none`, the path, or `hf:owner/repo[/file]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WeightsSource::Random => write!(f, "none"),
            WeightsSource::File(p) => write!(f, "{}", p.display()),
            WeightsSource::Hub { repo, file } if file == "model.safetensors" => {
                write!(f, "hf:{repo}")
            }
            WeightsSource::Hub { repo, file } => write!(f, "hf:{repo}/{file}"),
        }
    }
}

/// Default hub cache: `models/hub` under the working directory, or `$ROBUSTLENS_CACHE`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("ROBUSTLENS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models").join("hub"))
}

/// Turns a weights source into a local file, downloading from the hub when needed (cached
/// under `cache_dir`). Returns `None` for random initialisation.
pub fn resolve_weights(src: &WeightsSource, cache_dir: &Path) -> Result<Option<PathBuf>> {
    match src {
        WeightsSource::Random => Ok(None),
        WeightsSource::File(p) => {
            if !p.exists() {
                return Err(Error::weights(
                    p,
                    "file not found; give a .safetensors or .pth file, hf:timm/resnet18.tv_in1k, or none",
                ));
            }
            if p.is_dir() {
                return Err(Error::weights(
                    p,
                    "is a folder; give the weights file inside it (e.g. model.safetensors)",
                ));
            }
            Ok(Some(p.clone()))
        }
        WeightsSource::Hub { repo, file } => {
            let cache = hf_hub::Cache::new(cache_dir.to_path_buf());
            if let Some(p) = cache.model(repo.clone()).get(file) {
                return Ok(Some(p));
            }
            let offline_hint = format!(
                "could not download {file} from the Hugging Face hub repository {repo} \
                 (are you offline?). Download it on a machine with network access \
                 (https://huggingface.co/{repo}/resolve/main/{file}) and pass the local file \
                 instead: --weights path/to/{file}; a torchvision .pth such as \
                 resnet18-f37072fd.pth works too"
            );
            if std::env::var_os("HF_HUB_OFFLINE").is_some_and(|v| v != "0") {
                return Err(Error::Hub(format!(
                    "HF_HUB_OFFLINE is set and the file is not cached under {}: {offline_hint}",
                    cache_dir.display()
                )));
            }
            std::fs::create_dir_all(cache_dir).map_err(|e| Error::io(cache_dir, e))?;
            let api = hf_hub::api::sync::ApiBuilder::new()
                .with_cache_dir(cache_dir.to_path_buf())
                .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_retries(1)
                .build()
                .map_err(|e| Error::Hub(format!("{offline_hint} ({e})")))?;
            api.model(repo.clone())
                .get(file)
                .map(Some)
                .map_err(|e| Error::Hub(format!("{offline_hint} ({e})")))
        }
    }
}

/// The file format, judged by content (not by extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    Pth,
}

/// Judges the format of a weights file by its first bytes; a safetensors header length that
/// exceeds the file is an error here, before anything is parsed.
pub fn sniff(path: &Path, bytes: &[u8]) -> Result<WeightsFormat> {
    // A safetensors file first: its header length's low byte may be 0x80, a pickle's first.
    if bytes.len() >= 9 && bytes[8] == b'{' {
        let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
        if n <= (bytes.len() - 8) as u64 {
            return Ok(WeightsFormat::Safetensors);
        }
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
        return Ok(WeightsFormat::Pth);
    }
    if bytes.len() < 8 {
        return Err(Error::weights(
            path,
            format!(
                "file is {} bytes, too short to be a safetensors or .pth file (truncated?)",
                bytes.len()
            ),
        ));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    if n > (bytes.len() - 8) as u64 {
        return Err(Error::weights(
            path,
            format!(
                "not a valid safetensors file: its header claims {n} bytes but the file has only {} \
                 after the length field (truncated, or not a safetensors/.pth file)",
                bytes.len() - 8
            ),
        ));
    }
    if bytes.get(8) != Some(&b'{') {
        return Err(Error::weights(
            path,
            "not a safetensors or PyTorch .pth file (no JSON header, no zip/pickle signature)",
        ));
    }
    Ok(WeightsFormat::Safetensors)
}

/// Reads every tensor of a safetensors or `.pth` file, with names normalised (a leading
/// `module.` or `model.` from DataParallel/Lightning checkpoints is removed).
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let raw: Vec<(String, Tensor)> = match sniff(path, &bytes)? {
        WeightsFormat::Safetensors => parse_safetensors(&bytes, path)?,
        WeightsFormat::Pth => read_pth(path)?,
    };
    if raw.is_empty() {
        return Err(Error::weights(path, "holds no tensors"));
    }
    let mut out = HashMap::new();
    for (name, t) in raw {
        let name = name
            .strip_prefix("module.")
            .or_else(|| name.strip_prefix("model."))
            .unwrap_or(&name)
            .to_string();
        out.insert(name, t);
    }
    Ok(out)
}

/// Parses the bytes of a safetensors file (read from `path`, named in errors): the header's
/// length, offsets, shapes and dtypes are checked against the buffer before any tensor is
/// built, so nothing is allocated on the file's word alone.
pub fn parse_safetensors(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::weights(path, format!("not a valid safetensors file: {e}")))?;
    let mut v = Vec::new();
    for (name, view) in st.tensors() {
        let t = candle_core::safetensors::Load::load(&view, &Device::Cpu).map_err(|e| {
            Error::weights(
                path,
                format!("tensor `{name}` cannot be read ({:?}): {e}", view.dtype()),
            )
        })?;
        v.push((name, t));
    }
    Ok(v)
}

fn read_pth(path: &Path) -> Result<Vec<(String, Tensor)>> {
    // candle's pickle reader only interprets a safe subset of pickle opcodes and never runs
    // code; it can still panic on malformed input, so guard it.
    let attempt = |key: Option<&str>| -> Result<Vec<(String, Tensor)>> {
        let p = path.to_path_buf();
        let key = key.map(|k| k.to_string());
        let res = std::panic::catch_unwind(move || {
            candle_core::pickle::read_all_with_key(&p, key.as_deref())
        });
        match res {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Error::weights(
                path,
                format!("not a PyTorch state dict: {e}"),
            )),
            Err(_) => Err(Error::weights(
                path,
                "not a PyTorch state dict (the pickle could not be parsed)",
            )),
        }
    };
    let first = attempt(None);
    if let Ok(v) = &first {
        if !v.is_empty() {
            return first;
        }
    }
    for key in ["state_dict", "model", "model_state_dict"] {
        if let Ok(v) = attempt(Some(key)) {
            if !v.is_empty() {
                return Ok(v);
            }
        }
    }
    match first {
        Err(e) => Err(e),
        Ok(_) => Err(Error::weights(
            path,
            "is a .pth file but not a state dict of tensors (expected what torch.save(model.state_dict()) writes)",
        )),
    }
}

/// What happened while loading.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// The head in the file had this many classes and was replaced.
    pub head_replaced_from: Option<usize>,
    /// The file had no `fc` and a new head was initialised.
    pub head_missing: bool,
}

/// Builds a network from a weights file. The architecture is `arch`, or, when `None`, the one
/// the file's tensors belong to ([`crate::model::zoo::detect`]; ResNet-18 when none is recognised). Weights
/// of another architecture than `arch` are an error naming both. With `num_classes = None`
/// the class count comes from the file's head; with `Some(k)` a head of another size (or no
/// head) is replaced by a fresh one and the backbone kept. Every other missing, extra,
/// mis-shaped or non-float tensor is an error naming the tensor and both shapes.
pub fn load_weights(
    arch: Option<Arch>,
    path: &Path,
    num_classes: Option<usize>,
    seed: u64,
    device: &Device,
) -> Result<(Box<dyn Network>, LoadReport)> {
    let mut tensors = read_tensors(path)?;
    let detected = crate::model::zoo::detect(&tensors);
    let arch = match (arch, &detected) {
        (Some(a), Some((b, why))) if a != *b => {
            return Err(Error::weights(
                path,
                format!(
                    "holds {b} weights ({why}), not {a}; load it with --arch {b} \
                     (or give {a} weights)"
                ),
            ))
        }
        (Some(a), _) => a,
        (None, Some((b, _))) => *b,
        (None, None) => Arch::Resnet18,
    };
    let mut report = LoadReport::default();
    let head_w = format!("{}.weight", arch.head_prefix());
    let head_b = format!("{}.bias", arch.head_prefix());
    let file_head = tensors.get(&head_w).map(|t| t.dims().to_vec());
    let k = match (num_classes, &file_head) {
        (Some(k), _) => k,
        (None, Some(d)) if d.len() == 2 => d[0],
        (None, Some(d)) => {
            return Err(Error::weights(
                path,
                format!("tensor `{head_w}` has shape {d:?}, expected [num_classes, features]"),
            ))
        }
        (None, None) => {
            return Err(Error::weights(
                path,
                format!(
                    "has no `{head_w}`, so the number of classes is unknown; set num-classes K \
                     to add a new head"
                ),
            ))
        }
    };
    let model = crate::model::zoo::build(arch, k, seed, device)?;
    let features = model.var(&head_w).map(|v| v.dims()[1]).unwrap_or(0);
    let fresh_head = |t: &mut HashMap<String, Tensor>| -> Result<()> {
        for n in [&head_w, &head_b] {
            let v = model
                .var(n)
                .ok_or_else(|| Error::internal(format!("{arch}: no `{n}`")))?;
            t.insert(n.clone(), v.as_tensor().copy()?);
        }
        Ok(())
    };
    match &file_head {
        Some(d) if d.len() == 2 && d[1] == features && d[0] != k => {
            report.head_replaced_from = Some(d[0]);
            fresh_head(&mut tensors)?;
        }
        None => {
            report.head_missing = true;
            fresh_head(&mut tensors)?;
        }
        _ => {}
    }
    check_tensors(model.as_ref(), &tensors, path)?;
    model.load_tensors(&tensors, path)?;
    Ok((model, report))
}

/// Names every missing, mis-shaped, non-float or unexpected tensor (8 at most).
fn check_tensors(
    model: &dyn Network,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    let arch = model.kind();
    let names = model.tensor_names();
    let mut problems = Vec::new();
    for (name, _) in &names {
        let want = model
            .var(name)
            .map(|v| v.dims().to_vec())
            .unwrap_or_default();
        match tensors.get(name) {
            None => problems.push(format!(
                "tensor `{name}` is missing (the model needs shape {want:?})"
            )),
            Some(t) => {
                if !matches!(
                    t.dtype(),
                    DType::F32 | DType::F16 | DType::BF16 | DType::F64
                ) {
                    problems.push(format!(
                        "tensor `{name}` has dtype {:?}; weights must be floating point",
                        t.dtype()
                    ));
                } else if t.dims() != want.as_slice() {
                    problems.push(format!(
                        "tensor `{name}` has shape {:?}, the model needs {want:?}",
                        t.dims()
                    ));
                }
            }
        }
    }
    let known: std::collections::HashSet<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    let mut extras: Vec<String> = tensors
        .iter()
        .filter(|(n, _)| !known.contains(n.as_str()) && !n.ends_with("num_batches_tracked"))
        .map(|(n, t)| {
            format!(
                "unexpected tensor `{n}` with shape {:?} (not part of a {} {arch})",
                t.dims(),
                arch.ecosystem()
            )
        })
        .collect();
    extras.sort();
    problems.extend(extras);
    if problems.is_empty() {
        return Ok(());
    }
    let n = problems.len();
    let shown: Vec<String> = problems.into_iter().take(8).collect();
    let more = if n > 8 {
        format!("\n  ... and {} more", n - 8)
    } else {
        String::new()
    };
    Err(Error::weights(
        path,
        format!(
            "does not fit a {} {arch}:\n  {}{more}",
            arch.ecosystem(),
            shown.join("\n  ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources() {
        assert_eq!(WeightsSource::parse("none").unwrap(), WeightsSource::Random);
        assert_eq!(
            WeightsSource::parse("hf:timm/resnet18.tv_in1k").unwrap(),
            WeightsSource::Hub {
                repo: "timm/resnet18.tv_in1k".into(),
                file: "model.safetensors".into()
            }
        );
        assert!(WeightsSource::parse("hf:timm").is_err());
        assert_eq!(
            WeightsSource::parse("a.pth").unwrap(),
            WeightsSource::File("a.pth".into())
        );
    }

    #[test]
    fn a_header_length_ending_in_0x80_is_still_safetensors() {
        // 0x0580 = 1408 header bytes: the first byte is a pickle's 0x80.
        let mut b = vec![0x80u8, 0x05, 0, 0, 0, 0, 0, 0, b'{'];
        b.resize(8 + 0x580, b' ');
        assert_eq!(
            sniff(Path::new("m.safetensors"), &b).unwrap(),
            WeightsFormat::Safetensors
        );
        assert_eq!(
            sniff(Path::new("m.pth"), &[0x80, 0x02, b'}', b'q']).unwrap(),
            WeightsFormat::Pth
        );
    }

    #[test]
    fn hub_offline_error_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("HF_HUB_OFFLINE", "1");
        let e = resolve_weights(
            &WeightsSource::parse("hf:timm/resnet18.tv_in1k").unwrap(),
            dir.path(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--weights path/to/model.safetensors"), "{e}");
    }
}
