//! One frame's whole path, for real: the `vigil` binary decodes the generated clip with
//! GStreamer, runs the INT8 model on ONNX Runtime, stores events in sled and publishes them to a
//! real mosquitto; a subscriber checks them against the clip's ground truth and the store.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;
use vigil::events::Event;
use vigil::store::Store;

#[test]
fn events_over_mqtt_match_the_ground_truth_and_are_all_in_sled() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "vigil/e2e/#");
    let clip = format!("file://{}", eval_clip().display());
    let config = write_config(dir.path(), "e2e", &broker.url(), &[("clip", clip)]);
    let mut vigil = Vigil::start(&config, dir.path());

    // The clip plays in real time (12 s); the camera reports when it has played it all, and the
    // last events follow within moments.
    let finished = wait_until(Duration::from_secs(90), || {
        vigil.log().contains("source finished")
            && sub.idle_for("vigil/e2e/events").is_some_and(|idle| idle > Duration::from_secs(1))
    });
    assert!(finished, "the clip never finished, or no events came; log:\n{}", vigil.log());
    assert!(vigil.is_running(), "vigil stays up after a finite source ends");
    let (status, log) = vigil.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{log}");
    assert!(log.contains("source finished"), "{log}");

    // Status: retained `online` first, `offline` on the way out.
    assert!(wait_until(Duration::from_secs(3), || sub.count("vigil/e2e/status") >= 2), "online, then offline");
    let statuses: Vec<serde_json::Value> =
        sub.on("vigil/e2e/status").iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
    assert_eq!(statuses.first().unwrap()["state"], "online");
    assert_eq!(statuses.last().unwrap()["state"], "offline");
    assert_eq!(statuses[0]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(statuses[0]["model"]["name"], "shapes");

    let events: Vec<Event> =
        sub.on("vigil/e2e/events").iter().map(|p| serde_json::from_slice(p).expect("event JSON")).collect();
    assert!(events.len() > 100, "only {} events", events.len());

    // Against the ground truth: label and box (IoU >= 0.5) at the frame the event names.
    let gt = GroundTruth::load();
    let dets: Vec<(usize, String, [f32; 4])> = events
        .iter()
        .map(|e| {
            let pts = e.frame.pts_ns.expect("file frames carry a pts");
            let frame = gt.frame_at(pts).expect("pts inside the clip").index;
            (frame, e.label.clone(), [e.bbox.x1, e.bbox.y1, e.bbox.x2, e.bbox.y2])
        })
        .collect();
    let mut frames: Vec<usize> = dets.iter().map(|d| d.0).collect();
    frames.sort_unstable();
    frames.dedup();
    let (precision, recall_on_frames, _) = precision_recall(&gt, &dets, &frames);
    let all: Vec<usize> = (0..gt.frames.len()).collect();
    let (_, recall_all, _) = precision_recall(&gt, &dets, &all);
    println!("e2e: {} events, precision {precision:.3}, recall {recall_on_frames:.3} on frames with events, {recall_all:.3} overall", events.len());
    assert!(precision >= 0.9, "precision {precision:.3}");
    assert!(recall_on_frames >= 0.9, "recall {recall_on_frames:.3}");
    assert!(recall_all >= 0.8, "most frames were processed: recall {recall_all:.3} over the whole clip");

    // Capture timestamps never go backwards for a camera.
    let mut by_seq: Vec<&Event> = events.iter().collect();
    by_seq.sort_by_key(|e| e.frame.seq);
    for pair in by_seq.windows(2) {
        assert!(
            pair[0].frame.captured_at_ns <= pair[1].frame.captured_at_ns,
            "{:?} then {:?}",
            pair[0].frame,
            pair[1].frame
        );
    }

    // Every event received is in sled, identical; ids are unique.
    let store = Store::open(&dir.path().join("data")).expect("store opens after exit");
    let mut seen = HashMap::new();
    for e in &events {
        let stored = store.event(&e.id).unwrap().unwrap_or_else(|| panic!("event {} not in sled", e.id));
        assert_eq!(&stored, e);
        if let Some(prev) = seen.insert(e.id.clone(), e) {
            assert_eq!(prev, e, "a re-sent event carries the same content");
        }
    }
    assert_eq!(store.outbox_len(), 0, "every event was acknowledged and left the outbox");
}

#[test]
fn metrics_report_each_camera_inference_and_the_store() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let sub = Subscriber::start(broker.port, "vigil/m/metrics");
    let clip = format!("file://{}", eval_clip().display());
    let config = write_config(dir.path(), "m", &broker.url(), &[("clip", clip), ("pattern", "test://ball".into())]);
    let text = std::fs::read_to_string(&config).unwrap().replace("[mqtt]\n", "[mqtt]\nmetrics_interval_s = 1\n");
    std::fs::write(&config, text).unwrap();
    let vigil = Vigil::start(&config, dir.path());
    let reported = wait_until(Duration::from_secs(30), || {
        sub.on("vigil/m/metrics").iter().any(|p| {
            let m: serde_json::Value = serde_json::from_slice(p).unwrap();
            m["cameras"][0]["inference"]["processed"].as_u64().unwrap_or(0) > 10
        })
    });
    assert!(reported, "{}", vigil.log());
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    let last: serde_json::Value = serde_json::from_slice(sub.on("vigil/m/metrics").last().unwrap()).unwrap();
    assert_eq!(last["device_id"], "m");
    let cams = last["cameras"].as_array().unwrap();
    assert_eq!(cams.iter().map(|c| c["id"].as_str().unwrap()).collect::<Vec<_>>(), ["clip", "pattern"]);
    let clip = &cams[0];
    assert!(clip["capture"]["frames_in"].as_u64().unwrap() > 10, "{clip}");
    assert!(clip["capture"]["fps_in"].as_f64().unwrap() > 0.0, "{clip}");
    assert!(clip["inference"]["total"]["p50_ms"].as_f64().unwrap() > 0.0, "{clip}");
    assert_eq!(clip["inference"]["deadline_misses"], 0, "{clip}");
    for key in ["dropped_stale", "dropped_error"] {
        assert!(clip["inference"][key].is_u64(), "{key} in {clip}");
    }
    assert!(last["store"]["events"].as_u64().unwrap() > 0, "{last}");
    assert!(last["store"]["size_bytes"].as_u64().unwrap() > 0, "{last}");
    assert!(last["store"]["outbox"].is_u64() && last["uptime_s"].is_u64(), "{last}");
}
