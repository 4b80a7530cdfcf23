//! Checks of a parsed configuration: every problem, by field path, so that an operator fixes a
//! file in one pass.

use crate::units::in_ms;
use vigil_core::codec::known_decoders;
use vigil_core::source::SourceUri;

use crate::*;

impl Config {
    /// Every problem in the configuration, with its field path. Empty when the config is usable.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: &str, message: String| out.push(Problem { path: path.to_owned(), message });

        check_id(&mut bad, "device_id", &self.device_id);
        match BrokerUrl::parse(&self.mqtt.url) {
            Ok(url) if url.tls && self.mqtt.tls.is_none() => {
                bad("mqtt.tls", "mqtts:// needs [mqtt.tls] with at least `ca`".to_owned())
            }
            Ok(url) if !url.tls && self.mqtt.tls.is_some() => {
                bad("mqtt.url", "[mqtt.tls] is set but the URL is plain mqtt://; use mqtts://".to_owned())
            }
            Ok(_) => {}
            Err(e) => bad("mqtt.url", e),
        }
        if let Some(id) = &self.mqtt.client_id {
            if id.is_empty() || id.len() > 128 {
                bad("mqtt.client_id", "must be 1-128 characters".to_owned());
            }
        }
        check_range(&mut bad, "mqtt.keep_alive_s", self.mqtt.keep_alive.as_secs(), 5..=3600);
        if !(1..=1024).contains(&self.mqtt.max_inflight) {
            bad("mqtt.max_inflight", format!("{} is outside 1..=1024", self.mqtt.max_inflight));
        }
        if self.store.max_events == 0 || self.store.max_event_mb == 0 {
            bad("store", "max_events and max_event_mb must be at least 1".to_owned());
        }
        check_range(&mut bad, "store.min_free_mb", self.store.min_free_mb, 0..=1_000_000);
        let prefix = &self.mqtt.home_assistant_prefix;
        if prefix.is_empty() || prefix.contains(['+', '#']) || prefix.starts_with('/') || prefix.ends_with('/') {
            bad(
                "mqtt.home_assistant_prefix",
                format!("`{prefix}` must be a topic prefix without wildcards or outer slashes"),
            );
        }
        if let Some(every) = self.mqtt.metrics_every.filter(|d| d.as_secs() > 86_400) {
            bad("mqtt.metrics_interval_s", format!("{} is more than a day (0 turns metrics off)", every.as_secs()));
        }
        if !(100..=10_000_000).contains(&self.mqtt.outbox_max_messages) {
            bad("mqtt.outbox_max_messages", format!("{} is outside 100..=10000000", self.mqtt.outbox_max_messages));
        }
        if let Some(ota) = &self.ota {
            check_ota(&mut bad, ota);
        }
        if let Some(tls) = &self.mqtt.tls {
            for (field, path) in [("ca", Some(&tls.ca)), ("cert", tls.cert.as_ref()), ("key", tls.key.as_ref())] {
                if let Some(p) = path {
                    if !p.is_file() {
                        bad(&format!("mqtt.tls.{field}"), format!("{} does not exist or is not a file", p.display()));
                    }
                }
            }
            if tls.cert.is_some() != tls.key.is_some() {
                bad("mqtt.tls", "give `cert` and `key` together for mutual TLS, or neither".to_owned());
            }
        }
        if !self.model.bundle.join("manifest.toml").is_file() {
            bad(
                "model.bundle",
                format!("{} holds no manifest.toml; point it at a model bundle directory", self.model.bundle.display()),
            );
        }
        check_budget(&mut bad, "model.latency_budget_ms", self.model.latency_budget);
        if self.inference.threads == 0 || self.inference.threads > 64 {
            bad("inference.threads", format!("{} is outside 1..=64", self.inference.threads));
        }
        if self.inference.max_batch == 0 || self.inference.max_batch > 64 {
            bad("inference.max_batch", format!("{} is outside 1..=64", self.inference.max_batch));
        }
        if self.inference.workspace_mb < 16 {
            bad(
                "inference.workspace_mb",
                format!("{} MiB is too small for TensorRT (at least 16)", self.inference.workspace_mb),
            );
        }
        if let Some(lib) = &self.inference.ort_library {
            if !lib.is_file() {
                bad("inference.ort_library", format!("{} does not exist", lib.display()));
            }
        }
        if self.cameras.is_empty() {
            bad("camera", "no cameras configured; add at least one [[camera]] with `id` and `uri`".to_owned());
        }
        for (i, cam) in self.cameras.iter().enumerate() {
            check_id(&mut bad, &format!("camera[{i}].id"), &cam.id);
            if self.cameras[..i].iter().any(|c| c.id == cam.id) {
                bad(&format!("camera[{i}].id"), format!("`{}` is used by an earlier camera", cam.id));
            }
            if let Err(e) = cam.uri.source() {
                bad(&format!("camera[{i}].uri"), e.to_string());
            }
            check_budget(&mut bad, &format!("camera[{i}].latency_budget_ms"), cam.latency_budget);
            if let Some(d) = &cam.decoder {
                if !known_decoders().contains(&d.as_str()) {
                    bad(
                        &format!("camera[{i}].decoder"),
                        format!("`{d}` is not a decoder vigil knows; use one of {}", known_decoders().join(", ")),
                    );
                }
            }
            let rtsp = matches!(cam.uri.source(), Ok(SourceUri::Rtsp { .. }));
            if (cam.user.is_some() || cam.password.is_some()) && !rtsp {
                bad(&format!("camera[{i}].user"), "user and password apply to rtsp:// cameras only".to_owned());
            }
            if let Some(d) = cam.watchdog {
                check_range(&mut bad, &format!("camera[{i}].watchdog_ms"), in_ms(d), 100..=600_000);
            }
            for (z, zone) in cam.zones.iter().enumerate() {
                let at = format!("camera[{i}].zone[{z}]");
                check_id(&mut bad, &format!("{at}.name"), &zone.name);
                if cam.zones[..z].iter().any(|o| o.name == zone.name) {
                    bad(&format!("{at}.name"), format!("`{}` is used by an earlier zone of this camera", zone.name));
                }
                if !(3..=64).contains(&zone.polygon.len()) {
                    bad(&format!("{at}.polygon"), format!("has {} points; give 3 to 64", zone.polygon.len()));
                }
                if zone.polygon.iter().flatten().any(|v| !(0.0..=1.0).contains(v)) {
                    bad(
                        &format!("{at}.polygon"),
                        "points are normalised: x and y between 0 and 1 (0,0 is the top-left corner)".to_owned(),
                    );
                }
            }
        }
        let e = &self.events;
        if !(0.05..=0.95).contains(&e.iou_threshold) {
            bad("events.iou_threshold", format!("{} is outside 0.05..=0.95", e.iou_threshold));
        }
        check_range(&mut bad, "events.lost_after_ms", in_ms(e.lost_after), 100..=600_000);
        check_range(&mut bad, "events.update_interval_s", e.update_interval.as_secs(), 1..=3_600);
        check_range(&mut bad, "events.snapshot_quality", u64::from(e.snapshot_quality), 1..=100);
        for (r, rule) in self.rules.iter().enumerate() {
            let at = format!("rule[{r}]");
            check_id(&mut bad, &format!("{at}.name"), &rule.name);
            if self.rules[..r].iter().any(|o| o.name == rule.name) {
                bad(&format!("{at}.name"), format!("`{}` is used by an earlier rule", rule.name));
            }
            for cam in &rule.cameras {
                if !self.cameras.iter().any(|c| &c.id == cam) {
                    bad(&format!("{at}.cameras"), format!("no camera `{cam}`; cameras are {}", self.camera_ids()));
                }
            }
            let watched: Vec<&CameraConfig> =
                self.cameras.iter().filter(|c| rule.cameras.is_empty() || rule.cameras.contains(&c.id)).collect();
            for zone in &rule.zones {
                if !watched.iter().any(|c| c.zones.iter().any(|z| &z.name == zone)) {
                    bad(
                        &format!("{at}.zones"),
                        format!("no camera this rule watches has a zone `{zone}`; add a [[camera.zone]] named so"),
                    );
                }
            }
            if !(0.0..=1.0).contains(&rule.min_score) {
                bad(&format!("{at}.min_score"), format!("{} is outside 0..=1", rule.min_score));
            }
            check_range(&mut bad, &format!("{at}.min_frames"), u64::from(rule.min_frames), 1..=10_000);
            for (field, v) in [("dwell_s", rule.dwell), ("cooldown_s", rule.cooldown)] {
                if v > Duration::from_secs(86_400) {
                    bad(&format!("{at}.{field}"), format!("{} is outside 0..=86400 seconds", v.as_secs_f64()));
                }
            }
        }
        let c = &self.capture;
        check_range(&mut bad, "capture.watchdog_ms", in_ms(c.watchdog), 100..=600_000);
        check_range(&mut bad, "capture.first_frame_timeout_ms", in_ms(c.first_frame_timeout), 100..=600_000);
        check_range(&mut bad, "capture.backoff_min_ms", in_ms(c.backoff_min), 10..=600_000);
        check_range(&mut bad, "capture.backoff_max_ms", in_ms(c.backoff_max), 10..=3_600_000);
        check_range(&mut bad, "capture.backoff_reset_s", c.backoff_reset.as_secs(), 1..=86_400);
        check_range(&mut bad, "capture.software_decode_threads", u64::from(c.software_decode_threads), 0..=64);
        if c.backoff_max < c.backoff_min {
            bad(
                "capture.backoff_max_ms",
                format!("{} is below backoff_min_ms ({})", in_ms(c.backoff_max), in_ms(c.backoff_min)),
            );
        }
        out
    }
}

fn check_id(bad: &mut impl FnMut(&str, String), path: &str, id: &str) {
    if !is_valid_id(id) {
        bad(path, format!("`{id}` must be 1-64 letters, digits, '-' or '_'"));
    }
}

fn check_range(bad: &mut impl FnMut(&str, String), path: &str, value: u64, range: std::ops::RangeInclusive<u64>) {
    if !range.contains(&value) {
        bad(path, format!("{value} is outside {}..={}", range.start(), range.end()));
    }
}

fn check_budget(bad: &mut impl FnMut(&str, String), path: &str, value: Option<Duration>) {
    if let Some(ms) = value.map(in_ms) {
        if !(1..=60_000).contains(&ms) {
            bad(path, format!("{ms} ms is outside 1..=60000"));
        }
    }
}

fn check_ota(bad: &mut impl FnMut(&str, String), ota: &OtaConfig) {
    let host = ota.server.strip_prefix("https://").and_then(|r| r.split('/').next()).unwrap_or("");
    if host.is_empty() || !ota.server.ends_with('/') || ota.server.contains(char::is_whitespace) {
        bad("ota.server", format!("`{}` must be an https:// URL ending with `/`", ota.server));
    }
    for (field, path) in
        [("root", Some(&ota.root)), ("ca", Some(&ota.ca)), ("cert", ota.cert.as_ref()), ("key", ota.key.as_ref())]
    {
        if let Some(p) = path.filter(|p| !p.is_file()) {
            bad(&format!("ota.{field}"), format!("{} does not exist or is not a file", p.display()));
        }
    }
    if ota.cert.is_some() != ota.key.is_some() {
        bad("ota", "give `cert` and `key` together for a client certificate, or neither".to_owned());
    }
    if !(1..=1000).contains(&ota.accept_runs) {
        bad("ota.accept_runs", format!("{} is outside 1..=1000", ota.accept_runs));
    }
    if let Some(every) = ota.check_every.filter(|d| d.as_secs() < 60) {
        bad("ota.check_interval_s", format!("{} is under a minute (0 turns periodic checks off)", every.as_secs()));
    }
    for (field, message) in ota.canary.problems() {
        bad(&format!("ota.canary.{field}"), message);
    }
    if !(1..=3600).contains(&ota.binary_health_window.as_secs()) {
        bad("ota.binary_health_window_s", format!("{} is outside 1..=3600", ota.binary_health_window.as_secs()));
    }
}
