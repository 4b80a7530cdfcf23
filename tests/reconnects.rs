//! 100 forced reconnects leak nothing: file descriptors, threads and memory of this process
//! (which runs the capture layer in process) stay flat. A test binary of its own, so that no
//! other test's threads or sockets move the counts.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use vigil_capture::{self as capture, CameraSpec, Frame, Platform};
use vigil_core::hub::FrameHub;
use vigil_core::source::SourceUri;
use vigil_core::stats::CameraStats;
use vigil_testkit::RtspCam;

use support::wait_until;

fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// Resident set size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[derive(Debug, Clone, Copy)]
struct Usage {
    fds: usize,
    threads: usize,
    rss_kib: u64,
}

fn usage() -> Usage {
    Usage { fds: count_dir("/proc/self/fd"), threads: count_dir("/proc/self/task"), rss_kib: rss_kib() }
}

#[test]
fn a_hundred_forced_reconnects_leave_fds_threads_and_memory_flat() {
    capture::init_gstreamer().unwrap();
    let server = RtspCam::start(&["--fps", "30", "--gop", "10"]).unwrap();
    let stats = Arc::new(CameraStats::new("cam"));
    let hub = Arc::new(FrameHub::new(vec![stats.clone()]));
    let cancel = CancellationToken::new();
    let spec = CameraSpec::new(0, "cam", SourceUri::parse(server.url()).unwrap());
    let thread = capture::spawn_camera(spec, Arc::new(Platform::detect()), hub.clone(), cancel.clone()).unwrap();
    let frames = || stats.frames_in.load(Ordering::Relaxed);
    let drain = |hub: &FrameHub<Frame>| while hub.take(Duration::ZERO).is_some() {};

    let reconnect = || {
        let before = frames();
        let reconnects = stats.reconnects.load(Ordering::Relaxed);
        stats.request_restart();
        let ok = wait_until(Duration::from_secs(15), || {
            drain(&hub);
            stats.reconnects.load(Ordering::Relaxed) > reconnects && frames() > before + 1
        });
        assert!(ok, "no frames after a forced reconnect: {:?}", stats.snapshot());
    };

    assert!(wait_until(Duration::from_secs(15), || frames() > 5), "{:?}", stats.snapshot());
    // Warm up: GStreamer creates its thread pools and caches on first use.
    for _ in 0..10 {
        reconnect();
    }
    let before = usage();
    for _ in 0..100 {
        reconnect();
    }
    // The last pipeline's threads and sockets may still be on their way out: give them 5 s.
    let mut after = usage();
    wait_until(Duration::from_secs(5), || {
        after = usage();
        after.fds <= before.fds + 2 && after.threads <= before.threads + 2
    });
    let snap = stats.snapshot();
    cancel.cancel();
    thread.join().unwrap();
    println!("before {before:?}, after 100 reconnects {after:?}; {} reconnects in all", snap.reconnects);
    assert!(snap.reconnects >= 110, "{snap:?}");
    assert!(after.fds <= before.fds + 2, "file descriptors grew: {before:?} -> {after:?}");
    assert!(after.threads <= before.threads + 2, "threads grew: {before:?} -> {after:?}");
    assert!(after.rss_kib <= before.rss_kib + 20 * 1024, "memory grew by more than 20 MiB: {before:?} -> {after:?}");
}
