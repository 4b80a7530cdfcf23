//! Every source kind on every platform profile, as exact pipeline strings.

use super::*;
use crate::platform::ELEMENT_SINCE;

const SINK_SYNC: &str = "appsink name=vigil_sink max-buffers=2 drop=false sync=true emit-signals=false";
const SINK_LIVE: &str = "appsink name=vigil_sink max-buffers=2 drop=false sync=false emit-signals=false";

fn profiles() -> [Platform; 4] {
    [Platform::jetpack5(), Platform::jetpack6(), Platform::desktop(), Platform::desktop_nvidia()]
}

/// The pipeline the camera would start with: the platform's first-choice decoder.
fn build(platform: &Platform, uri: &str, codec: Codec) -> Result<PipelineSpec, String> {
    let source = SourceUri::parse(uri).unwrap();
    let decoder = platform.decoders(codec, None)?.into_iter().next();
    describe(&source, &Plan::new(platform, codec, decoder), platform)
}

fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The decoder segment each profile picks for `codec`.
fn decoder(platform: &Platform, codec: Codec) -> &'static str {
    match (platform.name.as_str(), codec) {
        ("jetpack5" | "jetpack6", Codec::Mjpeg) => "nvv4l2decoder name=vigil_dec mjpeg=1",
        ("jetpack5" | "jetpack6", _) => "nvv4l2decoder name=vigil_dec enable-max-performance=1",
        ("desktop-nvidia", Codec::H264) => "nvh264dec name=vigil_dec",
        ("desktop-nvidia", Codec::H265) => "nvh265dec name=vigil_dec",
        (_, Codec::H264) => "avdec_h264 name=vigil_dec",
        (_, Codec::H265) => "avdec_h265 name=vigil_dec",
        (_, Codec::Mjpeg) => "jpegdec name=vigil_dec",
        (_, Codec::Raw) => unreachable!(),
    }
}

fn jetson(p: &Platform) -> bool {
    p.name.starts_with("jetpack")
}

/// The tail each profile ends with, whatever the source size: the VIC converts out of NVMM to
/// RGBA on Jetson, videoconvert to RGB elsewhere; the frame keeps its decoded size.
fn tail(p: &Platform, sink: &str) -> String {
    if jetson(p) {
        format!("nvvidconv ! video/x-raw,format=RGBA ! {sink}")
    } else {
        format!("videoconvert ! video/x-raw,format=RGB ! {sink}")
    }
}

#[test]
fn file_sources_on_every_profile() {
    for p in profiles() {
        let spec = build(&p, "file:///clips/a b.mp4", Codec::H264).unwrap();
        let head = format!("filesrc location=\"/clips/a b.mp4\" ! parsebin ! h264parse ! {}", decoder(&p, Codec::H264));
        let end = tail(&p, SINK_SYNC);
        assert_eq!(spec.description, squash(&format!("{head} ! {end}")), "{}", p.name);
        assert_eq!(spec.layout, if jetson(&p) { PixelLayout::Rgba } else { PixelLayout::Rgb });
        assert!(spec.finite && !spec.looped && !spec.live);
    }
}

#[test]
fn rtsp_sources_on_every_profile() {
    for p in profiles() {
        let spec = build(&p, "rtsp://admin:pw@cam:554/s?transport=udp&latency=100", Codec::H265).unwrap();
        let head = format!(
            "rtspsrc name=vigil_src location=\"rtsp://cam:554/s\" protocols=udp latency=100 \
             ! rtph265depay ! h265parse ! {}",
            decoder(&p, Codec::H265)
        );
        let end = tail(&p, SINK_LIVE);
        assert_eq!(spec.description, squash(&format!("{head} ! {end}")), "{}", p.name);
        assert!(!spec.description.contains("pw"), "credentials stay out of the description");
        assert!(spec.live && !spec.finite);
    }
}

#[test]
fn usb_cameras_raw_and_mjpeg_on_every_profile() {
    for p in profiles() {
        let spec = build(&p, "v4l2:///dev/video1?width=1280&height=720&fps=30", Codec::Mjpeg).unwrap();
        let head = format!(
            "v4l2src device=\"/dev/video1\" ! image/jpeg,width=1280,height=720,framerate=30/1 ! jpegparse ! {}",
            decoder(&p, Codec::Mjpeg)
        );
        let end = tail(&p, SINK_LIVE);
        assert_eq!(spec.description, squash(&format!("{head} ! {end}")), "{}", p.name);

        let raw = build(&p, "v4l2:///dev/video0", Codec::Raw).unwrap();
        let end = tail(&p, SINK_LIVE);
        assert_eq!(
            raw.description,
            squash(&format!("v4l2src device=\"/dev/video0\" ! video/x-raw ! {end}")),
            "{}",
            p.name
        );
    }
}

#[test]
fn csi_cameras_exist_only_on_jetson() {
    for p in profiles() {
        let spec = build(&p, "csi://1", Codec::Raw);
        if jetson(&p) {
            let expected = format!(
                "nvarguscamerasrc sensor-id=1 ! video/x-raw(memory:NVMM),width=1920,height=1080,framerate=30/1,format=NV12 \
                 ! {}",
                tail(&p, SINK_LIVE)
            );
            assert_eq!(spec.unwrap().description, squash(&expected), "{}", p.name);
        } else {
            let e = spec.unwrap_err();
            assert!(e.contains("only a Jetson"), "{e}");
        }
    }
}

#[test]
fn test_patterns_on_every_profile() {
    for p in profiles() {
        let spec = build(&p, "test://ball", Codec::Raw).unwrap();
        let head = "videotestsrc pattern=ball is-live=true ! video/x-raw,width=640,height=480,framerate=15/1";
        let end = tail(&p, SINK_LIVE);
        assert_eq!(spec.description, squash(&format!("{head} ! {end}")), "{}", p.name);
    }
}

#[test]
fn looped_and_fast_files_change_sync_and_finiteness() {
    let spec = build(&Platform::desktop(), "file:///a.mp4?loop=true&pace=fast", Codec::H264).unwrap();
    assert!(spec.description.ends_with(SINK_LIVE));
    assert!(!spec.finite && spec.looped && !spec.live);
}

#[test]
fn raw_rtsp_and_undecodable_plans_are_refused() {
    let e = build(&Platform::desktop(), "rtsp://cam/s", Codec::Raw).unwrap_err();
    assert!(e.contains("raw video over RTSP"), "{e}");
    let source = SourceUri::parse("file:///a.mp4").unwrap();
    let plan = Plan { codec: Codec::H264, decoder: None, nvvidconv: false, decode_threads: 0 };
    assert!(describe(&source, &plan, &Platform::desktop()).is_err());
}

/// Element names in a description: the first word of each `!`-separated part that is not caps.
fn elements(description: &str) -> Vec<&str> {
    description
        .split(" ! ")
        .filter_map(|part| part.split_whitespace().next())
        .filter(|word| !word.contains('/') && !word.contains('('))
        .collect()
}

#[test]
fn no_profile_gets_an_element_newer_than_its_gstreamer() {
    let uris = [
        ("file:///a.mp4", Codec::H264),
        ("file:///a.mkv", Codec::H265),
        ("rtsp://cam/s", Codec::H264),
        ("rtsp://cam/s", Codec::Mjpeg),
        ("v4l2:///dev/video0", Codec::Raw),
        ("v4l2:///dev/video0?width=640&height=480", Codec::Mjpeg),
        ("csi://0", Codec::Raw),
        ("test://smpte", Codec::Raw),
    ];
    let mut checked = 0;
    for p in profiles() {
        for (uri, codec) in uris {
            let Ok(spec) = build(&p, uri, codec) else { continue };
            for element in elements(&spec.description) {
                let since = ELEMENT_SINCE.iter().find(|(name, _)| *name == element).map(|(_, v)| *v);
                let since = since.unwrap_or_else(|| panic!("{element} is missing from ELEMENT_SINCE"));
                assert!(since <= p.gst, "{element} needs GStreamer {since:?}; {} has {:?}", p.name, p.gst);
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} elements checked");
    assert_eq!(elements("a x=1 ! video/x-raw,width=1 ! b ! video/x-raw(memory:NVMM) ! c"), ["a", "b", "c"]);
}

#[test]
fn the_desktop_pipelines_parse_with_this_machines_gstreamer() {
    crate::init_gstreamer().unwrap();
    let here = Platform::detect();
    for (uri, codec) in [
        ("file:///nonexistent.mp4", Codec::H264),
        ("rtsp://127.0.0.1:9/s", Codec::H265),
        ("v4l2:///dev/video9?width=640&height=480", Codec::Mjpeg),
        ("test://ball", Codec::Raw),
    ] {
        let spec = build(&here, uri, codec).unwrap();
        let parsed = gstreamer::parse::launch(&spec.description);
        assert!(parsed.is_ok(), "{uri}: {:?}\n{}", parsed.err(), spec.description);
    }
}

#[test]
fn plans_describe_their_path() {
    let p = Platform::jetpack6();
    let plan = Plan::new(&p, Codec::H264, p.decoders(Codec::H264, None).unwrap().into_iter().next());
    assert_eq!(plan.path(), "nvv4l2decoder (hardware) → nvvidconv");
    let d = Platform::desktop();
    let plan = Plan::new(&d, Codec::Raw, None);
    assert_eq!(plan.path(), "raw → videoconvert");
}

#[test]
fn quoting_escapes_quotes_and_backslashes() {
    assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
}

#[test]
fn probes_exist_for_sources_of_unknown_codec() {
    let probe = |u: &str| probe_description(&SourceUri::parse(u).unwrap());
    assert_eq!(
        probe("rtsp://u:p@cam/s").unwrap(),
        "rtspsrc name=vigil_src location=\"rtsp://cam/s\" protocols=tcp ! parsebin ! fakesink name=vigil_probe_sink sync=false"
    );
    assert!(probe("file:///a.mp4").unwrap().starts_with("filesrc location=\"/a.mp4\" ! parsebin"));
    assert_eq!(probe("csi://0"), None);
    assert_eq!(probe("test://ball"), None);
}

#[test]
fn software_decoders_get_their_thread_count_and_hardware_ones_do_not() {
    let source = SourceUri::parse("file:///clips/a.mp4").unwrap();
    for platform in profiles() {
        for codec in [Codec::H264, Codec::Mjpeg] {
            let decoder = platform.decoders(codec, None).unwrap().into_iter().next();
            let mut plan = Plan::new(&platform, codec, decoder);
            plan.decode_threads = 2;
            let d = describe(&source, &plan, &platform).unwrap().description;
            let expected = format!("{} max-threads=2 ", self::decoder(&platform, codec));
            let software = self::decoder(&platform, codec).starts_with("avdec_");
            assert_eq!(d.contains(&expected), software, "{}: {d}", platform.name);
            plan.decode_threads = 0;
            let d = describe(&source, &plan, &platform).unwrap().description;
            assert!(!d.contains("max-threads"), "0 leaves FFmpeg's choice: {d}");
        }
    }
}
