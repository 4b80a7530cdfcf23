//! On-disk cache of built TensorRT engines.
//!
//! Building an engine takes minutes on a Jetson, so it is done once per model, TensorRT version,
//! GPU and DLA core, and the result kept. An engine is only valid for exactly that combination,
//! so all of it is in the key. A cache file carries its key and a SHA-256 of the engine; a file
//! whose header, key or digest does not match, or that TensorRT then refuses to load, is removed
//! and the engine rebuilt: a stale or corrupt engine is never trusted.
//!
//! Files are written to a temporary name, synced, and renamed into place, so a power cut leaves
//! either the old file or the new one.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"VIGILENG";
const FORMAT: u32 = 1;

/// Everything an engine depends on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EngineKey {
    /// SHA-256 of the ONNX model (hex).
    pub model_sha256: String,
    /// TensorRT library version, e.g. `10.3.0`.
    pub tensorrt: String,
    /// GPU compute capability, e.g. `8.7` (Orin).
    pub compute_capability: (u32, u32),
    pub dla_core: Option<u32>,
    /// Precision mode and batch limit the engine was built with.
    pub precision: String,
    pub max_batch: usize,
}

impl EngineKey {
    /// File name: readable, and distinct for every distinct key.
    pub fn file_name(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.canonical()));
        let model = self.model_sha256.get(..12).unwrap_or(&self.model_sha256);
        let dla = self.dla_core.map_or_else(|| "gpu".to_owned(), |c| format!("dla{c}"));
        let (major, minor) = self.compute_capability;
        format!("{model}-trt{}-sm{major}{minor}-{dla}-{}.{}.engine", self.tensorrt, self.precision, &digest[..8])
    }

    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a key always serializes")
    }
}

/// What [`EngineCache::get_or_build`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    /// No usable file: built and stored.
    Built,
    /// A file was there but was rejected (with the reason); rebuilt and replaced.
    Rebuilt(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    #[error("engine cache {dir}: {source}")]
    Io { dir: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Build(E),
}

pub struct EngineCache {
    dir: PathBuf,
}

impl EngineCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self, key: &EngineKey) -> PathBuf {
        self.dir.join(key.file_name())
    }

    /// The cached engine for `key` loaded with `load`, or one built with `build`, stored, then
    /// loaded. A file that fails its checks or that `load` rejects is removed and rebuilt once.
    pub fn get_or_build<T, E: std::fmt::Display>(
        &self,
        key: &EngineKey,
        build: impl FnOnce() -> Result<Vec<u8>, E>,
        mut load: impl FnMut(&[u8]) -> Result<T, E>,
    ) -> Result<(T, CacheOutcome), CacheError<E>> {
        let path = self.path(key);
        let mut rejected = None;
        match std::fs::read(&path) {
            Ok(bytes) => match decode(&bytes, key) {
                Ok(engine) => match load(engine) {
                    Ok(t) => return Ok((t, CacheOutcome::Hit)),
                    Err(e) => rejected = Some(format!("TensorRT refused it: {e}")),
                },
                Err(why) => rejected = Some(why),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => rejected = Some(format!("unreadable: {e}")),
        }
        if let Some(why) = &rejected {
            tracing::warn!(path = %path.display(), reason = %why, "cached engine rejected; rebuilding");
            let _ = std::fs::remove_file(&path);
        }
        let engine = build().map_err(CacheError::Build)?;
        // A full or read-only disk costs the next start a rebuild, not this one its engine.
        if let Err(e) = self.store(key, &engine) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot cache the built engine; using it uncached");
        }
        let t = load(&engine).map_err(CacheError::Build)?;
        Ok((t, rejected.map_or(CacheOutcome::Built, CacheOutcome::Rebuilt)))
    }

    /// Writes `engine` for `key` atomically (temporary file, fsync, rename, directory fsync).
    pub fn store(&self, key: &EngineKey, engine: &[u8]) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{}.tmp", key.file_name()));
        // Written straight to the file: no second in-memory copy of a many-megabyte engine.
        vigil_core::fsutil::write_atomically_with(&path, &tmp, |w| write_encoded(w, engine, key))?;
        vigil_core::fsutil::sync_dir(&self.dir)?;
        Ok(path)
    }

    /// Removes cached engines of models other than `keep`'s (after a model update, the old
    /// model's engines are dead weight on a small eMMC). Engines of `keep`'s model for other
    /// settings stay.
    pub fn prune(&self, keep: &EngineKey) -> std::io::Result<usize> {
        // Engine file names start with the model's hash (see `EngineKey::file_name`).
        let prefix = keep.model_sha256.get(..12).unwrap_or(&keep.model_sha256).to_owned();
        let mut removed = 0;
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Ok(0) };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".engine") && !name.starts_with(&prefix) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// `MAGIC | format u32 | key length u32 | key JSON | engine length u64 | SHA-256(engine) | engine`,
/// little-endian.
fn write_encoded(w: &mut dyn std::io::Write, engine: &[u8], key: &EngineKey) -> std::io::Result<()> {
    let k = key.canonical();
    w.write_all(MAGIC)?;
    w.write_all(&FORMAT.to_le_bytes())?;
    w.write_all(&(k.len() as u32).to_le_bytes())?;
    w.write_all(&k)?;
    w.write_all(&(engine.len() as u64).to_le_bytes())?;
    w.write_all(&Sha256::digest(engine))?;
    w.write_all(engine)
}

fn decode<'a>(bytes: &'a [u8], key: &EngineKey) -> Result<&'a [u8], String> {
    let mut rest = bytes;
    let mut take = |n: usize| -> Result<&'a [u8], String> {
        if rest.len() < n {
            return Err("truncated".to_owned());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    if take(8)? != MAGIC {
        return Err("not a vigil engine file".to_owned());
    }
    let format = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
    if format != FORMAT {
        return Err(format!("cache format {format}, this vigil writes {FORMAT}"));
    }
    let key_len = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
    if take(key_len)? != key.canonical().as_slice() {
        return Err("built for another model, TensorRT, GPU or DLA core".to_owned());
    }
    let len = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
    let digest = take(32)?;
    let engine = take(len)?;
    if !rest.is_empty() {
        return Err("trailing bytes".to_owned());
    }
    if Sha256::digest(engine).as_slice() != digest {
        return Err("engine digest mismatch (corrupt file)".to_owned());
    }
    Ok(engine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EngineKey {
        EngineKey {
            model_sha256: "bccbc6dc064325c1581e64f8d26c9e929f8fc2b2caa4a047bfee11a885deba16".into(),
            tensorrt: "10.3.0".into(),
            compute_capability: (8, 7),
            dla_core: None,
            precision: "int8-qdq".into(),
            max_batch: 1,
        }
    }

    /// A "TensorRT" that accepts engines starting with `ENG`, and counts builds.
    fn run(cache: &EngineCache, key: &EngineKey, builds: &mut u32) -> (Vec<u8>, CacheOutcome) {
        cache
            .get_or_build(
                key,
                || {
                    *builds += 1;
                    Ok::<_, String>(b"ENG-built".to_vec())
                },
                |e: &[u8]| if e.starts_with(b"ENG") { Ok(e.to_vec()) } else { Err("bad engine".to_owned()) },
            )
            .unwrap()
    }

    #[test]
    fn an_engine_is_built_once_then_served_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        let mut builds = 0;
        assert_eq!(run(&cache, &key(), &mut builds), (b"ENG-built".to_vec(), CacheOutcome::Built));
        assert_eq!(run(&cache, &key(), &mut builds).1, CacheOutcome::Hit);
        assert_eq!(builds, 1);
        let name = key().file_name();
        assert!(name.starts_with("bccbc6dc0643-trt10.3.0-sm87-gpu-int8-qdq."), "{name}");
    }

    #[test]
    fn every_part_of_the_key_makes_a_different_engine() {
        let base = key();
        let variants = [
            EngineKey { tensorrt: "10.4.0".into(), ..base.clone() },
            EngineKey { compute_capability: (7, 2), ..base.clone() },
            EngineKey { dla_core: Some(0), ..base.clone() },
            EngineKey { model_sha256: "00".repeat(32), ..base.clone() },
            EngineKey { max_batch: 4, ..base.clone() },
            EngineKey { precision: "fp16".into(), ..base.clone() },
        ];
        for v in &variants {
            assert_ne!(v.file_name(), base.file_name(), "{v:?}");
        }
        // A file renamed to another key's name is still refused: the key is inside.
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        let mut builds = 0;
        run(&cache, &base, &mut builds);
        std::fs::rename(cache.path(&base), cache.path(&variants[0])).unwrap();
        let (_, outcome) = run(&cache, &variants[0], &mut builds);
        assert!(matches!(outcome, CacheOutcome::Rebuilt(ref why) if why.contains("another")), "{outcome:?}");
    }

    #[test]
    fn corrupt_truncated_or_refused_files_are_rebuilt_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        let k = key();
        let mut builds = 0;
        run(&cache, &k, &mut builds);
        let path = cache.path(&k);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let (_, outcome) = run(&cache, &k, &mut builds);
        assert!(matches!(outcome, CacheOutcome::Rebuilt(ref w) if w.contains("digest")), "{outcome:?}");

        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let (_, outcome) = run(&cache, &k, &mut builds);
        assert!(matches!(outcome, CacheOutcome::Rebuilt(ref w) if w.contains("truncated")), "{outcome:?}");

        // Intact file, but the loader (TensorRT) refuses what is inside.
        let mut stale = Vec::new();
        write_encoded(&mut stale, b"XYZ-stale", &k).unwrap();
        std::fs::write(&path, stale).unwrap();
        let (engine, outcome) = run(&cache, &k, &mut builds);
        assert_eq!(engine, b"ENG-built");
        assert!(matches!(outcome, CacheOutcome::Rebuilt(ref w) if w.contains("refused")), "{outcome:?}");
        assert_eq!(builds, 4);
        assert_eq!(run(&cache, &k, &mut builds).1, CacheOutcome::Hit, "the rebuilt engine is served next time");
    }

    #[test]
    fn an_engine_that_cannot_be_cached_is_still_used() {
        let dir = tempfile::tempdir().unwrap();
        // The cache directory is a file: nothing can be written under it.
        let blocked = dir.path().join("engines");
        std::fs::write(&blocked, b"not a directory").unwrap();
        let cache = EngineCache::new(&blocked);
        let mut builds = 0;
        let (engine, _) = run(&cache, &key(), &mut builds);
        assert_eq!((engine.as_slice(), builds), (&b"ENG-built"[..], 1), "built once and used");
        assert_eq!(std::fs::read(&blocked).unwrap(), b"not a directory");
    }

    #[test]
    fn a_failed_build_leaves_no_file_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path().join("engines"));
        let err = cache
            .get_or_build(
                &key(),
                || Err::<Vec<u8>, _>("parser: unsupported op".to_owned()),
                |e: &[u8]| Ok::<_, String>(e.len()),
            )
            .unwrap_err();
        assert!(err.to_string().contains("unsupported op"));
        assert!(!cache.path(&key()).exists());
    }

    #[test]
    fn pruning_removes_other_models_engines_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EngineCache::new(dir.path());
        let current = key();
        let old = EngineKey { model_sha256: "ab".repeat(32), ..current.clone() };
        let other_gpu = EngineKey { compute_capability: (7, 2), ..current.clone() };
        for k in [&current, &old, &other_gpu] {
            cache.store(k, b"ENG").unwrap();
        }
        assert_eq!(cache.prune(&current).unwrap(), 1);
        assert!(cache.path(&current).exists() && cache.path(&other_gpu).exists());
        assert!(!cache.path(&old).exists());
    }
}
