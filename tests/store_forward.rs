//! Store-and-forward against a real broker outage: mosquitto is stopped for 60 s while the
//! camera keeps producing events, then restarted. Every event vigil stored arrives, in order per
//! camera, and a repeat only ever carries the same id.

mod support;

use std::time::Duration;

use support::*;
use vigil_core::event::Event;
use vigil_store::Store;

const OUTAGE: Duration = Duration::from_secs(60);

#[test]
fn a_sixty_second_broker_outage_loses_nothing() {
    let mut broker = Broker::start_persistent();
    // A persistent session: the broker keeps the subscription and queues for it across restarts.
    let sub = Subscriber::start_persistent(broker.port, "vigil/sf/events", "store-forward-test");
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_uri();
    let config = write_config(dir.path(), "sf", &broker.url(), &[("clip", clip)]);
    // No periodic metrics: the outbox then holds events only, and drains to exactly empty.
    set_mqtt(&config, "metrics_interval_s = 0");
    let vigil = Vigil::start(&config, dir.path());
    assert!(wait_until(Duration::from_secs(30), || sub.count("vigil/sf/events") > 10), "{}", vigil.log());

    broker.stop();
    let before = sub.count("vigil/sf/events");
    std::thread::sleep(OUTAGE);
    // The 12 s clip ended during the outage: what it produced since is waiting in the outbox.
    assert!(vigil.log().contains("source finished"), "{}", vigil.log());
    assert!(vigil.log().contains("MQTT connection lost"), "{}", vigil.log());
    broker.restart();
    // Drained: vigil is connected again (its backoff may wait up to 30 s), messages came after the
    // outage, and none for 3 s.
    let drained = wait_until(Duration::from_secs(60), || {
        vigil.log().matches("MQTT connected").count() >= 2
            && sub.count("vigil/sf/events") > before
            && sub.idle_for("vigil/sf/events").is_some_and(|d| d > Duration::from_secs(3))
    });
    assert!(drained, "the outbox did not drain after the broker came back:\n{}", vigil.log());
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");

    let received: Vec<Event> =
        sub.on("vigil/sf/events").iter().map(|p| serde_json::from_slice(p).expect("event JSON")).collect();
    // Each event's messages in order (new, updates, end), none missing; a repeat (at-least-once)
    // only ever as an identical copy of the same id and revision.
    let events = lifecycles(&received);
    let unique: usize = events.values().map(Vec::len).sum();
    let store = Store::open(&dir.path().join("data")).expect("store opens after exit");
    let stored: Vec<Event> = store.events().collect::<Result<_, _>>().unwrap();
    let started_after = stored.iter().filter(|e| received[..before].iter().all(|m| m.id != e.id)).count();
    assert!(started_after > 0, "events were made during the outage");
    for e in &stored {
        let arrived = events.get(&e.id).and_then(|m| m.last());
        assert_eq!(arrived, Some(e), "stored event {} did not arrive as stored", e.id);
    }
    assert_eq!(store.outbox_len(), 0, "the outbox drained completely");
    println!(
        "{} events stored, {} received before the outage, {} messages after ({} repeats)",
        stored.len(),
        before,
        received.len() - before,
        received.len() - unique
    );
}

#[test]
fn a_thousand_queued_events_survive_kill_9_and_all_arrive_after_restart() {
    let mut broker = Broker::start_persistent();
    let sub = Subscriber::start_persistent(broker.port, "vigil/k9/events", "kill9-test");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_uri();
    // Three cameras on the 12 s clip with the broker down: everything piles up in the outbox.
    // (About 1 900 events when every frame is processed; a loaded machine drops some.)
    let cameras = [("a", clip.clone()), ("b", clip.clone()), ("c", clip)];
    let config = write_config(dir.path(), "k9", &broker.url(), &cameras);
    // No periodic metrics: the outbox then holds events only, and drains to exactly empty.
    set_mqtt(&config, "metrics_interval_s = 0");
    // Raw-detection mode: every detection is an event of its own (a `new` and an `end`), which
    // makes well over a thousand events from the clip.
    append_config(
        &config,
        "[events]\ntrack = false\nlost_after_ms = 100\nsnapshots = false\n[[rule]]\nname = \"every\"\nmin_frames = 1\n",
    );
    let vigil = Vigil::start(&config, dir.path());
    let done = wait_until(Duration::from_secs(60), || vigil.log().matches("source finished").count() == 3);
    assert!(done, "{}", vigil.log());
    std::thread::sleep(Duration::from_secs(1));
    vigil.kill9();

    let data = dir.path().join("data");
    let stored: Vec<String> = {
        let store = Store::open(&data).expect("the store opens after kill -9");
        assert!(store.outbox_len() >= 1000, "only {} messages queued", store.outbox_len());
        store.events().map(|e| e.unwrap().id).collect()
    };
    assert!(stored.len() >= 1000, "{} events", stored.len());

    // The broker returns; vigil restarts on the same store (with a camera that makes no events).
    // The subscriber is back first, so what vigil sends is delivered to it, not queued for it.
    let connects = sub.connects();
    broker.restart();
    assert!(wait_until(Duration::from_secs(10), || sub.connects() > connects), "the subscriber did not reconnect");
    let ghost = file_uri(&dir.path().join("no-clip.mp4"));
    let config = write_config(dir.path(), "k9", &broker.url(), &[("a", ghost)]);
    let vigil = Vigil::start(&config, dir.path());
    let all = wait_until(Duration::from_secs(60), || {
        let got: std::collections::HashSet<String> =
            sub.on("vigil/k9/events").iter().map(|p| serde_json::from_slice::<Event>(p).unwrap().id).collect();
        stored.iter().all(|id| got.contains(id))
    });
    let (status, log) = vigil.terminate();
    assert!(all, "not every event queued before kill -9 arrived:\n{log}");
    assert!(status.success(), "{status:?}\n{log}");
}

#[test]
fn fifty_kill_9s_at_random_points_never_lose_an_acknowledged_event() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "vigil/r/events");
    let dir = tempfile::tempdir().unwrap();
    let clip = looping_clip_uri();
    let config = write_config(dir.path(), "r", &broker.url(), &[("clip", clip)]);
    let data = dir.path().join("data");
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    // Start-up kills that happened to land while events were flowing.
    let mut early_kills_while_streaming = 0;
    for run in 0..50 {
        let seen_before = sub.count("vigil/r/events");
        let vigil = Vigil::start(&config, dir.path());
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if run % 2 == 0 {
            // Anywhere from start-up (store recovery, model load, first frames) into streaming.
            std::thread::sleep(Duration::from_millis(200 + x % 1800));
        } else {
            // Mid-ingest: once this run has started an event (a `new` never seen before; a
            // replayed outbox only repeats old ones), anywhere in the next 1.5 s.
            let known: std::collections::HashSet<String> =
                sub.on("vigil/r/events").iter().map(|p| serde_json::from_slice::<Event>(p).unwrap().id).collect();
            let flowing = wait_until(Duration::from_secs(30), || {
                sub.on("vigil/r/events")[seen_before..].iter().any(|p| {
                    let e = serde_json::from_slice::<Event>(p).unwrap();
                    e.phase == vigil_core::event::Phase::New && !known.contains(&e.id)
                })
            });
            assert!(flowing, "run {run}: no events within 30 s\n{}", vigil.log());
            std::thread::sleep(Duration::from_millis(x % 1500));
        }
        let log = vigil.kill9();
        // Every event a subscriber has seen was flushed first: the store must hold it.
        let seen: Vec<(String, u32)> = sub
            .on("vigil/r/events")
            .iter()
            .map(|p| serde_json::from_slice::<Event>(p).unwrap())
            .map(|e| (e.id, e.revision))
            .collect();
        // The store must open after every kill: read it with the CLI, in a process of its own.
        let d = data.to_str().unwrap();
        let (code, out, err) = vigil_cmd(&["events", "list", "--json", "--data-dir", d], &[]);
        assert_eq!(code, 0, "run {run}: the store does not open after kill -9: {err}\n{log}");
        let stored: std::collections::HashMap<String, u32> =
            out.lines().map(|l| serde_json::from_str::<Event>(l).unwrap()).map(|e| (e.id, e.revision)).collect();
        // Every message a subscriber saw is in the store: its event, at that revision or later.
        let lost = seen.iter().filter(|(id, rev)| stored.get(id).is_none_or(|r| r < rev)).count();
        assert_eq!(lost, 0, "run {run}: {lost} acknowledged messages missing from the store");
        if run % 2 == 0 {
            early_kills_while_streaming += usize::from(seen.len() > seen_before);
        }
    }
    let total = sub.count("vigil/r/events");
    println!(
        "{total} events seen over 50 kill -9 runs: 25 mid-ingest, 25 from start-up \
         ({early_kills_while_streaming} of them after events had begun)"
    );
}

#[test]
fn a_full_disk_evicts_the_oldest_events_and_the_service_stays_up() {
    let broker = Broker::start();
    let sub = Subscriber::start(broker.port, "vigil/full/events");
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), 96);
    let clip = looping_clip_uri();
    let config = write_config(dir.path(), "full", &broker.url(), &[("clip", clip)]);
    let data = disk.path.join("data");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace(&dir.path().join("data").display().to_string(), &data.display().to_string()))
        .unwrap();
    // An event and a snapshot per detection, and a disk 8 MiB above the 24 MiB vigil keeps free.
    append_config(
        &config,
        "[events]\ntrack = false\nlost_after_ms = 100\nsnapshot_quality = 95\n\
         [[rule]]\nname = \"every\"\nmin_frames = 1\n[store]\nmin_free_mb = 24\n",
    );
    let filler = vec![0u8; (disk.free_bytes() - (32 << 20)) as usize];
    std::fs::write(disk.path.join("filler"), filler).unwrap();
    let mut vigil = Vigil::start(&config, dir.path());

    let full = wait_until(Duration::from_secs(120), || vigil.log().contains("disk nearly full"));
    assert!(full, "the disk never reached the watermark:\n{}", vigil.log());
    // It keeps working: events still arrive, and the free space stays near the watermark.
    let before = sub.count("vigil/full/events");
    std::thread::sleep(Duration::from_secs(15));
    assert!(vigil.is_running(), "{}", vigil.log());
    assert!(sub.count("vigil/full/events") > before + 50, "events stopped:\n{}", vigil.log());
    let usage = || {
        let out =
            std::process::Command::new("du").arg("-sk").arg(data.join("store")).arg(data.join("snapshots")).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    assert!(disk.free_bytes() > 8 << 20, "{} bytes free; KiB used:\n{}\n{}", disk.free_bytes(), usage(), vigil.log());
    // What came before the stop (whose last second may go without new snapshots).
    let at_stop = sub.count("vigil/full/events");
    let (status, log) = vigil.terminate();
    assert!(status.success(), "{status:?}\n{log}");
    assert!(!log.contains("they are lost"), "no event was lost to the full disk:\n{log}");

    // The oldest events went (with their snapshots); the newest are there.
    let seen: Vec<Event> = sub.on("vigil/full/events").iter().map(|p| serde_json::from_slice(p).unwrap()).collect();
    let store = Store::open(&data).expect("the store opens");
    assert!(store.event(&seen[0].id).unwrap().is_none(), "the oldest event was evicted");
    // Snapshots kept being written on the full disk (a message names one only when its file is
    // there), up to the stop; the last second of the stop may store events without new ones.
    let is_end = |e: &&Event| e.phase == vigil_core::event::Phase::End;
    assert!(
        seen[before..at_stop].iter().filter(is_end).any(|e| e.snapshot.is_some()),
        "no snapshot after the disk filled"
    );
    let newest = seen.iter().rev().find(is_end).unwrap();
    let kept = store.event(&newest.id).unwrap().expect("the newest event is kept");
    if let Some(snapshot) = &kept.snapshot {
        assert!(data.join(snapshot).is_file(), "{snapshot} is named but not on disk");
    }
    let oldest_snapshot = data.join(format!("snapshots/{}.jpg", seen[0].id));
    assert!(!oldest_snapshot.exists(), "evicted with its event");
    println!(
        "{} events kept, {} MiB of snapshots, {} MiB free",
        store.event_count(),
        store.snapshot_bytes() >> 20,
        disk.free_bytes() >> 20
    );
}
