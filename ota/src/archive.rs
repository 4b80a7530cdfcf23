//! Model bundles travel as tar archives: a bundle directory packed deterministically (sorted
//! entries, fixed times and owners, so that the same bundle gives the same bytes and hash), and
//! unpacked on the device into a new slot directory that appears whole or not at all.
//!
//! The archive is verified by TUF before it is opened, but it is still unpacked as if hostile:
//! only regular files and directories, only relative paths that stay inside the slot, within a
//! size and an entry limit.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::OtaError;

/// What an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for UnpackLimits {
    /// 2 GiB and 10 000 entries: well above any detector bundle, well below a disk.
    fn default() -> Self {
        Self { max_bytes: 2 << 30, max_entries: 10_000 }
    }
}

fn files_under(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = rel.join(e.file_name());
        let kind = e.file_type()?;
        if kind.is_dir() {
            out.push(path.clone());
            files_under(dir, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        } else {
            return Err(std::io::Error::other(format!(
                "{}: only files and directories go into a bundle",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Packs the bundle directory `dir` into the tar archive `out`.
pub fn pack_dir(dir: &Path, out: &Path) -> Result<(), OtaError> {
    let io = |e: std::io::Error| OtaError::Io { what: "cannot pack", path: dir.to_owned(), source: e };
    let mut paths = Vec::new();
    files_under(dir, Path::new(""), &mut paths).map_err(io)?;
    let file = std::fs::File::create(out).map_err(OtaError::io("cannot create", out))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    for rel in paths {
        let full = dir.join(&rel);
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        if full.is_dir() {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder.append_data(&mut header, &rel, std::io::empty()).map_err(io)?;
        } else {
            let f = std::fs::File::open(&full).map_err(io)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(f.metadata().map_err(io)?.len());
            builder.append_data(&mut header, &rel, f).map_err(io)?;
        }
    }
    let mut w = builder.into_inner().map_err(io)?;
    w.flush().map_err(io)?;
    w.into_inner().map_err(|e| io(e.into_error()))?.sync_all().map_err(io)
}

/// A path inside the slot: relative, with plain components only.
fn inside(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// Unpacks `archive` into `dest`, which must not exist: everything goes into a sibling
/// directory first, is synced, and is renamed into place; on any refusal or failure nothing is
/// left. Returns the bytes unpacked.
pub fn unpack(archive: &Path, dest: &Path, limits: UnpackLimits) -> Result<u64, OtaError> {
    let name = archive.display().to_string();
    let refuse = |why: String| OtaError::BadArchive { name: name.clone(), why };
    if dest.exists() {
        return Err(OtaError::Config(format!("{} exists already; a slot is unpacked once", dest.display())));
    }
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".unpacking");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(OtaError::io("cannot create", &tmp))?;
    let result = unpack_into(archive, &tmp, limits, &refuse).and_then(|bytes| {
        // Every directory's entries, deepest first: a power cut after the rename must not find a
        // subdirectory (the bundle's `reference/`) without its files.
        for dir in directories(&tmp)?.iter().rev() {
            crate::state::sync_dir(dir)?;
        }
        std::fs::rename(&tmp, dest).map_err(OtaError::io("cannot move the slot to", dest))?;
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        crate::state::sync_dir(parent)?;
        Ok(bytes)
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// `root` and every directory below it, each before its subdirectories.
fn directories(root: &Path) -> Result<Vec<PathBuf>, OtaError> {
    let mut all = vec![root.to_owned()];
    let mut i = 0;
    while i < all.len() {
        let dir = all[i].clone();
        for e in std::fs::read_dir(&dir).map_err(OtaError::io("cannot read", &dir))? {
            let e = e.map_err(OtaError::io("cannot read", &dir))?;
            if e.file_type().map_err(OtaError::io("cannot read", e.path()))?.is_dir() {
                all.push(e.path());
            }
        }
        i += 1;
    }
    Ok(all)
}

fn unpack_into(
    archive: &Path,
    tmp: &Path,
    limits: UnpackLimits,
    refuse: &dyn Fn(String) -> OtaError,
) -> Result<u64, OtaError> {
    let file = std::fs::File::open(archive).map_err(OtaError::io("cannot open", archive))?;
    let mut tar = tar::Archive::new(std::io::BufReader::new(file));
    let entries = tar.entries().map_err(|e| refuse(format!("not a tar archive ({e})")))?;
    let (mut bytes, mut count) = (0u64, 0usize);
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("damaged ({e})")))?;
        count += 1;
        if count > limits.max_entries {
            return Err(refuse(format!("more than {} entries", limits.max_entries)));
        }
        let path = entry.path().map_err(|e| refuse(format!("an entry's name is unreadable ({e})")))?.into_owned();
        if !inside(&path) {
            return Err(refuse(format!("entry `{}` would land outside the slot", path.display())));
        }
        let target = tmp.join(&path);
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(OtaError::io("cannot create", &target))?;
            }
            tar::EntryType::Regular => {
                let size = entry.size();
                bytes = bytes.saturating_add(size);
                if bytes > limits.max_bytes {
                    return Err(refuse(format!("it unpacks to more than {} bytes", limits.max_bytes)));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(OtaError::io("cannot create", parent))?;
                }
                let mut out = std::fs::File::create(&target).map_err(OtaError::io("cannot create", &target))?;
                let copied = std::io::copy(&mut (&mut entry).take(size), &mut out)
                    .map_err(|e| refuse(format!("entry `{}` is damaged ({e})", path.display())))?;
                if copied != size {
                    return Err(refuse(format!("entry `{}` is cut short", path.display())));
                }
                out.sync_all().map_err(OtaError::io("cannot sync", &target))?;
            }
            other => {
                return Err(refuse(format!("entry `{}` is a {other:?}; only files and directories", path.display())))
            }
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(dir: &Path) {
        std::fs::create_dir_all(dir.join("reference")).unwrap();
        std::fs::write(dir.join("manifest.toml"), "schema = 1\n").unwrap();
        std::fs::write(dir.join("model.onnx"), vec![7u8; 5000]).unwrap();
        std::fs::write(dir.join("reference/input.f32"), vec![1u8; 64]).unwrap();
    }

    #[test]
    fn a_bundle_round_trips_and_packs_to_the_same_bytes_twice() {
        let d = tempfile::tempdir().unwrap();
        bundle(&d.path().join("b"));
        pack_dir(&d.path().join("b"), &d.path().join("1.tar")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        pack_dir(&d.path().join("b"), &d.path().join("2.tar")).unwrap();
        assert_eq!(std::fs::read(d.path().join("1.tar")).unwrap(), std::fs::read(d.path().join("2.tar")).unwrap());
        let bytes = unpack(&d.path().join("1.tar"), &d.path().join("slot"), UnpackLimits::default()).unwrap();
        assert_eq!(bytes, 5000 + 64 + 11);
        assert_eq!(std::fs::read(d.path().join("slot/reference/input.f32")).unwrap(), vec![1u8; 64]);
        let e = unpack(&d.path().join("1.tar"), &d.path().join("slot"), UnpackLimits::default()).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
    }

    /// A tar with one entry written by hand: `name`, of `kind`, holding `data`.
    fn raw_tar(path: &Path, name: &[u8], kind: tar::EntryType, data: &[u8]) {
        let mut header = tar::Header::new_gnu();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        if kind == tar::EntryType::Symlink {
            header.set_link_name("/etc/passwd").unwrap();
        }
        header.set_cksum();
        let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
        b.append(&header, data).unwrap();
        b.finish().unwrap();
    }

    #[test]
    fn hostile_archives_are_refused_and_leave_nothing() {
        let d = tempfile::tempdir().unwrap();
        let cases: [(&[u8], tar::EntryType, &str); 3] = [
            (b"../../escape", tar::EntryType::Regular, "outside the slot"),
            (b"/etc/cron.d/x", tar::EntryType::Regular, "outside the slot"),
            (b"link", tar::EntryType::Symlink, "only files and directories"),
        ];
        for (i, (name, kind, why)) in cases.into_iter().enumerate() {
            let archive = d.path().join(format!("{i}.tar"));
            raw_tar(&archive, name, kind, b"x");
            let slot = d.path().join(format!("slot{i}"));
            let e = unpack(&archive, &slot, UnpackLimits::default()).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("nothing was unpacked"), "{e}");
            assert!(!slot.exists() && !d.path().join(format!("slot{i}.unpacking")).exists());
        }
        assert!(!d.path().parent().unwrap().join("escape").exists());
        // Over the size limit.
        bundle(&d.path().join("b"));
        pack_dir(&d.path().join("b"), &d.path().join("big.tar")).unwrap();
        let e = unpack(
            &d.path().join("big.tar"),
            &d.path().join("slot"),
            UnpackLimits { max_bytes: 1000, max_entries: 10 },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more than 1000 bytes"), "{e}");
        assert!(!d.path().join("slot").exists());
    }

    #[test]
    fn every_directory_of_a_slot_is_found_to_be_synced() {
        let d = tempfile::tempdir().unwrap();
        for sub in ["reference/deep", "labels"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
        }
        std::fs::write(d.path().join("reference/x.f32"), b"x").unwrap();
        let found = directories(d.path()).unwrap();
        let root = d.path().to_owned();
        assert_eq!(found[0], root, "the root first: synced last");
        for sub in ["reference", "reference/deep", "labels"] {
            assert!(found.contains(&root.join(sub)), "{sub}: {found:?}");
        }
        assert_eq!(found.len(), 4, "{found:?}");
        let at = |p: &str| found.iter().position(|f| *f == root.join(p)).unwrap();
        assert!(at("reference") < at("reference/deep"), "a parent before its children: {found:?}");
    }
}
