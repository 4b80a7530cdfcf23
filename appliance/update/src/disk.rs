//! The updater's directory, `<data_dir>/ota`, and what is left in it once an update has ended:
//!
//! ```text
//! trusted/            TUF metadata trusted so far, and the chain of roots (vigil_ota::state)
//! minimum.json        anti-rollback minimums
//! update.json         the journal of the last update (crate::journal)
//! downloads/          the part file of a download under way (vigil_ota::transport)
//! lock                taken by whoever refreshes or downloads (vigil_ota::state)
//! <name>-<version>[.tar]   the downloaded archive (a model) or binary, until the outcome
//! ```
//!
//! Everything else there is garbage from an update that ended: [`tidy`] removes it, so that
//! failed, abandoned and rolled-back updates leave nothing behind (their archives, the part files
//! of downloads that will never be resumed, a refresh's scratch copy).

use std::path::{Path, PathBuf};

use vigil_ota::Kind;

use crate::journal::Journal;

/// What stays in the updater's directory between updates.
const KEPT: [&str; 6] =
    ["trusted", "minimum.json", crate::journal::FILE, "update.json.unreadable", "downloads", "lock"];

/// Where the update's download is kept until its outcome: a model's archive, or a binary.
pub(crate) fn archive_path(dir: &Path, j: &Journal) -> PathBuf {
    let ext = if j.kind == Kind::Binary { "" } else { ".tar" };
    dir.join(format!("{}-{}{ext}", j.name, j.version))
}

/// Removes from the updater's directory `dir` all that is not kept state (archives, binaries,
/// scratch directories of interrupted refreshes) and, unless `keep_downloads`, the part files of
/// downloads (kept after a download that failed on the network, so that the same update sent
/// again resumes it; the next update or start removes them). Called when no update is under way.
/// Returns what it removed.
pub(crate) fn tidy(dir: &Path, keep_downloads: bool) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut remove = |path: PathBuf| {
        let gone = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot remove an update's leftover"),
        }
    };
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !KEPT.iter().any(|k| name == *k) {
            remove(entry.path());
        }
    }
    if !keep_downloads {
        for entry in std::fs::read_dir(dir.join("downloads")).into_iter().flatten().flatten() {
            remove(entry.path());
        }
    }
    if !removed.is_empty() {
        tracing::info!(removed = removed.len(), "removed what ended updates left in {}", dir.display());
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kept_state_stays_and_downloads_go_unless_kept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        for kept in ["trusted/roots", "downloads"] {
            std::fs::create_dir_all(dir.join(kept)).unwrap();
        }
        for file in ["minimum.json", "update.json", "update.json.unreadable", "trusted/root.json"] {
            std::fs::write(dir.join(file), b"{}").unwrap();
        }
        // What ten ended updates can leave: archives, a binary, a refresh's scratch copy, parts.
        for v in 0..10 {
            let j = Journal {
                kind: if v % 3 == 0 { Kind::Binary } else { Kind::Model },
                ..Journal::new("r", "m", &format!("1.0.{v}"))
            };
            std::fs::write(archive_path(dir, &j), b"x").unwrap();
            std::fs::write(dir.join(format!("downloads/{v}.part")), b"x").unwrap();
            std::fs::write(dir.join(format!("downloads/{v}.json")), b"{}").unwrap();
        }
        std::fs::create_dir_all(dir.join(".refresh-abc/x")).unwrap();
        let removed = tidy(dir, true);
        assert_eq!(removed.len(), 11, "{removed:?}");
        assert_eq!(std::fs::read_dir(dir.join("downloads")).unwrap().count(), 20, "the parts are kept");
        let removed = tidy(dir, false);
        assert_eq!(removed.len(), 20, "{removed:?}");
        let mut left: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, ["downloads", "minimum.json", "trusted", "update.json", "update.json.unreadable"]);
        assert!(dir.join("trusted/roots").is_dir() && dir.join("trusted/root.json").is_file());
    }
}
