//! What this machine's GStreamer offers, and the decoder each codec gets from it.
//!
//! A [`Platform`] is the GStreamer version plus the set of elements that matter to capture. It is
//! read from the registry at run time ([`Platform::detect`]); the named profiles (`jetpack5`,
//! `jetpack6`, `desktop`, `desktop_nvidia`) describe the boards we ship for, so that every
//! pipeline can be unit-tested for each of them on any machine.

use std::collections::BTreeSet;

pub use vigil_core::codec::{known_decoders, preference, Codec, Decoder};

/// Every element a capture pipeline may contain, with the GStreamer version that introduced it.
/// The profile tests check each pipeline against it, so an element newer than a board's
/// GStreamer (such as 1.22's `videoconvertscale`) cannot slip into that board's pipelines.
pub const ELEMENT_SINCE: &[(&str, (u32, u32))] = &[
    ("filesrc", (1, 0)),
    ("parsebin", (1, 10)),
    ("rtspsrc", (1, 0)),
    ("rtph264depay", (1, 0)),
    ("rtph265depay", (1, 0)),
    ("rtpjpegdepay", (1, 0)),
    ("h264parse", (1, 0)),
    ("h265parse", (1, 0)),
    ("jpegparse", (1, 0)),
    ("v4l2src", (1, 0)),
    ("videotestsrc", (1, 0)),
    ("identity", (1, 0)),
    ("videoscale", (1, 0)),
    ("videoconvert", (1, 0)),
    ("videobox", (1, 0)),
    ("appsink", (1, 0)),
    ("avdec_h264", (1, 0)),
    ("avdec_h265", (1, 0)),
    ("avdec_mjpeg", (1, 0)),
    ("jpegdec", (1, 0)),
    ("nvh264dec", (1, 16)),
    ("nvh265dec", (1, 16)),
    ("videoconvertscale", (1, 22)),
    // NVIDIA's L4T plugins: present on every JetPack we support.
    ("nvv4l2decoder", (1, 14)),
    ("nvvidconv", (1, 14)),
    ("nvarguscamerasrc", (1, 14)),
];

/// The elements [`Platform::detect`] looks for.
const PROBED: &[&str] = &[
    "nvv4l2decoder",
    "nvh264dec",
    "nvh265dec",
    "avdec_h264",
    "avdec_h265",
    "avdec_mjpeg",
    "jpegdec",
    "nvvidconv",
    "nvarguscamerasrc",
    "parsebin",
    "rtspsrc",
    "v4l2src",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub name: String,
    /// GStreamer (major, minor).
    pub gst: (u32, u32),
    elements: BTreeSet<String>,
}

impl Platform {
    pub fn new(name: &str, gst: (u32, u32), elements: &[&str]) -> Self {
        Self { name: name.to_owned(), gst, elements: elements.iter().map(|e| (*e).to_owned()).collect() }
    }

    /// Reads the version and the relevant elements from this process's GStreamer registry.
    /// GStreamer must be initialised.
    pub fn detect() -> Self {
        let (major, minor, _, _) = gstreamer::version();
        let found: Vec<&str> =
            PROBED.iter().copied().filter(|name| gstreamer::ElementFactory::find(name).is_some()).collect();
        let name = if found.contains(&"nvvidconv") { "jetson" } else { "generic" };
        Self::new(name, (major, minor), &found)
    }

    /// Jetson, JetPack 5 (L4T r35, Ubuntu 20.04, GStreamer 1.16).
    pub fn jetpack5() -> Self {
        Self::new("jetpack5", (1, 16), JETSON_ELEMENTS)
    }

    /// Jetson, JetPack 6 (L4T r36, Ubuntu 22.04, GStreamer 1.20).
    pub fn jetpack6() -> Self {
        Self::new("jetpack6", (1, 20), JETSON_ELEMENTS)
    }

    /// A machine without NVIDIA hardware, like CI (Debian 12, GStreamer 1.22).
    pub fn desktop() -> Self {
        Self::new("desktop", (1, 22), SOFTWARE_ELEMENTS)
    }

    /// A desktop with an NVIDIA GPU and its driver (gst-plugins-bad `nvcodec` exposes decoders).
    pub fn desktop_nvidia() -> Self {
        let mut p = Self::new("desktop-nvidia", (1, 22), SOFTWARE_ELEMENTS);
        p.elements.extend(["nvh264dec".to_owned(), "nvh265dec".to_owned()]);
        p
    }

    pub fn has(&self, element: &str) -> bool {
        self.elements.contains(element)
    }

    /// Scaling and conversion go through the VIC (`nvvidconv`) where there is one.
    pub fn has_nvvidconv(&self) -> bool {
        self.has("nvvidconv")
    }

    /// The decoders to try for `codec`, best first. `forced` (the camera's `decoder` setting)
    /// replaces the list with that one element; it must exist here.
    pub fn decoders(&self, codec: Codec, forced: Option<&str>) -> Result<Vec<Decoder>, String> {
        let usable = |d: &&Decoder| self.has(d.element) && (!d.nvmm || self.has_nvvidconv());
        let candidates: Vec<Decoder> = preference(codec).iter().filter(usable).cloned().collect();
        match forced {
            Some(name) => {
                let known = preference(codec).iter().find(|d| d.element == name);
                match known {
                    Some(d) if usable(&d) => Ok(vec![d.clone()]),
                    Some(_) => Err(format!(
                        "decoder `{name}` is not installed on this machine; usable {codec} decoders here: {}",
                        names(&candidates)
                    )),
                    None => Err(format!(
                        "`{name}` is not a {codec} decoder vigil knows; choose one of: {}",
                        preference(codec).iter().map(|d| d.element).collect::<Vec<_>>().join(", ")
                    )),
                }
            }
            None if candidates.is_empty() && codec != Codec::Raw => Err(format!(
                "no {codec} decoder is installed; install gstreamer1.0-libav (software) or the board's \
                 NVIDIA plugins"
            )),
            None => Ok(candidates),
        }
    }
}

fn names(decoders: &[Decoder]) -> String {
    if decoders.is_empty() {
        "none".to_owned()
    } else {
        decoders.iter().map(|d| d.element).collect::<Vec<_>>().join(", ")
    }
}

const JETSON_ELEMENTS: &[&str] = &[
    "nvv4l2decoder",
    "nvvidconv",
    "nvarguscamerasrc",
    "avdec_h264",
    "avdec_h265",
    "avdec_mjpeg",
    "jpegdec",
    "parsebin",
    "rtspsrc",
    "v4l2src",
];

const SOFTWARE_ELEMENTS: &[&str] =
    &["avdec_h264", "avdec_h265", "avdec_mjpeg", "jpegdec", "parsebin", "rtspsrc", "v4l2src"];

#[cfg(test)]
mod tests {
    use super::*;

    fn first(p: &Platform, c: Codec) -> &'static str {
        p.decoders(c, None).unwrap()[0].element
    }

    #[test]
    fn each_profile_prefers_its_hardware_decoder() {
        for p in [Platform::jetpack5(), Platform::jetpack6()] {
            assert_eq!(first(&p, Codec::H264), "nvv4l2decoder");
            assert_eq!(first(&p, Codec::H265), "nvv4l2decoder");
            assert_eq!(p.decoders(Codec::Mjpeg, None).unwrap()[0].properties, "mjpeg=1");
        }
        assert_eq!(first(&Platform::desktop_nvidia(), Codec::H264), "nvh264dec");
        assert_eq!(first(&Platform::desktop_nvidia(), Codec::H265), "nvh265dec");
        assert_eq!(first(&Platform::desktop(), Codec::H264), "avdec_h264");
        assert_eq!(first(&Platform::desktop(), Codec::Mjpeg), "jpegdec");
    }

    #[test]
    fn software_is_always_the_last_fallback() {
        let all = Platform::jetpack6().decoders(Codec::H264, None).unwrap();
        assert_eq!(all.iter().map(|d| d.element).collect::<Vec<_>>(), ["nvv4l2decoder", "avdec_h264"]);
        assert!(all[0].hardware && all[0].nvmm && !all[1].hardware);
    }

    #[test]
    fn nvmm_decoders_need_nvvidconv() {
        let odd = Platform::new("odd", (1, 20), &["nvv4l2decoder", "avdec_h264"]);
        assert_eq!(first(&odd, Codec::H264), "avdec_h264");
    }

    #[test]
    fn a_forced_decoder_must_exist_and_fit_the_codec() {
        let p = Platform::desktop();
        assert_eq!(p.decoders(Codec::H264, Some("avdec_h264")).unwrap().len(), 1);
        let e = p.decoders(Codec::H264, Some("nvv4l2decoder")).unwrap_err();
        assert!(e.contains("not installed") && e.contains("avdec_h264"), "{e}");
        let e = p.decoders(Codec::H264, Some("jpegdec")).unwrap_err();
        assert!(e.contains("not a h264 decoder"), "{e}");
    }

    #[test]
    fn a_machine_without_decoders_says_what_to_install() {
        let bare = Platform::new("bare", (1, 22), &[]);
        let e = bare.decoders(Codec::H265, None).unwrap_err();
        assert!(e.contains("gstreamer1.0-libav"), "{e}");
        assert!(bare.decoders(Codec::Raw, None).unwrap().is_empty());
    }

    #[test]
    fn caps_names_map_to_codecs() {
        assert_eq!(Codec::from_caps_name("video/x-h265"), Some(Codec::H265));
        assert_eq!(Codec::from_caps_name("image/jpeg"), Some(Codec::Mjpeg));
        assert_eq!(Codec::from_caps_name("audio/mpeg"), None);
    }
}
