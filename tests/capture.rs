//! Cameras that survive the field: vigil's capture layer (in process, real GStreamer) against a
//! real RTSP server process (`vigil-rtsp-cam`) that the tests kill, freeze and corrupt, and
//! against damaged files. The tests run one at a time: they measure frame rates and timings.

mod support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use vigil_capture::{self as capture, CameraSpec, Platform};
use vigil_core::hub::FrameHub;
use vigil_core::source::SourceUri;
use vigil_core::stats::{CameraState, CameraStats};
use vigil_testkit::{RtspCam, Signal};

use support::wait_until;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the consumer saw of one frame.
#[derive(Debug, Clone, Copy)]
struct Seen {
    camera: usize,
    seq: u64,
    captured_at: SystemTime,
}

/// Cameras running under vigil's supervisor, with a consumer recording every frame it takes.
struct Rig {
    stats: Vec<Arc<CameraStats>>,
    cancel: CancellationToken,
    threads: Vec<JoinHandle<()>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Rig {
    fn start(uris: &[&str]) -> Self {
        Self::start_with(uris, |_| {})
    }

    fn start_with(uris: &[&str], adjust: impl Fn(&mut CameraSpec)) -> Self {
        capture::init_gstreamer().unwrap();
        let platform = Arc::new(Platform::detect());
        let stats: Vec<Arc<CameraStats>> =
            (0..uris.len()).map(|i| Arc::new(CameraStats::new(&format!("cam{i}")))).collect();
        let hub = Arc::new(FrameHub::new(stats.clone()));
        let cancel = CancellationToken::new();
        let mut threads = Vec::new();
        for (i, uri) in uris.iter().enumerate() {
            let mut spec = CameraSpec::new(i, &format!("cam{i}"), SourceUri::parse(uri).unwrap());
            adjust(&mut spec);
            threads.push(capture::spawn_camera(spec, platform.clone(), hub.clone(), cancel.clone()).unwrap());
        }
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, s, c) = (hub.clone(), seen.clone(), cancel.clone());
        threads.push(std::thread::spawn(move || {
            while !c.is_cancelled() {
                if let Some(f) = h.take(Duration::from_millis(20)) {
                    let mut s = s.lock().unwrap();
                    if s.len() < 200_000 {
                        s.push(Seen { camera: f.camera, seq: f.seq, captured_at: f.captured_at });
                    }
                }
            }
        }));
        Self { stats, cancel, threads, seen }
    }

    fn frames(&self, camera: usize) -> Vec<Seen> {
        self.seen.lock().unwrap().iter().filter(|s| s.camera == camera).copied().collect()
    }

    fn frames_in(&self, camera: usize) -> u64 {
        self.stats[camera].frames_in.load(Ordering::Relaxed)
    }

    fn wait_streaming(&self, camera: usize, within: Duration) {
        let ok = wait_until(within, || self.frames_in(camera) > 5);
        assert!(ok, "camera {camera} never streamed: {:?}", self.stats[camera].snapshot());
    }

    /// Waits for the next frame pulled after now; returns when it arrived.
    fn next_frame_after(&self, camera: usize, within: Duration) -> Option<Instant> {
        let before = self.frames_in(camera);
        wait_until(within, || self.frames_in(camera) > before).then(Instant::now)
    }

    fn stop(self) -> Vec<Arc<CameraStats>> {
        self.cancel.cancel();
        for t in self.threads {
            t.join().expect("capture threads exit cleanly");
        }
        self.stats
    }
}

fn assert_times_never_go_back(frames: &[Seen]) {
    for pair in frames.windows(2) {
        assert!(pair[1].seq > pair[0].seq, "sequence went from {} to {}", pair[0].seq, pair[1].seq);
        assert!(pair[1].captured_at >= pair[0].captured_at, "capture time went backwards at seq {}", pair[1].seq);
    }
}

#[test]
fn a_killed_rtsp_server_is_reconnected_within_2_s_of_its_return() {
    let _serial = serial();
    let mut server = RtspCam::start(&["--fps", "15"]).unwrap();
    let rig = Rig::start(&[server.url()]);
    rig.wait_streaming(0, Duration::from_secs(15));
    let before = rig.frames(0);

    server.kill9();
    std::thread::sleep(Duration::from_secs(5));
    let state = rig.stats[0].state();
    assert!(state != CameraState::Streaming, "still streaming 5 s after the server died");
    server.restart().unwrap();
    let back = Instant::now();
    let resumed = rig.next_frame_after(0, Duration::from_secs(10)).expect("frames resume");
    let delay = resumed - back;
    println!("frames resumed {} ms after the server returned", delay.as_millis());
    assert!(delay <= Duration::from_secs(2), "resumed only after {delay:?}");

    std::thread::sleep(Duration::from_millis(500));
    let snap = rig.stats[0].snapshot();
    let frames = rig.frames(0);
    let stats = rig.stop();
    assert!(snap.reconnects >= 1, "{snap:?}");
    assert_eq!(stats[0].state(), CameraState::Stopped);
    // The outage shows as a jump in sequence numbers of about 5 s × 15 fps.
    let last_before = before.last().unwrap().seq;
    let first_after = frames.iter().find(|f| f.seq > last_before).unwrap();
    let gap = first_after.seq - last_before;
    assert!((60..=110).contains(&gap), "sequence gap {gap} across a ~5 s outage at 15 fps");
    assert!(snap.frames_missing >= 60, "{snap:?}");
    assert_times_never_go_back(&frames);
}

#[test]
fn a_frozen_rtsp_server_is_caught_by_the_watchdog_and_recovered() {
    let _serial = serial();
    let server = RtspCam::start(&["--fps", "15"]).unwrap();
    let rig = Rig::start(&[server.url()]);
    rig.wait_streaming(0, Duration::from_secs(15));

    server.signal(Signal::STOP);
    let frozen = Instant::now();
    // The server posts nothing (no error, no EOS): only the 2 s frame watchdog can tell.
    // 2 s plus the frames already buffered, teardown and a loaded machine's slack.
    let caught = wait_until(Duration::from_secs(8), || rig.stats[0].stalls.load(Ordering::Relaxed) >= 1);
    let detected_after = frozen.elapsed();
    assert!(caught, "watchdog did not fire: {:?}", rig.stats[0].snapshot());
    assert!(detected_after <= Duration::from_millis(3500), "stall detected after {detected_after:?}");
    let snap = rig.stats[0].snapshot();
    assert!(snap.last_error.as_deref().unwrap_or("").contains("stalled"), "{snap:?}");

    std::thread::sleep(Duration::from_secs(2));
    server.signal(Signal::CONT);
    let thawed = Instant::now();
    let resumed = rig.next_frame_after(0, Duration::from_secs(15)).expect("frames resume after the thaw");
    println!(
        "stall detected after {} ms; frames resumed {} ms after the thaw",
        detected_after.as_millis(),
        (resumed - thawed).as_millis()
    );
    let frames = rig.frames(0);
    rig.stop();
    assert_times_never_go_back(&frames);
}

#[test]
fn a_source_that_never_existed_backs_off_and_leaves_other_cameras_alone() {
    let _serial = serial();
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let rig = Rig::start(&[&format!("rtsp://127.0.0.1:{port}/none"), "test://ball"]);
    let mut attempts = Vec::new();
    let start = Instant::now();
    let mut last = 0;
    let mut states = std::collections::HashSet::new();
    while start.elapsed() < Duration::from_secs(8) {
        let n = rig.stats[0].reconnects.load(Ordering::Relaxed);
        if n > last {
            attempts.push(start.elapsed());
            last = n;
        }
        states.insert(rig.stats[0].state());
        std::thread::sleep(Duration::from_millis(5));
    }
    let bad = rig.stats[0].snapshot();
    let good = rig.stats[1].snapshot();
    rig.stop();
    println!("failed attempts at {attempts:?}");
    // 250 ms doubling (±20 %): about 0.25, 0.75, 1.75, 3.75, 7.75 s.
    assert!((3..=6).contains(&attempts.len()), "{} attempts in 8 s: {attempts:?}", attempts.len());
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.windows(2).all(|g| g[1] > g[0]), "backoff does not grow: {gaps:?}");
    assert_eq!(bad.frames_in, 0);
    // Between attempts the camera says why it is down (the waits are 200 ms and more).
    assert!(states.contains(&CameraState::Failed), "{states:?}");
    assert!(states.iter().all(|s| matches!(s, CameraState::Starting | CameraState::Failed)), "{states:?}");
    let err = bad.last_error.unwrap_or_default();
    assert!(err.contains("cam0") && (err.contains("connect") || err.contains("Could not")), "{err}");
    // The test pattern runs at 15 fps throughout.
    assert!(good.frames_in >= 100, "{good:?}");
    assert_eq!(good.reconnects, 0, "{good:?}");
}

#[test]
fn corrupted_rtp_is_counted_and_recovered_at_a_keyframe() {
    let _serial = serial();
    let server = RtspCam::start(&["--width", "640", "--height", "480", "--fps", "15", "--gop", "30"]).unwrap();
    // A second client keeps the shared stream running, so that vigil rejoins it mid-GOP after
    // each failure (a stream with no client restarts on a keyframe).
    let mut keep_alive = std::process::Command::new("gst-launch-1.0")
        .args(["-q", "rtspsrc", &format!("location={}", server.url()), "!", "fakesink"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let rig = Rig::start(&[server.url()]);
    rig.wait_streaming(0, Duration::from_secs(15));
    // Two rounds: one damaged packet (SIGUSR1, headers included, so the depayloader rejects the
    // stream), then the camera must be counted and streaming again within a GOP and a backoff.
    let mut resumed_within = Vec::new();
    for round in 1..=2 {
        let errors = rig.stats[0].snapshot().decode_errors;
        server.signal(Signal::USR1);
        let counted = wait_until(Duration::from_secs(10), || rig.stats[0].snapshot().decode_errors > errors);
        assert!(counted, "round {round}: damage not counted: {:?}", rig.stats[0].snapshot());
        let damaged_at = Instant::now();
        let resumed = rig.next_frame_after(0, Duration::from_secs(10));
        assert!(resumed.is_some(), "round {round}: no frames after the damage: {:?}", rig.stats[0].snapshot());
        resumed_within.push(resumed.unwrap() - damaged_at);
    }
    let frames = rig.frames(0);
    let snap = rig.stats[0].snapshot();
    rig.stop();
    let _ = keep_alive.kill();
    let _ = keep_alive.wait();
    println!("frames resumed {resumed_within:?} after each damage; {snap:?}");
    assert!(snap.reconnects >= 2, "{snap:?}");
    // A shared stream joined mid-GOP: delta frames before the next keyframe were held back.
    assert!(snap.dropped_before_keyframe > 0, "{snap:?}");
    assert!(snap.keyframe_requests > 0, "{snap:?}");
    assert_times_never_go_back(&frames);
}

#[test]
fn a_damaged_file_loses_frames_not_the_camera() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let clean = dir.path().join("clean.ts");
    let out = std::process::Command::new("gst-launch-1.0")
        .args(["-q", "videotestsrc", "num-buffers=150", "pattern=ball", "!"])
        .args(["video/x-raw,width=640,height=480,framerate=15/1", "!", "x264enc", "key-int-max=15"])
        .args(["speed-preset=ultrafast", "!", "h264parse", "!", "mpegtsmux", "!", "filesink"])
        .arg(format!("location={}", clean.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // Three 3000-byte stretches of garbage in the middle of the stream.
    let mut data = std::fs::read(&clean).unwrap();
    let n = data.len();
    let mut x = 0x2545_f491_u32;
    for start in [n / 4, n / 2, 3 * n / 4] {
        for b in &mut data[start..start + 3000] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    let damaged = dir.path().join("damaged.ts");
    std::fs::write(&damaged, data).unwrap();

    let rig = Rig::start(&[&format!("file://{}?pace=fast", damaged.display())]);
    let finished = wait_until(Duration::from_secs(30), || rig.stats[0].state() == CameraState::Finished);
    let snap = rig.stats[0].snapshot();
    std::thread::sleep(Duration::from_millis(200));
    let frames = rig.frames(0);
    rig.stop();
    assert!(finished, "{snap:?}");
    assert_eq!(snap.reconnects, 0, "damage must not restart a file: {snap:?}");
    assert!((100..150).contains(&snap.frames_in), "{snap:?}");
    // The lost frames show as sequence gaps; the timeline keeps its length.
    assert!(snap.frames_missing > 0, "{snap:?}");
    let last = frames.iter().map(|f| f.seq).max().unwrap();
    assert!((140..=150).contains(&last), "last seq {last}");
    assert!(frames.iter().any(|f| f.seq > 130), "frames after the last damage arrived");
}

#[test]
fn four_cameras_keep_their_rate_while_one_fails_repeatedly() {
    let _serial = serial();
    let healthy = RtspCam::start(&["--fps", "15", "--mount", "a", "--mount", "b", "--mount", "c"]).unwrap();
    let mut flaky = RtspCam::start(&["--fps", "15"]).unwrap();
    let urls: Vec<&str> = healthy.urls.iter().map(String::as_str).chain([flaky.url()]).collect();
    let rig = Rig::start(&urls);
    for cam in 0..4 {
        rig.wait_streaming(cam, Duration::from_secs(20));
    }
    let start_counts: Vec<u64> = (0..3).map(|c| rig.frames_in(c)).collect();
    let start = Instant::now();
    // The fourth camera's server dies and comes back every 1.5 s for 9 s.
    while start.elapsed() < Duration::from_secs(9) {
        std::thread::sleep(Duration::from_millis(750));
        flaky.kill9();
        std::thread::sleep(Duration::from_millis(750));
        flaky.restart().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rates: Vec<f64> = (0..3).map(|c| (rig.frames_in(c) - start_counts[c]) as f64 / elapsed).collect();
    let failing = rig.stats[3].snapshot();
    rig.stop();
    println!("healthy cameras: {rates:.1?} fps; failing camera: {} reconnects", failing.reconnects);
    assert!(failing.reconnects >= 3, "{failing:?}");
    for (c, rate) in rates.iter().enumerate() {
        assert!(*rate >= 13.5, "camera {c} dropped to {rate:.1} fps (15 expected)");
    }
}
