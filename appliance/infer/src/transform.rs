//! The full pre-processing transform, defined once: a decoded frame at source size (RGB, RGBA or
//! NV12) → letterboxed to the model input (resized bilinear to the letterbox's scaled size,
//! placed at the bundle's anchor) → `(v·scale − mean)/std` → NCHW planes in RGB or BGR order.
//!
//! [`reference`] is the CPU implementation, and the CPU service path runs it on every frame: the
//! tensor a camera's frame gives is the tensor `vigil model pack` computed the bundle's reference
//! from, for the same decoded picture. The CUDA kernels in `infer::cuda` implement the same
//! arithmetic and are compared against it pixel by pixel (on a machine with a CUDA GPU; see
//! docs/tensorrt.md for the tolerance).
//!
//! Conventions, mirrored by the kernels:
//! - RGB and RGBA: the picture is the source resized to the letterbox's scaled size exactly as
//!   OpenCV's `cv2.resize(…, INTER_LINEAR)` resizes 8-bit images, which is what exporters'
//!   pipelines (Ultralytics, YOLOX) call: pixel centres at +0.5, source coordinate
//!   `s = (d + 0.5) · (1 / (scaled ÷ source)) − 0.5` computed in f64 and rounded to f32; across,
//!   `s` is clamped to the edge, down, the rows are; weights rounded to 11 bits; the horizontal
//!   sum exact, the vertical one as OpenCV's SIMD path does it
//!   (`((h0 >> 4) · b0 >> 16) + ((h1 >> 4) · b1 >> 16) + 2 >> 2`), giving 8-bit values. Checked
//!   equal to `cv2.resize` of opencv-python 4.12 and 5.1, pixel for pixel, in tests/pack.rs.
//! - NV12 (the kernels' NVMM input): pixel centres at +0.5, `s = (d + 0.5) · ratio − 0.5`
//!   clamped to the edge, float bilinear on each plane, without antialiasing.
//! - NV12: Y at full resolution, interleaved UV at half resolution with centred chroma siting,
//!   sampled at `(s + 0.5) / 2 − 0.5`; BT.601 limited range to RGB, clamped to 0..=255.
//! - Outside the scaled image: `pad_value` in every channel.
//! - f16: round to nearest even. s8: `round_ties_even(v / qscale)` clamped to −128..=127.

use super::Letterbox;
use vigil_core::geometry::{Anchor, Rounding};

/// A frame in host memory.
#[derive(Debug, Clone, Copy)]
pub enum Pixels<'a> {
    Rgba {
        data: &'a [u8],
        stride: usize,
    },
    /// Packed RGB (the CPU capture path); the kernels take RGBA and NV12 only.
    Rgb {
        data: &'a [u8],
        stride: usize,
    },
    Nv12 {
        y: &'a [u8],
        y_stride: usize,
        uv: &'a [u8],
        uv_stride: usize,
    },
}

/// Everything the transform needs besides the pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub src_w: u32,
    pub src_h: u32,
    pub dst_w: u32,
    pub dst_h: u32,
    pub letterbox: Letterbox,
    /// Multiplies the 0..=255 value before mean/std.
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub pad_value: u8,
    /// The planes in B, G, R order (`mean` and `std` in that order too).
    pub bgr: bool,
}

impl Transform {
    pub fn new(src: (u32, u32), dst: (u32, u32), scale: f32, mean: [f32; 3], std: [f32; 3], pad_value: u8) -> Self {
        Self {
            src_w: src.0,
            src_h: src.1,
            dst_w: dst.0,
            dst_h: dst.1,
            letterbox: Letterbox::new(src.0, src.1, dst.0, dst.1),
            scale,
            mean,
            std,
            pad_value,
            bgr: false,
        }
    }

    /// The same transform with the image at `anchor`, its size made whole by `rounding`, and,
    /// for `bgr`, the planes in B, G, R order.
    pub fn with_conventions(mut self, anchor: Anchor, rounding: Rounding, bgr: bool) -> Self {
        self.letterbox = Letterbox::fit((self.src_w, self.src_h), (self.dst_w, self.dst_h), anchor, rounding);
        self.bgr = bgr;
        self
    }

    /// Values in one NCHW image.
    pub fn len(&self) -> usize {
        3 * self.dst_w as usize * self.dst_h as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Element type of the model's input tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InputType {
    F32,
    F16,
    /// Symmetric INT8 with this scale (real value = q · scale).
    I8 {
        scale: f32,
    },
}

/// Where one output column (or row) samples a plane of `size` samples: the two neighbours and
/// the weight of the second, after clamping `s` to the edge (the kernels' `vg_sample`).
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    f: f32,
}

impl Tap {
    fn at(s: f32, size: u32) -> Self {
        let s = s.clamp(0.0, (size - 1) as f32);
        let i0 = s.floor() as usize;
        Self { i0, i1: (i0 + 1).min(size as usize - 1), f: s - i0 as f32 }
    }
}

/// The taps of each output column (or row) inside the picture: luma (or RGB) and NV12 chroma.
/// `None` outside the picture (the border).
fn taps(count: u32, lo: f32, extent: u32, ratio: f32, src: u32) -> Vec<Option<(Tap, Tap)>> {
    let hi = lo + extent as f32;
    (0..count)
        .map(|d| {
            let d = d as f32 + 0.5;
            (d >= lo && d < hi).then(|| {
                let s = (d - lo) * ratio - 0.5;
                (Tap::at(s, src), Tap::at((s + 0.5) * 0.5 - 0.5, src.div_ceil(2)))
            })
        })
        .collect()
}

/// OpenCV's fixed-point resize weights: 1.0 is 2048.
const COEF_SCALE: f32 = 2048.0;

/// One output column's (or row's) two source samples and their 11-bit weights, as
/// `cv2.resize(…, INTER_LINEAR)` computes them for 8-bit images (the kernels' `vg_taps`).
/// `clamp`: across, OpenCV clamps the coordinate to the edge; down, it only clamps the rows.
#[derive(Debug, Clone, Copy)]
struct FixedTap {
    i0: usize,
    i1: usize,
    w0: i32,
    w1: i32,
}

impl FixedTap {
    fn at(d: u32, scale: f64, size: u32, clamp: bool) -> Self {
        let last = size as i64 - 1;
        let mut f = ((f64::from(d) + 0.5) * scale - 0.5) as f32;
        let mut s = f.floor() as i64;
        f -= s as f32;
        if clamp && s < 0 {
            (f, s) = (0.0, 0);
        }
        if clamp && s >= last {
            (f, s) = (0.0, last);
        }
        let w = |v: f32| (v * COEF_SCALE).round_ties_even() as i32;
        Self { i0: s.clamp(0, last) as usize, i1: (s + 1).clamp(0, last) as usize, w0: w(1.0 - f), w1: w(f) }
    }

    /// The taps of each of the `extent` columns (or rows) of the picture resized from `src`.
    fn all(extent: u32, src: u32, clamp: bool) -> Vec<Self> {
        let scale = 1.0 / (f64::from(extent) / f64::from(src));
        (0..extent).map(|i| Self::at(i, scale, src, clamp)).collect()
    }
}

/// One source row resized across: for each output column, R, G, B as 11-bit-weighted sums
/// (OpenCV's horizontal pass).
fn across(row: &[u8], step: usize, columns: &[FixedTap], out: &mut [i32]) {
    for (o, t) in out.chunks_exact_mut(3).zip(columns) {
        let (a, b) = (&row[t.i0 * step..t.i0 * step + 3], &row[t.i1 * step..t.i1 * step + 3]);
        for c in 0..3 {
            o[c] = i32::from(a[c]) * t.w0 + i32::from(b[c]) * t.w1;
        }
    }
}

/// OpenCV's vertical pass (its SIMD path's rounding): two horizontal sums → an 8-bit value.
#[inline]
fn down(h0: i32, h1: i32, y: FixedTap) -> usize {
    (((((h0 >> 4) * y.w0) >> 16) + (((h1 >> 4) * y.w1) >> 16) + 2) >> 2).clamp(0, 255) as usize
}

/// [`reference`] for packed RGB and RGBA: resized as `cv2.resize` does, row by row, each
/// source row resized across once; the 256 values of each plane normalised once.
fn reference_packed(data: &[u8], stride: usize, step: usize, t: &Transform, planes: [&mut [f32]; 3]) {
    let (w, lb) = (t.dst_w as usize, &t.letterbox);
    let (sw, sh) = lb.scaled_size();
    let (px, py) = (lb.pad_x as usize, lb.pad_y as usize);
    let order = if t.bgr { [2, 1, 0] } else { [0, 1, 2] };
    // Plane k holds colour channel order[k], normalised with mean[k] and std[k].
    let lut: [Vec<f32>; 3] = [0, 1, 2].map(|k| (0..256).map(|v| (v as f32 * t.scale - t.mean[k]) / t.std[k]).collect());
    let pad = [0, 1, 2].map(|k| lut[k][usize::from(t.pad_value)]);
    let columns = FixedTap::all(sw, t.src_w, true);
    let rows = FixedTap::all(sh, t.src_h, false);
    // The horizontal sums of the two source rows last used, and which rows they are.
    let (mut h0, mut h1) = (vec![0i32; sw as usize * 3], vec![0i32; sw as usize * 3]);
    let (mut held0, mut held1) = (usize::MAX, usize::MAX);
    let [p0, p1, p2] = planes;
    let mut outs = [p0.chunks_exact_mut(w), p1.chunks_exact_mut(w), p2.chunks_exact_mut(w)];
    for d in 0..t.dst_h as usize {
        let o = outs.each_mut().map(|p| p.next().expect("one row per output row"));
        let Some(&y) = d.checked_sub(py).and_then(|i| rows.get(i)) else {
            for k in 0..3 {
                o[k].fill(pad[k]);
            }
            continue;
        };
        if held0 != y.i0 {
            if held1 == y.i0 {
                std::mem::swap(&mut h0, &mut h1);
                held0 = y.i0;
                held1 = usize::MAX;
            } else {
                across(&data[y.i0 * stride..], step, &columns, &mut h0);
                held0 = y.i0;
            }
        }
        if held1 != y.i1 {
            across(&data[y.i1 * stride..], step, &columns, &mut h1);
            held1 = y.i1;
        }
        for k in 0..3 {
            let (row, c, lut) = (&mut *o[k], order[k], &lut[k]);
            row[..px].fill(pad[k]);
            row[px + sw as usize..].fill(pad[k]);
            for (i, v) in row[px..px + sw as usize].iter_mut().enumerate() {
                *v = lut[down(h0[i * 3 + c], h1[i * 3 + c], y)];
            }
        }
    }
}

/// Bilinear sample of byte `offset` of each `step`-byte pixel, rows `stride` apart.
#[inline]
fn sample(data: &[u8], stride: usize, step: usize, offset: usize, x: Tap, y: Tap) -> f32 {
    let at = |xx: usize, yy: usize| f32::from(data[yy * stride + xx * step + offset]);
    let (a, b) = (at(x.i0, y.i0), at(x.i1, y.i0));
    let (c, d) = (at(x.i0, y.i1), at(x.i1, y.i1));
    let top = a + (b - a) * x.f;
    let bottom = c + (d - c) * x.f;
    top + (bottom - top) * y.f
}

/// RGB (0..=255) of an NV12 frame at one output pixel's taps: `(luma, chroma)` across and down.
#[inline]
fn nv12_at(src: &Pixels<'_>, x: (Tap, Tap), y: (Tap, Tap)) -> [f32; 3] {
    match *src {
        Pixels::Rgba { .. } | Pixels::Rgb { .. } => unreachable!("RGB and RGBA are sampled in fixed point"),
        Pixels::Nv12 { y: luma, y_stride, uv, uv_stride } => {
            let luma = sample(luma, y_stride, 1, 0, x.0, y.0);
            let u = sample(uv, uv_stride, 2, 0, x.1, y.1) - 128.0;
            let v = sample(uv, uv_stride, 2, 1, x.1, y.1) - 128.0;
            let l = 1.164_383 * (luma - 16.0);
            [l + 1.596_027 * v, l - 0.391_762 * u - 0.812_968 * v, l + 2.017_232 * u].map(|c| c.clamp(0.0, 255.0))
        }
    }
}

/// The transform on the CPU: `out` gets one NCHW f32 image ([`Transform::len`] values).
///
/// The source must hold `src_w`×`src_h` pixels (panics otherwise, as slicing does).
pub fn reference(src: &Pixels<'_>, t: &Transform, out: &mut [f32]) {
    assert_eq!(out.len(), t.len(), "output holds one image");
    let (w, h) = (t.dst_w as usize, t.dst_h as usize);
    let lb = &t.letterbox;
    let (sw, sh) = lb.scaled_size();
    let norm = |c: usize, v: f32| (v * t.scale - t.mean[c]) / t.std[c];
    let pad = [0, 1, 2].map(|c| norm(c, f32::from(t.pad_value)));
    let order = if t.bgr { [2, 1, 0] } else { [0, 1, 2] };
    let (p0, rest) = out.split_at_mut(w * h);
    let (p1, p2) = rest.split_at_mut(w * h);
    match *src {
        Pixels::Rgba { data, stride } => return reference_packed(data, stride, 4, t, [p0, p1, p2]),
        Pixels::Rgb { data, stride } => return reference_packed(data, stride, 3, t, [p0, p1, p2]),
        Pixels::Nv12 { .. } => {}
    }
    let planes = [p0, p1, p2].map(|p| p.chunks_exact_mut(w));
    let [mut r0, mut r1, mut r2] = planes;
    let (rx, ry) = lb.resize_ratios();
    let columns = taps(t.dst_w, lb.pad_x, sw, rx, t.src_w);
    let rows = taps(t.dst_h, lb.pad_y, sh, ry, t.src_h);
    for row in &rows {
        let (o0, o1, o2) = (r0.next().unwrap(), r1.next().unwrap(), r2.next().unwrap());
        let Some(y) = *row else {
            o0.fill(pad[0]);
            o1.fill(pad[1]);
            o2.fill(pad[2]);
            continue;
        };
        for (x, column) in columns.iter().enumerate() {
            let Some(xt) = *column else {
                (o0[x], o1[x], o2[x]) = (pad[0], pad[1], pad[2]);
                continue;
            };
            let rgb = nv12_at(src, xt, y);
            o0[x] = norm(0, rgb[order[0]]);
            o1[x] = norm(1, rgb[order[1]]);
            o2[x] = norm(2, rgb[order[2]]);
        }
    }
}

/// Converts f32 values to an s8 tensor as the kernels do.
pub fn quantize_i8(values: &[f32], scale: f32) -> Vec<i8> {
    values.iter().map(|v| (v / scale).round_ties_even().clamp(-128.0, 127.0) as i8).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rgba(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 4]) -> Vec<u8> {
        let mut out = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h {
            for x in 0..w {
                out.extend_from_slice(&f(x, y));
            }
        }
        out
    }

    #[test]
    fn same_size_rgba_is_the_normalized_pixel() {
        let (w, h) = (8, 4);
        let data = rgba(w, h, |x, y| [(x * 30) as u8, (y * 60) as u8, 7, 255]);
        let t = Transform::new((w, h), (w, h), 1.0 / 255.0, [0.0; 3], [1.0; 3], 0);
        let mut out = vec![0.0; t.len()];
        reference(&Pixels::Rgba { data: &data, stride: w as usize * 4 }, &t, &mut out);
        let plane = (w * h) as usize;
        let close = |got: f32, want: f32| (got - want).abs() < 1e-6;
        assert!(close(out[3], 90.0 / 255.0), "R of (3, 0)");
        assert!(close(out[plane + 2 * 8 + 5], 120.0 / 255.0), "G of (5, 2)");
        assert!(close(out[2 * plane + 9], 7.0 / 255.0), "B anywhere");
    }

    #[test]
    fn letterbox_borders_carry_the_pad_value_and_the_image_is_centred() {
        // 16×8 into 8×8: scale 0.5, 2 rows of border top and bottom.
        let data = rgba(16, 8, |_, _| [200, 200, 200, 255]);
        let t = Transform::new((16, 8), (8, 8), 1.0, [0.0; 3], [1.0; 3], 114);
        let mut out = vec![0.0; t.len()];
        reference(&Pixels::Rgba { data: &data, stride: 64 }, &t, &mut out);
        for y in 0..8 {
            let v = out[y * 8 + 3];
            let want = if (2..6).contains(&y) { 200.0 } else { 114.0 };
            assert_eq!(v, want, "row {y}");
        }
    }

    #[test]
    fn a_top_left_bgr_transform_puts_the_image_in_the_corner_and_blue_first() {
        // 16×8 into 8×8: scale 0.5, the image in rows 0..4, pad 114 below.
        let data = rgba(16, 8, |_, _| [200, 100, 50, 255]);
        let t = Transform::new((16, 8), (8, 8), 1.0, [0.0; 3], [1.0; 3], 114).with_conventions(
            Anchor::TopLeft,
            Rounding::Round,
            true,
        );
        let mut out = vec![0.0; t.len()];
        reference(&Pixels::Rgba { data: &data, stride: 64 }, &t, &mut out);
        let at = |c: usize, y: usize| out[c * 64 + y * 8 + 3];
        for y in 0..8 {
            let want = if y < 4 { [50.0, 100.0, 200.0] } else { [114.0; 3] };
            assert_eq!([at(0, y), at(1, y), at(2, y)], want, "row {y}");
        }
    }

    #[test]
    fn downscaling_by_two_averages_pixel_pairs() {
        // Columns alternate 0 / 100: halving samples between them.
        let data = rgba(8, 2, |x, _| if x % 2 == 0 { [0, 0, 0, 255] } else { [100, 100, 100, 255] });
        let t = Transform::new((8, 2), (4, 1), 1.0, [0.0; 3], [1.0; 3], 0);
        let mut out = vec![0.0; t.len()];
        reference(&Pixels::Rgba { data: &data, stride: 32 }, &t, &mut out);
        assert!(out[..4].iter().all(|&v| (v - 50.0).abs() < 1e-4), "{out:?}");
    }

    #[test]
    fn nv12_converts_with_bt601_limited_range() {
        let (w, h) = (4u32, 4u32);
        let check = |yv: u8, u: u8, v: u8, want: [f32; 3]| {
            let y = vec![yv; 16];
            let uv: Vec<u8> = [u, v].repeat(4);
            let t = Transform::new((w, h), (w, h), 1.0, [0.0; 3], [1.0; 3], 0);
            let mut out = vec![0.0; t.len()];
            reference(&Pixels::Nv12 { y: &y, y_stride: 4, uv: &uv, uv_stride: 4 }, &t, &mut out);
            for c in 0..3 {
                assert!(
                    (out[c * 16] - want[c]).abs() < 0.6,
                    "Y{yv} U{u} V{v}: {:?} vs {want:?}",
                    [out[0], out[16], out[32]]
                );
            }
        };
        check(16, 128, 128, [0.0, 0.0, 0.0]);
        check(235, 128, 128, [255.0, 255.0, 255.0]);
        check(126, 128, 128, [128.0, 128.0, 128.0]);
        // BT.601 red (255, 0, 0) is Y 81, U 90, V 240.
        check(81, 90, 240, [255.0, 0.0, 0.0]);
    }

    #[test]
    fn int8_rounds_half_to_even_and_saturates() {
        assert_eq!(quantize_i8(&[0.5, 1.5, 2.5, -0.5, 1000.0, -1000.0, 0.26], 1.0), [0, 2, 2, 0, 127, -128, 0]);
        assert_eq!(quantize_i8(&[0.26], 0.01), [26]);
    }
}
