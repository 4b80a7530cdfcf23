//! Camera source URIs: what a `[[camera]].uri` may say, parsed once, when the configuration is
//! read ([`CameraUri`]), and used from then on as a typed [`SourceUri`].

use std::fmt;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

use crate::secret::Secret;

/// How a file source is played.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At the clip's frame rate, like a live camera (default).
    Realtime,
    /// As fast as decode allows (tests, benchmarks, offline re-processing).
    Fast,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtspTransport {
    Tcp,
    Udp,
}

/// Capture size and rate asked of a camera (`?width=&height=&fps=`); unset fields are left to
/// the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mode {
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub fps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    File {
        path: PathBuf,
        looped: bool,
        pace: Pace,
    },
    /// `url` never carries credentials: `user:password@` in the URI is percent-decoded into
    /// `user`/`password` (a `/`, `@` or `:` in them is written `%2F`, `%40`, `%3A`). `host` and
    /// `port` (554 unless given) are where reachability is checked.
    Rtsp {
        url: String,
        host: String,
        port: u16,
        transport: RtspTransport,
        latency_ms: u32,
        user: Option<String>,
        password: Option<Secret>,
    },
    V4l2 {
        device: PathBuf,
        mode: Mode,
    },
    Csi {
        sensor_id: u32,
        mode: Mode,
    },
    Test {
        pattern: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(String);

const SCHEMES: &str = "file://, rtsp://, v4l2://, csi:// or test://";

impl SourceUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let err = |m: String| Err(UriError(m));
        // Error messages show the URI without its credentials.
        let shown = Self::redacted(uri);
        let Some((scheme, rest)) = uri.split_once("://") else {
            return err(format!("`{shown}` is not a URI; start it with {SCHEMES}"));
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        let params = parse_query(query)?;
        let take = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        let allow = |keys: &[&str]| -> Result<(), UriError> {
            match params.iter().find(|(k, _)| !keys.contains(&k.as_str())) {
                Some((k, _)) => Err(UriError(format!(
                    "unknown option `{k}` in `{shown}`; {scheme}:// accepts {}",
                    if keys.is_empty() { "no options".to_owned() } else { keys.join(", ") }
                ))),
                None => Ok(()),
            }
        };
        match scheme {
            "file" => {
                allow(&["loop", "pace"])?;
                if !body.starts_with('/') {
                    return err(format!("`{shown}`: file:// needs an absolute path (file:///path/clip.mp4)"));
                }
                let looped = match take("loop") {
                    None | Some("false") | Some("0") => false,
                    Some("true") | Some("1") => true,
                    Some(v) => return err(format!("`loop={v}` in `{shown}`: use true or false")),
                };
                let pace = match take("pace") {
                    None | Some("realtime") => Pace::Realtime,
                    Some("fast") => Pace::Fast,
                    Some(v) => return err(format!("`pace={v}` in `{shown}`: use realtime or fast")),
                };
                Ok(Self::File { path: PathBuf::from(body), looped, pace })
            }
            "rtsp" | "rtsps" => {
                allow(&["transport", "latency"])?;
                let RtspParts { url, host, port, user, password } = rtsp_url(scheme, body, &shown)?;
                let transport = match take("transport") {
                    None | Some("tcp") => RtspTransport::Tcp,
                    Some("udp") => RtspTransport::Udp,
                    Some(v) => return err(format!("`transport={v}` in `{shown}`: use tcp or udp")),
                };
                let latency_ms = number(take("latency"), "latency", 0..=10_000)?.unwrap_or(200);
                Ok(Self::Rtsp { url, host, port, transport, latency_ms, user, password })
            }
            "v4l2" => {
                allow(&["width", "height", "fps"])?;
                if !body.starts_with("/dev/") {
                    return err(format!("`{shown}`: write v4l2:///dev/videoN"));
                }
                Ok(Self::V4l2 { device: PathBuf::from(body), mode: mode(&take)? })
            }
            "csi" => {
                allow(&["width", "height", "fps"])?;
                match body.parse::<u32>() {
                    Ok(sensor_id) if sensor_id < 16 => Ok(Self::Csi { sensor_id, mode: mode(&take)? }),
                    _ => err(format!("`{shown}`: write csi://N with the sensor id N (0-15)")),
                }
            }
            "test" => {
                allow(&[])?;
                let pattern = if body.is_empty() { "smpte" } else { body };
                if !pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return err(format!("`{shown}`: the pattern must be a videotestsrc pattern name such as ball"));
                }
                Ok(Self::Test { pattern: pattern.to_owned() })
            }
            other => err(format!("unknown scheme `{other}://` in `{shown}`; use {SCHEMES}")),
        }
    }

    /// The URI with anything that may be a credential removed, for logs, status and errors:
    /// everything between `://` and the last `@` before the options. A password holding an
    /// unencoded `/` (which ends the authority for a URL parser) is still cut out.
    pub fn redacted(uri: &str) -> String {
        let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_owned() };
        let before_options = rest.find('?').unwrap_or(rest.len());
        match rest[..before_options].rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => uri.to_owned(),
        }
    }

    /// The network address to check a source's reachability on: an RTSP server's host and port.
    pub fn network_address(&self) -> Option<(&str, u16)> {
        match self {
            Self::Rtsp { host, port, .. } => Some((host, *port)),
            _ => None,
        }
    }
}

/// A `[[camera]].uri` as written, parsed once when the configuration is read. The text is kept
/// to write the configuration back (it may hold credentials: `Debug` and [`CameraUri::redacted`]
/// never show them); a URI that does not parse keeps its error for the configuration check to
/// report beside every other problem.
#[derive(Clone)]
pub struct CameraUri {
    text: String,
    parsed: Result<SourceUri, UriError>,
}

impl CameraUri {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        let parsed = SourceUri::parse(&text);
        Self { text, parsed }
    }

    /// The URI as written, credentials included: for writing the configuration back only.
    pub fn as_written(&self) -> &str {
        &self.text
    }

    /// The source, or why the URI is not one.
    pub fn source(&self) -> Result<&SourceUri, &UriError> {
        self.parsed.as_ref()
    }

    /// The URI without credentials, for logs, status, errors and `config/get`.
    pub fn redacted(&self) -> String {
        SourceUri::redacted(&self.text)
    }
}

impl PartialEq for CameraUri {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl fmt::Debug for CameraUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CameraUri").field(&self.redacted()).finish()
    }
}

impl From<&str> for CameraUri {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl From<String> for CameraUri {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl serde::Serialize for CameraUri {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for CameraUri {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

struct RtspParts {
    url: String,
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<Secret>,
}

/// An RTSP URI's body (without options) as a URL without credentials, its address, and its
/// credentials, percent-decoded.
fn rtsp_url(scheme: &str, body: &str, shown: &str) -> Result<RtspParts, UriError> {
    let encode_hint = "write a `/`, `@` or `:` inside a user or password as %2F, %40 or %3A";
    let mut url = url::Url::parse(&format!("{scheme}://{body}")).map_err(|e| {
        // The message names the URI redacted: the parser's own text could quote a credential.
        let why = match e {
            url::ParseError::EmptyHost => "names no host".to_owned(),
            url::ParseError::InvalidPort => format!("has no valid port after its host (or {encode_hint})"),
            _ => format!("is not a valid URL ({encode_hint})"),
        };
        UriError(format!("`{shown}` {why}"))
    })?;
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        _ => return Err(UriError(format!("`{shown}` names no host"))),
    };
    let port = url.port().unwrap_or(554);
    let decode = |part: &str, what: &str| -> Result<String, UriError> {
        percent_decode_str(part)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| UriError(format!("`{shown}`: the {what} is not UTF-8 once percent-decoded")))
    };
    let user = Some(url.username()).filter(|u| !u.is_empty()).map(|u| decode(u, "user")).transpose()?;
    let password = url.password().map(|p| decode(p, "password").map(Secret::new)).transpose()?;
    // Clearing the credentials cannot fail on a URL that has a host.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    Ok(RtspParts { url: url.into(), host, port, user, password })
}

fn number(value: Option<&str>, key: &str, range: std::ops::RangeInclusive<u32>) -> Result<Option<u32>, UriError> {
    let Some(v) = value else { return Ok(None) };
    match v.parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(UriError(format!("`{key}={v}`: use a whole number from {} to {}", range.start(), range.end()))),
    }
}

fn mode<'a>(take: &impl Fn(&str) -> Option<&'a str>) -> Result<Mode, UriError> {
    Ok(Mode {
        width: number(take("width"), "width", 16..=8192)?,
        height: number(take("height"), "height", 16..=8192)?,
        fps: number(take("fps"), "fps", 1..=240)?,
    })
}

fn parse_query(query: Option<&str>) -> Result<Vec<(String, String)>, UriError> {
    let Some(q) = query else { return Ok(Vec::new()) };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => Err(UriError(format!("option `{kv}` needs a value (key=value)"))),
        })
        .collect()
}

impl fmt::Display for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pace::Realtime => "realtime",
            Pace::Fast => "fast",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_take_loop_and_pace() {
        assert_eq!(
            SourceUri::parse("file:///clips/a.mp4?loop=true&pace=fast").unwrap(),
            SourceUri::File { path: "/clips/a.mp4".into(), looped: true, pace: Pace::Fast }
        );
        assert_eq!(
            SourceUri::parse("file:///a.mp4").unwrap(),
            SourceUri::File { path: "/a.mp4".into(), looped: false, pace: Pace::Realtime }
        );
        assert!(SourceUri::parse("file://relative.mp4").is_err());
        let e = SourceUri::parse("file:///a.mp4?speed=2").unwrap_err().to_string();
        assert!(e.contains("unknown option `speed`"), "{e}");
    }

    #[test]
    fn every_scheme_parses() {
        assert_eq!(
            SourceUri::parse("rtsp://cam.local:554/stream?transport=udp&latency=50").unwrap(),
            SourceUri::Rtsp {
                url: "rtsp://cam.local:554/stream".into(),
                host: "cam.local".into(),
                port: 554,
                transport: RtspTransport::Udp,
                latency_ms: 50,
                user: None,
                password: None
            }
        );
        assert_eq!(
            SourceUri::parse("v4l2:///dev/video0").unwrap(),
            SourceUri::V4l2 { device: "/dev/video0".into(), mode: Mode::default() }
        );
        assert_eq!(
            SourceUri::parse("csi://1?width=1280&height=720&fps=60").unwrap(),
            SourceUri::Csi { sensor_id: 1, mode: Mode { width: Some(1280), height: Some(720), fps: Some(60) } }
        );
        assert!(SourceUri::parse("csi://1?fps=0").unwrap_err().to_string().contains("fps=0"));
        assert_eq!(SourceUri::parse("test://ball").unwrap(), SourceUri::Test { pattern: "ball".into() });
        assert!(SourceUri::parse("csi://front").is_err());
        assert!(SourceUri::parse("v4l2://video0").is_err());
        assert!(SourceUri::parse("test://ball ! fakesink").is_err(), "no pipeline injection");
        let e = SourceUri::parse("http://x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme `http://`"), "{e}");
    }

    #[test]
    fn credentials_in_an_rtsp_uri_are_split_out_of_the_url() {
        let SourceUri::Rtsp { url, user, password, .. } = SourceUri::parse("rtsp://admin:s3cr@t@cam:554/s").unwrap()
        else {
            panic!("not rtsp")
        };
        assert_eq!(
            (url.as_str(), user.as_deref(), password.as_ref().map(Secret::expose)),
            ("rtsp://cam:554/s", Some("admin"), Some("s3cr@t"))
        );
        let e = SourceUri::parse("rtsp://admin:pw@/s").unwrap_err().to_string();
        assert!(e.contains("names no host") && !e.contains("pw"), "{e}");
    }

    #[test]
    fn percent_encoded_credentials_reach_the_camera_decoded() {
        let SourceUri::Rtsp { url, user, password, .. } =
            SourceUri::parse("rtsp://op%3Aone:p%40ss%2Fw%C3%B6rd@10.0.0.5/stream").unwrap()
        else {
            panic!("not rtsp")
        };
        assert_eq!(url, "rtsp://10.0.0.5/stream");
        assert_eq!(user.as_deref(), Some("op:one"));
        assert_eq!(password.as_ref().map(Secret::expose), Some("p@ss/wörd"));
    }

    #[test]
    fn a_slash_in_a_password_is_refused_without_showing_the_password() {
        let e = SourceUri::parse("rtsp://admin:s3cr/et@10.0.0.5/stream").unwrap_err().to_string();
        assert!(!e.contains("s3cr") && !e.contains("et@"), "the password leaks: {e}");
        assert!(e.contains("%2F") && e.contains("rtsp://***@10.0.0.5/stream"), "{e}");
    }

    #[test]
    fn credentials_never_reach_logs_or_debug() {
        assert_eq!(SourceUri::redacted("rtsp://admin:secret@cam/s"), "rtsp://***@cam/s");
        assert_eq!(SourceUri::redacted("rtsp://admin:s3cr/et@10.0.0.5/stream"), "rtsp://***@10.0.0.5/stream");
        assert_eq!(SourceUri::redacted("rtsp://cam/s?transport=udp"), "rtsp://cam/s?transport=udp");
        assert_eq!(SourceUri::redacted("rtsp://cam/s"), "rtsp://cam/s");
        let parsed = SourceUri::parse("rtsp://admin:hunter2@cam/s").unwrap();
        assert!(!format!("{parsed:?}").contains("hunter2"), "{parsed:?}");
    }

    #[test]
    fn an_rtsp_source_names_its_address() {
        let at = |uri: &str| SourceUri::parse(uri).unwrap().network_address().map(|(h, p)| (h.to_owned(), p));
        assert_eq!(at("rtsp://u:p@cam.local/s"), Some(("cam.local".to_owned(), 554)));
        assert_eq!(at("rtsp://10.0.0.5:8554/s"), Some(("10.0.0.5".to_owned(), 8554)));
        assert_eq!(at("rtsp://[::1]:8554/s"), Some(("::1".to_owned(), 8554)));
        assert_eq!(at("test://ball"), None);
    }

    #[test]
    fn a_camera_uri_is_parsed_once_and_written_back_as_given() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Cam {
            uri: CameraUri,
        }
        let cam: Cam = serde_json::from_str(r#"{"uri": "rtsp://admin:p%40ss@cam/s?transport=udp"}"#).unwrap();
        let Ok(SourceUri::Rtsp { password, transport, .. }) = cam.uri.source() else { panic!("not rtsp") };
        assert_eq!((password.as_ref().map(Secret::expose), *transport), (Some("p@ss"), RtspTransport::Udp));
        assert_eq!(serde_json::to_string(&cam).unwrap(), r#"{"uri":"rtsp://admin:p%40ss@cam/s?transport=udp"}"#);
        assert_eq!(format!("{:?}", cam.uri), r#"CameraUri("rtsp://***@cam/s?transport=udp")"#);
        // A bad URI still deserialises: the configuration check reports it with the others.
        let bad: Cam = serde_json::from_str(r#"{"uri": "http://x"}"#).unwrap();
        assert!(bad.uri.source().unwrap_err().to_string().contains("unknown scheme"));
    }
}
