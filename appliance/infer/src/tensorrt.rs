//! The TensorRT backend (feature `tensorrt`): the bundle's INT8 QDQ ONNX model built into an
//! engine for this GPU (cached on disk, see [`super::engine_cache`]), run on a CUDA stream.
//!
//! Built and compiled in CI against TensorRT 10 headers with the stub library linked; run only
//! on a Jetson or a CUDA machine with TensorRT installed (`make jetson-check`, docs/tensorrt.md).

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::PathBuf;
use std::sync::{Arc, Once};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use tensorrt_sys as sys;

use super::cuda::CudaPreprocessor;
use super::engine_cache::{EngineCache, EngineKey};
use super::transform::{InputType, Pixels};
use super::{Backend, Bundle, Image, InferError};
use vigil_config::Config;

/// How engines are built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    pub cache_dir: PathBuf,
    pub workspace_bytes: u64,
    pub dla_core: Option<u32>,
    pub max_batch: usize,
}

impl EngineOptions {
    pub fn from_config(config: &Config) -> Self {
        Self {
            cache_dir: config.engine_cache_dir(),
            workspace_bytes: config.inference.workspace_mb << 20,
            dla_core: config.inference.dla_core,
            max_batch: config.inference.max_batch,
        }
    }
}

/// Why TensorRT cannot run here, if it cannot.
pub fn available() -> Result<(), String> {
    // SAFETY: constant functions of the shim.
    if unsafe { sys::vt_is_stub() } == 1 {
        return Err("this vigil links the TensorRT stub (it was built where TensorRT's libraries were absent)".into());
    }
    super::cuda::available()
}

/// `10.3.0` from TensorRT's `major*10000 + minor*100 + patch`.
fn version_string(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

extern "C" fn forward_log(_: *mut c_void, severity: i32, message: *const c_char) {
    if message.is_null() {
        return;
    }
    // SAFETY: the shim passes a NUL-terminated string valid for the call.
    let text = unsafe { CStr::from_ptr(message) }.to_string_lossy();
    match severity {
        0 | 1 => tracing::error!(target: "tensorrt", "{text}"),
        2 => tracing::warn!(target: "tensorrt", "{text}"),
        3 => tracing::info!(target: "tensorrt", "{text}"),
        _ => tracing::debug!(target: "tensorrt", "{text}"),
    }
}

fn install_logger() {
    static ONCE: Once = Once::new();
    // SAFETY: the callback is a plain function that lives for the whole process.
    ONCE.call_once(|| unsafe {
        sys::vt_set_logger(Some(forward_log), std::ptr::null_mut(), sys::VT_SEVERITY_INFO as i32)
    });
}

/// Calls a shim function with an error buffer; a non-OK status becomes the message.
fn call(f: impl FnOnce(*mut c_char, usize) -> sys::vt_status) -> Result<(), String> {
    let mut err = [0u8; 1024];
    let status = f(err.as_mut_ptr().cast(), err.len());
    if status == sys::VT_OK {
        return Ok(());
    }
    let msg = CStr::from_bytes_until_nul(&err).map(|m| m.to_string_lossy().into_owned()).unwrap_or_default();
    Err(format!("{msg} (status {status})"))
}

struct Engine(*mut sys::vt_engine);

impl Drop for Engine {
    fn drop(&mut self) {
        // SAFETY: owned pointer from vt_engine_load, freed once.
        unsafe { sys::vt_engine_free(self.0) }
    }
}

pub struct TrtBackend {
    _ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    // Field order is drop order: the context (freed in Drop) goes before the engine that made it,
    // which is only held to keep it alive.
    context: *mut sys::vt_context,
    _engine: Engine,
    input_name: CString,
    output_name: CString,
    input_dims: Vec<i64>,
    dynamic_batch: bool,
    max_batch: usize,
    input: CudaSlice<f32>,
    output: CudaSlice<f32>,
    output_per_image: usize,
    host_output: Vec<f32>,
    /// Pre-processing kernels on `stream`, when NVRTC could compile them.
    gpu_pre: Option<CudaPreprocessor>,
    /// The bundle's pre-processing conventions, and the input size: each frame's transform.
    conventions: super::bundle::InputSection,
    input_size: (u32, u32),
    /// Slots filled on the device since the last inference.
    on_device: Vec<bool>,
}

// SAFETY: the TensorRT engine and context are used by one thread at a time (the scheduler owns
// the backend); TensorRT allows moving them between threads.
unsafe impl Send for TrtBackend {}

impl Drop for TrtBackend {
    fn drop(&mut self) {
        // Work an error left on the stream must finish before its context goes.
        let _ = self.stream.synchronize();
        // SAFETY: owned pointer from vt_context_create, freed once, before `engine`.
        unsafe { sys::vt_context_free(self.context) }
    }
}

impl TrtBackend {
    pub fn new(bundle: &Bundle, options: &EngineOptions) -> Result<Self, InferError> {
        available().map_err(InferError::Library)?;
        install_logger();
        let lib = |e: String| InferError::Library(e);
        let model_err = |message: String| InferError::Model { model: bundle.manifest.model.name.clone(), message };
        let ctx = CudaContext::new(0).map_err(|e| lib(format!("CUDA device 0: {e}")))?;
        let (major, minor) = ctx.compute_capability().map_err(|e| lib(format!("CUDA device 0: {e}")))?;
        let stream = ctx.new_stream().map_err(|e| lib(format!("CUDA stream: {e}")))?;
        // SAFETY: constant function of the shim.
        let trt_version = version_string(unsafe { sys::vt_library_version() });
        let key = EngineKey {
            model_sha256: bundle.manifest.model.sha256.to_ascii_lowercase(),
            tensorrt: trt_version.clone(),
            compute_capability: (major as u32, minor as u32),
            dla_core: options.dla_core,
            precision: "int8-qdq".to_owned(),
            max_batch: options.max_batch,
        };
        let onnx = CString::new(bundle.model_path().to_string_lossy().as_bytes())
            .map_err(|_| model_err("model path contains a NUL byte".into()))?;
        let dla = options.dla_core.map_or(-1, |c| c as i32);
        let build_opts = sys::vt_build_options {
            precision: sys::VT_PRECISION_INT8_QDQ as i32,
            workspace_bytes: options.workspace_bytes,
            dla_core: dla,
            max_batch: options.max_batch as i32,
        };
        let build = || -> Result<Vec<u8>, String> {
            tracing::info!(model = %bundle.manifest.model.name, tensorrt = %trt_version, sm = format!("{major}.{minor}"),
                dla = ?options.dla_core, "building the TensorRT engine (minutes on a Jetson; cached afterwards)");
            let mut blob = std::ptr::null_mut();
            // SAFETY: valid C string, options and out-pointer; the blob is freed below.
            call(|e, n| unsafe { sys::vt_build_engine(onnx.as_ptr(), &build_opts, &mut blob, e, n) })?;
            // SAFETY: blob is a valid vt_blob until freed.
            let bytes = unsafe {
                std::slice::from_raw_parts(sys::vt_blob_data(blob).cast::<u8>(), sys::vt_blob_size(blob)).to_vec()
            };
            unsafe { sys::vt_blob_free(blob) };
            Ok(bytes)
        };
        let load = |bytes: &[u8]| -> Result<Engine, String> {
            let mut engine = std::ptr::null_mut();
            // SAFETY: the bytes outlive the call; the engine is owned by the returned guard.
            call(|e, n| unsafe { sys::vt_engine_load(bytes.as_ptr().cast(), bytes.len(), dla, &mut engine, e, n) })?;
            Ok(Engine(engine))
        };
        let cache = EngineCache::new(&options.cache_dir);
        let (engine, outcome) = cache.get_or_build(&key, build, load).map_err(|e| model_err(e.to_string()))?;
        tracing::info!(engine = %cache.path(&key).display(), ?outcome, "TensorRT engine ready");
        if let Ok(n) = cache.prune(&key) {
            if n > 0 {
                tracing::info!(removed = n, "removed engines of other models from the cache");
            }
        }

        let m = &bundle.manifest;
        let io = io_tensors(&engine).map_err(model_err)?;
        let find = |name: &str, input: bool| {
            io.iter().find(|t| t.name == name && t.is_input == input).cloned().ok_or_else(|| {
                model_err(format!("the engine has no {} named `{name}`", if input { "input" } else { "output" }))
            })
        };
        let IoTensor { dtype: in_type, dims: input_dims, .. } = find(&m.input.name, true)?;
        let IoTensor { dtype: out_type, dims: output_dims, .. } = find(&m.output.name, false)?;
        if in_type != sys::VT_DTYPE_FLOAT as i32 || out_type != sys::VT_DTYPE_FLOAT as i32 {
            return Err(model_err("the engine's input and output must be f32 (export the model with f32 I/O)".into()));
        }
        // The batch dimension must be 1 or dynamic: buffers are sized per image × max_batch.
        for (what, dims) in [("input", &input_dims), ("output", &output_dims)] {
            if !matches!(dims.first(), Some(-1 | 1)) {
                return Err(model_err(format!(
                    "the engine's {what} {dims:?} has a fixed batch other than 1; export it with batch 1 or a \
                     dynamic batch"
                )));
            }
        }
        let dynamic_batch = input_dims.first() == Some(&-1);
        let max_batch = if dynamic_batch { options.max_batch.max(1) } else { 1 };
        let per_image = |dims: &[i64]| dims.iter().skip(1).product::<i64>().max(0) as usize;
        let input_len = per_image(&input_dims);
        let output_per_image = per_image(&output_dims);
        if input_len != bundle.input_len() || output_per_image != bundle.output_len() {
            return Err(model_err(format!(
                "engine tensors {input_dims:?} → {output_dims:?} do not match the manifest's shapes"
            )));
        }
        let mut context = std::ptr::null_mut();
        // SAFETY: engine is valid; the context is owned by the backend and freed in Drop.
        call(|e, n| unsafe { sys::vt_context_create(engine.0, &mut context, e, n) }).map_err(model_err)?;
        let gpu_pre = match CudaPreprocessor::new(stream.clone()) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "CUDA pre-processing unavailable; frames are pre-processed on the CPU");
                None
            }
        };
        let i = &m.input;
        if i.dtype.known() == Some(super::bundle::InputDtype::F16) {
            return Err(model_err(
                "the model takes f16 input; vigil's TensorRT path feeds f32 (build the engine from an f32-input \
                 model, or run this bundle on onnxruntime)"
                    .to_owned(),
            ));
        }
        let (w, h) = bundle.input_size();
        let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(|e| lib(format!("CUDA memory: {e}")));
        let input = alloc(max_batch * input_len);
        let output = alloc(max_batch * output_per_image);
        let backend = Self {
            input_name: CString::new(m.input.name.as_bytes()).expect("checked against the engine"),
            output_name: CString::new(m.output.name.as_bytes()).expect("checked against the engine"),
            input_dims,
            dynamic_batch,
            max_batch,
            input: input?,
            output: output?,
            output_per_image,
            host_output: Vec::new(),
            gpu_pre,
            conventions: i.clone(),
            input_size: (w, h),
            on_device: vec![false; max_batch],
            context,
            _engine: engine,
            stream,
            _ctx: ctx,
        };
        Ok(backend)
    }
}

#[derive(Debug, Clone)]
struct IoTensor {
    name: String,
    is_input: bool,
    /// A `vt_dtype`.
    dtype: i32,
    dims: Vec<i64>,
}

fn io_tensors(engine: &Engine) -> Result<Vec<IoTensor>, String> {
    // SAFETY: engine is valid for these calls; info is plain data.
    let n = unsafe { sys::vt_engine_io_count(engine.0) };
    (0..n)
        .map(|i| {
            let mut info: sys::vt_tensor_info = unsafe { std::mem::zeroed() };
            call(|e, len| unsafe { sys::vt_engine_io(engine.0, i, &mut info, e, len) })?;
            let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }.to_string_lossy().into_owned();
            let dims = info.dims[..info.nb_dims.clamp(0, 8) as usize].to_vec();
            Ok(IoTensor { name, is_input: info.is_input == 1, dtype: info.dtype, dims })
        })
        .collect()
}

impl Backend for TrtBackend {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn load_on_device(&mut self, slot: usize, image: &Image<'_>, source: (u32, u32)) -> Result<bool, InferError> {
        let Some(pre) = self.gpu_pre.as_mut() else { return Ok(false) };
        if image.bytes_per_pixel != 4 || slot >= self.max_batch {
            return Ok(false);
        }
        let transform = self.conventions.transform(source, self.input_size);
        let len = transform.len();
        let pixels = Pixels::Rgba { data: image.data, stride: image.stride };
        let mut dst = self.input.slice_mut(slot * len..(slot + 1) * len);
        pre.run(&pixels, &transform, InputType::F32, &mut dst).map_err(InferError::Run)?;
        self.on_device[slot] = true;
        Ok(true)
    }

    fn infer(&mut self, input: &[f32], batch: usize, output: &mut Vec<f32>) -> Result<(), InferError> {
        // Taken first, so that no error below leaves a slot marked for the next batch.
        let on_device = std::mem::replace(&mut self.on_device, vec![false; self.max_batch]);
        if batch == 0 || batch > self.max_batch {
            return Err(InferError::Run(format!("batch of {batch}: this engine takes 1 to {}", self.max_batch)));
        }
        let run = |e: String| InferError::Run(e);
        let cuda = |e: cudarc::driver::DriverError| InferError::Run(format!("CUDA: {e}"));
        // Slots the kernels filled stay; the others come from the CPU pre-processor's `input`.
        let len = 3 * self.input_size.0 as usize * self.input_size.1 as usize;
        for (slot, &filled) in on_device.iter().enumerate().take(batch) {
            if !filled {
                let host = input
                    .get(slot * len..(slot + 1) * len)
                    .ok_or_else(|| run(format!("input for slot {slot} missing")))?;
                self.stream.memcpy_htod(host, &mut self.input.slice_mut(slot * len..(slot + 1) * len)).map_err(cuda)?;
            }
        }
        if self.dynamic_batch {
            let mut dims = self.input_dims.clone();
            dims[0] = batch as i64;
            // SAFETY: valid context, name and dims for the call.
            call(|e, n| unsafe {
                sys::vt_context_set_input_shape(
                    self.context,
                    self.input_name.as_ptr(),
                    dims.len() as i32,
                    dims.as_ptr(),
                    e,
                    n,
                )
            })
            .map_err(run)?;
        }
        {
            let (in_ptr, _in_sync) = self.input.device_ptr(&self.stream);
            let (out_ptr, _out_sync) = self.output.device_ptr_mut(&self.stream);
            let stream = self.stream.cu_stream();
            // SAFETY: device addresses of live allocations sized for max_batch; the stream is ours.
            call(|e, n| unsafe { sys::vt_context_set_address(self.context, self.input_name.as_ptr(), in_ptr, e, n) })
                .map_err(run)?;
            call(|e, n| unsafe { sys::vt_context_set_address(self.context, self.output_name.as_ptr(), out_ptr, e, n) })
                .map_err(run)?;
            call(|e, n| unsafe { sys::vt_context_enqueue(self.context, stream.cast(), e, n) }).map_err(run)?;
        }
        let n = batch * self.output_per_image;
        self.host_output.resize(n, 0.0);
        self.stream.memcpy_dtoh(&self.output.slice(..n), &mut self.host_output).map_err(cuda)?;
        self.stream.synchronize().map_err(cuda)?;
        output.clear();
        output.extend_from_slice(&self.host_output);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_print_as_dotted_triples() {
        assert_eq!(version_string(100300), "10.3.0");
        assert_eq!(version_string(101600), "10.16.0");
    }

    #[test]
    fn where_tensorrt_cannot_run_the_reason_is_given() {
        // SAFETY: a constant function of the shim.
        let stub = unsafe { sys::vt_is_stub() } == 1;
        match available() {
            Err(why) => assert!(why.contains("stub") || why.contains("no CUDA device"), "{why}"),
            Ok(()) => assert!(!stub, "the stub can never run TensorRT, yet available() said yes"),
        }
    }
}
