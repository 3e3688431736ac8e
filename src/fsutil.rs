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

/// Drop the pages of `bytes`, a slice of `map` the caller has finished copying, from this
/// process's resident set. Loaders copy (repack, widen) every tensor out of the mapped file;
/// without this the touched file pages stay counted in RSS beside the copies, doubling the
/// peak. Later reads fault the pages back in from the page cache. A slice outside the map is
/// ignored.
pub fn release_pages(map: &memmap2::Mmap, bytes: &[u8]) {
    let (base, at) = (map.as_ptr() as usize, bytes.as_ptr() as usize);
    if bytes.is_empty() || at < base || at + bytes.len() > base + map.len() {
        return;
    }
    #[cfg(unix)]
    {
        // SAFETY: the map is a read-only file mapping, so dropped pages read back the same bytes
        // from the file; memmap2 rounds the range out to whole pages.
        let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, at - base, bytes.len()) };
    }
}

/// An output folder assembled under a hidden sibling name (`.NAME.partial-PID`) and renamed into
/// place by `commit`; dropped uncommitted (an error, an interrupted run) it is removed, so a
/// folder that looks finished always is.
pub struct StagedDir {
    pub path: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagedDir {
    /// Refuses a `dest` that exists and is not empty.
    pub fn new(dest: &Path) -> Result<Self> {
        if dest.exists()
            && std::fs::read_dir(dest)
                .map_err(|e| Error::io(dest, e))?
                .next()
                .is_some()
        {
            return Err(Error::format(dest, "output folder exists and is not empty"));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| Error::invalid("output folder", format!("{} has no folder name", dest.display())))?;
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let path = parent.join(format!(".{}.partial-{}", name.to_string_lossy(), std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(StagedDir {
            path,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            std::fs::remove_dir(&self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        std::fs::rename(&self.path, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
