//! Durable file writes, shared by the engine cache, event snapshots and `config/set`.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `tmp`, syncs it and renames it over `path`: a reader sees the old file or the
/// whole new one, never part of it. `tmp` is removed when anything fails. The directory entry is
/// not synced: see [`sync_dir`].
pub fn write_atomically(path: &Path, tmp: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomically_with(path, tmp, |f| f.write_all(bytes))
}

/// [`write_atomically`] for content written piece by piece by `fill` (through a buffer).
pub fn write_atomically_with<E: From<std::io::Error>>(
    path: &Path,
    tmp: &Path,
    fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
) -> Result<(), E> {
    let written = (|| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        fill(&mut f)?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(tmp, path)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Replaces `path` durably with `bytes`: through `<path>.tmp`, synced and renamed, then the
/// directory entry synced. A reader, or a restart after a crash, sees the old file or the new.
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    write_atomically(path, Path::new(&tmp), bytes)?;
    // A bare file name (`--config vigil.toml`) has the empty path as its parent.
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    sync_dir(dir)
}

/// Makes the entries of `dir` (renames, new files) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
