//! The MQTT topic schema: one type that builds and parses every topic vigil publishes or takes,
//! so that no module spells a topic string.
//!
//! ```text
//! vigil/<device>/status            retained online/offline (also the last will)
//! vigil/<device>/events            event lifecycle messages
//! vigil/<device>/metrics           the periodic metrics message
//! vigil/<device>/ota               retained: the over-the-air update in progress or the last one
//! vigil/<device>/cmd/<name>        fleet commands to the device
//! vigil/<device>/reply/<request>   the device's replies
//! vigil/<device>/ha/<camera>       Home Assistant: a camera's last detection
//! <prefix>/sensor/<device>/<camera>_last_detection/config   Home Assistant discovery
//! ```

use std::fmt;

/// The largest MQTT packet vigil sends: what the shipped fleet broker accepts (`max_packet_size
/// 1000000` in `appliance/config/mosquitto/mosquitto.conf`). A broker refuses a larger packet by
/// dropping the connection, so a message that would not fit is refused where it is made (a
/// command reply becomes an error reply) and never queued.
pub const MAX_PACKET_BYTES: usize = 1_000_000;

/// An upper bound on the size of the QoS 1 PUBLISH packet of `payload` bytes on `topic`: fixed
/// header (1 byte and up to 4 of remaining length), topic (2 + its length), packet id (2).
pub fn publish_packet_bytes(topic: &str, payload: usize) -> usize {
    1 + 4 + 2 + topic.len() + 2 + payload
}

/// The packet size of `payload` bytes on `topic` when it is over [`MAX_PACKET_BYTES`]: a
/// message that could never be sent.
pub fn oversized(topic: &str, payload: usize) -> Option<usize> {
    Some(publish_packet_bytes(topic, payload)).filter(|&bytes| bytes > MAX_PACKET_BYTES)
}

/// The first level of every vigil topic.
pub const ROOT: &str = "vigil";
const HA_SUFFIX: &str = "_last_detection";

/// One topic, borrowed from its parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic<'a> {
    Status { device: &'a str },
    Events { device: &'a str },
    Metrics { device: &'a str },
    Ota { device: &'a str },
    Command { device: &'a str, name: &'a str },
    Reply { device: &'a str, request: &'a str },
    HaState { device: &'a str, camera: &'a str },
    HaConfig { prefix: &'a str, device: &'a str, camera: &'a str },
}

impl<'a> Topic<'a> {
    /// Reads a vigil topic; `None` for anything else. A command name may span levels
    /// (`config/get`); every other part is one non-empty level. Home Assistant discovery topics
    /// are read for `ha_prefix` only (their first level is the operator's choice).
    pub fn parse(topic: &'a str, ha_prefix: &str) -> Option<Self> {
        let level = |s: &'a str| (!s.is_empty() && !s.contains('/')).then_some(s);
        if let Some(rest) = topic.strip_prefix(ROOT).and_then(|r| r.strip_prefix('/')) {
            let (device, rest) = rest.split_once('/')?;
            let device = level(device)?;
            return match rest.split_once('/') {
                None => match rest {
                    "status" => Some(Topic::Status { device }),
                    "events" => Some(Topic::Events { device }),
                    "metrics" => Some(Topic::Metrics { device }),
                    "ota" => Some(Topic::Ota { device }),
                    _ => None,
                },
                Some(("cmd", name)) if name.split('/').all(|l| !l.is_empty()) => Some(Topic::Command { device, name }),
                Some(("reply", request)) => Some(Topic::Reply { device, request: level(request)? }),
                Some(("ha", camera)) => Some(Topic::HaState { device, camera: level(camera)? }),
                _ => None,
            };
        }
        match topic.split('/').collect::<Vec<_>>().as_slice() {
            [prefix, "sensor", device, object, "config"] if !ha_prefix.is_empty() && *prefix == ha_prefix => {
                let camera = level(object.strip_suffix(HA_SUFFIX)?)?;
                Some(Topic::HaConfig { prefix, device: level(device)?, camera })
            }
            _ => None,
        }
    }
}

impl fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Status { device } => write!(f, "{ROOT}/{device}/status"),
            Topic::Events { device } => write!(f, "{ROOT}/{device}/events"),
            Topic::Metrics { device } => write!(f, "{ROOT}/{device}/metrics"),
            Topic::Ota { device } => write!(f, "{ROOT}/{device}/ota"),
            Topic::Command { device, name } => write!(f, "{ROOT}/{device}/cmd/{name}"),
            Topic::Reply { device, request } => write!(f, "{ROOT}/{device}/reply/{request}"),
            Topic::HaState { device, camera } => write!(f, "{ROOT}/{device}/ha/{camera}"),
            Topic::HaConfig { prefix, device, camera } => {
                write!(f, "{prefix}/sensor/{device}/{camera}{HA_SUFFIX}/config")
            }
        }
    }
}

/// `vigil/<device>/status`. `device` may be the wildcard `+`.
pub fn status(device: &str) -> String {
    Topic::Status { device }.to_string()
}

/// `vigil/<device>/events`.
pub fn events(device: &str) -> String {
    Topic::Events { device }.to_string()
}

/// `vigil/<device>/metrics`.
pub fn metrics(device: &str) -> String {
    Topic::Metrics { device }.to_string()
}

/// `vigil/<device>/ota` (retained).
/// How a device's refusal of `ota/apply` begins while another update is under way: a rollout
/// waits for that update's outcome and sends the command again, instead of counting a refusal.
pub const UPDATE_IN_PROGRESS: &str = "an update is in progress";

pub fn ota(device: &str) -> String {
    Topic::Ota { device }.to_string()
}

/// `vigil/<device>/cmd/<name>`.
pub fn command(device: &str, name: &str) -> String {
    Topic::Command { device, name }.to_string()
}

/// The filter a device subscribes to for its commands: `vigil/<device>/cmd/#`.
pub fn command_filter(device: &str) -> String {
    Topic::Command { device, name: "#" }.to_string()
}

/// `vigil/<device>/reply/<request>`.
pub fn reply(device: &str, request: &str) -> String {
    Topic::Reply { device, request }.to_string()
}

/// The name of a command sent to `device` on `topic` (all that follows `vigil/<device>/cmd/`,
/// checked by the command parser, which answers a bad name); `None` for any other topic.
pub fn command_name<'t>(topic: &'t str, device: &str) -> Option<&'t str> {
    topic.strip_prefix(ROOT)?.strip_prefix('/')?.strip_prefix(device)?.strip_prefix("/cmd/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_topic_parses_back_into_what_built_it() {
        let all = [
            Topic::Status { device: "gate-01" },
            Topic::Events { device: "gate-01" },
            Topic::Metrics { device: "gate-01" },
            Topic::Ota { device: "gate-01" },
            Topic::Command { device: "gate-01", name: "restart" },
            Topic::Command { device: "gate-01", name: "config/get" },
            Topic::Reply { device: "gate-01", request: "r-1" },
            Topic::HaState { device: "gate-01", camera: "yard" },
            Topic::HaConfig { prefix: "homeassistant", device: "gate-01", camera: "yard" },
        ];
        for t in all {
            let s = t.to_string();
            assert_eq!(Topic::parse(&s, "homeassistant"), Some(t), "{s}");
        }
    }

    #[test]
    fn the_topics_have_the_documented_shapes() {
        assert_eq!(status("d"), "vigil/d/status");
        assert_eq!(events("d"), "vigil/d/events");
        assert_eq!(metrics("d"), "vigil/d/metrics");
        assert_eq!(ota("d"), "vigil/d/ota");
        assert_eq!(command("d", "restart"), "vigil/d/cmd/restart");
        assert_eq!(command_filter("d"), "vigil/d/cmd/#");
        assert_eq!(reply("d", "r"), "vigil/d/reply/r");
        assert_eq!(
            Topic::HaConfig { prefix: "homeassistant", device: "d", camera: "yard" }.to_string(),
            "homeassistant/sensor/d/yard_last_detection/config"
        );
    }

    #[test]
    fn a_command_name_is_read_only_from_this_devices_command_topics() {
        assert_eq!(command_name("vigil/d/cmd/restart", "d"), Some("restart"));
        assert_eq!(command_name("vigil/d/cmd/config/get", "d"), Some("config/get"));
        assert_eq!(command_name("vigil/other/cmd/restart", "d"), None);
        assert_eq!(command_name("vigil/d/reply/restart", "d"), None);
        assert_eq!(command_name("vigil/dd/cmd/restart", "d"), None);
        assert_eq!(command_name("vigil/d/cmd/", "d"), Some(""), "left to the command parser to refuse");
    }

    #[test]
    fn foreign_and_malformed_topics_are_not_vigils() {
        for t in ["", "vigil", "vigil/d", "vigil//status", "other/d/status", "vigil/d/status/x", "vigil/d/nope"] {
            assert_eq!(Topic::parse(t, "homeassistant"), None, "{t:?}");
        }
        assert_eq!(Topic::parse("ha/sensor/d/yard_last_detection/config", "homeassistant"), None);
        assert_eq!(Topic::parse("homeassistant/sensor/d/_last_detection/config", "homeassistant"), None);
    }
}
