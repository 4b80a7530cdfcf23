//! The ONNX Runtime backend (CPU). The shared library is loaded at run time (`ort`'s
//! `load-dynamic`), so vigil links no ONNX Runtime and cross-builds freely; the library comes from
//! the `onnxruntime` PyPI wheel that the set-up command installs.
//!
//! `ort` panics if used without a library, so the path is found and checked before any `ort` call.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use super::{Backend, Bundle, InferError};

/// The set-up command's virtual environment, relative to the repository root.
const VENV_GLOB: &str = ".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so*";
/// System locations (packages, manual installs).
const SYSTEM_GLOBS: &[&str] = &[
    "/usr/lib/vigil/libonnxruntime.so*",
    "/usr/local/lib/libonnxruntime.so*",
    "/usr/lib/aarch64-linux-gnu/libonnxruntime.so*",
    "/usr/lib/x86_64-linux-gnu/libonnxruntime.so*",
];

/// Finds `libonnxruntime.so`: `configured`, else `$ORT_DYLIB_PATH`, else the well-known places.
pub fn find_ort_library(configured: Option<&Path>) -> Result<PathBuf, InferError> {
    let hint = "install it with `make setup` (pip wheel `onnxruntime`), or set inference.ort_library / \
                ORT_DYLIB_PATH to libonnxruntime.so";
    // An explicitly named library must exist; the search below is only for when none is named.
    let env = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()).map(PathBuf::from);
    let named = match (configured, env) {
        (Some(p), _) => Some((p.to_path_buf(), format!("ONNX Runtime library {}", p.display()))),
        (None, Some(p)) => Some((p.clone(), format!("ORT_DYLIB_PATH={}", p.display()))),
        (None, None) => None,
    };
    if let Some((path, what)) = named {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(InferError::Library(format!("{what} does not exist; {hint}")))
        };
    }
    // The repository's .venv: from the current directory, or from a binary in target/<profile>/
    // or target/<triple>/<profile>/.
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let mut roots = vec![PathBuf::from(".")];
    if let Some(dir) = exe_dir {
        roots.extend([dir.join("../.."), dir.join("../../..")]);
    }
    roots
        .iter()
        .map(|r| format!("{}/{VENV_GLOB}", r.display()))
        .chain(SYSTEM_GLOBS.iter().map(|g| (*g).to_owned()))
        .find_map(|g| glob_first(&g))
        .ok_or_else(|| InferError::Library(format!("ONNX Runtime library not found; {hint}")))
}

/// The first existing file matching a pattern whose `*`s stand for any run of characters
/// inside one path component (enough for the fixed patterns above).
fn glob_first(pattern: &str) -> Option<PathBuf> {
    let mut candidates = vec![if pattern.starts_with('/') { PathBuf::from("/") } else { PathBuf::from(".") }];
    for part in pattern.split('/').filter(|p| !p.is_empty()) {
        let mut next = Vec::new();
        for dir in candidates {
            if !part.contains('*') {
                let p = dir.join(part);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            let mut names: Vec<String> = entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
            names.sort();
            next.extend(names.into_iter().filter(|n| wildcard_match(part, n)).map(|n| dir.join(n)));
        }
        candidates = next;
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else { return false };
    let tail: Vec<&str> = parts.collect();
    for (i, part) in tail.iter().enumerate() {
        if i == tail.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(pos) => rest = &rest[pos + part.len()..],
            None => return false,
        }
    }
    true
}

/// One ONNX Runtime environment per process (an `ort` rule); the first library loaded wins.
static ENVIRONMENT: OnceLock<Mutex<Option<(PathBuf, ort::environment::Environment)>>> = OnceLock::new();

fn environment(library: &Path) -> Result<ort::environment::Environment, InferError> {
    let mut slot = ENVIRONMENT.get_or_init(|| Mutex::new(None)).lock().unwrap_or_else(|p| p.into_inner());
    if let Some((loaded, env)) = slot.as_ref() {
        if loaded != library {
            tracing::warn!(loaded = %loaded.display(), requested = %library.display(),
                "ONNX Runtime is already loaded from another path; using the loaded one");
        }
        return Ok(env.clone());
    }
    let env = ort::init_from(library)
        .map_err(|e| InferError::Library(format!("cannot load ONNX Runtime from {}: {e}", library.display())))?
        .with_name("vigil")
        .build()
        .map_err(|e| InferError::Library(format!("cannot start ONNX Runtime: {e}")))?;
    *slot = Some((library.to_path_buf(), env.clone()));
    Ok(env)
}

pub struct OrtBackend {
    session: Session,
    input_name: String,
    input_shape: Vec<i64>,
    output_name: String,
    output_len: usize,
    max_batch: usize,
    /// The model takes f16 input: the f32 tensor is converted into this buffer.
    half_input: Option<Vec<half::f16>>,
}

impl OrtBackend {
    /// Loads the bundle's INT8 model on the CPU with `threads` intra-op threads. A model whose
    /// batch dimension is dynamic takes batches of up to `max_batch` images; others take one.
    pub fn new(bundle: &Bundle, library: &Path, threads: usize, max_batch: usize) -> Result<Self, InferError> {
        let env = environment(library)?;
        let model_err = |message: String| InferError::Model { model: bundle.manifest.model.name.clone(), message };
        let path = bundle.model_path();
        let session = build_session(&env, &path, threads)
            .map_err(|e| model_err(format!("ONNX Runtime cannot load {}: {e}", path.display())))?;
        let m = &bundle.manifest;
        let Some(input) = session.inputs().iter().find(|i| i.name() == m.input.name) else {
            return Err(model_err(format!("the ONNX file has no input named `{}`", m.input.name)));
        };
        let dynamic_batch = input.dtype().tensor_shape().and_then(|s| s.first().copied()).is_some_and(|d| d < 0);
        if !session.outputs().iter().any(|o| o.name() == m.output.name) {
            return Err(model_err(format!("the ONNX file has no output named `{}`", m.output.name)));
        }
        Ok(Self {
            session,
            input_name: m.input.name.clone(),
            input_shape: m.input.shape.clone(),
            output_name: m.output.name.clone(),
            output_len: bundle.output_len(),
            max_batch: if dynamic_batch { max_batch.max(1) } else { 1 },
            half_input: (m.input.dtype.known() == Some(crate::bundle::InputDtype::F16)).then(Vec::new),
        })
    }
}

/// One input or output of an ONNX model, as ONNX Runtime reads it: dynamic dimensions are −1.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    /// `f32`, `f16`, or ONNX Runtime's name for another element type.
    pub dtype: String,
}

/// The inputs and outputs of the ONNX model at `path`.
pub fn describe_model(path: &Path, library: &Path) -> Result<(Vec<Tensor>, Vec<Tensor>), InferError> {
    let env = environment(library)?;
    let session = build_session(&env, path, 1).map_err(|e| InferError::Model {
        model: path.display().to_string(),
        message: format!("ONNX Runtime cannot load it: {e}"),
    })?;
    let tensor = |o: &ort::value::Outlet| Tensor {
        name: o.name().to_owned(),
        shape: o.dtype().tensor_shape().map(|s| s.to_vec()).unwrap_or_default(),
        dtype: match o.dtype().tensor_type() {
            Some(ort::value::TensorElementType::Float32) => "f32".to_owned(),
            Some(ort::value::TensorElementType::Float16) => "f16".to_owned(),
            Some(other) => format!("{other:?}"),
            None => "not a tensor".to_owned(),
        },
    };
    Ok((session.inputs().iter().map(tensor).collect(), session.outputs().iter().map(tensor).collect()))
}

fn build_session(env: &ort::environment::Environment, path: &Path, threads: usize) -> Result<Session, String> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    Session::builder(env)
        .map_err(|e| text(&e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| text(&e))?
        .with_intra_threads(threads)
        .map_err(|e| text(&e))?
        .with_inter_threads(1)
        .map_err(|e| text(&e))?
        // x86 CPUs without VNNI (AVX2 only, such as AMD EPYC before Zen 4) multiply U8×S8 with
        // VPMADDUBSW, which saturates pairs of products to 16 bits: the INT8 model's outputs
        // then drift far past the bundle's tolerance (measured: max |Δ| 7.4 against 2.08, and
        // scores 0.78 for 0.9975). This option makes ORT use exact U8×U8 there; it changes
        // nothing on VNNI CPUs or on ARM (docs/performance.md).
        .with_precise_qmm()
        .map_err(|e| text(&e))?
        .commit_from_file(path)
        .map_err(|e| text(&e))
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "onnxruntime-cpu"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn infer(&mut self, input: &[f32], batch: usize, output: &mut Vec<f32>) -> Result<(), InferError> {
        if batch == 0 || batch > self.max_batch {
            return Err(InferError::Run(format!("batch of {batch}: this model takes 1 to {}", self.max_batch)));
        }
        let mut shape = self.input_shape.clone();
        shape[0] = batch as i64;
        let bad_input = |e: ort::Error| InferError::Run(format!("input tensor: {e}"));
        let outputs = match &mut self.half_input {
            Some(half) => {
                half.clear();
                half.extend(input.iter().map(|&v| half::f16::from_f32(v)));
                let tensor = TensorRef::from_array_view((shape, half.as_slice())).map_err(bad_input)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor])
            }
            None => {
                let tensor = TensorRef::from_array_view((shape, input)).map_err(bad_input)?;
                self.session.run(ort::inputs![self.input_name.as_str() => tensor])
            }
        }
        .map_err(|e| InferError::Run(e.to_string()))?;
        let value = outputs
            .get(self.output_name.as_str())
            .ok_or_else(|| InferError::Run(format!("no output `{}`", self.output_name)))?;
        output.clear();
        match value.try_extract_tensor::<f32>() {
            Ok((_, data)) => output.extend_from_slice(data),
            // A half-precision export's output.
            Err(_) => {
                let (_, data) = value
                    .try_extract_tensor::<half::f16>()
                    .map_err(|e| InferError::Run(format!("output tensor: {e}")))?;
                output.extend(data.iter().map(|v| v.to_f32()));
            }
        }
        if output.len() != batch * self.output_len {
            return Err(InferError::Run(format!(
                "output has {} values, the manifest's shape says {} per image",
                output.len(),
                self.output_len
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_a_shell() {
        assert!(wildcard_match("libonnxruntime.so*", "libonnxruntime.so.1.31.1"));
        assert!(wildcard_match("python3*", "python3.11"));
        assert!(!wildcard_match("python3*", "python2.7"));
        assert!(wildcard_match("a*b*c", "axxbyyc"));
        assert!(!wildcard_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn a_configured_library_that_is_missing_is_a_clear_error() {
        let err = find_ort_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err().to_string();
        assert!(err.contains("does not exist") && err.contains("make setup"), "{err}");
    }
}
