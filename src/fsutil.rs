//! File helpers shared by every writer: nothing we write is ever left half-written.
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary name a file is written under before it is renamed into place.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Write a file through `f` into a temporary sibling, then rename it into place.
/// On error the temporary file is removed and `path` is untouched.
pub fn write_atomic<F>(path: &Path, f: F) -> Result<()>
where
    F: FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<()>,
{
    let tmp = temp_path(path);
    let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    let res = f(&mut w).and_then(|_| {
        w.flush().map_err(|e| Error::io(&tmp, e))?;
        w.get_ref().sync_all().map_err(|e| Error::io(&tmp, e))
    });
    drop(w);
    match res {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|e| Error::io(path, e)))
}

pub fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Memory-map a file read-only.
pub fn mmap(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every model loader we assume the file is not
    // truncated underneath us while it is mapped.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}
