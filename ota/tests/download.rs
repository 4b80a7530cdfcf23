//! Downloads over a real HTTPS server: a good update, resume across an interruption and a
//! restart, a part file complete before a restart, a server that ignores `Range` and one that
//! answers it `416`, a clock that is not synchronized, a repository in an older `vigil-ota`'s
//! layout, and the `vigil-ota` tool end to end (operator commands and the device-side fetch).

mod support;

use std::process::Command;
use std::sync::Arc;

use support::*;
use vigil_ota::time::NeverSynchronized;
use vigil_ota::OtaError;

const LEN: usize = 3 << 20;

#[tokio::test]
async fn a_repository_in_an_older_vigil_otas_layout_still_serves_its_targets() {
    // vigil-ota writes the specification's path and links the one older vigil releases ask for.
    let f = Fixture::new(1, 1, 4096).await;
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(payload(4096, 1)));
    let spec = f.repo().join(format!("targets/models/{hash}.people-1.0.0"));
    let old = f.repo().join(format!("targets/{hash}.models/people-1.0.0"));
    assert!(spec.is_file() && old.is_file(), "both layouts are written");
    // A repository an older vigil-ota wrote has only the old one.
    std::fs::remove_file(&spec).unwrap();
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    let dest = f.dest("people.bin");
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(4096, 1));
    let asked: Vec<String> =
        f.server.requests().into_iter().map(|(p, _)| p).filter(|p| p.starts_with("targets/")).collect();
    let want = [format!("targets/models/{hash}.people-1.0.0"), format!("targets/{hash}.models/people-1.0.0")];
    assert_eq!(asked, want, "the specification's path first, then the old one");
}

#[tokio::test]
async fn a_download_cut_off_resumes_where_it_stopped_even_after_a_restart() {
    let f = Fixture::new(1, 1, LEN).await;
    f.server.set(|b| b.cut_target_after = Some(1 << 20));
    let dest = f.dest("people.bin");
    {
        let u = f.updater();
        let (trusted, offer) = newest(&u).await;
        let e = u.download(&trusted, &offer, &dest).await.unwrap_err();
        assert!(matches!(e, OtaError::Transport(_)) && e.is_retryable(), "{e}");
        assert!(!dest.exists());
    } // the process "restarts": a new updater on the same state directory
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1), "the whole file, byte for byte");
    let (done, total, resumed_from) = u.progress().get();
    assert_eq!((done, total), (LEN as u64, LEN as u64));
    assert!((1 << 19..=1 << 20).contains(&resumed_from), "resumed at {resumed_from}");
    let ranges: Vec<_> = f.server.requests().into_iter().filter(|(p, _)| p.starts_with("targets/")).collect();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert_eq!(ranges[1].1, Some(format!("bytes={resumed_from}-")), "the second request asked for the rest");
    assert_eq!(std::fs::read_dir(f.path().join("device/state/downloads")).unwrap().count(), 0, "no part left");
}

/// A device whose download of the target into `dest` the server cut off after 1 MiB (the part
/// file kept): its updater, the metadata it trusted and the offer.
async fn cut_off(
    f: &Fixture,
    dest: &std::path::Path,
) -> (vigil_ota::Updater, vigil_ota::client::Trusted, vigil_ota::Offer) {
    f.server.set(|b| b.cut_target_after = Some(1 << 20));
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    let e = u.download(&trusted, &offer, dest).await.unwrap_err();
    assert!(matches!(e, OtaError::Transport(_)), "{e}");
    (u, trusted, offer)
}

#[tokio::test]
async fn a_server_that_ignores_range_gets_the_download_started_over() {
    let f = Fixture::new(1, 1, LEN).await;
    let dest = f.dest("people.bin");
    let (u, trusted, offer) = cut_off(&f, &dest).await;
    f.server.set(|b| b.ignore_range = true);
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
    assert_eq!(u.progress().get().2, 0, "nothing was taken from the earlier try");
}

/// The part file of the one download in progress.
fn part_file(f: &Fixture) -> std::path::PathBuf {
    let downloads = f.path().join("device/state/downloads");
    let parts: Vec<_> = std::fs::read_dir(&downloads)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "part"))
        .collect();
    assert_eq!(parts.len(), 1, "{parts:?}");
    parts[0].clone()
}

#[tokio::test]
async fn a_download_complete_before_a_restart_is_verified_without_asking_for_more() {
    // Killed between the last byte and the rename: the part file holds the whole target. A
    // range from its end is unsatisfiable (416 from nginx and from this server), so the
    // transport must not ask for one.
    let f = Fixture::new(1, 1, LEN).await;
    let dest = f.dest("people.bin");
    cut_off(&f, &dest).await;
    std::fs::write(part_file(&f), payload(LEN, 1)).unwrap();
    let asked = f.server.requests().len();
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    let metadata_requests = f.server.requests().len() - asked;
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
    assert_eq!(f.server.requests().len() - asked, metadata_requests, "no request for the target");
    assert_eq!(u.progress().get(), (LEN as u64, LEN as u64, LEN as u64));

    // Whole but wrong (a torn write of the last block): refused by TUF, discarded, fetched again.
    let dest = f.dest("people-again.bin");
    f.server.set(|b| b.cut_target_after = Some(1 << 20));
    u.download(&trusted, &offer, &dest).await.unwrap_err();
    let mut torn = payload(LEN, 1);
    torn[LEN - 1] ^= 0xff;
    std::fs::write(part_file(&f), torn).unwrap();
    let e = u.download(&trusted, &offer, &dest).await.unwrap_err();
    assert!(matches!(e, OtaError::Verification { .. }), "{e}");
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
}

#[tokio::test]
async fn a_range_the_server_cannot_satisfy_starts_the_download_over() {
    let f = Fixture::new(1, 1, LEN).await;
    let dest = f.dest("people.bin");
    let (u, trusted, offer) = cut_off(&f, &dest).await;
    f.server.set(|b| b.refuse_ranges = true);
    u.download(&trusted, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
    assert_eq!(u.progress().get().2, 0, "started over");
    let targets: Vec<_> = f.server.requests().into_iter().filter(|(p, _)| p.starts_with("targets/")).collect();
    assert_eq!(targets.len(), 3, "{targets:?}");
    assert!(targets[1].1.is_some() && targets[2].1.is_none(), "a range (416), then the whole file: {targets:?}");
}

#[tokio::test]
async fn metadata_that_expires_during_a_download_keeps_the_download_and_a_fresh_refresh_resumes_it() {
    let f = Fixture::new(1, 1, LEN).await;
    // A timestamp that lives 3 s: a long download outlives it.
    let short = vigil_ota::repo::Expiry { timestamp: std::time::Duration::from_secs(3), ..f.expiry };
    vigil_ota::repo::refresh(&f.repo(), &f.keys.roles.timestamp, None, &short).await.unwrap();
    let dest = f.dest("people.bin");
    let (u, trusted, offer) = cut_off(&f, &dest).await;
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    // The retry with the view of the first refresh: expired, but the bytes are not at fault.
    let e = u.download(&trusted, &offer, &dest).await.unwrap_err();
    assert!(matches!(e, OtaError::MetadataExpired(_)) && e.is_retryable(), "{e}");
    assert!(!e.to_string().contains("discarded") && e.to_string().contains("resumes"), "{e}");
    assert!(part_file(&f).exists(), "the part is kept");
    // The operator's daily job renewed the timestamp; a fresh refresh resumes the download.
    vigil_ota::repo::refresh(&f.repo(), &f.keys.roles.timestamp, None, &f.expiry).await.unwrap();
    let (fresh, offer) = newest(&u).await;
    u.download(&fresh, &offer, &dest).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
    assert!(u.progress().get().2 >= 1 << 19, "resumed, not started over: {:?}", u.progress().get());
}

#[tokio::test]
async fn two_users_of_one_state_directory_take_turns() {
    let f = Fixture::new(1, 1, LEN).await;
    // About 2.5 s of download, time for a second user to come along.
    f.server.set(|b| b.trickle = Some((64 << 10, std::time::Duration::from_millis(50))));
    let dest = f.dest("people.bin");
    let service = f.updater();
    let (trusted, offer) = newest(&service).await;
    let progress = service.progress();
    let by_hand = f.updater(); // `vigil-ota fetch` run on the same state directory
    let second = async {
        while progress.get().0 == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let e = by_hand.refresh().await.err().expect("refused while the download runs");
        assert!(matches!(e, OtaError::Busy(_)) && e.is_retryable(), "{e}");
        assert!(e.to_string().contains("in use by another vigil or vigil-ota"), "{e}");
    };
    let (downloaded, ()) = tokio::join!(service.download(&trusted, &offer, &dest), second);
    downloaded.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), payload(LEN, 1));
    by_hand.refresh().await.unwrap();
}

#[tokio::test]
async fn the_operators_tools_replace_metadata_whole_while_it_is_served() {
    let f = Fixture::new(1, 1, 4096).await;
    let timestamp = vigil_ota::repo::metadata_dir(&f.repo()).join("timestamp.json");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A reader as the update server is one: it opens and reads the file whole, again and again.
    let reader = {
        let (stop, timestamp) = (stop.clone(), timestamp.clone());
        std::thread::spawn(move || {
            let (mut reads, mut torn) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let bytes = std::fs::read(&timestamp).unwrap_or_default();
                reads += 1;
                if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
                    torn.push(bytes.len());
                }
            }
            (reads, torn)
        })
    };
    for _ in 0..40 {
        vigil_ota::repo::refresh(&f.repo(), &f.keys.roles.timestamp, Some(&f.keys.roles.snapshot), &f.expiry)
            .await
            .unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (reads, torn) = reader.join().unwrap();
    assert!(reads > 40, "the reader ran alongside: {reads} reads");
    assert!(torn.is_empty(), "{} of {reads} reads saw a half-written timestamp.json: {torn:?}", torn.len());
    let left: Vec<_> = std::fs::read_dir(vigil_ota::repo::metadata_dir(&f.repo()))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "no staging directory left: {left:?}");
    // And the repository is whole: a device takes it.
    f.updater().refresh().await.unwrap();
}

#[tokio::test]
async fn an_unsynchronized_clock_delays_the_update_and_says_why() {
    let f = Fixture::new(1, 1, 4096).await;
    let u = f.updater_with(f.config(), Arc::new(NeverSynchronized));
    let e = u.refresh().await.err().expect("refused");
    assert!(matches!(e, OtaError::ClockNotSynchronized(_)) && e.is_retryable(), "{e}");
    assert!(e.to_string().contains("waits for NTP"), "{e}");
    assert!(f.server.requests().is_empty(), "nothing is fetched with an untrusted clock");
}

#[tokio::test]
async fn an_unreadable_kept_root_falls_back_to_the_shipped_one() {
    let f = Fixture::new(1, 1, 4096).await;
    f.updater().refresh().await.unwrap();
    std::fs::write(f.path().join("device/state/trusted/root.json"), b"{\"torn").unwrap();
    let trusted = f.updater().refresh().await.unwrap();
    assert_eq!(trusted.versions().0, 1);
}

/// `vigil-ota add` of `file` as model `people` `version`, signed with the fixture's keys.
fn tool_add(f: &Fixture, file: &std::path::Path, version: &str, extra: &[&str]) -> (bool, String) {
    let s = |p: &std::path::Path| p.display().to_string();
    let keys = &f.keys.roles;
    let (repo, file) = (s(&f.repo()), s(file));
    let (targets, snapshot, timestamp) = (s(&keys.targets), s(&keys.snapshot), s(&keys.timestamp));
    let mut args = vec!["add", "--repo", &repo, &file, "--kind", "model", "--name", MODEL, "--version", version];
    args.extend(["--targets-key", &targets, "--snapshot-key", &snapshot, "--timestamp-key", &timestamp]);
    args.extend_from_slice(extra);
    tool(&args)
}

fn tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil-ota")).args(args).output().expect("vigil-ota runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_builds_a_repository_and_a_device_fetches_from_it() {
    let f = Fixture::new(1, 1, 4096).await;
    let d = f.path();
    let s = |p: std::path::PathBuf| p.display().to_string();
    let keys = &f.keys.roles;
    let model_file = d.join("files/people-2.0.0.tar");
    std::fs::write(&model_file, payload(200_000, 7)).unwrap();
    let (ok, out) = tool_add(&f, &model_file, "2.0.0", &["--backend", "onnxruntime"]);
    assert!(ok && out.contains("added models/people-2.0.0 (200000 bytes"), "{out}");
    let (ok, out) = tool(&["status", "--repo", &s(f.repo())]);
    assert!(ok && out.contains("models/people-2.0.0") && out.contains("model people 2.0.0"), "{out}");
    let (ok, out) = tool(&["refresh", "--repo", &s(f.repo()), "--timestamp-key", &s(keys.timestamp.clone())]);
    assert!(ok && out.contains("timestamp version"), "{out}");

    let fetch = |out_file: &str| {
        let metadata = f.server.url("metadata").to_string();
        let targets = f.server.url("targets").to_string();
        let ca = s(f.server.ca.clone());
        let root = s(d.join("device/shipped-root.json"));
        let state = s(d.join("device/tool-state"));
        let dest = s(d.join("device").join(out_file));
        tool(&[
            "fetch",
            "--metadata-url",
            &metadata,
            "--targets-url",
            &targets,
            "--root",
            &root,
            "--ca",
            &ca,
            "--state",
            &state,
            "--name",
            MODEL,
            "--out",
            &dest,
            "--accept",
            "--assume-synchronized",
        ])
    };
    // The tool runs its own runtime: keep this test's off the blocking call.
    let (ok, out) = tokio::task::block_in_place(|| fetch("people-2.0.0.tar"));
    assert!(ok && out.contains("people 2.0.0 (200000 bytes)"), "{out}");
    assert_eq!(std::fs::read(d.join("device/people-2.0.0.tar")).unwrap(), payload(200_000, 7));
    let (ok, out) = tool(&["keygen", &s(d.join("keys/root0.der"))]);
    assert!(!ok && out.contains("must not exist"), "keygen never overwrites a key: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_directory_travels_as_an_archive_and_unpacks_into_a_new_slot() {
    let f = Fixture::new(1, 1, 4096).await;
    let d = f.path();
    let bundle = d.join("files/people-3.0.0");
    std::fs::create_dir_all(bundle.join("reference")).unwrap();
    std::fs::write(bundle.join("manifest.toml"), "schema = 1\n").unwrap();
    std::fs::write(bundle.join("model.onnx"), payload(100_000, 3)).unwrap();
    std::fs::write(bundle.join("reference/input.f32"), payload(1000, 4)).unwrap();
    let (ok, out) = tokio::task::block_in_place(|| tool_add(&f, &bundle, "3.0.0", &[]));
    assert!(ok && out.contains("added models/people-3.0.0"), "{out}");
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    assert_eq!(offer.meta.version.to_string(), "3.0.0");
    let archive = f.dest("people-3.0.0.tar");
    u.download(&trusted, &offer, &archive).await.unwrap();
    let slot = f.dest("models/people-3.0.0");
    std::fs::create_dir_all(slot.parent().unwrap()).unwrap();
    vigil_ota::archive::unpack(&archive, &slot, Default::default()).unwrap();
    for file in ["manifest.toml", "model.onnx", "reference/input.f32"] {
        assert_eq!(std::fs::read(slot.join(file)).unwrap(), std::fs::read(bundle.join(file)).unwrap(), "{file}");
    }
}

#[tokio::test]
async fn a_download_the_device_cannot_keep_is_a_storage_error_not_a_network_one() {
    let f = Fixture::new(1, 1, 4096).await;
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    // Where partial downloads go is not a directory any more (a stand-in for a broken disk).
    let downloads = f.path().join("device/state/downloads");
    std::fs::remove_dir_all(&downloads).unwrap();
    std::fs::write(&downloads, b"").unwrap();
    let e = u.download(&trusted, &offer, &f.dest("people.bin")).await.unwrap_err();
    assert!(matches!(e, OtaError::Storage(_)) && !e.is_retryable(), "{e}");
    assert!(e.to_string().contains("free space"), "{e}");
}
