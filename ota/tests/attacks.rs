//! One fixture and one test per attack on the update channel (TUF's threat list, and a hostile
//! or broken server), against a real HTTPS server. Each is refused, and nothing the device keeps
//! changes: its trusted metadata, its anti-rollback minimums, the running files.

mod support;

use std::time::Duration;

use support::*;
use vigil_ota::OtaError;

/// Refreshes and fetches `people` into a fresh file; the device's kept state must be what it
/// was, and no file may appear.
async fn refused(f: &Fixture) -> OtaError {
    let before = f.device_state();
    let u = f.updater();
    let dest = f.dest("refused.bin");
    let result = async {
        let trusted = u.refresh().await?;
        let offer = u.choose(&trusted, &Fixture::device(), MODEL, None)?;
        u.download(&trusted, &offer, &dest).await
    }
    .await;
    let e = result.expect_err("the attack must be refused");
    eprintln!("refused: {e}");
    assert!(!dest.exists(), "nothing is installed after: {e}");
    assert_eq!(f.device_state(), before, "the device's trusted state is unchanged after: {e}");
    e
}

/// The device has refreshed once and accepted 1.0.0.
async fn settled(f: &Fixture) {
    let u = f.updater();
    let (trusted, offer) = newest(&u).await;
    u.download(&trusted, &offer, &f.dest("people-1.0.0")).await.unwrap();
    u.accept(&offer).unwrap();
}

/// The device has seen the repository's newest metadata (so that only the target is at stake).
async fn refresh_only(f: &Fixture) {
    f.updater().refresh().await.unwrap();
}

#[tokio::test]
async fn bad_signature() {
    let f = Fixture::new(1, 1, 4096).await;
    settled(&f).await;
    f.add("models/people-1.1.0", &payload(4096, 2), &model("1.1.0")).await;
    // One bit of the timestamp's signature flipped.
    let mut ts = f.read_json("timestamp.json");
    let sig = ts["signatures"][0]["sig"].as_str().unwrap().to_owned();
    let flipped = format!("{}{}", if sig.starts_with('0') { '1' } else { '0' }, &sig[1..]);
    ts["signatures"][0]["sig"] = flipped.into();
    f.write_json("timestamp.json", &ts);
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("timestamp")), "{e}");
}

#[tokio::test]
async fn missing_signature() {
    let f = Fixture::new(1, 1, 4096).await;
    settled(&f).await;
    f.add("models/people-1.1.0", &payload(4096, 2), &model("1.1.0")).await;
    let mut ts = f.read_json("timestamp.json");
    ts["signatures"] = serde_json::json!([]);
    f.write_json("timestamp.json", &ts);
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("timestamp")), "{e}");
}

#[tokio::test]
async fn below_threshold() {
    // Two root keys, both needed: a new root signed by one of them is refused.
    let f = Fixture::new(2, 2, 4096).await;
    settled(&f).await;
    let only_one = vec![f.keys.root[0].clone()];
    vigil_ota::repo::rotate(&f.repo(), &only_one, &only_one, 1, &f.keys.roles, &f.expiry).await.unwrap();
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("root")), "{e}");
}

#[tokio::test]
async fn rollback_to_an_older_target_version() {
    let f = Fixture::new(1, 1, 4096).await;
    f.add("models/people-2.0.0", &payload(4096, 3), &model("2.0.0")).await;
    settled(&f).await; // accepts 2.0.0, the highest
                       // The repository now offers only 1.0.0 (2.0.0 was removed, or an attacker wants it back).
    let u = f.updater();
    let trusted = u.refresh().await.unwrap();
    let old: semver::Version = "1.0.0".parse().unwrap();
    let e = u.choose(&trusted, &Fixture::device(), MODEL, Some(&old)).unwrap_err();
    assert!(matches!(&e, OtaError::Downgrade { minimum, .. } if minimum == "2.0.0"), "{e}");
    // Going back on purpose needs a signed target that says so.
    let mut back = model("1.0.1");
    back.allow_downgrade = true;
    f.add("models/people-1.0.1", &payload(4096, 4), &back).await;
    let trusted = u.refresh().await.unwrap();
    let v = "1.0.1".parse().unwrap();
    let offer = u.choose(&trusted, &Fixture::device(), MODEL, Some(&v)).unwrap();
    u.download(&trusted, &offer, &f.dest("back")).await.unwrap();
    u.accept(&offer).unwrap();
    assert_eq!(u.state().minimums().unwrap()[MODEL], v, "a signed downgrade lowers the minimum");
}

#[tokio::test]
async fn rollback_to_older_metadata() {
    let f = Fixture::new(1, 1, 4096).await;
    let old_timestamp = std::fs::read(f.repo().join("metadata/timestamp.json")).unwrap();
    f.add("models/people-1.1.0", &payload(4096, 2), &model("1.1.0")).await;
    settled(&f).await; // trusts the newer timestamp
                       // A mirror replays the older, still validly signed and unexpired, timestamp.
    f.server.set(|b| {
        b.replace.insert("metadata/timestamp.json".into(), old_timestamp);
    });
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("timestamp") || why.contains("older")), "{e}");
}

#[tokio::test]
async fn freeze_with_an_expired_timestamp() {
    let f = Fixture::new(1, 1, 4096).await;
    vigil_ota::repo::refresh(
        &f.repo(),
        &f.keys.roles.timestamp,
        None,
        &vigil_ota::repo::Expiry { timestamp: Duration::from_secs(1), ..f.expiry },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("expired")), "{e}");
}

#[tokio::test]
async fn mix_and_match_of_snapshot_and_targets() {
    let f = Fixture::new(1, 1, 4096).await;
    let v1 = f.latest("targets");
    f.add("models/people-1.1.0", &payload(4096, 2), &model("1.1.0")).await;
    let v2 = f.latest("targets");
    // The new snapshot names targets v2; the server hands out v1's (validly signed) file for it.
    let old = std::fs::read(f.repo().join(format!("metadata/{v1}.targets.json"))).unwrap();
    f.server.set(|b| {
        b.replace.insert(format!("metadata/{v2}.targets.json"), old);
    });
    let e = refused(&f).await;
    assert!(matches!(e, OtaError::Untrusted(_)), "{e}");
}

#[tokio::test]
async fn endless_data_in_a_target() {
    let f = Fixture::new(1, 1, 64 << 10).await;
    settled(&f).await;
    f.add("models/people-1.1.0", &payload(64 << 10, 2), &model("1.1.0")).await;
    refresh_only(&f).await;
    f.server.set(|b| b.extra_target_bytes = 1 << 20);
    let e = refused(&f).await;
    assert!(matches!(e, OtaError::Verification { .. }), "{e}");
    let parts = std::fs::read_dir(f.path().join("device/state/downloads")).unwrap().count();
    assert_eq!(parts, 0, "the over-long download was discarded");
}

#[tokio::test]
async fn endless_data_in_metadata() {
    let f = Fixture::new(1, 1, 4096).await;
    let mut huge = std::fs::read(f.repo().join("metadata/timestamp.json")).unwrap();
    huge.extend(std::iter::repeat_n(b' ', 8 << 20));
    f.server.set(|b| {
        b.replace.insert("metadata/timestamp.json".into(), huge);
    });
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("larger than the 65536 bytes allowed")), "{e}");
}

#[tokio::test]
async fn slow_retrieval() {
    let f = Fixture::new(1, 1, 64 << 10).await;
    settled(&f).await;
    f.add("models/people-1.1.0", &payload(64 << 10, 2), &model("1.1.0")).await;
    refresh_only(&f).await;
    // 100 bytes every 100 ms: 1 kB/s, under the 8 kB/s this device asks for over 1 s windows.
    f.server.set(|b| b.trickle = Some((100, Duration::from_millis(100))));
    let mut config = f.config();
    config.timeouts.min_rate = 8 << 10;
    config.timeouts.rate_window = Duration::from_secs(1);
    let before = f.device_state();
    let u = f.updater_with(config, std::sync::Arc::new(vigil_ota::time::AssumeSynchronized));
    let (trusted, offer) = newest(&u).await;
    let e = u.download(&trusted, &offer, &f.dest("slow")).await.unwrap_err();
    assert!(matches!(e, OtaError::TooSlow { min_rate: 8192, .. }) && e.is_retryable(), "{e}");
    assert!(!f.dest("slow").exists());
    assert_eq!(f.device_state(), before, "nothing kept changed");
}

#[tokio::test]
async fn wrong_hardware() {
    let f = Fixture::new(1, 1, 4096).await;
    let mut xavier = model("1.1.0");
    xavier.compat.socs = vec!["tegra194".into()];
    xavier.compat.jetpack = Some("^5.1".parse().unwrap());
    f.add("models/people-1.1.0-xavier", &payload(4096, 2), &xavier).await;
    let u = f.updater();
    let trusted = u.refresh().await.unwrap();
    let v = "1.1.0".parse().unwrap();
    let e = u.choose(&trusted, &Fixture::device(), MODEL, Some(&v)).unwrap_err();
    assert!(
        matches!(&e, OtaError::Incompatible { reasons, .. } if reasons.contains("SoC none") && reasons.contains("JetPack")),
        "{e}"
    );
    // Without a version, the device takes the highest that fits: 1.0.0.
    let offer = u.choose(&trusted, &Fixture::device(), MODEL, None).unwrap();
    assert_eq!(offer.meta.version.to_string(), "1.0.0");
}

#[tokio::test]
async fn key_rotation() {
    let f = Fixture::new(1, 1, 4096).await;
    settled(&f).await;
    let new_key = f.path().join("keys/root-new.der");
    vigil_ota::repo::keygen(&new_key).await.unwrap();
    // Signed by the old key and the new one: devices follow.
    let old = f.keys.root.clone();
    vigil_ota::repo::rotate(&f.repo(), &old, std::slice::from_ref(&new_key), 1, &f.keys.roles, &f.expiry)
        .await
        .unwrap();
    // And again before the device looks: it walks 1 → 2 → 3 in one refresh.
    let newer_key = f.path().join("keys/root-newer.der");
    vigil_ota::repo::keygen(&newer_key).await.unwrap();
    vigil_ota::repo::rotate(
        &f.repo(),
        std::slice::from_ref(&new_key),
        std::slice::from_ref(&newer_key),
        1,
        &f.keys.roles,
        &f.expiry,
    )
    .await
    .unwrap();
    let u = f.updater();
    let trusted = u.refresh().await.unwrap();
    assert_eq!(trusted.versions().0, 3, "the device trusts root 3");
    let kept: serde_json::Value = serde_json::from_slice(&u.state().trusted_file("root.json").unwrap()).unwrap();
    assert_eq!(kept["signed"]["version"], 3, "and keeps it for the next start");
    // Every root it walked through is kept, so that the chain from the shipped root can be
    // checked offline (the A/B launcher does).
    let shipped = vigil_ota::repo::metadata_dir(&f.repo()).join("1.root.json");
    let chain = vigil_ota::offline::root_chain(&shipped, &u.state().roots()).unwrap();
    assert_eq!(chain.signed.version.get(), 3);
    assert!(vigil_ota::offline::root_file(&u.state().roots(), 2).exists());
    // A root 4 signed by a key the device has never trusted, alone, is refused.
    let rogue = f.path().join("keys/rogue.der");
    vigil_ota::repo::keygen(&rogue).await.unwrap();
    vigil_ota::repo::rotate(
        &f.repo(),
        std::slice::from_ref(&rogue),
        std::slice::from_ref(&rogue),
        1,
        &f.keys.roles,
        &f.expiry,
    )
    .await
    .unwrap();
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("root")), "{e}");
}

#[tokio::test]
async fn a_root_written_into_the_state_directory_is_no_trust_anchor() {
    // Anyone who can write the device's OTA state (the service user, so code execution inside
    // vigil) writes a root of their own, signed by their own keys, where the kept root goes,
    // and as the next link of the kept chain.
    let f = Fixture::new(1, 1, 4096).await;
    settled(&f).await;
    let rogue = f.path().join("rogue");
    vigil_ota::repo::init_with_new_keys(&rogue, &f.path().join("rogue-keys"), &f.expiry).await.unwrap();
    let theirs = std::fs::read(vigil_ota::repo::metadata_dir(&rogue).join("1.root.json")).unwrap();
    let u = f.updater();
    std::fs::write(u.state().trusted().join("root.json"), &theirs).unwrap();
    let roots = u.state().roots();
    std::fs::create_dir_all(&roots).unwrap();
    let mut as_two: serde_json::Value = serde_json::from_slice(&theirs).unwrap();
    as_two["signed"]["version"] = 2.into();
    std::fs::write(vigil_ota::offline::root_file(&roots, 2), serde_json::to_vec(&as_two).unwrap()).unwrap();
    // The device still trusts the repository its shipped root names, and only it.
    let trusted = u.refresh().await.unwrap();
    assert_eq!(trusted.versions().0, 1);
    let kept: serde_json::Value = serde_json::from_slice(&u.state().trusted_file("root.json").unwrap()).unwrap();
    let shipped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(vigil_ota::repo::metadata_dir(&f.repo()).join("1.root.json")).unwrap())
            .unwrap();
    assert_eq!(kept, shipped, "the planted root was replaced by the repository's own");
}

#[tokio::test]
async fn metadata_of_another_major_version_of_the_specification() {
    let f = Fixture::new(1, 1, 4096).await;
    refresh_only(&f).await;
    // A timestamp, properly signed, that claims TUF 2.0.0: a client refuses a major version it
    // does not implement.
    let root: tough::schema::Signed<tough::schema::Root> =
        serde_json::from_value(f.read_json(&format!("{}.root.json", f.latest("root")))).unwrap();
    let mut ts: tough::schema::Signed<tough::schema::Timestamp> =
        serde_json::from_value(f.read_json("timestamp.json")).unwrap();
    ts.signed.spec_version = "2.0.0".into();
    ts.signed.version = ts.signed.version.checked_add(1).unwrap();
    let key: Box<dyn tough::key_source::KeySource> =
        Box::new(tough::key_source::LocalKeySource { path: f.keys.roles.timestamp.clone() });
    let signed = tough::editor::signed::SignedRole::new(
        ts.signed,
        &tough::schema::KeyHolder::Root(root.signed),
        &[key],
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .await
    .unwrap();
    f.write_json("timestamp.json", &serde_json::to_value(signed.signed()).unwrap());
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Untrusted(why) if why.contains("spec_version \"2.0.0\"")), "{e}");
}

#[tokio::test]
async fn a_target_shorter_than_its_signed_length() {
    // The specification's length is exact; vigil once took it as an upper bound, so a file cut
    // short whose hash matched what was signed passed (docs/decisions/0016).
    let f = Fixture::new(1, 1, 4096).await;
    let bytes = payload(4096, 7);
    use sha2::Digest;
    let sha256 = sha2::Sha256::digest(&bytes).to_vec();
    let target = tough::schema::Target {
        length: 4096 + 10,
        hashes: tough::schema::Hashes { sha256: sha256.clone().into(), _extra: Default::default() },
        custom: model("2.0.0").to_custom(),
        _extra: Default::default(),
    };
    sign_entry(&f, "models/people-2.0.0", target).await;
    std::fs::write(f.repo().join(format!("targets/models/{}.people-2.0.0", hex::encode(&sha256))), &bytes).unwrap();
    refresh_only(&f).await;
    let e = refused(&f).await;
    assert!(matches!(&e, OtaError::Verification { why, .. } if why.contains("4096 bytes, 4106 were signed")), "{e}");
}

#[tokio::test]
async fn a_target_file_the_server_lacks_is_reported_as_missing() {
    let f = Fixture::new(1, 1, 4096).await;
    refresh_only(&f).await;
    std::fs::remove_dir_all(f.repo().join("targets")).unwrap();
    std::fs::create_dir(f.repo().join("targets")).unwrap();
    let e = refused(&f).await;
    let text = e.to_string();
    assert!(matches!(e, OtaError::Missing { .. }), "a 404 is not a forgery: {text}");
    assert!(text.contains("has no file for target `models/people-1.0.0`"), "{text}");
    assert!(text.contains("/targets/models/") && text.contains(".people-1.0.0"), "the specification's path: {text}");
    assert!(e.is_retryable(), "the server may be fixed; the device tries again later");
}

#[tokio::test]
async fn path_traversal_in_target_names() {
    let f = Fixture::new(1, 1, 4096).await;
    // The targets key signs a name that climbs out of the targets directory (the tool refuses
    // such names; an attacker with the key, or another tool, would not).
    let evil = "models/../../../etc/people";
    assert!(vigil_ota::repo::add(&f.repo(), &f.dest("x"), evil, &model("9.0.0"), &f.keys.roles, &f.expiry, |_| {})
        .await
        .is_err());
    sign_raw_target(&f, evil, &payload(4096, 9), &model("9.0.0")).await;
    let u = f.updater();
    let trusted = u.refresh().await.unwrap();
    let v = "9.0.0".parse().unwrap();
    let e = u.choose(&trusted, &Fixture::device(), MODEL, Some(&v)).unwrap_err();
    assert!(matches!(&e, OtaError::BadTarget { why, .. } if why.contains("unsafe target name")), "{e}");
    assert!(!f.path().join("etc").exists());
}

/// Adds target `name` as given (no name check), signed with the repository's keys.
async fn sign_raw_target(f: &Fixture, name: &str, bytes: &[u8], meta: &vigil_ota::TargetMeta) {
    use sha2::Digest;
    use tough::schema::{decoded::Decoded, Hashes, Target};
    let target = Target {
        length: bytes.len() as u64,
        hashes: Hashes { sha256: Decoded::from(sha2::Sha256::digest(bytes).to_vec()), _extra: Default::default() },
        custom: meta.to_custom(),
        _extra: Default::default(),
    };
    sign_entry(f, name, target).await;
}

/// Adds `target` under `name` as given, signed with the repository's keys.
async fn sign_entry(f: &Fixture, name: &str, target: tough::schema::Target) {
    use tough::editor::RepositoryEditor;
    use tough::key_source::{KeySource, LocalKeySource};
    let repo = tough::RepositoryLoader::new(
        &std::fs::read(f.repo().join(format!("metadata/{}.root.json", f.latest("root")))).unwrap(),
        url::Url::from_directory_path(f.repo().join("metadata")).unwrap(),
        url::Url::from_directory_path(f.repo().join("targets")).unwrap(),
    )
    .load()
    .await
    .unwrap();
    let next = |v: std::num::NonZeroU64| v.checked_add(1).unwrap();
    let (tv, sv, ts) = (
        next(repo.targets().signed.version),
        next(repo.snapshot().signed.version),
        next(repo.timestamp().signed.version),
    );
    let root = f.repo().join(format!("metadata/{}.root.json", f.latest("root")));
    let mut editor = RepositoryEditor::from_repo(&root, repo).await.unwrap();
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
    editor
        .add_target(name, target)
        .unwrap()
        .targets_version(tv)
        .unwrap()
        .targets_expires(later)
        .unwrap()
        .snapshot_version(sv)
        .snapshot_expires(later)
        .timestamp_version(ts)
        .timestamp_expires(later);
    let r = &f.keys.roles;
    let keys: Vec<Box<dyn KeySource>> = [&r.targets, &r.snapshot, &r.timestamp]
        .into_iter()
        .map(|p| Box::new(LocalKeySource { path: p.clone() }) as Box<dyn KeySource>)
        .collect();
    editor.sign(&keys).await.unwrap().write(f.repo().join("metadata")).await.unwrap();
}
