//! The updater's API: `ota/apply` (install a signed model or binary target from the update
//! server), its arguments checked here, and the handle that hands requests to the updater one at
//! a time ([`Updates::apply`]). The command layer (vigil-fleet) passes the request's raw arguments
//! through; what they mean, and when an update is refused or given way to, is this crate's. The
//! updater reports each step on the retained `vigil/<id>/ota` topic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::Deserialize;
use vigil_config::{CanaryConfig, Config};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplyArgs {
    /// The target's vigil name (a model's name).
    pub name: String,
    /// An exact version; without it, the highest version that fits this device.
    #[serde(default)]
    pub version: Option<String>,
    /// Canary thresholds for this update only, over `[ota.canary]` (any of its keys).
    #[serde(default)]
    pub canary: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An update for the updater to carry out.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRequest {
    pub request_id: String,
    pub name: String,
    pub version: Option<String>,
    pub canary: CanaryConfig,
}

/// The service's updater, as commands reach it: one update at a time.
#[derive(Debug, Clone)]
pub struct Updates {
    pub tx: tokio::sync::mpsc::Sender<UpdateRequest>,
    /// Set from a request's acceptance until its outcome.
    pub busy: Arc<AtomicBool>,
    /// Set while the update under way is a periodic check still looking or downloading: a
    /// request is taken, and the check gives way to it.
    pub preemptible: Arc<AtomicBool>,
}

impl ApplyArgs {
    pub fn check(&self) -> Result<(), String> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self.name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err("ota/apply: `name` must be 1-64 letters, digits, '-', '_' or '.'".to_owned());
        }
        if let Some(v) = &self.version {
            if let Err(e) = semver::Version::parse(v) {
                return Err(format!("ota/apply: `version` `{v}` is not a semantic version such as 1.2.0 ({e})"));
            }
        }
        Ok(())
    }
}

/// The canary thresholds for a request: `[ota.canary]` with the request's keys over it.
fn canary_for(
    base: &CanaryConfig,
    over: Option<&serde_json::Map<String, serde_json::Value>>,
) -> Result<CanaryConfig, String> {
    let Some(over) = over else { return Ok(base.clone()) };
    let mut value = serde_json::to_value(base).expect("canary settings serialise");
    for (k, v) in over {
        value[k] = v.clone();
    }
    let canary: CanaryConfig = serde_json::from_value(value).map_err(|e| format!("ota/apply: bad `canary`: {e}"))?;
    match canary.problems().first() {
        Some((field, message)) => Err(format!("ota/apply: canary.{field}: {message}")),
        None => Ok(canary),
    }
}

impl Updates {
    /// `ota/apply` with its raw arguments (`args`): checked, then handed to the updater; the
    /// reply says where to follow it.
    pub fn apply(
        &self,
        config: &Config,
        request_id: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let args: ApplyArgs = serde_json::from_value(args).map_err(|e| format!("ota/apply: bad args: {e}"))?;
        args.check()?;
        self.queue(config, request_id, &args)
    }

    /// Hands checked `args` to the updater; the reply says where to follow it.
    fn queue(&self, config: &Config, request_id: &str, args: &ApplyArgs) -> Result<serde_json::Value, String> {
        let Some(ota) = &config.ota else {
            return Err("this device has no [ota] section in its configuration: add one (docs/ota.md) to take \
                        over-the-air updates"
                .to_owned());
        };
        let canary = canary_for(&ota.canary, args.canary.as_ref())?;
        let in_progress = || {
            format!(
                "{}; follow {} and send ota/apply again once it shows an outcome",
                vigil_core::topic::UPDATE_IN_PROGRESS,
                vigil_core::topic::ota(&config.device_id)
            )
        };
        let was_busy = self.busy.swap(true, Ordering::SeqCst);
        if was_busy && !self.preemptible.load(Ordering::SeqCst) {
            return Err(in_progress());
        }
        let request = UpdateRequest {
            request_id: request_id.to_owned(),
            name: args.name.clone(),
            version: args.version.clone(),
            canary,
        };
        if let Err(e) = self.tx.try_send(request) {
            if !was_busy {
                self.busy.store(false, Ordering::SeqCst);
            }
            return Err(match e {
                // A command already waits for a periodic check to give way.
                tokio::sync::mpsc::error::TrySendError::Full(_) => in_progress(),
                tokio::sync::mpsc::error::TrySendError::Closed(_) => {
                    "the updater is not running (vigil is stopping); try again after the restart".to_owned()
                }
            });
        }
        Ok(serde_json::json!({ "queued": true, "follow": vigil_core::topic::ota(&config.device_id) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_push_canary_keys_go_over_the_configured_ones_and_are_checked() {
        let base = CanaryConfig::default();
        let over = |json: &str| serde_json::from_str::<serde_json::Map<_, _>>(json).unwrap();
        let c = canary_for(&base, Some(&over(r#"{"min_frames": 40, "max_score_psi": 0.5}"#))).unwrap();
        assert_eq!((c.min_frames, c.max_score_psi, c.min_detection_ratio), (40, 0.5, base.min_detection_ratio));
        let e = canary_for(&base, Some(&over(r#"{"min_frame": 40}"#))).unwrap_err();
        assert!(e.contains("unknown field `min_frame`"), "{e}");
        let e = canary_for(&base, Some(&over(r#"{"min_detection_ratio": 7}"#))).unwrap_err();
        assert!(e.contains("canary.min_detection_ratio: 7 is outside 0..=1"), "{e}");
    }

    #[test]
    fn one_update_at_a_time_and_none_without_an_ota_section() {
        let mut config = Config::for_tests();
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let updates = Updates { tx, busy: Arc::default(), preemptible: Arc::default() };
        let args = ApplyArgs { name: "shapes".into(), version: Some("1.0.1".into()), canary: None };
        let e = updates.queue(&config, "r1", &args).unwrap_err();
        assert!(e.contains("no [ota] section"), "{e}");
        config.ota =
            Some(toml::from_str("server = \"https://u.example/\"\nroot = \"/r.json\"\nca = \"/ca.pem\"").unwrap());
        let ok = updates.queue(&config, "r1", &args).unwrap();
        assert_eq!(ok["follow"], "vigil/demo/ota");
        let queued = rx.try_recv().unwrap();
        assert_eq!((queued.request_id.as_str(), queued.version.as_deref()), ("r1", Some("1.0.1")));
        let e = updates.queue(&config, "r2", &args).unwrap_err();
        assert!(e.contains("an update is in progress"), "{e}");
        assert!(rx.try_recv().is_err(), "the second was not queued");
        // A periodic check runs and is still downloading: a command is taken, once.
        updates.preemptible.store(true, Ordering::SeqCst);
        let ok = updates.queue(&config, "r3", &args).unwrap();
        assert_eq!(ok["queued"], true);
        assert_eq!(rx.try_recv().unwrap().request_id, "r3");
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let waiting =
            Updates { tx, busy: Arc::new(AtomicBool::new(true)), preemptible: Arc::new(AtomicBool::new(true)) };
        waiting.queue(&config, "r4", &args).unwrap();
        let e = waiting.queue(&config, "r5", &args).unwrap_err();
        assert!(e.contains("an update is in progress"), "a second waits for none: {e}");
        assert!(waiting.busy.load(Ordering::SeqCst), "still busy with the check");
        assert!(ApplyArgs { name: "../x".into(), version: None, canary: None }.check().is_err());
        assert!(ApplyArgs { name: "m".into(), version: Some("latest".into()), canary: None }.check().is_err());
    }
}
