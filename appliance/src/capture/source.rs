//! Camera source URIs: what a `[[camera]].uri` may say, parsed once and checked at config time.

use std::fmt;
use std::path::PathBuf;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUri {
    File { path: PathBuf, looped: bool, pace: Pace },
    Rtsp { url: String, transport: RtspTransport },
    V4l2 { device: PathBuf },
    Csi { sensor_id: u32 },
    Test { pattern: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UriError(String);

const SCHEMES: &str = "file://, rtsp://, v4l2://, csi:// or test://";

impl SourceUri {
    pub fn parse(uri: &str) -> Result<Self, UriError> {
        let err = |m: String| Err(UriError(m));
        let Some((scheme, rest)) = uri.split_once("://") else {
            return err(format!("`{uri}` is not a URI; start it with {SCHEMES}"));
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
                    "unknown option `{k}` in `{uri}`; {scheme}:// accepts {}",
                    if keys.is_empty() { "no options".to_owned() } else { keys.join(", ") }
                ))),
                None => Ok(()),
            }
        };
        match scheme {
            "file" => {
                allow(&["loop", "pace"])?;
                if !body.starts_with('/') {
                    return err(format!("`{uri}`: file:// needs an absolute path (file:///path/clip.mp4)"));
                }
                let looped = match take("loop") {
                    None | Some("false") | Some("0") => false,
                    Some("true") | Some("1") => true,
                    Some(v) => return err(format!("`loop={v}` in `{uri}`: use true or false")),
                };
                let pace = match take("pace") {
                    None | Some("realtime") => Pace::Realtime,
                    Some("fast") => Pace::Fast,
                    Some(v) => return err(format!("`pace={v}` in `{uri}`: use realtime or fast")),
                };
                Ok(Self::File { path: PathBuf::from(body), looped, pace })
            }
            "rtsp" | "rtsps" => {
                allow(&["transport"])?;
                if body.is_empty() {
                    return err(format!("`{uri}` names no host"));
                }
                let transport = match take("transport") {
                    None | Some("tcp") => RtspTransport::Tcp,
                    Some("udp") => RtspTransport::Udp,
                    Some(v) => return err(format!("`transport={v}` in `{uri}`: use tcp or udp")),
                };
                Ok(Self::Rtsp { url: format!("{scheme}://{body}"), transport })
            }
            "v4l2" => {
                allow(&[])?;
                if !body.starts_with("/dev/") {
                    return err(format!("`{uri}`: write v4l2:///dev/videoN"));
                }
                Ok(Self::V4l2 { device: PathBuf::from(body) })
            }
            "csi" => {
                allow(&[])?;
                match body.parse::<u32>() {
                    Ok(sensor_id) if sensor_id < 16 => Ok(Self::Csi { sensor_id }),
                    _ => err(format!("`{uri}`: write csi://N with the sensor id N (0-15)")),
                }
            }
            "test" => {
                allow(&[])?;
                let pattern = if body.is_empty() { "smpte" } else { body };
                if !pattern.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
                    return err(format!("`{uri}`: the pattern must be a videotestsrc pattern name such as ball"));
                }
                Ok(Self::Test { pattern: pattern.to_owned() })
            }
            other => err(format!("unknown scheme `{other}://` in `{uri}`; use {SCHEMES}")),
        }
    }

    /// The URI with any `user:password@` removed, for logs and status.
    pub fn redacted(uri: &str) -> String {
        let Some((scheme, rest)) = uri.split_once("://") else { return uri.to_owned() };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => format!("{scheme}://***{}", &rest[at..]),
            None => uri.to_owned(),
        }
    }
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
            SourceUri::parse("rtsp://cam.local:554/stream?transport=udp").unwrap(),
            SourceUri::Rtsp { url: "rtsp://cam.local:554/stream".into(), transport: RtspTransport::Udp }
        );
        assert_eq!(SourceUri::parse("v4l2:///dev/video0").unwrap(), SourceUri::V4l2 { device: "/dev/video0".into() });
        assert_eq!(SourceUri::parse("csi://1").unwrap(), SourceUri::Csi { sensor_id: 1 });
        assert_eq!(SourceUri::parse("test://ball").unwrap(), SourceUri::Test { pattern: "ball".into() });
        assert!(SourceUri::parse("csi://front").is_err());
        assert!(SourceUri::parse("v4l2://video0").is_err());
        assert!(SourceUri::parse("test://ball ! fakesink").is_err(), "no pipeline injection");
        let e = SourceUri::parse("http://x").unwrap_err().to_string();
        assert!(e.contains("unknown scheme `http://`"), "{e}");
    }

    #[test]
    fn credentials_never_reach_logs() {
        assert_eq!(SourceUri::redacted("rtsp://admin:secret@cam/s"), "rtsp://***@cam/s");
        assert_eq!(SourceUri::redacted("rtsp://cam/s"), "rtsp://cam/s");
    }
}
