//! CUDA pre-processing (feature `cuda`): NVRTC kernels that perform [`super::transform`] (frame →
//! letterboxed, normalized NCHW in f32/f16/s8) on the GPU, on the stream inference uses.
//!
//! cudarc loads libcuda and libnvrtc at run time and panics if asked blindly where they are
//! missing, so [`available`] checks for the driver and a device first; every constructor goes
//! through it and reports "no CUDA device" as an error.
//!
//! Frames come from host memory and are uploaded into reused device buffers
//! ([`CudaPreprocessor::run`]); the TensorRT backend runs the kernels on its own stream, writing
//! straight into the engine's input. Mapping Jetson NVMM buffers into CUDA (NvBufSurface →
//! EGLImage → CUDA) belongs behind this same call and is not written yet: see docs/tensorrt.md.

use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use super::transform::{InputType, Pixels, Transform};

/// The kernels. Same arithmetic, in the same order, as `transform::reference`; compiled without
/// FMA contraction so that the two agree to rounding.
pub const KERNELS: &str = r#"
struct VgParams {
    double scale_x, scale_y;   /* 1 / (scaled size / source size), OpenCV's resize factors */
    int src_w, src_h, dst_w, dst_h;
    int stride0, stride1;
    float ratio_x, ratio_y, pad_x, pad_y, x_hi, y_hi;
    float scale;
    float mean[3];
    float std[3];
    float pad;
    int bgr;
    int out_kind;   /* 0 f32, 1 f16, 2 s8 */
    float qscale;
};

__device__ float vg_sample(const unsigned char *p, int stride, int w, int h, int step, int off, float x, float y) {
    x = fminf(fmaxf(x, 0.0f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.0f), (float)(h - 1));
    int x0 = (int)floorf(x), y0 = (int)floorf(y);
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float fx = x - (float)x0, fy = y - (float)y0;
    float a = p[y0 * stride + x0 * step + off], b = p[y0 * stride + x1 * step + off];
    float c = p[y1 * stride + x0 * step + off], d = p[y1 * stride + x1 * step + off];
    float top = a + (b - a) * fx;
    float bottom = c + (d - c) * fx;
    return top + (bottom - top) * fy;
}

/* cv2.resize(INTER_LINEAR)'s taps for 8-bit images: two samples and their 11-bit weights
   (transform.rs `FixedTap`); `clamp` across, rows only clamped down. */
__device__ void vg_taps(double scale, int d, int size, int clamp, int *i0, int *i1, int *w0, int *w1) {
    float f = (float)__dadd_rn(__dmul_rn((double)d + 0.5, scale), -0.5);
    int s = (int)floorf(f);
    f = f - (float)s;
    if (clamp && s < 0) { f = 0.0f; s = 0; }
    if (clamp && s >= size - 1) { f = 0.0f; s = size - 1; }
    *i0 = min(max(s, 0), size - 1);
    *i1 = min(max(s + 1, 0), size - 1);
    *w0 = __float2int_rn((1.0f - f) * 2048.0f);
    *w1 = __float2int_rn(f * 2048.0f);
}

/* The 8-bit value cv2.resize gives, as its SIMD path computes the vertical pass. */
__device__ float vg_sample_fixed(const unsigned char *p, int stride, int off, int x0, int x1, int a0, int a1,
                                 int y0, int y1, int b0, int b1) {
    int h0 = p[y0 * stride + x0 * 4 + off] * a0 + p[y0 * stride + x1 * 4 + off] * a1;
    int h1 = p[y1 * stride + x0 * 4 + off] * a0 + p[y1 * stride + x1 * 4 + off] * a1;
    int v = ((((h0 >> 4) * b0) >> 16) + (((h1 >> 4) * b1) >> 16) + 2) >> 2;
    return (float)min(max(v, 0), 255);
}

extern "C" __global__ void vigil_preprocess(const unsigned char *plane0, const unsigned char *plane1, int nv12,
                                            VgParams p, void *out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= p.dst_w || y >= p.dst_h) return;
    float dx = (float)x + 0.5f, dy = (float)y + 0.5f;
    float rgb[3];
    if (dx >= p.pad_x && dx < p.x_hi && dy >= p.pad_y && dy < p.y_hi) {
        float sx = (dx - p.pad_x) * p.ratio_x - 0.5f;
        float sy = (dy - p.pad_y) * p.ratio_y - 0.5f;
        if (nv12) {
            float luma = vg_sample(plane0, p.stride0, p.src_w, p.src_h, 1, 0, sx, sy);
            int cw = (p.src_w + 1) / 2, ch = (p.src_h + 1) / 2;
            float cx = (sx + 0.5f) * 0.5f - 0.5f, cy = (sy + 0.5f) * 0.5f - 0.5f;
            float u = vg_sample(plane1, p.stride1, cw, ch, 2, 0, cx, cy) - 128.0f;
            float v = vg_sample(plane1, p.stride1, cw, ch, 2, 1, cx, cy) - 128.0f;
            float l = 1.164383f * (luma - 16.0f);
            rgb[0] = fminf(fmaxf(l + 1.596027f * v, 0.0f), 255.0f);
            rgb[1] = fminf(fmaxf(l - 0.391762f * u - 0.812968f * v, 0.0f), 255.0f);
            rgb[2] = fminf(fmaxf(l + 2.017232f * u, 0.0f), 255.0f);
        } else {
            int x0, x1, a0, a1, y0, y1, b0, b1;
            vg_taps(p.scale_x, x - (int)p.pad_x, p.src_w, 1, &x0, &x1, &a0, &a1);
            vg_taps(p.scale_y, y - (int)p.pad_y, p.src_h, 0, &y0, &y1, &b0, &b1);
            for (int c = 0; c < 3; ++c) rgb[c] = vg_sample_fixed(plane0, p.stride0, c, x0, x1, a0, a1, y0, y1, b0, b1);
        }
    } else {
        rgb[0] = rgb[1] = rgb[2] = p.pad;
    }
    size_t plane = (size_t)p.dst_w * (size_t)p.dst_h;
    size_t i = (size_t)y * (size_t)p.dst_w + (size_t)x;
    for (int c = 0; c < 3; ++c) {
        float v = (rgb[p.bgr ? 2 - c : c] * p.scale - p.mean[c]) / p.std[c];
        size_t at = (size_t)c * plane + i;
        if (p.out_kind == 0) {
            ((float *)out)[at] = v;
        } else if (p.out_kind == 1) {
            unsigned short h;
            asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
            ((unsigned short *)out)[at] = h;
        } else {
            float q = fminf(fmaxf(rintf(v / p.qscale), -128.0f), 127.0f);
            ((signed char *)out)[at] = (signed char)q;
        }
    }
}
"#;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct VgParams {
    scale_x: f64,
    scale_y: f64,
    src_w: i32,
    src_h: i32,
    dst_w: i32,
    dst_h: i32,
    stride0: i32,
    stride1: i32,
    ratio_x: f32,
    ratio_y: f32,
    pad_x: f32,
    pad_y: f32,
    x_hi: f32,
    y_hi: f32,
    scale: f32,
    mean: [f32; 3],
    std: [f32; 3],
    pad: f32,
    bgr: i32,
    out_kind: i32,
    qscale: f32,
}

// SAFETY: plain `repr(C)` data with the kernel's struct layout (doubles first, then ints and floats).
unsafe impl DeviceRepr for VgParams {}

/// Why CUDA cannot be used here, if it cannot: no driver library, or no device.
pub fn available() -> Result<(), String> {
    // SAFETY: only probes whether the shared library can be loaded.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA device: the CUDA driver library (libcuda.so) is not installed".to_owned());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("no CUDA device: the driver reports none".to_owned()),
        Err(e) => Err(format!("no CUDA device: the driver did not start ({e})")),
    }
}

/// Compiles [`KERNELS`] with NVRTC (no GPU needed, only libnvrtc).
pub fn compile_kernels(arch: Option<&'static str>) -> Result<Ptx, String> {
    // SAFETY: only probes whether the shared library can be loaded.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("NVRTC (libnvrtc.so) is not installed: it compiles vigil's CUDA kernels".to_owned());
    }
    let opts = CompileOptions { fmad: Some(false), arch, ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(KERNELS, opts).map_err(|e| format!("NVRTC cannot compile the kernels: {e}"))
}

/// The pre-processing kernels loaded on one device, launching on one stream.
pub struct CudaPreprocessor {
    stream: Arc<CudaStream>,
    function: CudaFunction,
    /// Device copies of the frame's planes, reused while frames fit.
    planes: [Option<CudaSlice<u8>>; 2],
}

impl CudaPreprocessor {
    /// Compiles and loads the kernels for `stream`'s device.
    pub fn new(stream: Arc<CudaStream>) -> Result<Self, String> {
        available()?;
        let ptx = compile_kernels(None)?;
        let module = stream.context().load_module(ptx).map_err(|e| format!("cannot load the CUDA kernels: {e}"))?;
        let function =
            module.load_function("vigil_preprocess").map_err(|e| format!("kernel vigil_preprocess missing: {e}"))?;
        Ok(Self { stream, function, planes: [None, None] })
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Bytes one image takes in `kind`.
    pub fn output_bytes(t: &Transform, kind: InputType) -> usize {
        t.len()
            * match kind {
                InputType::F32 => 4,
                InputType::F16 => 2,
                InputType::I8 { .. } => 1,
            }
    }

    /// Uploads `src` and writes one NCHW image of `kind` into `out` (at least
    /// [`Self::output_bytes`] long), asynchronously on the stream.
    pub fn run<T: DeviceRepr>(
        &mut self,
        src: &Pixels<'_>,
        t: &Transform,
        kind: InputType,
        out: &mut CudaViewMut<'_, T>,
    ) -> Result<(), String> {
        let need = Self::output_bytes(t, kind);
        let have = out.len() * std::mem::size_of::<T>();
        if have < need {
            return Err(format!("output buffer holds {have} bytes, the image needs {need}"));
        }
        let (plane0, plane1, nv12, stride0, stride1) = match *src {
            Pixels::Rgba { data, stride } => (data, &[0u8][..], 0i32, stride, 0),
            Pixels::Nv12 { y, y_stride, uv, uv_stride } => (y, uv, 1, y_stride, uv_stride),
            Pixels::Rgb { .. } => {
                return Err("the kernel reads RGBA or NV12; packed RGB is pre-processed on the CPU".to_owned())
            }
        };
        // The kernel trusts sizes and strides: check that every pixel it may read is there.
        let fits = |plane: &[u8], stride: usize, w: u32, h: u32, step: usize| {
            stride >= w as usize * step && plane.len() >= (h as usize - 1) * stride + w as usize * step
        };
        let (w, h) = (t.src_w, t.src_h);
        let ok = w > 0
            && h > 0
            && i32::try_from(stride0).is_ok()
            && i32::try_from(stride1).is_ok()
            && if nv12 == 1 {
                fits(plane0, stride0, w, h, 1) && fits(plane1, stride1, w.div_ceil(2), h.div_ceil(2), 2)
            } else {
                fits(plane0, stride0, w, h, 4)
            };
        if !ok {
            return Err(format!("the frame's planes do not hold a {w}x{h} image with the strides given"));
        }
        self.upload(0, plane0)?;
        self.upload(1, plane1)?;
        let lb = &t.letterbox;
        let (sw, sh) = lb.scaled_size();
        let (ratio_x, ratio_y) = lb.resize_ratios();
        let (out_kind, qscale) = match kind {
            InputType::F32 => (0, 1.0),
            InputType::F16 => (1, 1.0),
            InputType::I8 { scale } => (2, scale),
        };
        let params = VgParams {
            scale_x: 1.0 / (f64::from(sw) / f64::from(t.src_w)),
            scale_y: 1.0 / (f64::from(sh) / f64::from(t.src_h)),
            src_w: t.src_w as i32,
            src_h: t.src_h as i32,
            dst_w: t.dst_w as i32,
            dst_h: t.dst_h as i32,
            stride0: stride0 as i32,
            stride1: stride1 as i32,
            ratio_x,
            ratio_y,
            pad_x: lb.pad_x,
            pad_y: lb.pad_y,
            x_hi: lb.pad_x + sw as f32,
            y_hi: lb.pad_y + sh as f32,
            scale: t.scale,
            mean: t.mean,
            std: t.std,
            pad: f32::from(t.pad_value),
            bgr: i32::from(t.bgr),
            out_kind,
            qscale,
        };
        let cfg = LaunchConfig {
            grid_dim: (t.dst_w.div_ceil(16), t.dst_h.div_ceil(16), 1),
            block_dim: (16, 16, 1),
            shared_mem_bytes: 0,
        };
        let [Some(d0), Some(d1)] = &self.planes else { unreachable!("uploaded above") };
        let mut launch = self.stream.launch_builder(&self.function);
        launch.arg(d0).arg(d1).arg(&nv12).arg(&params).arg(out);
        // SAFETY: the arguments match the kernel's signature; buffers are sized as checked above.
        unsafe { launch.launch(cfg) }.map_err(|e| format!("CUDA pre-processing failed: {e}"))?;
        Ok(())
    }

    /// Copies `data` into device plane `i`, growing it when the frame is larger.
    fn upload(&mut self, i: usize, data: &[u8]) -> Result<(), String> {
        let err = |e: cudarc::driver::DriverError| format!("CUDA upload failed: {e}");
        if self.planes[i].as_ref().is_none_or(|p| p.len() < data.len()) {
            self.planes[i] = Some(self.stream.alloc_zeros::<u8>(data.len()).map_err(err)?);
        }
        let plane = self.planes[i].as_mut().expect("allocated above");
        self.stream.memcpy_htod(data, &mut plane.slice_mut(..data.len())).map_err(err)
    }
}
