SUMMARY = "vigil and what it runs with"
DESCRIPTION = "What an image installs for vigil. Its GStreamer plugins, ONNX Runtime and NVIDIA's plugins come through vigil's own dependencies; the RAUC and Mender integrations add their boot checks here."
HOMEPAGE = "https://example.invalid/vigil"
BUGTRACKER = "https://example.invalid/vigil/issues"
SECTION = "multimedia"
LICENSE = "MIT"

inherit packagegroup

RDEPENDS:${PN} = "vigil"
