//! Event snapshots: the picture of an event's best observation, cut out of the letterboxed
//! model input (so at the model's resolution), with the object's box drawn, as JPEG.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use super::{Emitted, Event};
use crate::infer::{BBox, Image, Letterbox};
use crate::store::Store;

/// A processed frame's picture as the scheduler holds it (borrowed from GStreamer's buffer).
#[derive(Clone, Copy)]
pub struct SourceImage<'a> {
    pub pixels: Image<'a>,
    pub width: u32,
    pub height: u32,
    pub letterbox: Letterbox,
}

/// An owned RGB picture, ready to encode.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotImage {
    pub rgb: Vec<u8>,
    pub width: u16,
    pub height: u16,
}

/// The box outline colour: a yellow that stands out on most scenes.
const OUTLINE: [u8; 3] = [255, 210, 0];

impl SourceImage<'_> {
    /// The picture without the letterbox borders, as tight RGB, with `bbox` (source pixels)
    /// outlined.
    pub fn crop_with_box(&self, bbox: &BBox) -> SnapshotImage {
        let mut img = self.crop();
        let (w, h) = (img.width as usize, img.height as usize);
        let scale = self.letterbox.scale;
        let to_px = |v: f32, max: usize| ((v * scale).round().max(0.0) as usize).min(max - 1);
        img.outline(to_px(bbox.x1, w), to_px(bbox.y1, h), to_px(bbox.x2, w), to_px(bbox.y2, h));
        img
    }

    /// The picture without the letterbox borders, as tight RGB.
    pub fn crop(&self) -> SnapshotImage {
        let lb = &self.letterbox;
        let x0 = (lb.pad_x as usize).min(self.width as usize);
        let y0 = (lb.pad_y as usize).min(self.height as usize);
        let w = ((lb.source_width as f32 * lb.scale).round() as usize).clamp(1, self.width as usize - x0);
        let h = ((lb.source_height as f32 * lb.scale).round() as usize).clamp(1, self.height as usize - y0);
        let Image { data, stride, bytes_per_pixel: bpp } = self.pixels;
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in y0..y0 + h {
            let row = &data[y * stride + x0 * bpp..];
            for px in row.chunks_exact(bpp).take(w) {
                rgb.extend_from_slice(&px[..3]);
            }
        }
        SnapshotImage { rgb, width: w as u16, height: h as u16 }
    }
}

impl SnapshotImage {
    /// Draws a 2-pixel rectangle (clipped to the picture).
    fn outline(&mut self, x1: usize, y1: usize, x2: usize, y2: usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        let mut put = |x: usize, y: usize| {
            if x < w && y < h {
                self.rgb[(y * w + x) * 3..][..3].copy_from_slice(&OUTLINE);
            }
        };
        for t in 0..2 {
            for x in x1..=x2 {
                put(x, y1 + t);
                put(x, y2.saturating_sub(t));
            }
            for y in y1..=y2 {
                put(x1 + t, y);
                put(x2.saturating_sub(t), y);
            }
        }
    }

    /// JPEG at `quality` (1-100).
    pub fn encode_jpeg(&self, quality: u8) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, quality.clamp(1, 100)).encode(
            &self.rgb,
            self.width,
            self.height,
            jpeg_encoder::ColorType::Rgb,
        )?;
        Ok(out)
    }
}

/// How the store writer saves a burst's snapshots.
#[derive(Debug, Clone)]
pub struct SaveOptions {
    /// JPEG quality, 1-100.
    pub quality: u8,
    /// Threads that encode and write at once (see [`default_workers`]).
    pub workers: usize,
    /// Once cancelled (a stop), images are no longer encoded.
    pub cutoff: CancellationToken,
}

/// Snapshot threads for this machine: every core but one (left to the scheduler), 1 to 4.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1)).clamp(1, 4)
}

/// What [`save`] did with a burst.
#[derive(Debug)]
pub struct Saved {
    /// The burst's messages, each naming its snapshot only if the file is on disk.
    pub events: Vec<Event>,
    pub written: usize,
    /// Images not encoded because the cutoff had passed.
    pub skipped: usize,
}

/// Encodes and writes a burst's snapshots on `options.workers` threads, then makes them durable
/// (the directory synced once). Only the last image of each event in the burst is written (an
/// earlier one would be overwritten by it: one file per event). An event's message names its
/// snapshot only when the file is on disk: one whose image was skipped or could not be written
/// (a full disk), now or for an earlier message of the event, goes out without one.
pub fn save(store: &Store, burst: Vec<Emitted>, options: &SaveOptions) -> Saved {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, m) in burst.iter().enumerate() {
        if m.snapshot.is_some() {
            last.insert(m.event.id.as_str(), i);
        }
    }
    let mut jobs: Vec<usize> = last.into_values().collect();
    jobs.sort_unstable();
    let outcomes = run_parallel(&jobs, options.workers, |i| {
        let Emitted { event, snapshot } = &burst[i];
        let image = snapshot.as_ref().expect("a job has an image");
        if options.cutoff.is_cancelled() {
            return None;
        }
        Some(
            image
                .encode_jpeg(options.quality)
                .map_err(|e| e.to_string())
                .and_then(|jpeg| store.write_snapshot(&event.id, &jpeg).map_err(|e| e.to_string())),
        )
    });
    let (mut written, mut skipped) = (0, 0);
    for (&i, outcome) in jobs.iter().zip(outcomes) {
        match outcome {
            Some(Ok(())) => written += 1,
            Some(Err(e)) => tracing::warn!(event = %burst[i].event.id, error = %e, "snapshot not stored"),
            None => skipped += 1,
        }
    }
    if written > 0 {
        if let Err(e) = store.sync_snapshots() {
            tracing::warn!(error = %e, "cannot sync the snapshot directory");
        }
    }
    let events = burst
        .into_iter()
        .map(|Emitted { mut event, .. }| {
            if event.snapshot.is_some() && !store.snapshot_file(&event.id).is_file() {
                event.snapshot = None;
            }
            event
        })
        .collect();
    Saved { events, written, skipped }
}

/// `work` on each of `jobs` on up to `workers` scoped threads (none for one job or one worker);
/// the results in the order of `jobs`.
fn run_parallel<T: Send>(jobs: &[usize], workers: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let workers = workers.clamp(1, jobs.len().max(1));
    if workers == 1 {
        return jobs.iter().map(|&i| work(i)).collect();
    }
    let next = AtomicUsize::new(0);
    let mut done: Vec<(usize, T)> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    while let Some(&i) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        mine.push((i, work(i)));
                    }
                    mine
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("a snapshot thread panicked")).collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A message of event `id` naming its snapshot, with a `w`×8 image if `w` is given.
    fn message(id: &str, w: Option<u16>) -> Emitted {
        let mut event = crate::events::test_event(1);
        event.id = id.to_owned();
        event.snapshot = Some(format!("snapshots/{id}.jpg"));
        let snapshot = w.map(|w| Arc::new(SnapshotImage { rgb: vec![128; w as usize * 8 * 3], width: w, height: 8 }));
        Emitted { event, snapshot }
    }

    /// Width and height from a baseline JPEG's frame header.
    fn jpeg_size(jpeg: &[u8]) -> (u16, u16) {
        let sof = jpeg.windows(2).position(|m| m == [0xFF, 0xC0]).expect("a baseline frame header");
        let be = |at: usize| u16::from_be_bytes([jpeg[sof + at], jpeg[sof + at + 1]]);
        (be(7), be(5))
    }

    fn options(workers: usize) -> SaveOptions {
        SaveOptions { quality: 90, workers, cutoff: CancellationToken::new() }
    }

    #[test]
    fn each_event_gets_its_own_last_image_whatever_the_threads() {
        for workers in [1, 4] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path()).unwrap();
            // 20 events, each image a width of its own; event e0 twice (a better image later),
            // and an `end` without an image.
            let mut burst: Vec<Emitted> = (0..20).map(|n| message(&format!("e{n}"), Some(8 + n))).collect();
            burst.push(message("e0", Some(100)));
            burst.push(message("e5", None));
            let saved = save(&store, burst, &options(workers));
            assert_eq!((saved.written, saved.skipped), (20, 0), "{workers} workers");
            assert_eq!(saved.events.len(), 22);
            assert!(saved.events.iter().all(|e| e.snapshot.is_some()));
            for n in 1..20u16 {
                let jpeg = std::fs::read(store.snapshot_file(&format!("e{n}"))).unwrap();
                assert_eq!(jpeg_size(&jpeg), (8 + n, 8), "e{n} with {workers} workers");
            }
            let e0 = std::fs::read(store.snapshot_file("e0")).unwrap();
            assert_eq!(jpeg_size(&e0), (100, 8), "the later image of e0");
        }
    }

    #[test]
    fn past_the_cutoff_images_are_skipped_and_messages_name_only_files_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let opts = options(2);
        let first = save(&store, vec![message("old", Some(8))], &opts);
        assert_eq!(first.written, 1);

        opts.cutoff.cancel();
        let saved = save(&store, vec![message("old", Some(16)), message("new", Some(8)), message("new", None)], &opts);
        assert_eq!((saved.written, saved.skipped), (0, 2));
        // An event with an earlier snapshot on disk keeps naming it (the earlier image).
        assert_eq!(saved.events[0].snapshot.as_deref(), Some("snapshots/old.jpg"));
        assert_eq!(jpeg_size(&std::fs::read(store.snapshot_file("old")).unwrap()), (8, 8));
        // One without goes without, in every message of it.
        assert_eq!((saved.events[1].snapshot.as_deref(), saved.events[2].snapshot.as_deref()), (None, None));
        assert!(!store.snapshot_file("new").exists(), "nothing written past the cutoff");
    }

    #[test]
    fn the_crop_drops_the_letterbox_and_outlines_the_box() {
        // A 640x480 source letterboxed into 64x64: scale 0.1, 64x48 picture, 8 rows of border
        // above and below. RGBA, stride padded to 264 bytes.
        let lb = Letterbox::new(640, 480, 64, 64);
        let stride = 264;
        let mut data = vec![0u8; stride * 64];
        for y in 8..56 {
            for x in 0..64 {
                data[y * stride + x * 4..][..4].copy_from_slice(&[10, 20, 30, 255]);
            }
        }
        let pixels = Image { data: &data, stride, bytes_per_pixel: 4 };
        let src = SourceImage { pixels, width: 64, height: 64, letterbox: lb };
        let img = src.crop_with_box(&BBox { x1: 100.0, y1: 100.0, x2: 300.0, y2: 200.0 });
        assert_eq!((img.width, img.height), (64, 48));
        let px = |x: usize, y: usize| &img.rgb[(y * 64 + x) * 3..][..3];
        assert_eq!(px(0, 0), [10, 20, 30], "no border row is left");
        assert_eq!(px(10, 10), OUTLINE, "box corner at source (100,100) → (10,10)");
        assert_eq!(px(20, 15), [10, 20, 30], "inside the box is the picture");
        let jpeg = img.encode_jpeg(80).unwrap();
        assert_eq!(&jpeg[..2], [0xFF, 0xD8], "a JPEG starts with SOI");
    }
}
