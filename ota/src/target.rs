//! vigil's fields on a TUF target (`custom.vigil`), and whether a target fits a device.
//!
//! ```json
//! "custom": { "vigil": {
//!   "kind": "model", "name": "people", "version": "1.4.0",
//!   "compat": { "socs": ["tegra234"], "jetpack": ">=6.0, <7", "backends": ["tensorrt", "onnxruntime"],
//!               "min_vigil": "0.2.0" },
//!   "allow_downgrade": false
//! } }
//! ```
//!
//! The fields are signed with the targets metadata, so a device can trust them as it trusts the
//! file's hash.

use std::path::Path;

use semver::{Version, VersionReq};
use serde::{Deserialize, Serialize};

/// The key under a target's `custom` object that holds [`TargetMeta`].
pub const CUSTOM_KEY: &str = "vigil";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A model bundle (a directory packed as a tar archive).
    #[default]
    Model,
    /// A vigil executable.
    Binary,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Model => "model",
            Kind::Binary => "binary",
        })
    }
}

/// What a device must be to take a target. An empty list or an absent field accepts any device.
/// A requirement this vigil does not know (written by a newer `vigil-ota`) cannot be judged, so a
/// target carrying one does not fit ([`Compat::mismatches`] names it); other targets are unaffected.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Compat {
    /// Boards, as the device tree names them (`nvidia,p3768-0000+p3767-0005`), or `generic`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boards: Vec<String>,
    /// SoCs (`tegra234` for Orin, `tegra194` for Xavier).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub socs: Vec<String>,
    /// CPU architectures (`aarch64`, `x86_64`): binaries need theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub arch: Vec<String>,
    /// JetPack versions, as a requirement (`>=6.0, <7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetpack: Option<VersionReq>,
    /// Inference backends the bundle supports (`tensorrt`, `onnxruntime`): the device needs one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// The oldest vigil that can use the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vigil: Option<Version>,
    /// Requirements unknown to this vigil, as signed.
    #[serde(flatten)]
    pub unknown: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Fields this vigil does not know are ignored (a newer `vigil-ota` may add information); a
/// newer requirement goes under `compat`, where an unknown one makes the target not fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetMeta {
    pub kind: Kind,
    /// What the target is, across versions: the model's name, or `vigil` for the binary. The
    /// anti-rollback minimum is kept per name.
    pub name: String,
    pub version: Version,
    #[serde(default)]
    pub compat: Compat,
    /// Signed permission to install a version below the one the device has accepted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

impl TargetMeta {
    /// The fields from a target's `custom` object.
    pub fn from_custom(custom: &std::collections::HashMap<String, serde_json::Value>) -> Result<Self, String> {
        let value = custom.get(CUSTOM_KEY).ok_or_else(|| format!("no `custom.{CUSTOM_KEY}` fields"))?;
        let meta: TargetMeta =
            serde_json::from_value(value.clone()).map_err(|e| format!("invalid `custom.{CUSTOM_KEY}`: {e}"))?;
        if !is_name(&meta.name) {
            return Err(format!("`{}` is not a valid name (1-64 letters, digits, '-', '_' or '.')", meta.name));
        }
        Ok(meta)
    }

    /// The `custom` object that carries these fields.
    pub fn to_custom(&self) -> std::collections::HashMap<String, serde_json::Value> {
        let value = serde_json::to_value(self).expect("target fields serialise");
        [(CUSTOM_KEY.to_owned(), value)].into_iter().collect()
    }
}

pub(crate) fn is_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What this device is, for [`Compat::mismatches`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    /// Device-tree `compatible` entries, most specific first; `["generic"]` off a Jetson.
    pub boards: Vec<String>,
    pub soc: Option<String>,
    pub arch: String,
    pub jetpack: Option<Version>,
    /// Backends this device can run.
    pub backends: Vec<String>,
    pub vigil: Version,
}

impl Device {
    /// This machine: the device tree and the L4T release file where they exist.
    pub fn detect(backends: Vec<String>) -> Self {
        Self::detect_at(Path::new("/"), backends)
    }

    /// [`Device::detect`] with the files under `root` (tests).
    pub fn detect_at(root: &Path, backends: Vec<String>) -> Self {
        let compatible = std::fs::read(root.join("proc/device-tree/compatible")).unwrap_or_default();
        let mut boards: Vec<String> = compatible
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        let soc = boards.iter().find_map(|b| b.strip_prefix("nvidia,tegra").map(|s| format!("tegra{s}")));
        if boards.is_empty() {
            boards.push("generic".to_owned());
        }
        let l4t = std::fs::read_to_string(root.join("etc/nv_tegra_release")).ok().and_then(|t| l4t_release(&t));
        Self {
            boards,
            soc,
            arch: std::env::consts::ARCH.to_owned(),
            jetpack: l4t.as_ref().and_then(jetpack_of_l4t),
            backends,
            vigil: Version::parse(vigil_core::build::version())
                .expect("vigil's version is semver (checked at build time)"),
        }
    }
}

/// The L4T release in `/etc/nv_tegra_release`: `# R36 (release), REVISION: 4.3, ...` → 36.4.3.
pub fn l4t_release(text: &str) -> Option<Version> {
    let line = text.lines().find(|l| l.starts_with("# R"))?;
    let major: u64 = line.strip_prefix("# R")?.split_whitespace().next()?.parse().ok()?;
    let revision = line.split("REVISION:").nth(1)?.split(',').next()?.trim();
    let mut parts = revision.split('.').map(|p| p.parse::<u64>());
    let minor = parts.next()?.ok()?;
    let patch = parts.next().unwrap_or(Ok(0)).ok()?;
    Some(Version::new(major, minor, patch))
}

/// The JetPack release an L4T release ships in (NVIDIA's release notes): 36.4.3 → 6.2,
/// 36.4.0 → 6.1, 36.3 → 6.0, 35.6 → 5.1.4, 35.5 → 5.1.3, 35.4.1 → 5.1.2. `None` for others.
pub fn jetpack_of_l4t(l4t: &Version) -> Option<Version> {
    let v = |a, b, c| Some(Version::new(a, b, c));
    match (l4t.major, l4t.minor, l4t.patch) {
        (36, 4, p) if p >= 3 => v(6, 2, 0),
        (36, 4, _) => v(6, 1, 0),
        (36, 3, _) => v(6, 0, 0),
        (35, 6, _) => v(5, 1, 4),
        (35, 5, _) => v(5, 1, 3),
        (35, 4, _) => v(5, 1, 2),
        _ => None,
    }
}

impl Compat {
    /// Why `device` cannot take a target with these requirements; empty when it can.
    pub fn mismatches(&self, device: &Device) -> Vec<String> {
        let mut out = Vec::new();
        if !self.boards.is_empty() && !device.boards.iter().any(|b| self.boards.contains(b)) {
            out.push(format!("board {} is not one of {}", device.boards.join(" / "), self.boards.join(", ")));
        }
        if !self.socs.is_empty() && !device.soc.as_ref().is_some_and(|s| self.socs.contains(s)) {
            let have = device.soc.as_deref().unwrap_or("none (not a Jetson)");
            out.push(format!("SoC {have} is not one of {}", self.socs.join(", ")));
        }
        if !self.arch.is_empty() && !self.arch.contains(&device.arch) {
            out.push(format!("architecture {} is not one of {}", device.arch, self.arch.join(", ")));
        }
        if let Some(req) = &self.jetpack {
            match &device.jetpack {
                Some(v) if req.matches(v) => {}
                Some(v) => out.push(format!("JetPack {v} does not meet {req}")),
                None => out.push(format!("needs JetPack {req}; this device has no JetPack release file")),
            }
        }
        if !self.backends.is_empty() && !device.backends.iter().any(|b| self.backends.contains(b)) {
            out.push(format!(
                "supports the {} backends; this device runs {}",
                self.backends.join(", "),
                device.backends.join(", ")
            ));
        }
        if let Some(min) = &self.min_vigil {
            if device.vigil < *min {
                out.push(format!("needs vigil {min} or newer; this is {}", device.vigil));
            }
        }
        for key in self.unknown.keys() {
            out.push(format!(
                "requires `compat.{key}`, which vigil {} cannot judge (a newer vigil-ota wrote it): update vigil first",
                device.vigil
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orin(root: &Path) -> Device {
        std::fs::create_dir_all(root.join("proc/device-tree")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("proc/device-tree/compatible"),
            b"nvidia,p3768-0000+p3767-0005\0nvidia,p3767-0005\0nvidia,tegra234\0",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/nv_tegra_release"),
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n",
        )
        .unwrap();
        Device::detect_at(root, vec!["tensorrt".into(), "onnxruntime".into()])
    }

    #[test]
    fn a_jetson_is_told_by_its_device_tree_and_l4t_release() {
        let dir = tempfile::tempdir().unwrap();
        let d = orin(dir.path());
        assert_eq!(d.soc.as_deref(), Some("tegra234"));
        assert_eq!(d.boards[0], "nvidia,p3768-0000+p3767-0005");
        assert_eq!(d.jetpack, Some(Version::new(6, 2, 0)));
        let bare = Device::detect_at(&dir.path().join("nothing"), vec!["onnxruntime".into()]);
        assert_eq!((bare.boards, bare.soc, bare.jetpack), (vec!["generic".to_owned()], None, None));
    }

    #[test]
    fn each_unmet_requirement_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = orin(dir.path());
        let fits = Compat {
            socs: vec!["tegra234".into()],
            jetpack: Some(">=6.0, <7".parse().unwrap()),
            backends: vec!["tensorrt".into()],
            min_vigil: Some(Version::new(0, 1, 0)),
            ..Compat::default()
        };
        assert_eq!(fits.mismatches(&d), Vec::<String>::new());
        let wrong = Compat {
            boards: vec!["nvidia,p3737-0000".into()],
            socs: vec!["tegra194".into()],
            arch: vec!["riscv64".into()],
            jetpack: Some("^5.1".parse().unwrap()),
            backends: vec!["openvino".into()],
            min_vigil: Some(Version::new(99, 0, 0)),
            unknown: [("secure_boot".to_owned(), true.into())].into(),
        };
        let why = wrong.mismatches(&d);
        assert_eq!(why.len(), 7, "{why:?}");
        assert!(why[6].contains("requires `compat.secure_boot`, which vigil"), "{why:?}");
        assert!(why[1].contains("SoC tegra234 is not one of tegra194"), "{why:?}");
        assert!(why[3].contains("JetPack 6.2.0 does not meet ^5.1"), "{why:?}");
    }

    #[test]
    fn the_fields_travel_in_custom_and_bad_ones_are_named() {
        let meta = TargetMeta {
            kind: Kind::Model,
            name: "people".into(),
            version: Version::new(1, 4, 0),
            compat: Compat { socs: vec!["tegra234".into()], ..Compat::default() },
            allow_downgrade: false,
        };
        assert_eq!(TargetMeta::from_custom(&meta.to_custom()).unwrap(), meta);
        let mut custom = meta.to_custom();
        custom.get_mut(CUSTOM_KEY).unwrap()["version"] = "one".into();
        assert!(TargetMeta::from_custom(&custom).unwrap_err().contains("invalid `custom.vigil`"));
        custom.get_mut(CUSTOM_KEY).unwrap()["version"] = "1.0.0".into();
        custom.get_mut(CUSTOM_KEY).unwrap()["name"] = "../etc".into();
        assert!(TargetMeta::from_custom(&custom).unwrap_err().contains("not a valid name"));
        assert!(TargetMeta::from_custom(&Default::default()).unwrap_err().contains("no `custom.vigil`"));
    }

    #[test]
    fn fields_a_newer_vigil_ota_adds_are_ignored_and_newer_requirements_do_not_fit() {
        let meta = TargetMeta {
            kind: Kind::Model,
            name: "people".into(),
            version: Version::new(1, 4, 0),
            compat: Compat::default(),
            allow_downgrade: false,
        };
        let mut custom = meta.to_custom();
        custom.get_mut(CUSTOM_KEY).unwrap()["release_notes"] = "faster".into();
        assert_eq!(TargetMeta::from_custom(&custom).unwrap(), meta, "an unknown field is information");
        custom.get_mut(CUSTOM_KEY).unwrap()["compat"] = serde_json::json!({ "cuda": ">=12.6", "arch": ["x86_64"] });
        let parsed = TargetMeta::from_custom(&custom).unwrap();
        assert_eq!(parsed.compat.arch, vec!["x86_64".to_owned()]);
        let device = Device::detect_at(Path::new("/nonexistent"), vec!["onnxruntime".into()]);
        let why = parsed.compat.mismatches(&device);
        assert!(why.iter().any(|w| w.contains("`compat.cuda`")), "{why:?}");
        assert_eq!(serde_json::to_value(&parsed.compat).unwrap()["cuda"], ">=12.6", "kept as signed");
    }

    #[test]
    fn l4t_releases_map_to_jetpack() {
        let l4t = l4t_release("# R36 (release), REVISION: 4.0, GCID: 1\n").unwrap();
        assert_eq!((l4t.clone(), jetpack_of_l4t(&l4t)), (Version::new(36, 4, 0), Some(Version::new(6, 1, 0))));
        assert_eq!(l4t_release("garbage"), None);
    }
}
