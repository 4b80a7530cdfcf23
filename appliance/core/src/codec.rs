//! Video codecs and the decoders vigil knows for each, best first: a fact table shared by capture
//! (which picks among those installed) and configuration checks (which names exist).

use std::fmt;

/// Compressed (or raw) format of a camera's video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    H264,
    H265,
    Mjpeg,
    /// Uncompressed video (USB cameras in YUYV, CSI sensors, test patterns).
    Raw,
}

impl Codec {
    /// From a parsed caps name (`video/x-h264`, ...).
    pub fn from_caps_name(name: &str) -> Option<Self> {
        match name {
            "video/x-h264" => Some(Self::H264),
            "video/x-h265" => Some(Self::H265),
            "image/jpeg" => Some(Self::Mjpeg),
            "video/x-raw" => Some(Self::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::H264 => "h264",
            Self::H265 => "h265",
            Self::Mjpeg => "mjpeg",
            Self::Raw => "raw",
        })
    }
}

/// One way of decoding a codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoder {
    /// GStreamer element factory name.
    pub element: &'static str,
    /// Properties set in the pipeline description (`key=value ...`), possibly empty.
    pub properties: &'static str,
    /// Output stays in NVMM (Jetson DMA) memory and must go through `nvvidconv`.
    pub nvmm: bool,
    /// Runs on a hardware decoder (NVDEC).
    pub hardware: bool,
}

const fn dec(element: &'static str, properties: &'static str, nvmm: bool, hardware: bool) -> Decoder {
    Decoder { element, properties, nvmm, hardware }
}

/// Preference order per codec: Jetson NVDEC, desktop NVDEC, then software.
pub fn preference(codec: Codec) -> &'static [Decoder] {
    const H264: &[Decoder] = &[
        dec("nvv4l2decoder", "enable-max-performance=1", true, true),
        dec("nvh264dec", "", false, true),
        dec("avdec_h264", "", false, false),
    ];
    const H265: &[Decoder] = &[
        dec("nvv4l2decoder", "enable-max-performance=1", true, true),
        dec("nvh265dec", "", false, true),
        dec("avdec_h265", "", false, false),
    ];
    const MJPEG: &[Decoder] = &[
        dec("nvv4l2decoder", "mjpeg=1", true, true),
        dec("jpegdec", "", false, false),
        dec("avdec_mjpeg", "", false, false),
    ];
    match codec {
        Codec::H264 => H264,
        Codec::H265 => H265,
        Codec::Mjpeg => MJPEG,
        Codec::Raw => &[],
    }
}

/// Every decoder name vigil knows, for config validation.
pub fn known_decoders() -> Vec<&'static str> {
    let mut all: Vec<&str> = [Codec::H264, Codec::H265, Codec::Mjpeg]
        .iter()
        .flat_map(|c| preference(*c).iter().map(|d| d.element))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}
