//! A file checked against signed metadata with no network and no clock: what the A/B launcher
//! does before it runs a slot binary (docs/ota.md, docs/decisions/0012).
//!
//! The service user can write the slots, so a compromised vigil could plant a binary and a
//! `slots.json` that names it. What it cannot make is a signature. The launcher therefore
//! trusts only:
//!
//! 1. the root shipped with the device (`ota.root`, read-only to the service);
//! 2. each newer root kept in `<state>/trusted/roots/N.root.json`, each signed by the threshold
//!    of the root before it and by its own (the chain TUF's client walks at every refresh);
//! 3. the targets metadata kept beside the slot, signed by the targets role of the last root;
//! 4. a target in it with the file's exact length and SHA-256.
//!
//! Expiry is not checked here: a device that has been offline for a year must still start the
//! binary it was updated to. Freshness and rollback are the updater's checks, made when the
//! binary was downloaded; what this check adds is that the file was signed at some point by the
//! repository's current keys.

use std::path::{Path, PathBuf};

use tough::schema::{Root, Signed, Targets};

use crate::target::TargetMeta;

/// The directory of roots kept beyond the shipped one, under the state's `trusted/`.
pub const ROOTS: &str = "roots";

/// The chain of roots kept in the OTA state directory `state`.
pub fn roots_in(state: &Path) -> PathBuf {
    state.join("trusted").join(ROOTS)
}

/// `<roots>/N.root.json`.
pub fn root_file(roots: &Path, version: u64) -> PathBuf {
    roots.join(format!("{version}.root.json"))
}

/// The newest root reachable from `shipped` through the chain kept in `roots`: each signed by
/// its predecessor's root role and by its own, one version up each time. The walk stops at the
/// first version not kept; a kept root that does not verify is an error (somebody wrote it).
pub fn root_chain(shipped: &Path, roots: &Path) -> Result<Signed<Root>, String> {
    let bytes =
        std::fs::read(shipped).map_err(|e| format!("cannot read the shipped root {}: {e}", shipped.display()))?;
    let mut root: Signed<Root> = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the shipped root {} is not TUF root metadata: {e}", shipped.display()))?;
    root.signed
        .verify_role(&root)
        .map_err(|e| format!("the shipped root {} is not signed by its own keys: {e}", shipped.display()))?;
    loop {
        let next_version = root.signed.version.get() + 1;
        let path = root_file(roots, next_version);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(root),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let next: Signed<Root> =
            serde_json::from_slice(&bytes).map_err(|e| format!("{} is not TUF root metadata: {e}", path.display()))?;
        if next.signed.version.get() != next_version {
            return Err(format!("{} holds root version {}", path.display(), next.signed.version));
        }
        root.signed
            .verify_role(&next)
            .map_err(|e| format!("{} is not signed by root {}: {e}", path.display(), root.signed.version))?;
        next.signed.verify_role(&next).map_err(|e| format!("{} is not signed by its own keys: {e}", path.display()))?;
        root = next;
    }
}

/// The vigil fields of every target in `targets` (the bytes of a signed targets metadata file)
/// whose length and SHA-256 are `length` and `sha256`, once `targets` is found signed by the
/// targets role of the root chain from `shipped`. An error says what failed.
pub fn signed_as(
    shipped: &Path,
    roots: &Path,
    targets: &[u8],
    length: u64,
    sha256: &[u8],
) -> Result<Vec<(String, TargetMeta)>, String> {
    let root = root_chain(shipped, roots)?;
    let targets: Signed<Targets> =
        serde_json::from_slice(targets).map_err(|e| format!("the kept targets metadata is unreadable: {e}"))?;
    root.signed.verify_role(&targets).map_err(|e| {
        format!("the kept targets metadata is not signed by the repository's keys (root {}): {e}", root.signed.version)
    })?;
    Ok(targets
        .signed
        .targets
        .iter()
        .filter(|(_, t)| t.length == length && t.hashes.sha256.as_ref() == sha256)
        .filter_map(|(name, t)| Some((name.raw().to_owned(), TargetMeta::from_custom(&t.custom).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::{self, Expiry};
    use crate::target::{Compat, Kind};

    fn meta(version: &str) -> TargetMeta {
        TargetMeta {
            kind: Kind::Binary,
            name: "vigil".into(),
            version: version.parse().unwrap(),
            compat: Compat::default(),
            allow_downgrade: false,
        }
    }

    /// The newest signed targets metadata of a repository.
    fn latest_targets(repo: &Path) -> Vec<u8> {
        std::fs::read(repo::latest_targets(repo).unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn a_file_counts_only_when_the_chain_from_the_shipped_root_signed_it() {
        let d = tempfile::tempdir().unwrap();
        let (repo, roots) = (d.path().join("repo"), d.path().join("roots"));
        std::fs::create_dir_all(&roots).unwrap();
        let expiry = Expiry::default();
        let keys = repo::init_with_new_keys(&repo, &d.path().join("keys"), &expiry).await.unwrap();
        let shipped = repo::metadata_dir(&repo).join("1.root.json");
        let binary = d.path().join("vigil");
        std::fs::write(&binary, b"#!/bin/sh\necho new\n").unwrap();
        repo::add(&repo, &binary, "bin/vigil-0.2.0", &meta("0.2.0"), &keys, &expiry, |_| {}).await.unwrap();
        let (length, sha256) = repo::hash_file(&binary, |_| {}).unwrap();
        let targets = latest_targets(&repo);

        let found = signed_as(&shipped, &roots, &targets, length, &sha256).unwrap();
        assert_eq!(found, vec![("bin/vigil-0.2.0".to_owned(), meta("0.2.0"))]);
        // Another file: signed metadata, but no target of its length and hash.
        let other = repo::hash_file(&shipped, |_| {}).unwrap();
        assert_eq!(signed_as(&shipped, &roots, &targets, other.0, &other.1).unwrap(), vec![]);

        // Metadata signed by keys of the attacker's own repository.
        let forged = d.path().join("forged");
        let their = repo::init_with_new_keys(&forged, &d.path().join("their-keys"), &expiry).await.unwrap();
        repo::add(&forged, &binary, "bin/vigil-0.2.0", &meta("0.2.0"), &their, &expiry, |_| {}).await.unwrap();
        let e = signed_as(&shipped, &roots, &latest_targets(&forged), length, &sha256).unwrap_err();
        assert!(e.contains("not signed by the repository's keys (root 1)"), "{e}");
        // ... with its root planted as the next version of ours.
        std::fs::copy(repo::metadata_dir(&forged).join("1.root.json"), root_file(&roots, 2)).unwrap();
        let e = root_chain(&shipped, &roots).unwrap_err();
        assert!(e.contains("holds root version 1"), "{e}");
        let mut planted: serde_json::Value =
            serde_json::from_slice(&std::fs::read(repo::metadata_dir(&forged).join("1.root.json")).unwrap()).unwrap();
        planted["signed"]["version"] = 2.into();
        std::fs::write(root_file(&roots, 2), serde_json::to_vec(&planted).unwrap()).unwrap();
        let e = root_chain(&shipped, &roots).unwrap_err();
        assert!(e.contains("2.root.json is not signed by root 1"), "{e}");
        std::fs::remove_file(root_file(&roots, 2)).unwrap();

        // The repository rotates every key: the new targets key's metadata counts only through
        // the kept root 2.
        let new_keys = d.path().join("new-keys");
        std::fs::create_dir_all(&new_keys).unwrap();
        let roles = repo::RoleKeyFiles {
            targets: new_keys.join("targets"),
            snapshot: new_keys.join("snapshot"),
            timestamp: new_keys.join("timestamp"),
        };
        for k in [new_keys.join("root"), roles.targets.clone(), roles.snapshot.clone(), roles.timestamp.clone()] {
            repo::keygen(&k).await.unwrap();
        }
        let old_root = d.path().join("keys/root");
        repo::rotate(&repo, &[old_root], &[new_keys.join("root")], 1, &roles, &expiry).await.unwrap();
        // The same targets re-signed by the new targets key (the operator would also re-sign the
        // snapshot and timestamp; the launcher reads only the targets).
        let root_2: Signed<Root> =
            serde_json::from_slice(&std::fs::read(repo::metadata_dir(&repo).join("2.root.json")).unwrap()).unwrap();
        let old: Signed<Targets> = serde_json::from_slice(&targets).unwrap();
        let key: Box<dyn tough::key_source::KeySource> =
            Box::new(tough::key_source::LocalKeySource { path: roles.targets.clone() });
        let holder = tough::schema::KeyHolder::Root(root_2.signed);
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let signed = tough::editor::signed::SignedRole::new(old.signed, &holder, &[key], &rng).await.unwrap();
        let targets = serde_json::to_vec(signed.signed()).unwrap();
        let e = signed_as(&shipped, &roots, &targets, length, &sha256).unwrap_err();
        assert!(e.contains("(root 1)"), "root 2 not kept: {e}");
        std::fs::copy(repo::metadata_dir(&repo).join("2.root.json"), root_file(&roots, 2)).unwrap();
        assert_eq!(signed_as(&shipped, &roots, &targets, length, &sha256).unwrap().len(), 1);
    }
}
