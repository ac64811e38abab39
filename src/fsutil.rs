//! Atomic file writes: a crash, Ctrl-C or full disk never leaves a partial file under the
//! final name.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, `fsync`, then
/// `rename` over the target, then `fsync` of the folder. On any error the temporary file is
/// removed and the previous content of `path` (if any) is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| Error::conflict(format!("{} is not a file path", path.display())))?
        .to_string_lossy()
        .to_string();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        if fault_injected(&file_name) {
            // Test hook: die like a SIGKILL halfway through the write.
            f.write_all(&bytes[..bytes.len() / 2])?;
            f.sync_all()?;
            std::process::abort();
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Fault injection for the fault-catalogue tests: with
/// `ROBUSTLENS_FAULT_INJECT=abort-in-write:NAME[:N]`, the N-th (default first) atomic write of
/// a file called NAME dies halfway through, as a SIGKILL or power cut would.
fn fault_injected(file_name: &str) -> bool {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let Ok(spec) = std::env::var("ROBUSTLENS_FAULT_INJECT") else {
        return false;
    };
    let mut parts = spec.split(':');
    if parts.next() != Some("abort-in-write") || parts.next() != Some(file_name) {
        return false;
    }
    let nth: usize = parts.next().and_then(|n| n.parse().ok()).unwrap_or(1);
    COUNT.fetch_add(1, Ordering::SeqCst) + 1 == nth
}

/// Removes temporary files that an interrupted [`write_atomic`] left in `dir` (`.NAME.tmp-PID`
/// of processes that are gone); the files under their final names are never touched.
pub fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some((_, pid)) = name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")) {
            let alive = pid
                .parse::<u32>()
                .map(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists())
                .unwrap_or(true);
            if !alive {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    text.push('\n');
    write_atomic(path, text.as_bytes())
}

/// Reads and parses a JSON file, naming the file and the position of any syntax error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// An error when the output folder `dir` is a file.
pub fn refuse_file(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(Error::config(
            "out",
            dir.display(),
            "is a file, not a folder; choose another path",
        ));
    }
    Ok(())
}

/// Checks, creating nothing, that an output folder could be made and written: the path is
/// not a file, and its nearest existing ancestor is a writable folder.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    refuse_file(dir)?;
    let mut probe_dir = dir;
    while !probe_dir.exists() {
        match probe_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe_dir = p,
            _ => {
                probe_dir = Path::new(".");
                break;
            }
        }
    }
    if !probe_dir.is_dir() {
        return Err(Error::config(
            "out",
            dir.display(),
            format!("{} is a file, not a folder", probe_dir.display()),
        ));
    }
    let probe = probe_dir.join(format!(".robustlens-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        Error::config(
            "out",
            dir.display(),
            format!("{} is not writable ({e})", probe_dir.display()),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Creates an output folder (and parents), with a clear error when the path is a file or
/// cannot be written.
pub fn ensure_output_dir(dir: &Path) -> Result<()> {
    refuse_file(dir)?;
    std::fs::create_dir_all(dir).map_err(|e| {
        Error::config(
            "out",
            dir.display(),
            format!("cannot create the folder ({e})"),
        )
    })?;
    let probe = dir.join(format!(".robustlens-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|e| {
        Error::config(
            "out",
            dir.display(),
            format!("folder is not writable ({e})"),
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `s` as part of a file name: ASCII letters, digits, `-`, `_` and `.` kept, anything else
/// (spaces, `/`, `+`, non-ASCII) replaced by `_`.
pub fn file_stem(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The process's peak resident memory in MB (`getrusage`'s high-water mark; 0 where it is
/// not available).
pub fn peak_rss_mb() -> f64 {
    #[cfg(unix)]
    {
        // SAFETY: getrusage writes into the zeroed struct we own.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } == 0 {
            return u.ru_maxrss as f64 / 1024.0;
        }
    }
    0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn failed_write_keeps_previous() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.bin");
        write_atomic(&p, b"good").unwrap();
        // A folder in the way of the rename target's temp name cannot be created inside a file.
        let bad = p.join("child.bin");
        assert!(write_atomic(&bad, b"x").is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"good");
    }
}
