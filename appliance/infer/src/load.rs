//! The detector a configuration asks for: its bundle on the backend chosen for it, with the
//! fallbacks to ONNX Runtime (CPU) that keep the cameras running.

use vigil_config::{BackendKind, Config};

use crate::{choose_backend, find_ort_library, Backend, Bundle, BundleBackend, Detector, InferError, OrtBackend};

/// Loads the configuration's bundle and the backend chosen for it.
pub fn load_detector(config: &Config) -> Result<(Bundle, Detector), InferError> {
    load_detector_with(config, Bundle::load(&config.model.bundle)?)
}

/// Loads `bundle` (already checked: the active model slot, see [`crate::slots`]) on the
/// backend the configuration chooses for it: the model the whole service runs.
pub fn load_detector_with(config: &Config, bundle: Bundle) -> Result<(Bundle, Detector), InferError> {
    let backends = bundle.backends();
    let choice = choose_backend(config.inference.backend, &backends, tensorrt_available())?;
    if let Some(why) = &choice.fallback {
        tracing::warn!(requested = config.inference.backend.name(), using = choice.backend.name(), "{why}");
    }
    let ort = || -> Result<Box<dyn Backend>, InferError> {
        let library = find_ort_library(config.inference.ort_library.as_deref())?;
        Ok(Box::new(OrtBackend::new(&bundle, &library, config.inference.threads, config.inference.max_batch)?))
    };
    let backend = match choice.backend {
        BackendKind::Tensorrt => match tensorrt_backend(config, &bundle) {
            Ok(b) => b,
            // The engine could not be built or loaded: keep the cameras running on the CPU.
            Err(e) if backends.contains(&BundleBackend::Onnxruntime) => {
                tracing::warn!(error = %e, "TensorRT cannot run this model; using ONNX Runtime (CPU)");
                ort()?
            }
            Err(e) => return Err(e),
        },
        BackendKind::Onnxruntime | BackendKind::Auto => ort()?,
    };
    let detector = Detector::new(&bundle, backend)?;
    Ok((bundle, detector))
}

#[cfg(feature = "tensorrt")]
fn tensorrt_available() -> Result<(), String> {
    crate::tensorrt::available()
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_available() -> Result<(), String> {
    Err("this vigil was built without the `tensorrt` feature".to_owned())
}

#[cfg(feature = "tensorrt")]
fn tensorrt_backend(config: &Config, bundle: &Bundle) -> Result<Box<dyn Backend>, InferError> {
    let options = crate::tensorrt::EngineOptions::from_config(config);
    Ok(Box::new(crate::tensorrt::TrtBackend::new(bundle, &options)?))
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt_backend(_: &Config, _: &Bundle) -> Result<Box<dyn Backend>, InferError> {
    unreachable!("choose_backend picks TensorRT only where tensorrt_available() said yes")
}
